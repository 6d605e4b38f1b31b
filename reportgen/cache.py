"""Content-addressed, atomic, pickle-free tensor cache.

A key is the SHA-256 of a canonical JSON of everything the value depends on (model identity: architecture,
weights digest, preprocessing; method and its parameters; layer; target; image bytes digest) plus
``SCHEMA_VERSION``; it is computed before any work. A value is a safetensors file of named tensors and string
metadata, written under a temporary name and moved into place with ``os.replace``, so a crash never leaves a
half-written entry. Layout: ``CACHE_DIR/ab/abcdef….safetensors``. Values are numpy arrays: reading the cache
never imports torch, so a fully cached rerun does not pay for it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reportgen import failpoints
from reportgen.atomic import describe_os_error, replace_atomically, sweep
from reportgen.errors import CacheError
from reportgen.results import RunStats
from reportgen.tensorfile import write_tensors

__all__ = ["SCHEMA_VERSION", "cache_key", "TensorCache", "CacheInfo"]

SCHEMA_VERSION = 4  # 2: entries carry a checksum of their arrays; 3: input-level maps float32 (were float16);
# 4: feature maps float32 (were float16: activations past 65504 became inf)
_CHECKSUM = "reportgen.sha256"
log = logging.getLogger(__name__)


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over every array's name, dtype, shape and bytes: safetensors itself checks only the header."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def cache_key(parts: dict) -> str:
    """SHA-256 hex of ``parts`` (JSON-serializable) and the schema version, independent of key order."""
    text = json.dumps({"schema": SCHEMA_VERSION, **parts}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class CacheInfo:
    path: Path
    entries: int
    bytes: int


class TensorCache:
    """Tensors on disk by key. Counts hits, misses and writes in ``stats`` (the run's ``RunStats``)."""

    def __init__(self, root: Path, stats: RunStats | None = None):
        self.root = Path(root)
        self.stats = stats if stats is not None else RunStats()

    @property
    def hits(self) -> int:
        return self.stats.cache_hits

    @property
    def misses(self) -> int:
        return self.stats.cache_misses

    @property
    def writes(self) -> int:
        return self.stats.cache_writes

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def get(self, key: str, *, count: bool = True) -> tuple[dict[str, np.ndarray], dict[str, str]] | None:
        """(arrays, metadata) for ``key``, or None. A corrupt entry counts as a miss and is removed.

        Args:
            count: add the lookup to the run's hits and misses (the audit's second reading of a result does not).
        """
        found = self._read(key)
        if count:
            if found is None:
                self.stats.cache_misses += 1
            else:
                self.stats.cache_hits += 1
        return found

    def _read(self, key: str) -> tuple[dict[str, np.ndarray], dict[str, str]] | None:
        from safetensors import safe_open

        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="np") as f:
                arrays = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
                meta = dict(f.metadata() or {})
            if meta.pop(_CHECKSUM, None) != _checksum(arrays):
                raise ValueError("checksum mismatch")
        except Exception:  # a truncated, altered or foreign file: recompute rather than use or fail on it
            log.warning("cache entry %s is corrupt; recomputing it", path)
            path.unlink(missing_ok=True)
            return None
        return arrays, meta

    def has(self, key: str) -> bool:
        return self._path(key).is_file()

    def put(self, key: str, arrays: dict[str, np.ndarray], meta: dict[str, str] | None = None) -> None:
        """Store ``arrays`` atomically under ``key`` (each written as its own compact contiguous copy)."""
        compact = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
        stored = {k: str(v) for k, v in (meta or {}).items()}
        stored[_CHECKSUM] = _checksum(compact)
        try:
            replace_atomically(self._path(key), lambda tmp: write_tensors(tmp, compact, stored))
        except OSError as exc:
            raise CacheError(f"cannot write cache entry in {self.root}: {describe_os_error(exc)}") from exc
        self.stats.cache_writes += 1
        failpoints.reached("cache-put")

    def sweep(self) -> int:
        """Remove the temporaries of writers killed mid-write (a live concurrent run's are kept); how many."""
        if not self.root.is_dir():
            return 0
        return sum(sweep(sub) for sub in self.root.iterdir() if sub.is_dir())

    def info(self) -> CacheInfo:
        entries = 0
        size = 0
        if self.root.is_dir():
            for path in self.root.glob("??/[!.]*.safetensors"):
                entries += 1
                size += path.stat().st_size
        return CacheInfo(self.root, entries, size)

    def clear(self) -> int:
        """Remove every entry (only files this cache wrote); return how many."""
        removed = 0
        if not self.root.is_dir():
            return 0
        for sub in self.root.glob("??"):
            if sub.is_dir() and all(p.suffix == ".safetensors" for p in sub.iterdir()):
                removed += sum(1 for _ in sub.iterdir())
                shutil.rmtree(sub)
        return removed
