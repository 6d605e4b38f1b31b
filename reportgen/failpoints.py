"""Named points where a crash-safety test can make the process die as if killed with SIGKILL.

``REPORTGEN_FAILPOINT=NAME[:N][@RANK]`` in the environment kills the process (``SIGKILL``: no cleanup, no
``finally``) the N-th time (default: the first) it reaches the point ``NAME`` (under torchrun: only the process of
rank ``RANK``, when given). Unset, ``reached`` costs one dictionary
lookup. The points are listed in ``POINTS``; tests/test_crash.py kills a real ``reportgen run`` at each and
checks that the rerun reuses every finished cache entry and writes the same report.
"""

from __future__ import annotations

import os
import signal

__all__ = ["POINTS", "reached"]

POINTS = {
    "cache-put": "right after a result was written to the cache (compute is under way)",
    "draw": "right after an image's figures were drawn into the staging folder",
    "pdf": "while the WeasyPrint child prints the PDF (the order was sent, the answer not read)",
    "publish": "between moving the old report aside and moving the new one into place (non-Linux path)",
}
_seen: dict[str, int] = {}


def reached(name: str) -> None:
    """Die here, like ``kill -9``, if ``REPORTGEN_FAILPOINT`` names this point and this is the chosen visit."""
    spec = os.environ.get("REPORTGEN_FAILPOINT")
    if not spec:
        return
    spec, _, rank = spec.partition("@")
    if rank and os.environ.get("RANK", "0") != rank:
        return
    want, _, nth = spec.partition(":")
    if want != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
