"""What ``reportgen compare`` reads from the two runs' maps files: each common image's change of prediction (from
the stored logits) and the similarity of its maps (``reportgen.similarity`` at input resolution). Numbers only;
``reportgen.compare`` (its module docstring defines them) assembles them.
"""

from __future__ import annotations

import math
from typing import Any

from reportgen.api import Run, _index

__all__ = ["common_size", "map_pairs", "read_and_compare", "read_map", "pair_summary", "SKIPPED_METHODS"]

SKIPPED_METHODS = ("dff",)  # concept maps: K concepts of one batch, no class to match between runs
_CHUNK = 32  # images whose maps are held at input resolution at once


def common_size(a: Run, b: Run) -> tuple[int, int]:
    """The (H, W) the maps are compared at: the network input size, the larger of the two runs' per side."""
    sizes = []
    for run in (a, b):
        size = run.manifest.get("model", {}).get("input_size") or [224, 224]
        sizes.append((int(size[0]), int(size[1])))
    return max(s[0] for s in sizes), max(s[1] for s in sizes)


def map_pairs(a: Run, b: Run) -> dict[str, Any]:
    """Which (method, layer in A, layer in B) to compare, and what is listed as not compared."""
    la, lb = a._first_layout(), b._first_layout()
    pairs: list[tuple[str, str, str]] = []
    not_compared: list[dict[str, str]] = []
    methods = [m for m in a.methods if m != "feature_maps"] + [m for m in b.methods
                                                                if m != "feature_maps" and m not in a.methods]
    for method in methods:
        if method in SKIPPED_METHODS:
            not_compared.append({"method": method, "layer": "", "run": "both" if method in la and method in lb
                                 else ("A" if method in la else "B"), "reason": "concept maps: no class to match"})
            continue
        if method not in lb or method not in la:
            run, owner, layers = ("A", a, la[method]) if method in la else ("B", b, lb[method])
            layers = [x for x in owner.layers if x in layers] + ([""] if "" in layers else [])  # the run's order
            not_compared.append({"method": method, "layer": ", ".join(x or "input" for x in layers), "run": run,
                                 "reason": f"the method is only in run {run}"})
            continue
        order_a = [x for x in a.layers if x in la[method]] + ([""] if "" in la[method] else [])
        order_b = [x for x in b.layers if x in lb[method]] + ([""] if "" in lb[method] else [])
        common = [x for x in order_a if x in order_b]
        if not common and len(order_a) == 1 and len(order_b) == 1 and "" not in (order_a[0], order_b[0]):
            pairs.append((method, order_a[0], order_b[0]))  # two architectures: the method's one layer in each
            continue
        pairs.extend((method, x, x) for x in common)
        for run, order in (("A", order_a), ("B", order_b)):
            for x in order:
                if x not in common:
                    not_compared.append({"method": method, "layer": x, "run": run,
                                         "reason": f"the layer is only in run {run}"})
    return {"pairs": pairs, "not_compared": not_compared}


def _softmax(logits) -> Any:
    import numpy as np

    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def _prob(p, c: int) -> float:
    return float(p[c]) if 0 <= c < len(p) else 0.0


def _change(path: str, ea: dict, eb: dict, pa, pb) -> dict[str, Any]:
    """How one image's prediction changed from A to B (the probabilities from the full softmax of the logits)."""
    top_a, top_b = ea["predictions"][0], eb["predictions"][0]
    ca, cb = int(top_a["class_index"]), int(top_b["class_index"])
    d_a, d_b = _prob(pb, ca) - _prob(pa, ca), _prob(pb, cb) - _prob(pa, cb)
    return {"path": path, "id_a": ea["id"], "id_b": eb["id"], "label": ea.get("label"),
            "top_a": ca, "top_b": cb, "name_a": top_a["class_name"], "name_b": top_b["class_name"],
            "p_a": {"top_a": _prob(pa, ca), "top_b": _prob(pa, cb)}, "p_b": {"top_a": _prob(pb, ca), "top_b": _prob(pb, cb)},
            "delta_top_a": d_a, "delta_top_b": d_b, "delta_p": max(abs(d_a), abs(d_b)), "flipped": ca != cb,
            "correct_a": ea.get("correct"), "correct_b": eb.get("correct")}


def read_map(handle, layout: dict, method: str, layer: str):
    """Column 0 of the stored map of ``method`` at ``layer`` (``""``: the input) and its target, from an open maps
    file whose keys ``layout`` indexes (``reportgen.api._index``)."""
    key, targets_key = layout[method][layer]
    maps, targets = handle.get_tensor(key), handle.get_tensor(targets_key)
    return maps[0], int(targets[0])


def read_and_compare(a: Run, b: Run, pairs: list[tuple[dict, dict]], map_pairs: list[tuple[str, str, str]],
                      size: tuple[int, int]) -> tuple[list[dict], list[dict]]:
    """Per common image its prediction change; per image and compared (method, layer) the maps' similarity."""
    import torch

    from reportgen.similarity import at_size, spearman, ssim

    changes: list[dict] = []
    rows: list[dict] = []
    for start in range(0, len(pairs), _CHUNK):
        chunk = pairs[start:start + _CHUNK]
        stacks: dict[tuple[str, str, str], tuple[list, list, list]] = {p: ([], [], []) for p in map_pairs}
        for ea, eb in chunk:
            info_a, info_b = a.image(ea["id"]), b.image(eb["id"])
            with a._open(a.folder / info_a.maps_file) as fa, b._open(b.folder / info_b.maps_file) as fb:
                changes.append(_change(ea["path"], ea, eb, _softmax(fa.get_tensor("logits")),
                                       _softmax(fb.get_tensor("logits"))))
                layout_a, layout_b = _index(set(fa.keys())), _index(set(fb.keys()))
                for p in map_pairs:
                    method, layer_a, layer_b = p
                    ma, ta = read_map(fa, layout_a, method, layer_a)
                    mb, tb = read_map(fb, layout_b, method, layer_b)
                    stacks[p][0].append(at_size(torch.from_numpy(ma.copy())[None], size)[0])
                    stacks[p][1].append(at_size(torch.from_numpy(mb.copy())[None], size)[0])
                    stacks[p][2].append((ea, ta, tb))
        for (method, layer_a, layer_b), (ma, mb, meta) in stacks.items():
            if not ma:
                continue
            rho, s = spearman(torch.stack(ma), torch.stack(mb)), ssim(torch.stack(ma), torch.stack(mb))
            for (entry, ta, tb), r, q in zip(meta, rho.tolist(), s.tolist(), strict=True):
                rows.append({"path": entry["path"], "id_a": entry["id"], "method": method, "layer_a": layer_a,
                             "layer_b": layer_b, "target_a": ta, "target_b": tb,
                             "spearman": None if math.isnan(r) else r, "ssim": None if math.isnan(q) else q})
    return changes, rows


def pair_summary(pair: tuple[str, str, str], rows: list[dict]) -> dict[str, Any]:
    rho = [r["spearman"] for r in rows if r["spearman"] is not None]
    s = [r["ssim"] for r in rows if r["ssim"] is not None]
    return {"method": pair[0], "layer_a": pair[1], "layer_b": pair[2], "n": len(rows),
            "spearman_mean": sum(rho) / len(rho) if rho else None, "spearman_min": min(rho) if rho else None,
            "ssim_mean": sum(s) / len(s) if s else None, "ssim_min": min(s) if s else None,
            "undefined": len(rows) - len(rho)}
