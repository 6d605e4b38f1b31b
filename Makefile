# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install system-deps browser-deps demo audit-demo test lint bench classics clean-outputs mutate

# WeasyPrint draws with Pango and subsets fonts with HarfBuzz's subsetter (without it, a slow pure-Python
# fallback). Installed from Debian when missing and we may; otherwise a note, never a failure.
SYSTEM_LIBS := libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0
system-deps:
	@if ldconfig -p 2>/dev/null | grep -q libharfbuzz-subset && ldconfig -p 2>/dev/null | grep -q libpangoft2; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing $(SYSTEM_LIBS) (apt-get)"; \
	  (apt-get install -y -qq $(SYSTEM_LIBS) || (apt-get update -qq && apt-get install -y -qq $(SYSTEM_LIBS))) >/dev/null 2>&1 \
	    || echo "note: could not install $(SYSTEM_LIBS); PDFs may fail or print slowly"; \
	else echo "note: install $(SYSTEM_LIBS) with your package manager for the PDF report"; fi

# The browser tests (tests/test_browser.py) and `make bench` open reports in headless Chromium: Debian's chromium,
# driven by Playwright's Python package (the test extra) through its executable, so nothing downloads a browser.
# Installed when missing and we may; otherwise a note, never a failure (the tests then skip, saying why).
browser-deps:
	@if [ -n "$$REPORTGEN_CHROMIUM" ] || command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium (apt-get)"; \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
	    || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)) >/dev/null 2>&1 \
	    || echo "note: could not install chromium; the browser tests will skip"; \
	else echo "note: install chromium with your package manager for the browser tests (tests/test_browser.py)"; fi

$(STAMP): pyproject.toml
	$(MAKE) --no-print-directory system-deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: on this project's machines both wheels lie on local disk (no multi-GB download).
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m reportgen.demo outputs/demo-images
	$(VENV)/bin/reportgen run configs/demo.yaml --force

# The audit scenario (docs/AUDIT.md): two small nets trained here in seconds, one of which learned a shortcut; both
# audited, the second compared with the first (compare_to). The shortcut net's gates fail: exit 3, as they should.
audit-demo: $(STAMP)
	$(PY) -m reportgen.auditdemo outputs/audit-demo
	$(VENV)/bin/reportgen run configs/audit_clean.yaml --force
	$(VENV)/bin/reportgen run configs/audit_shortcut.yaml --force; code=$$?; \
	  if [ $$code -eq 3 ]; then echo "the shortcut net failed its gates (exit 3): the audit caught it; see outputs/audit-shortcut/report.html and outputs/audit-shortcut-compare/compare.html"; \
	  else echo "expected exit 3 from the shortcut net's gates, got $$code"; exit 1; fi

test: $(STAMP) browser-deps
	$(VENV)/bin/pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check reportgen tests bench

# The three classic examples (VGG11 kernels, VGG16 filter visualization, AlexNet saliency), random weights.
classics: $(STAMP)
	$(PY) -m reportgen.demo outputs/demo-images
	for c in vgg11_kernels alexnet_saliency vgg16_filters; do $(VENV)/bin/reportgen run configs/$$c.yaml --force || exit 1; done

# reportgen against the hardware floor and the peers (pytorch-grad-cam, torchcam, captum): one JSON line each.
BENCH_DEVICE ?= cpu
bench: $(STAMP) browser-deps
	$(PY) -m pip install --quiet -e '.[bench]' || echo "note: could not install the bench extra; missing peers are reported as error lines"
	rm -f bench/results_$(BENCH_DEVICE).jsonl
	$(PY) -m bench --device $(BENCH_DEVICE) --out bench/results_$(BENCH_DEVICE).jsonl

# Mutation testing, on demand (never in CI): mutmut mutates the modules listed under [tool.mutmut] in
# pyproject.toml and runs the fast tests that cover each mutant. Narrow it with MUTANTS='reportgen.atomic*'.
# Survivors: `$(VENV)/bin/mutmut show NAME`; docs/TESTING.md says which are acceptable and why.
MUTANTS ?=
MUTATE_JOBS ?= 2
mutate: $(STAMP)
	$(PY) -m pip install --quiet -e '.[mutate]'
	$(VENV)/bin/mutmut run --max-children $(MUTATE_JOBS) $(MUTANTS)
	$(VENV)/bin/mutmut results

clean-outputs:
	rm -rf outputs/demo outputs/demo-images outputs/cache outputs/audit-demo outputs/audit-clean outputs/audit-shortcut outputs/audit-shortcut-compare
