"""Print one HTML file to PDF with WeasyPrint: ``python -m reportgen.pdf REPORT.html OUT.pdf``.

Run as a child process by ``reportgen.report.render_pdf`` so WeasyPrint's memory and any crash stay out of the
main run. Writes OUT.pdf directly (the parent hands it a temp name and moves it into place). Exits 0 on success,
1 on any failure with a one-line error on stderr (WeasyPrint's own warnings may come before it).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from urllib.parse import quote, urlsplit
from urllib.request import url2pathname

from reportgen.atomic import die_with_parent

__all__ = ["main"]

USAGE = "usage: python -m reportgen.pdf REPORT.html OUT.pdf  (or --wait, then go<TAB>HTML<TAB>OUT on stdin)"


def _error(message: str) -> int:
    print("reportgen.pdf: error: " + " ".join(str(message).split()), file=sys.stderr)
    return 1


def _relative_file_links(document, pdf_dir: Path) -> None:
    """Rewrite links to local files (assets, raw maps) as URLs relative to the PDF's folder.

    WeasyPrint resolves ``<a href="assets/...">`` to an absolute ``file://`` URL, which would write this machine's
    folder layout into the PDF and break when the report folder moves. In-document links are left alone.
    """
    for page in document.pages:
        links = []
        for link_type, target, rectangle, box in page.links:
            if link_type == "external" and isinstance(target, str) and target.startswith("file:"):
                try:
                    rel = os.path.relpath(url2pathname(urlsplit(target).path), pdf_dir)
                except ValueError:  # another drive (Windows): drop the link rather than leak the path
                    continue
                target = quote(Path(rel).as_posix(), safe="/")
            links.append((link_type, target, rectangle, box))
        page.links[:] = links


def _confined_fetcher(root: Path):
    """A WeasyPrint URL fetcher that reads only files inside ``root`` (the report's folder) and data: URIs.

    A report must never make the printer fetch from the network or read files elsewhere on the machine, even
    if an image path or a label in the HTML points there: such a URL is refused (WeasyPrint logs the error and
    prints the alt text instead).
    """
    from weasyprint.urls import URLFetcher

    class _Confined(URLFetcher):
        def fetch(self, url, headers=None):
            if url.startswith("data:"):
                return super().fetch(url, headers)
            parts = urlsplit(url)
            if parts.scheme == "file":
                path = Path(url2pathname(parts.path)).resolve()
                if path == root or root in path.parents:
                    return super().fetch(url, headers)
            raise ValueError(f"refused to load {url}: a report reads only files inside {root}")

    return _Confined()


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    # --wait: import WeasyPrint first, then read "go<TAB>HTML<TAB>OUT" from stdin. The parent starts the child
    # early this way, so the interpreter start and the import overlap with the run instead of following it.
    wait = args == ["--wait"]
    if not wait and len(args) != 2:
        return _error(f"expected 2 arguments, got {len(args)}; {USAGE}")
    html = Path(args[0]) if not wait else Path()
    target = Path(args[1]) if not wait else Path()
    if not wait and not html.is_file():
        return _error(f"HTML file {html} does not exist")

    # WeasyPrint logs problems (missing images, unsupported CSS) as warnings; send them to stderr, one per line,
    # so the parent can show them if printing fails.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("weasyprint %(levelname)s: %(message)s"))
    wp_log = logging.getLogger("weasyprint")
    wp_log.addHandler(handler)
    wp_log.setLevel(logging.WARNING)
    wp_log.propagate = False

    try:
        import weasyprint
    except Exception as exc:  # noqa: BLE001 - reported as one line to the parent
        return _error(f"cannot import weasyprint: {type(exc).__name__}: {exc}")

    if wait:
        die_with_parent()
        order = sys.stdin.readline().rstrip("\n").split("\t")
        if len(order) != 3 or order[0] != "go":
            return 3  # the parent cancelled (its run failed or printed no PDF): nothing to print
        html, target = Path(order[1]), Path(order[2])
        if not html.is_file():
            return _error(f"HTML file {html} does not exist")
    try:
        base_url = html.resolve().parent.as_uri() + "/"
        fetcher = _confined_fetcher(html.resolve().parent)
        document = weasyprint.HTML(filename=str(html), base_url=base_url, media_type="print",
                                   url_fetcher=fetcher).render(
            optimize_images=False
        )
        _relative_file_links(document, target.resolve().parent)
        document.write_pdf(str(target), optimize_images=False)
    except Exception as exc:  # noqa: BLE001 - reported as one line to the parent
        return _error(f"printing {html} failed: {type(exc).__name__}: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
