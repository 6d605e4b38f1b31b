"""What a run was made of, so it can be repeated and its differences named: the manifest's ``provenance`` block.

``provenance(cfg, card, records, stats)`` records the resolved config (every key, defaults filled in, paths
absolute) and its SHA-256, the weights (the file's SHA-256 and the digest of the loaded values the cache keys use),
a dataset fingerprint (every image file with its SHA-256, and one hash over the list), the versions of Python and
the libraries, the device, dtype and determinism settings, the seeds, and the per-stage timings and cache counts.
``report.redact_paths: true`` leaves every absolute path out (the config's paths then show relative to their
folder's name); ``reportgen rerun`` then needs ``--data``.

``differences(old, new)`` lists, in words, what differs between two provenance blocks: config keys, weights, data
files added/removed/changed, versions. ``config_text(block)`` turns a recorded config back into YAML for a rerun.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reportgen import __version__
from reportgen.config import RunConfig
from reportgen.images import ImageRecord
from reportgen.modelcard import ModelCard
from reportgen.results import RunStats

__all__ = ["provenance", "resolved_config", "config_text", "differences", "dataset_fingerprint", "file_sha256"]

_LIBRARIES = ("torch", "torchvision", "timm", "numpy", "pillow", "safetensors", "weasyprint", "jinja2", "matplotlib")


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def resolved_config(cfg: RunConfig) -> dict[str, Any]:
    """Every config key of ``cfg`` with its resolved value, in the shape of a config file (loadable again): read
    through the config table (``config.SECTIONS``), as ``validate --explain`` reads it."""
    from reportgen.config import SECTIONS

    out: dict[str, Any] = {}
    for section in SECTIONS:
        obj: Any = cfg
        node = out
        try:
            for part in section.name.split(".") if section.name else ():
                obj = getattr(obj, part)
                node = node.setdefault(part, {})
            for f in section.fields:
                if f.form == "section":
                    continue
                value = getattr(obj, f.name)
                if f"{section.name}.{f.name}" == "cams.target" and value == "class":  # stored as kind + index
                    value = cfg.cams.class_index
                if value is not None:
                    node[f.name] = _plain(value)
        except AttributeError:  # a section whose dataclass is shaped otherwise: its keys are left at their defaults
            continue
    if cfg.cams.params:
        out.setdefault("cams", {})["params"] = _plain({m: dict(p) for m, p in cfg.cams.params.items()})
    return out


def _redacted(config: dict[str, Any]) -> dict[str, Any]:
    """The config with each absolute path cut to its last part (the folder's or file's name)."""

    def cut(value: Any) -> Any:
        if isinstance(value, str) and value.startswith("/"):
            return Path(value).name
        if isinstance(value, dict):
            return {k: cut(v) for k, v in value.items()}
        if isinstance(value, list):
            return [cut(v) for v in value]
        return value

    return cut(config)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dataset_fingerprint(records: Sequence[ImageRecord]) -> dict[str, Any]:
    """Every image file (path under the data folder) with its SHA-256, and one SHA-256 over the sorted list."""
    files = sorted([r.rel, r.digest] for r in records)
    h = hashlib.sha256(json.dumps(files, separators=(",", ":")).encode())
    return {"files": len(files), "sha256": h.hexdigest(), "list": files}


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version(), "reportgen": __version__}
    for name in _LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _determinism(cfg: RunConfig) -> dict[str, Any]:
    flags: dict[str, Any] = {"channels_last": cfg.run.channels_last, "batch_size": cfg.run.batch_size,
                             "fixed_batch_groups": True}
    torch = sys.modules.get("torch")  # a fully cached run never imports torch: then nothing of it ran
    if torch is not None:
        flags.update({"deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
                      "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
                      "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
                      "float32_matmul_precision": torch.get_float32_matmul_precision()})
    return flags


def _seeds(cfg: RunConfig) -> dict[str, int]:
    seeds = {f"cams.params.{m}.{k}": v for m, p in cfg.cams.params.items() for k, v in p.items()
             if "seed" in k and isinstance(v, int)}
    seeds["filters.seed"] = cfg.filters.seed
    seeds["metrics.seed"] = cfg.metrics.seed
    return seeds


def _dtypes(cfg: RunConfig) -> dict[str, Any]:
    bf16 = sorted(m for m, p in cfg.cams.params.items() if p.get("bf16"))
    return {"model": "float32", "maps": "float32", "bf16_methods": bf16, "bf16_metrics": cfg.metrics.bf16}


def provenance(cfg: RunConfig, card: ModelCard, records: Sequence[ImageRecord], stats: RunStats) -> dict[str, Any]:
    """The provenance block of ``manifest.json`` (see the module docstring)."""
    config = resolved_config(cfg)
    # what the results are made of: where they go (run.output, run.cache_dir) is left out of the hash
    what = {**config, "run": {k: v for k, v in config.get("run", {}).items() if k not in ("output", "cache_dir")}}
    config_hash = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()
    weights: dict[str, Any] = {"values_sha256": card.digest, "source": card.weights_source}
    if cfg.model.weights is not None:
        try:
            weights["file_sha256"] = file_sha256(cfg.model.weights)
        except OSError as exc:
            weights["file_sha256"] = None
            weights["file_error"] = exc.strerror or str(exc)
    block = {
        "config": _redacted(config) if cfg.report.redact_paths else config,
        "config_file": Path(cfg.path).name if cfg.report.redact_paths else str(cfg.path),
        "config_sha256": config_hash,
        "weights": weights,
        "dataset": dataset_fingerprint(records),
        "versions": _versions(),
        "platform": {"system": platform.system(), "machine": platform.machine()},
        "device": stats.device,
        "dtypes": _dtypes(cfg),
        "determinism": _determinism(cfg),
        "seeds": _seeds(cfg),
        "timings": {k: round(v, 3) for k, v in stats.seconds.items()},
        "cache": {"hits": stats.cache_hits, "misses": stats.cache_misses, "writes": stats.cache_writes,
                  "figures_restored": stats.figures_restored},
        "redacted": cfg.report.redact_paths,
    }
    if cfg.report.redact_paths:
        block["weights"] = {k: v for k, v in weights.items() if k != "source"}
    return block


def config_text(block: dict[str, Any]) -> str:
    """The recorded config as YAML, ready for ``config.load_config(text=...)``."""
    import yaml

    return yaml.safe_dump(block["config"], sort_keys=False, allow_unicode=True)


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two provenance blocks, one line each, in words (empty: nothing that is recorded)."""
    lines = []
    a, b = _flat(old.get("config", {})), _flat(new.get("config", {}))
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key) and key != "run.output":  # where the report goes does not change it
            lines.append(f"config {key}: {a.get(key)!r} -> {b.get(key)!r}")
    wa, wb = old.get("weights", {}), new.get("weights", {})
    if wa.get("values_sha256") != wb.get("values_sha256"):
        lines.append(f"weights: values {str(wa.get('values_sha256'))[:12]} -> {str(wb.get('values_sha256'))[:12]}")
    elif wa.get("file_sha256") != wb.get("file_sha256"):
        lines.append("weights: the file differs, the values loaded from it do not")
    da, db = old.get("dataset", {}), new.get("dataset", {})
    if da.get("sha256") != db.get("sha256"):
        fa, fb = dict(map(tuple, da.get("list", []))), dict(map(tuple, db.get("list", [])))
        added, removed = sorted(set(fb) - set(fa)), sorted(set(fa) - set(fb))
        changed = sorted(k for k in set(fa) & set(fb) if fa[k] != fb[k])
        for what, names in (("added", added), ("removed", removed), ("changed", changed)):
            if names:
                shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
                lines.append(f"data: {len(names)} file(s) {what}: {shown}")
    va, vb = old.get("versions", {}), new.get("versions", {})
    for name in sorted(set(va) | set(vb)):
        if va.get(name) != vb.get(name):
            lines.append(f"version of {name}: {va.get(name)} -> {vb.get(name)}")
    used = [d for d in (old.get("device"), new.get("device")) if d and not str(d).startswith("not used")]
    if len(used) == 2 and used[0] != used[1]:
        lines.append(f"device: {old.get('device')} -> {new.get('device')}")
    return lines
