"""Render the report context into its pages, and print the PDF.

The context is plain, JSON-serializable data built elsewhere; the templates only read it. ``render_html`` writes
the index ``report.html`` (overview first, then a sortable, filterable table of the images; light at any number of
images) and one page per image, ``images/<id>.html``, with prev/next. Each page inlines its CSS (and the index its
small script) and links the figures under ``assets/`` with relative URLs, so every page opens from ``file://``
with no network. ``render_print_html`` writes the HTML the PDF is printed from (the overview and the summary's or
every image, no script); WeasyPrint prints it in a child process (``python -m reportgen.pdf``) so that its memory
use and any crash stay out of the main run. ``render_standalone`` writes ``report-standalone.html``: the whole
report in one file, every figure embedded as a ``data:`` URL.

This module never imports WeasyPrint, torch or matplotlib.
"""

from __future__ import annotations

import base64
import logging
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import jinja2
from markupsafe import Markup

from reportgen import failpoints
from reportgen.atomic import temp_file, write_text_atomically
from reportgen.errors import RenderError
from reportgen.names import readable
from reportgen.printview import PRINT_ASSETS, print_copies, print_image

__all__ = ["render_html", "render_print_html", "remove_print_files", "render_standalone", "render_pdf", "PdfJob",
           "PRINT_NAME", "STANDALONE_NAME"]

log = logging.getLogger(__name__)

TEMPLATE_PACKAGE = "reportgen.templates"
TEMPLATE_NAME = "report.html.j2"
CSS_NAME = "report.css"
HTML_NAME = "report.html"
IMAGE_TEMPLATE = "image.html.j2"
PRINT_TEMPLATE = "print.html.j2"
PAGES_DIR = "images"  # images/<id>.html
PRINT_NAME = ".report-print.html"  # printed to report.pdf, then removed
STANDALONE_NAME = "report-standalone.html"
JS_NAME = "triage.js"
NEIGHBOURS = 6  # images listed before and after the current one in an image page's sidebar
STDERR_TAIL_LINES = 20


# ---------------------------------------------------------------------------------------------------------------
# Jinja filters. They format values for display; they never add data the context does not carry.
# ---------------------------------------------------------------------------------------------------------------


def _relurl(path: Any) -> str:
    """A relative asset path (POSIX, as in the context) as a URL: percent-encoded, never absolute, never a scheme."""
    text = str(path)
    if not text:
        raise RenderError("asset path is empty")
    if "\\" in text:
        text = text.replace("\\", "/")
    if urlsplit(text).scheme or text.startswith(("/", "//")) or PurePosixPath(text).is_absolute():
        raise RenderError(f"asset path must be relative to the report folder, got {text!r}")
    if ".." in PurePosixPath(text).parts:
        raise RenderError(f"asset path must stay inside the report folder, got {text!r}")
    return quote(text, safe="/")


def _pct(value: Any, digits: int = 1) -> str:
    """0.7733 -> '77.3%'; tiny non-zero values show as '<0.1%'."""
    if value is None:
        return "—"
    p = float(value) * 100.0
    if 0 < p < 10**-digits:
        return f"<{10**-digits:.{digits}f}%"
    return f"{p:.{digits}f}%"


def _bar_width(value: Any) -> str:
    """A probability as a CSS width in percent, clamped to [0, 100]."""
    if value is None:
        return "0%"
    p = float(value)
    if math.isnan(p):
        p = 0.0
    return f"{min(max(p, 0.0), 1.0) * 100:.1f}%"


def _intcomma(value: Any) -> str:
    """4652008 -> '4,652,008' (thin-space-free, plain commas)."""
    if value is None:
        return "—"
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return str(value)


def _duration(value: Any) -> str:
    """Seconds as '12.3 s', '2 min 05 s' or '1 h 02 min'."""
    if value is None:
        return "—"
    s = float(value)
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m} min {sec:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def _dims(value: Any, sep: str = "×") -> str:
    """[40, 28, 28] -> '40×28×28'."""
    if value is None:
        return "—"
    return sep.join(str(v) for v in value)


def _fit(width: Any, height: Any, max_w: float, max_h: float | None = None) -> tuple[int, int]:
    """Scale (width, height) down to fit the box, keeping the aspect ratio; never scales up. Returns ints >= 1."""
    w, h = float(width or 1), float(height or 1)
    scale = min(1.0, max_w / w, (max_h / h) if max_h else 1.0)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _join(values: Any, sep: str = ", ") -> str:
    return sep.join(str(v) for v in values)


def _num(value: Any) -> str:
    """A metric: 3 significant digits; text as it is; nothing for None."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:.3g}"


FILTERS: dict[str, Callable[..., Any]] = {
    "relurl": _relurl,
    "pct": _pct,
    "bar_width": _bar_width,
    "intcomma": _intcomma,
    "duration": _duration,
    "dims": _dims,
    "joinstr": _join,
    "num": _num,
}


def _environment(prefix: str = "") -> jinja2.Environment:
    """The templates' environment; ``prefix`` goes before every asset URL (``../`` on the pages in images/)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader(TEMPLATE_PACKAGE, "."),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(FILTERS)
    if prefix:
        env.filters["relurl"] = lambda path: prefix + _relurl(path)
    env.globals["fit"] = _fit
    return env


CSS_FILES = (CSS_NAME, "panels.css", "audit.css")  # the pages; the map panels and colour bars; the audit section


def _read_css() -> str:
    folder = resources.files(TEMPLATE_PACKAGE)
    return "\n".join(folder.joinpath(name).read_text(encoding="utf-8") for name in CSS_FILES)


# ---------------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------------


def _triage_columns(images: list[dict]) -> dict[str, Any]:
    """The triage table's optional columns: per-image ``groups`` and ``metrics`` keys (only those present), the
    values of each group column and the labels (for the filters)."""
    groups: dict[str, set[str]] = {}
    metrics: dict[str, None] = {}
    for e in images:
        for k, v in (e.get("groups") or {}).items():
            groups.setdefault(str(k), set()).add(str(v))
        for k in e.get("metrics") or {}:
            metrics[str(k)] = None
    return {"groups": sorted(groups), "group_values": {k: sorted(v) for k, v in groups.items()},
            "metrics": list(metrics), "labels": sorted({str(e["label"]) for e in images if e.get("label") is not None})}


def _render(env: jinja2.Environment, name: str, values: dict[str, Any]) -> str:
    """``name`` rendered with ``values``; every failure a ``RenderError`` naming the template."""
    try:
        return env.get_template(name).render(**values)
    except RenderError as exc:
        raise RenderError(f"rendering {name} failed: {exc}") from exc
    except jinja2.UndefinedError as exc:
        raise RenderError(f"rendering {name} failed: the report context lacks a value: {exc}") from exc
    except jinja2.TemplateNotFound as exc:
        raise RenderError(f"cannot load the report template {TEMPLATE_PACKAGE}/{exc.name}") from exc
    except jinja2.TemplateError as exc:
        raise RenderError(f"rendering {name} failed: {exc}") from exc
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise RenderError(f"rendering {name} failed on a malformed context value: {type(exc).__name__}: {exc}") from exc


def _read_static() -> tuple[Markup, Markup]:
    try:
        folder = resources.files(TEMPLATE_PACKAGE)
        js = folder.joinpath(JS_NAME).read_text(encoding="utf-8")
        return Markup(_read_css()), Markup(js.replace("</", "<\\/"))
    except OSError as exc:
        raise RenderError(f"cannot load the report's stylesheet or script from {TEMPLATE_PACKAGE}: {exc}") from exc


def _write(path: Path, text: str, atomic: bool = True) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if atomic:
            write_text_atomically(path, readable(text))  # undecodable bytes of a name show as \xNN
        else:
            path.write_text(readable(text), encoding="utf-8")
    except OSError as exc:
        raise RenderError(f"cannot write {path}: {exc}") from exc


def _base_values(context: dict) -> dict[str, Any]:
    values = {"overview": {}, "pdf": {}, **context}
    values.setdefault("overview", {})
    if not values["overview"]:
        from reportgen.overview import overview

        values["overview"] = overview(context.get("images") or [], context.get("skipped") or [])
    return values


def render_html(context: dict, out_dir: Path) -> Path:
    """Write the index ``out_dir/report.html`` and one page per image, ``out_dir/images/<id>.html``; return the
    index's path.

    Autoescaping is on and undefined names are errors (``StrictUndefined``): a missing key raises ``RenderError``
    naming it. The CSS (and the index's script) are inlined; asset paths in the context (``image``, ``thumb``,
    ``maps_file``) must be relative to ``out_dir`` and are emitted as percent-encoded relative URLs. The index is
    written atomically, as UTF-8: any lone surrogate left in a value (the undecodable bytes of a file name) is
    shown as ``\\xNN`` instead of failing the write. A context without ``overview`` gets one computed from its
    images (without the map alerts).
    """
    out_dir = Path(out_dir)
    css, js = _read_static()
    values = _base_values(context)
    values.update(inline_css=css, inline_js=js, single=False, triage=_triage_columns(values["images"]),
                  page_url=lambda i: f"{PAGES_DIR}/{i}.html", index_url=HTML_NAME, details_url="")
    index = _render(_environment(), TEMPLATE_NAME, values)
    images = values["images"]
    pages_env = _environment("../")
    values.update(page_url=lambda i: f"{i}.html", index_url=f"../{HTML_NAME}", images_total=len(images))
    template_values = dict(values)
    for n, image in enumerate(images):
        lo = max(0, min(n - NEIGHBOURS, len(images) - 2 * NEIGHBOURS - 1))
        template_values.update(
            image=image, number=n + 1, prev=images[n - 1] if n else None,
            next=images[n + 1] if n + 1 < len(images) else None,
            neighbours=[{"number": k + 1, "image": images[k]} for k in range(lo, min(len(images), lo + 2 * NEIGHBOURS + 1))])
        page = _render(pages_env, IMAGE_TEMPLATE, template_values)
        _write(out_dir / PAGES_DIR / f"{image['id']}.html", page, atomic=False)  # a new folder, published whole
    html_path = out_dir / HTML_NAME
    _write(html_path, index)
    return html_path


def render_print_html(context: dict, out_dir: Path) -> Path:
    """Write the HTML ``report.pdf`` is printed from (``out_dir/.report-print.html``) and the print-size copies of
    its figures (``out_dir/.print-assets/``, ``printview.print_copies``); ``remove_print_files`` removes both.

    ``context["pdf"]``: ``mode`` ``full`` prints every image as an appendix; otherwise (``summary``) the images
    listed in ``pdf["images"]`` (``{id, reason}``), in the report's order.
    """
    out_dir = Path(out_dir)
    css, _ = _read_static()
    values = _base_values(context)
    pdf = values.get("pdf") or {}
    images = values["images"]
    if pdf.get("mode") == "full":
        chosen = {e["id"]: "" for e in images}
    else:
        chosen = {str(item["id"]): str(item.get("reason") or "") for item in pdf.get("images") or []}
    shown = [(n, e) for n, e in enumerate(images) if e["id"] in chosen]
    remove_print_files(out_dir)
    copies = print_copies(out_dir, [e for _, e in shown])  # print-size copies of figures larger than they print
    print_images = [{"image": e, "number": n + 1, "reason": chosen[e["id"]], "view": print_image(e, copies)}
                    for n, e in shown]
    in_pdf = {item["image"]["id"] for item in print_images}
    values.update(inline_css=css, single=False, print_images=print_images, details_url="",
                  page_url=lambda i: f"#{i}" if i in in_pdf else f"{PAGES_DIR}/{i}.html", index_url=HTML_NAME,
                  pdf_lists=list(pdf.get("lists") or ()), pdf_max=pdf.get("max_images", len(print_images)),
                  pdf_left_out=list(pdf.get("left_out") or ()), pdf_mode=pdf.get("mode") or "summary")
    path = out_dir / PRINT_NAME
    _write(path, _render(_environment(), PRINT_TEMPLATE, values))
    return path


def remove_print_files(out_dir: Path) -> None:
    """Remove what ``render_print_html`` wrote into ``out_dir`` (the print HTML and its print-size copies)."""
    (Path(out_dir) / PRINT_NAME).unlink(missing_ok=True)
    shutil.rmtree(Path(out_dir) / PRINT_ASSETS, ignore_errors=True)


_EMBED_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".svg": "image/svg+xml",
                ".gif": "image/gif", ".webp": "image/webp"}
_ZOOM_HREF = re.compile(r'(<a class="zoom") href="[^"]*"')
_SRC = re.compile(r'\bsrc="([^"#:]+)"')
_FILE_HREF = re.compile(r'(<a\b[^>]*?) href="(?!#)[^"]*"')


def _asset_file(root: Path, url: str) -> Path | None:
    rel = PurePosixPath(unquote(url))
    if rel.is_absolute() or ".." in rel.parts or rel.suffix.lower() not in _EMBED_TYPES:
        return None
    path = root / rel
    return path if path.is_file() else None


def render_standalone(context: dict, out_dir: Path, budget_mb: float = 50.0) -> Path:
    """Write ``out_dir/report-standalone.html``: the whole report in one page (overview, table, every image's
    section), every figure embedded as a ``data:`` URL, links in-page only (the figures' zoom links and the raw
    maps' links are dropped: a reviewer gets one file). Logs its size estimate first; warns above ``budget_mb``."""
    out_dir = Path(out_dir)
    css, js = _read_static()
    values = _base_values(context)
    values.update(inline_css=css, inline_js=js, single=True, triage=_triage_columns(values["images"]),
                  page_url=lambda i: f"#{i}", index_url="", details_url="")
    html = _render(_environment(), TEMPLATE_NAME, values)
    html = _FILE_HREF.sub(r"\1", _ZOOM_HREF.sub(r"\1", html))
    files = {url: _asset_file(out_dir, url) for url in set(_SRC.findall(html))}
    size = len(html.encode("utf-8")) + sum(4 * math.ceil(p.stat().st_size / 3) + 30 for p in files.values() if p)
    mb = size / 1e6
    log.info("report-standalone.html: about %.1f MB (%d figures embedded)", mb, sum(1 for p in files.values() if p))
    if mb > budget_mb:
        log.warning("report-standalone.html will be about %.1f MB, above report.self_contained_budget_mb = %g MB",
                    mb, budget_mb)
    encoded: dict[str, str] = {}

    def embed(match: re.Match) -> str:
        url = match.group(1)
        path = files.get(url)
        if path is None:
            return match.group(0)
        if url not in encoded:
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            encoded[url] = f"data:{_EMBED_TYPES[path.suffix.lower()]};base64,{data}"
        return f'src="{encoded[url]}"'

    try:
        html = _SRC.sub(embed, html)
    except OSError as exc:
        raise RenderError(f"cannot embed a figure into {STANDALONE_NAME}: {exc}") from exc
    path = out_dir / STANDALONE_NAME
    _write(path, html)
    return path


def _tail(text: str | bytes | None, lines: int = STDERR_TAIL_LINES) -> str:
    if not text:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return "\n".join(kept)


def _child_env() -> dict[str, str]:
    """The parent's environment, with this package's parent folder on PYTHONPATH so the child finds reportgen."""
    env = dict(os.environ)
    pkg_root = str(Path(__file__).resolve().parent.parent)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if pkg_root not in parts:
        env["PYTHONPATH"] = os.pathsep.join([pkg_root, *parts])
    return env


class PdfJob:
    """A WeasyPrint child process started ahead of time; ``finish`` prints, ``cancel`` stops it.

    The child starts its interpreter and imports WeasyPrint while the run is still working, then waits for
    the parent's order. The PDF is written to a temp name beside ``pdf_path`` and moved into place only on
    success, so ``pdf_path`` is either the old file or a complete new one.
    """

    def __init__(self) -> None:
        cmd = [sys.executable, "-m", "reportgen.pdf", "--wait"]
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True, errors="replace", env=_child_env())
        except OSError as exc:
            raise RenderError(f"cannot start the PDF printer ({sys.executable} -m reportgen.pdf): {exc}") from exc

    def cancel(self) -> None:
        """Stop the child if it is still waiting (idempotent)."""
        if self.proc.returncode is not None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()

    def finish(self, html_path: Path, pdf_path: Path, timeout: float = 900) -> Path:
        """Print ``html_path`` to ``pdf_path`` now; ``RenderError`` with the end of the child's stderr on failure."""
        html_path, pdf_path, proc = Path(html_path), Path(pdf_path), self.proc
        if not html_path.is_file():
            self.cancel()
            raise RenderError(f"cannot print PDF: HTML file {html_path} does not exist")
        try:
            pdf_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = temp_file(pdf_path.parent, ".pdf")  # the child writes it; a killed run leaves it for sweep()
        except OSError as exc:
            self.cancel()
            raise RenderError(f"cannot print PDF: cannot write to {pdf_path.parent}: {exc}") from exc
        try:
            try:
                try:
                    proc.stdin.write(f"go\t{html_path}\t{tmp}\n")
                    proc.stdin.flush()
                except OSError:  # the child is gone already: its exit status and stderr say why, below
                    pass
                failpoints.reached("pdf")
                _, stderr = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired as exc:
                proc.kill()
                _, stderr = proc.communicate()
                tail = _tail(stderr)
                msg = f"printing {html_path} to PDF timed out after {timeout:g} s"
                raise RenderError(f"{msg}; WeasyPrint stderr:\n{tail}" if tail else msg) from exc
            tail = _tail(stderr)
            if proc.returncode != 0:
                if proc.returncode < 0:
                    why = f"was killed by signal {-proc.returncode}"
                else:
                    why = f"exited with status {proc.returncode}"
                msg = f"printing {html_path} to PDF failed: the WeasyPrint child process {why}"
                raise RenderError(f"{msg}; its stderr ends with:\n{tail}" if tail else msg)
            if tmp.stat().st_size == 0:
                raise RenderError(f"printing {html_path} to PDF failed: WeasyPrint wrote an empty file")
            errors = [line for line in (stderr or "").splitlines() if line.startswith("weasyprint ERROR")]
            if errors:  # e.g. an image that failed to load: the PDF is written, with the alt text in its place
                log.warning(
                    "WeasyPrint reported %d problem(s) printing %s:\n%s", len(errors), html_path, _tail("\n".join(errors))
                )
            elif tail:
                log.debug("WeasyPrint stderr for %s:\n%s", html_path, tail)
            os.replace(tmp, pdf_path)
        except OSError as exc:
            raise RenderError(f"cannot write PDF {pdf_path}: {exc}") from exc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
            tmp.unlink(missing_ok=True)
        return pdf_path


def render_pdf(html_path: Path, pdf_path: Path, *, timeout: float = 900) -> Path:
    """Print ``html_path`` to ``pdf_path`` with WeasyPrint in a child process and return ``pdf_path``.

    Runs ``sys.executable -m reportgen.pdf HTML TMP`` where TMP is a temp name beside ``pdf_path``; on success the
    parent moves it into place with ``os.replace``, so ``pdf_path`` is either the old file or a complete new one.
    A non-zero exit, a crash or ``timeout`` seconds passing raise ``RenderError`` with the end of the child's stderr.
    """
    html_path = Path(html_path)
    if not html_path.is_file():
        raise RenderError(f"cannot print PDF: HTML file {html_path} does not exist")
    return PdfJob().finish(html_path, pdf_path, timeout)
