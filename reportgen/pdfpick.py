"""Which images the summary PDF shows (``report.pdf_images``, ``report.pdf_max_images``).

Each named list ranks the images one way; the summary takes from the lists in turn (the first of each, then the
second of each, ...) until it holds ``pdf_max_images`` images, each image once, with the reason it was chosen:

* ``misclassified``: top-1 differs from the label, the most confident mistakes first;
* ``least_confident``: the lowest top-1 probability first;
* ``lowest_trust``: the least trustworthy maps first: the per-image ``trust`` the audit gives (insertion − deletion
  AUC, or ROAD LeRF − MoRF, or increase − average drop: ``audit._TRUST``); left out when no entry carries one;
* ``largest_change``: the largest change against a compared run first; needs a per-image ``change`` number (or a
  ``change`` metric); left out when no entry carries one;
* ``sample``: a seeded random sample (``SAMPLE_SEED``: the same images on every run over the same folder).
"""

from __future__ import annotations

import random
from typing import Any

__all__ = ["pick_pdf_images", "SAMPLE_SEED"]

SAMPLE_SEED = 20261202


def _prob(entry: dict) -> float:
    preds = entry.get("predictions") or []
    return float(preds[0]["prob"]) if preds else 0.0


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _change(entry: dict) -> float | None:
    value = _number(entry.get("change"))
    return value if value is not None else _number((entry.get("metrics") or {}).get("change"))


def _ranked(kind: str, images: list[dict]) -> tuple[list[tuple[dict, str]], str | None]:
    """The images of one list in rank order with the reason text; or why the list is left out."""
    if kind == "misclassified":
        wrong = sorted((e for e in images if e.get("correct") is False), key=lambda e: (-_prob(e), e["id"]))
        return [(e, f"misclassified (top-1 {_prob(e):.0%})") for e in wrong], None
    if kind == "least_confident":
        return [(e, f"least confident (top-1 {_prob(e):.0%})")
                for e in sorted(images, key=lambda e: (_prob(e), e["id"]))], None
    if kind == "lowest_trust":
        scored = sorted(((e, _number(e.get("trust"))) for e in images if _number(e.get("trust")) is not None),
                        key=lambda ev: (ev[1], ev[0]["id"]))
        if not scored:
            return [], "lowest_trust: no image carries a trust score (metrics.compute: deletion and insertion, ...)"
        return [(e, f"lowest trust: {e.get('trust_what', 'trust')} {v:.3g}") for e, v in scored], None
    if kind == "largest_change":
        changed = sorted(((e, _change(e)) for e in images if _change(e) is not None),
                         key=lambda ev: (-abs(ev[1]), ev[0]["id"]))
        if not changed:
            return [], "largest_change: no comparison with another run"
        return [(e, f"largest change ({v:+.3g})") for e, v in changed], None
    if kind == "sample":
        ids = sorted(e["id"] for e in images)
        by_id = {e["id"]: e for e in images}
        order = random.Random(SAMPLE_SEED).sample(ids, len(ids))
        return [(by_id[i], "random sample") for i in order], None
    return [], f"{kind}: not a known list"


def pick_pdf_images(images: list[dict], kinds: tuple[str, ...] | list[str], max_images: int) -> dict[str, Any]:
    """The summary's images: ``{"images": [{id, reason}] in report order, "left_out": [why a list is not used]}``.

    The images keep the report's (folder) order in the PDF; ``reason`` says which list chose each.
    """
    lists, left_out = [], []
    for kind in kinds:
        ranked, why = _ranked(kind, images)
        if why:
            left_out.append(why)
        elif ranked:
            lists.append(ranked)
    chosen: dict[str, str] = {}
    at = [0] * len(lists)  # each list's next image: an image another list chose already does not use up a turn
    while len(chosen) < max_images and any(a < len(r) for a, r in zip(at, lists, strict=True)):
        for n, ranked in enumerate(lists):
            while at[n] < len(ranked) and ranked[at[n]][0]["id"] in chosen:
                at[n] += 1
            if at[n] < len(ranked) and len(chosen) < max_images:
                entry, reason = ranked[at[n]]
                chosen[entry["id"]] = reason
                at[n] += 1
    order = [e["id"] for e in images if e["id"] in chosen]
    return {"images": [{"id": i, "reason": chosen[i]} for i in order], "left_out": left_out}
