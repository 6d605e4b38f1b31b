"""Render the report context into one self-contained HTML file, and print that HTML to PDF.

The context is plain, JSON-serializable data built elsewhere; the template only reads it. The HTML is one file
(CSS inlined into a ``<style>`` element) plus the assets folder it links to with relative URLs, so it opens from
``file://`` with no network. The PDF is printed from the same HTML by WeasyPrint, in a child process
(``python -m reportgen.pdf``) so that WeasyPrint's memory use and any crash stay out of the main run.

This module never imports WeasyPrint, torch or matplotlib.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, urlsplit

import jinja2
from markupsafe import Markup

from reportgen import failpoints
from reportgen.atomic import temp_file, write_text_atomically
from reportgen.errors import RenderError
from reportgen.names import readable

__all__ = ["render_html", "render_pdf", "PdfJob"]

log = logging.getLogger(__name__)

TEMPLATE_PACKAGE = "reportgen.templates"
TEMPLATE_NAME = "report.html.j2"
CSS_NAME = "report.css"
HTML_NAME = "report.html"
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


FILTERS: dict[str, Callable[..., Any]] = {
    "relurl": _relurl,
    "pct": _pct,
    "bar_width": _bar_width,
    "intcomma": _intcomma,
    "duration": _duration,
    "dims": _dims,
    "joinstr": _join,
}


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader(TEMPLATE_PACKAGE, "."),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(FILTERS)
    env.globals["fit"] = _fit
    return env


def _read_css() -> str:
    return resources.files(TEMPLATE_PACKAGE).joinpath(CSS_NAME).read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------------


def render_html(context: dict, out_dir: Path) -> Path:
    """Render ``templates/report.html.j2`` with ``context`` into ``out_dir/report.html`` and return that path.

    Autoescaping is on and undefined names are errors (``StrictUndefined``): a missing key raises ``RenderError``
    naming it. ``report.css`` is inlined into a ``<style>`` element; asset paths in the context (``image``,
    ``thumb``, ``maps_file``) must be relative to ``out_dir`` and are emitted as percent-encoded relative URLs.
    The file is written atomically, as UTF-8: any lone surrogate left in a value (the undecodable bytes of a file
    name, e.g. in the config's or data folder's path) is shown as ``\\xNN`` instead of failing the write.
    """
    out_dir = Path(out_dir)
    try:
        env = _environment()
        template = env.get_template(TEMPLATE_NAME)
        css = _read_css()
    except (OSError, jinja2.TemplateError) as exc:
        raise RenderError(f"cannot load the report template {TEMPLATE_PACKAGE}/{TEMPLATE_NAME}: {exc}") from exc

    try:
        html = template.render(**context, inline_css=Markup(css))
    except RenderError as exc:
        raise RenderError(f"rendering {TEMPLATE_NAME} failed: {exc}") from exc
    except jinja2.UndefinedError as exc:
        raise RenderError(f"rendering {TEMPLATE_NAME} failed: the report context lacks a value: {exc}") from exc
    except jinja2.TemplateError as exc:
        raise RenderError(f"rendering {TEMPLATE_NAME} failed: {exc}") from exc
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise RenderError(
            f"rendering {TEMPLATE_NAME} failed on a malformed context value: {type(exc).__name__}: {exc}"
        ) from exc

    html_path = out_dir / HTML_NAME
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomically(html_path, readable(html))  # a path or name with undecodable bytes shows them as \xNN
    except OSError as exc:
        raise RenderError(f"cannot write {html_path}: {exc}") from exc
    return html_path


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
