"""Headless Chromium for the report tests: find the browser, open pages from ``file://`` with the network blocked,
and collect what a reader would hit (images that do not load, console errors, dead links, requests off the machine).

Driven through Playwright's Python package pointed at the system's Chromium (``executable_path``): nothing is
downloaded (``playwright install`` is never needed). ``REPORTGEN_CHROMIUM`` names another executable.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

__all__ = ["find_chromium", "unavailable", "Browser", "Visit", "link_problems", "page_ids", "static_refs", "local_pages",
           "triage_rows", "apply_misclassified_filter", "misclassified_filter_check", "FILTER_RX"]

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
LOCAL_SCHEMES = ("file", "data", "blob", "about")  # everything else is the network, and is blocked
FILTER_RX = re.compile(r"misclassif|wrong|incorrect", re.I)  # how a reader names the "misclassified" filter


def find_chromium() -> str | None:
    """The Chromium executable: ``$REPORTGEN_CHROMIUM``, else the first of ``CANDIDATES`` on ``PATH``."""
    env = os.environ.get("REPORTGEN_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def unavailable() -> str | None:
    """Why the browser tests cannot run here (None when they can): no Chromium, or no Playwright package."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[test]')"
    env = os.environ.get("REPORTGEN_CHROMIUM")
    if env and not Path(env).is_file():
        return f"REPORTGEN_CHROMIUM={env} is not a file"
    if find_chromium() is None:
        return ("no Chromium found (looked for $REPORTGEN_CHROMIUM and " + ", ".join(CANDIDATES)
                + " on PATH); `make browser-deps` installs Debian's chromium as root")
    return None


@dataclass
class Visit:
    """What one page showed: its load time, its images, links and ids, and what went wrong on it."""

    url: str
    load_s: float  # wall time of ``goto`` until the load event, seen from Python
    nav_ms: float | None  # the page's own navigation timing: loadEventEnd - startTime
    html_bytes: int
    images: list[dict[str, Any]]  # {src, natural_width, complete, rendered}
    links: list[str]  # every ``a[href]``, resolved by the browser
    console_errors: list[str]
    page_errors: list[str]
    failed_requests: list[str]
    extra: Any = None  # what ``then(page)`` returned

    @property
    def broken_images(self) -> list[str]:
        """Images laid out on the page that did not load (one in a closed ``<details>`` or a hidden row is not laid
        out, and a lazy one there never loads: its file is checked by ``static_refs`` instead)."""
        return [i["src"] for i in self.images if i["rendered"] and not i["natural_width"]]


# In the page: scroll down one viewport at a time (a frame each, so lazy images start loading), then scroll each
# laid-out image that is still not loaded into view, then wait for those to finish (load or error), at most ``ms``.
_LOAD_IMAGES = """async (ms) => {
  const frame = () => new Promise(r => requestAnimationFrame(() => r()));
  const step = Math.max(200, window.innerHeight * 0.9);
  for (let y = 0; y <= document.documentElement.scrollHeight; y += step) { window.scrollTo(0, y); await frame(); }
  const imgs = Array.from(document.images);
  for (const img of imgs) {
    if (!img.complete && img.checkVisibility({visibilityProperty: true})) {
      img.scrollIntoView({block: 'center'}); await frame();
    }
  }
  const done = img => img.complete ? Promise.resolve() :
      new Promise(r => { img.addEventListener('load', r, {once: true}); img.addEventListener('error', r, {once: true}); });
  const shown = imgs.filter(i => i.checkVisibility({visibilityProperty: true}));  // lazy + not laid out: never loads
  await Promise.race([Promise.all(shown.map(done)), new Promise(r => setTimeout(r, ms))]);
  window.scrollTo(0, 0);
  await frame();
  return imgs.map(i => ({src: i.currentSrc || i.src, natural_width: i.naturalWidth, complete: i.complete,
                         rendered: i.checkVisibility({visibilityProperty: true})}));
}"""

_IMAGES = """() => Array.from(document.images).map(i => ({src: i.currentSrc || i.src, natural_width: i.naturalWidth,
  complete: i.complete, rendered: i.checkVisibility({visibilityProperty: true})}))"""

_NAV_MS = """() => { const n = performance.getEntriesByType('navigation')[0];
  return n && n.loadEventEnd > 0 ? n.loadEventEnd - n.startTime : null; }"""


class Browser:
    """One headless Chromium (a fresh context per page) whose every non-local request is aborted and recorded."""

    def __init__(self, executable: str, *, viewport: tuple[int, int] = (1280, 900)):
        from playwright.sync_api import sync_playwright

        self.executable = executable
        self.viewport = {"width": viewport[0], "height": viewport[1]}
        self.blocked: list[str] = []  # every request to the network that a page attempted (all aborted)
        self._pw = sync_playwright().start()
        try:
            self.browser = self._pw.chromium.launch(executable_path=executable, headless=True,
                                                    args=["--disable-gpu", "--no-first-run"])
        except Exception:
            self._pw.stop()
            raise
        self.version = self.browser.version

    def close(self) -> None:
        try:
            self.browser.close()
        finally:
            self._pw.stop()

    def _route(self, route) -> None:
        url = route.request.url
        if urlsplit(url).scheme in LOCAL_SCHEMES:
            route.continue_()
        else:
            if url not in self.blocked:
                self.blocked.append(url)
            route.abort("blockedbyclient")

    def context(self, *, javascript: bool = True):
        """A new browser context with the network blocked (the caller closes it)."""
        ctx = self.browser.new_context(viewport=self.viewport, service_workers="block", java_script_enabled=javascript)
        ctx.route("**/*", self._route)
        ctx.on("request", lambda req: (urlsplit(req.url).scheme not in LOCAL_SCHEMES
                                       and req.url not in self.blocked and self.blocked.append(req.url)))
        return ctx

    def visit(self, path: Path, *, load_images: bool = True, screenshot: Path | None = None, full_page: bool = False,
              then=None, image_wait_ms: int = 10_000, javascript: bool = True) -> Visit:
        """Open ``path`` from ``file://``; with ``load_images``, scroll through it so every lazy image loads.

        ``then(page)`` runs on the open page before it closes (e.g. a filter's check); its result is in
        ``visit.extra``. ``javascript=False``: the page's own scripts do not run (the checks' still do).
        """
        ctx = self.context(javascript=javascript)
        page = ctx.new_page()
        console: list[str] = []
        errors: list[str] = []
        failed: list[str] = []
        page.on("console", lambda m: m.type == "error" and console.append(f"{m.text} @ {m.location.get('url')}"))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("requestfailed", lambda r: failed.append(f"{r.url}: {r.failure}"))
        try:
            url = path.resolve().as_uri()
            t0 = time.perf_counter()
            page.goto(url, wait_until="load", timeout=30_000)
            load_s = time.perf_counter() - t0
            nav_ms = page.evaluate(_NAV_MS)
            images = page.evaluate(_LOAD_IMAGES if load_images else _IMAGES, image_wait_ms)
            links = page.evaluate("() => Array.from(document.querySelectorAll('a[href]')).map(a => a.href)")
            if screenshot is not None:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=full_page)
            extra = then(page) if then is not None else None
            visit = Visit(url=url, load_s=load_s, nav_ms=nav_ms, html_bytes=path.stat().st_size, images=images,
                          links=links, console_errors=console, page_errors=errors, failed_requests=failed,
                          extra=extra)
            # console messages of what ``then`` did arrive asynchronously: give them a moment
            page.wait_for_timeout(50)
            return visit
        finally:
            ctx.close()


# ------------------------------------------------------------------------------------------------- links


class _Ids(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if value is not None and (key == "id" or (key == "name" and tag == "a")):
                self.ids.add(value)


_ID_CACHE: dict[Path, set[str]] = {}


def page_ids(path: Path) -> set[str]:
    """The ``id``s (and ``<a name>``s) of an HTML file: what a ``#fragment`` link into it may name."""
    path = path.resolve()
    if path not in _ID_CACHE:
        parser = _Ids()
        parser.feed(path.read_text(encoding="utf-8", errors="replace"))
        _ID_CACHE[path] = parser.ids
    return _ID_CACHE[path]


def link_problems(links: list[str], root: Path) -> tuple[list[str], list[str]]:
    """Check resolved hrefs against the report folder ``root``.

    Returns (problems, external): a problem is a local file that is missing or outside ``root`` (it would break
    when the folder is handed over), or a ``#fragment`` its page lacks; external are http(s)/mailto links (to
    papers and projects: a reader's browser fetches them, the test does not). ``javascript:``, ``data:``,
    ``blob:`` and ``about:`` URLs are ignored.
    """
    root = root.resolve()
    problems, external = [], []
    for href in links:
        parts = urlsplit(href)
        if parts.scheme in ("http", "https", "mailto"):
            external.append(href)
            continue
        if parts.scheme in ("javascript", "data", "blob", "about"):  # embedded or scripted: nothing to resolve
            continue
        if parts.scheme != "file":
            problems.append(f"{href}: neither a local file nor a web link")
            continue
        target = Path(unquote(parts.path))
        if not target.exists():
            problems.append(f"{href}: no such file")
            continue
        if not target.resolve().is_relative_to(root):
            problems.append(f"{href}: outside the report folder {root}")
            continue
        if parts.fragment and target.suffix in (".html", ".htm") and unquote(parts.fragment) not in page_ids(target):
            problems.append(f"{href}: no element with id {unquote(parts.fragment)!r} in {target.name}")
    return problems, external


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.srcs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "a" and a.get("href") is not None:
            self.hrefs.append(a["href"] or "")
        elif tag in ("img", "source", "script") and a.get("src"):
            self.srcs.append(a["src"] or "")
        elif tag == "link" and a.get("href"):
            self.srcs.append(a["href"] or "")


def static_refs(path: Path) -> tuple[list[str], list[str]]:
    """The links (``a href``) and loaded resources (``img``/``source``/``script src``, ``link href``) of an HTML
    file, resolved against its ``file://`` URL as a browser would: the same checks without opening it."""
    parser = _Refs()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    base = path.resolve().as_uri()
    return [urljoin(base, h) for h in parser.hrefs], [urljoin(base, s) for s in parser.srcs]


def local_pages(links: list[str], root: Path) -> list[Path]:
    """The distinct HTML files under ``root`` that ``links`` point to, in first-link order."""
    root = root.resolve()
    seen: dict[Path, None] = {}
    for href in links:
        parts = urlsplit(href)
        if parts.scheme != "file":
            continue
        target = Path(unquote(parts.path))
        if target.suffix in (".html", ".htm") and target.is_file() and target.resolve().is_relative_to(root):
            seen.setdefault(target.resolve(), None)
    return list(seen)


# ------------------------------------------------------------------------------------------------- triage

# The triage table: ``table#triage``, else the table with the most image rows (an overview's short tables of
# mistakes link to images too). Its rows: a ``tr`` with ``data-id``, or whose first link to an image page names the
# image (``images/<id>.html``, or ``images/<group>.html#<id>``). ``visible`` says whether the reader sees the row.
_ROWS = r"""() => {
  const rowId = tr => {
    if (tr.dataset.id) return tr.dataset.id;
    for (const a of tr.querySelectorAll('a[href]')) {
      const m = a.getAttribute('href').match(/(?:^|\/)images\/([^\/#?]+)\.html?(?:#([^?]*))?$/);
      if (m) return decodeURIComponent(m[2] || m[1]);
    }
    return null;
  };
  const seen = r => r.checkVisibility({visibilityProperty: true});
  const rowsOf = t => Array.from(t.rows).map(tr => [rowId(tr), seen(tr)]).filter(r => r[0]);
  const named = document.querySelector('table#triage');
  if (named) return rowsOf(named);
  let best = [];
  for (const t of document.querySelectorAll('table')) { const r = rowsOf(t); if (r.length > best.length) best = r; }
  return best;
}"""


def triage_rows(page) -> list[tuple[str, bool]]:
    """(image id, visible) of every triage-table row of the open page; empty when it has no triage table."""
    return [(str(i), bool(v)) for i, v in page.evaluate(_ROWS)]


def apply_misclassified_filter(page) -> str | None:
    """Switch the open page's triage table to its "misclassified" filter as a reader would (choose the option,
    tick the box, press the button); return what was used, or None when no such control exists."""
    for select in page.locator("select").all():
        for option in select.locator("option").all():
            text, value = option.inner_text().strip(), option.get_attribute("value")
            if FILTER_RX.search(text) or (value and FILTER_RX.search(value)):
                select.select_option(value=value if value is not None else text)
                return f"select option {text!r}"
    for role in ("radio", "checkbox", "button", "tab"):
        control = page.get_by_role(role, name=FILTER_RX)
        if control.count():
            name = control.first.inner_text().strip() or control.first.get_attribute("aria-label") or role
            if role == "checkbox":
                control.first.check()
            else:
                control.first.click()
            return f"{role} {name!r}"
    for control in page.locator("[data-filter]").all():
        if FILTER_RX.search(control.get_attribute("data-filter") or ""):
            control.click()
            return f"[data-filter={control.get_attribute('data-filter')!r}]"
    return None


def misclassified_filter_check(page) -> dict[str, Any] | None:
    """For ``Browser.visit(then=...)``: the triage rows before, the control used, the ids visible after; None
    when the page has no triage table."""
    before = triage_rows(page)
    if not before:
        return None
    control = apply_misclassified_filter(page)
    page.wait_for_timeout(100)  # a filter bound to ``input`` may debounce
    after = triage_rows(page) if control else []
    return {"rows": [i for i, _ in before], "visible_before": [i for i, v in before if v], "control": control,
            "visible_after": [i for i, v in after if v]}
