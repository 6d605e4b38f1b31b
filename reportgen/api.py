"""The Python API: run a config from a script or notebook, open a finished run and read its raw maps.

    import reportgen

    result = reportgen.run("audit.yaml", output="outputs/audit", force=True)
    run = reportgen.open_run(result.output)
    cam, targets = run.maps(run.images[0], "gradcam", layer="layer4")  # (T, h, w) float32, T target classes

``run`` is the run the CLI makes (the same validation, outputs and exceptions); ``open_run`` reads what a run
wrote (docs/FORMAT.md) without torch: ``manifest.json`` at once, each ``maps/<id>.safetensors`` only when its maps
are asked for. Every error is a ``reportgen.errors`` exception, the one the CLI turns into its exit code.
See docs/API.md.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reportgen.errors import ConfigError, DataError, UsageError
from reportgen.results import FORMAT_VERSION  # the newest output-folder format (docs/FORMAT.md) this reader knows

if TYPE_CHECKING:  # numpy and the runner are imported when used: ``import reportgen`` stays light
    import numpy as np

    from reportgen.config import RunConfig
    from reportgen.runner import RunResult

__all__ = ["FORMAT_VERSION", "Prediction", "ImageInfo", "SkippedImage", "Run", "run", "open_run"]

FEATURE_MAPS = "feature_maps"  # the pseudo-method whose "maps" are an image's top feature-map channels
_DICT_NAME = "<dict>"
_PLAIN = (str, int, float, bool, type(None))


# ------------------------------------------------------------------------------------------------- running


def run(config: str | os.PathLike | Mapping[str, Any], *, name: str | None = None,
        output: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
        data: str | os.PathLike | None = None, device: str | None = None, force: bool = False,
        progress: bool = False) -> RunResult:
    """Run a config end to end, as ``reportgen run`` does, and return where its outputs are.

    Args:
        config: a YAML file, or the same content as a dict (relative paths in it are relative to the working
            folder, or to the folder of ``name``).
        name: for a dict: the file name its error messages give (default ``<dict>``), e.g. ``audit.yaml``; its
            stem is the default title and output folder name (``outputs/<stem>``), as a file's is.
        output, cache_dir, data, device: override ``run.output``, ``run.cache_dir``, ``data.path``,
            ``run.device`` (the CLI's ``--output``, ``--cache-dir``, ``--data``, ``--device``).
        force: replace a finished run in the output folder (``--force``); only a folder reportgen wrote.
        progress: show progress bars (the CLI shows them unless ``--quiet``).

    Returns:
        ``reportgen.runner.RunResult``: ``output``, ``html``, ``pdf`` (None without one), ``manifest``, ``stats``.

    Raises:
        ConfigError: the config is invalid; ``problems`` holds every problem, one ``FILE:LINE: key: what`` line
            each (``<dict>: key: what`` for a dict, which has no lines).
        UsageError, DataError, ModelError, MethodError, CacheError, RenderError: as the CLI (exit codes 2 and 1).
    """
    if data is not None and not Path(data).is_dir():
        raise UsageError(f"data: folder not found: {Path(data).resolve()}")
    label = _label(config, name)
    try:
        cfg = _load(config, name, data).with_overrides(output=output, cache_dir=cache_dir, device=device)
        from reportgen.runner import run as run_stages  # torch and the drawing code: only now

        return run_stages(cfg, force=force, progress=progress)
    except ConfigError as exc:
        if label is None:
            raise
        raise _relabelled(exc, label) from exc


def _label(config: object, name: str | None) -> str | None:
    """What a dict config is called in messages; None for a file (its messages name it with its lines)."""
    if isinstance(config, Mapping):
        return str(Path(name)) if name else _DICT_NAME
    if name is not None:
        raise UsageError("name: only a dict config takes a name (a file is named by its path)")
    return None


def _load(config: object, name: str | None, data: str | os.PathLike | None) -> RunConfig:
    from reportgen.config import load_config

    data_dir = Path(data) if data is not None else None
    if isinstance(config, str | os.PathLike):
        return load_config(Path(config), data_dir=data_dir)
    if not isinstance(config, Mapping):
        raise UsageError(f"config: expected a YAML file's path or a dict, got {type(config).__name__}")
    import yaml

    label = _label(config, name)
    text = yaml.safe_dump(_plain(config, label, ""), sort_keys=False, allow_unicode=True)
    return load_config(Path(name) if name else Path(_DICT_NAME), text=text, data_dir=data_dir)


def _plain(value: Any, label: str, dotted: str) -> Any:
    """``value`` as YAML's plain data (paths as text, tuples as lists), or a ``ConfigError`` naming the key."""
    if isinstance(value, Mapping):
        return {k: _plain(v, label, f"{dotted}.{k}" if dotted else str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, label, f"{dotted}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, _PLAIN):
        return value
    raise ConfigError(f"{label}: {dotted or 'config'}: expected text, a number, true/false, a list, a mapping "
                      f"or a path, got {type(value).__name__}")


def _relabelled(exc: ConfigError, label: str) -> ConfigError:
    """A dict config's problems without line numbers: they would count lines of a YAML text nobody wrote."""
    pattern = re.compile(rf"^{re.escape(label)}:\d+: ")
    lines = [pattern.sub(f"{label}: ", line) for line in exc.problems]
    if exc.more:  # the last line counts the problems left out; ConfigError writes it again
        lines = lines[:-1]
    return ConfigError(lines, source=label, more=exc.more)


# ------------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Prediction:
    """One of an image's top classes: ``rank`` 1 is the prediction; ``prob`` is the softmax, rounded to 4 places."""

    rank: int
    class_index: int
    class_name: str
    prob: float


@dataclass(frozen=True)
class ImageInfo:
    """One image of a run.

    Attributes:
        id: unique in the run, stable, ASCII: the name of its maps file ``maps/<id>.safetensors``.
        file: its path under the image folder (``/``-separated; undecodable bytes of a name as ``\\xNN``).
        label: its class folder, or None for an image at the folder's top.
        predictions: the top 5 classes, best first.
        correct: whether the top class is the label's class; None when the label names no class.
        maps_file: its maps file, relative to the run's folder.
        thumb: its photo as shown in the report, relative to the run's folder.
    """

    id: str
    file: str
    label: str | None
    predictions: tuple[Prediction, ...]
    correct: bool | None
    maps_file: str
    thumb: str


@dataclass(frozen=True)
class SkippedImage:
    """A file the run left out, and why (it could not be read or decoded, or its figures not written)."""

    path: str
    reason: str


# ------------------------------------------------------------------------------------------------- reading


def open_run(output_dir: str | os.PathLike) -> Run:
    """Open a finished run's output folder.

    Raises:
        UsageError: the folder is missing, is not a finished reportgen run (no ``manifest.json``, written last),
            or was written in a format newer than this reportgen reads.
        DataError: the manifest cannot be read.
    """
    folder = Path(output_dir)
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise UsageError(f"{folder} {what}: give the output folder of a finished run (its run.output)")
    path = folder / "manifest.json"
    if not path.is_file():
        raise UsageError(f"{folder} is not a finished reportgen run: it has no manifest.json (a run writes it last)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the manifest: {exc}") from exc
    if not isinstance(manifest, dict) or "reportgen_version" not in manifest or not isinstance(
            manifest.get("images"), list):
        raise UsageError(f"{path}: not a reportgen manifest (no reportgen_version or images)")
    _check_version(manifest.get("format", FORMAT_VERSION), path, manifest.get("reportgen_version"))
    try:
        return Run(folder, manifest)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # an image entry without its id, path, ...
        raise DataError(f"{path}: a damaged image entry ({type(exc).__name__}: {exc})") from exc


def _check_version(found: object, where: Path, writer: object = None) -> None:
    """Refuse a format this reader does not know: a newer one, or something that is not a version number."""
    from reportgen import __version__

    try:
        version = int(str(found))
    except ValueError:
        raise UsageError(f"{where}: unknown format {found!r}; this reportgen ({__version__}) reads format versions "
                         f"1 to {FORMAT_VERSION}") from None
    if not 1 <= version <= FORMAT_VERSION:
        by = f" by reportgen {writer}" if writer else ""
        raise UsageError(f"{where}: written in format version {version}{by}; this reportgen ({__version__}) reads "
                         f"versions 1 to {FORMAT_VERSION}: upgrade reportgen to read it")


def _image_info(entry: dict) -> ImageInfo:
    preds = tuple(Prediction(int(p["rank"]), int(p["class_index"]), str(p["class_name"]), float(p["prob"]))
                  for p in entry.get("predictions", []))
    return ImageInfo(id=entry["id"], file=entry["path"], label=entry.get("label"), predictions=preds,
                     correct=entry.get("correct"), maps_file=entry.get("maps_file", f"maps/{entry['id']}.safetensors"),
                     thumb=entry.get("thumb", ""))


def _index(keys: set[str]) -> dict[str, dict[str, tuple[str, str]]]:
    """method → layer → (map key, targets key) of a maps file's keys; ``""`` is an input-level method's layer.

    A map is a key with its ``/targets`` (``/channels`` for feature maps) beside it, so a layer name holding a
    ``/`` still parses, and keys added later (``cam/<method>/signed``) are not taken for layers.
    """
    found: dict[str, dict[str, tuple[str, str]]] = {}
    for key in sorted(keys):
        if key.startswith("cam/") and key + "/targets" in keys:
            method, _, layer = key[len("cam/"):].partition("/")
            found.setdefault(method, {})[layer] = (key, key + "/targets")
        elif key.startswith(FEATURE_MAPS + "/") and key + "/channels" in keys:
            found.setdefault(FEATURE_MAPS, {})[key[len(FEATURE_MAPS) + 1:]] = (key, key + "/channels")
    return found


def _hint(word: str, candidates: list[str]) -> str:
    """``; did you mean ...?`` with up to 3 candidates: near spellings, then those holding ``word``."""
    from reportgen.config import close_matches

    found = close_matches(word, candidates)
    found += [c for c in candidates if word and word in c and c not in found][: 3 - len(found)]
    return f"; did you mean {' or '.join(repr(f) for f in found)}?" if found else ""


class Run:
    """A finished run's output folder (``open_run``). Reads ``maps/<id>.safetensors`` lazily, one tensor at a time.

    Attributes:
        folder: the output folder.
        manifest: ``manifest.json`` as a dict (docs/FORMAT.md lists its keys); do not modify it.
    """

    def __init__(self, folder: Path, manifest: dict):
        self.folder = Path(folder)
        self.manifest = manifest
        self._images = [_image_info(e) for e in manifest["images"]]
        self._by_key: dict[str, ImageInfo] = {}
        for info in self._images:
            self._by_key.setdefault(info.file, info)
        self._by_key.update({info.id: info for info in self._images})  # an id wins over a file of the same text
        self._layout: dict[str, dict[str, tuple[str, str]]] | None = None

    def __repr__(self) -> str:
        return f"Run({str(self.folder)!r}: {len(self._images)} images, methods {', '.join(self.methods) or 'none'})"

    @property
    def images(self) -> list[ImageInfo]:
        """Every image the run rendered, in the report's order."""
        return list(self._images)

    @property
    def skipped(self) -> list[SkippedImage]:
        """The files the run left out, with the reason."""
        return [SkippedImage(str(s["path"]), str(s["reason"])) for s in self.manifest.get("skipped", [])]

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods ``maps`` serves, in the config's order (``feature_maps`` when the run drew feature maps)."""
        layout = self._first_layout()
        order = [m["name"] for m in self.manifest.get("methods", []) if isinstance(m, dict) and "name" in m]
        return tuple(sorted(layout, key=lambda m: (order.index(m) if m in order else len(order), m)))

    @property
    def layers(self) -> tuple[str, ...]:
        """Every layer some map was computed at (CAMs and feature maps), in the order the report shows them."""
        layout = self._first_layout()
        shown: list[str] = []
        if self._images:
            entry = self.manifest["images"][0]
            shown = [g.get("layer", "") for g in entry.get("cams", [])] + [
                f.get("layer", "") for f in entry.get("feature_maps", [])]
        every = {layer for layers in layout.values() for layer in layers if layer}
        return tuple(sorted(every, key=lambda la: (shown.index(la) if la in shown else len(shown), la)))

    def image(self, image: str | os.PathLike | ImageInfo) -> ImageInfo:
        """The image with this id or file (its path under the image folder), or this record of the run.

        Raises:
            UsageError: no such image in the run (the message offers close matches).
        """
        if isinstance(image, ImageInfo):
            found = self._by_key.get(image.id)
            if found is None or found.file != image.file:
                raise UsageError(f"image {image.id!r} ({image.file}) is not an image of the run in {self.folder}")
            return found
        if not isinstance(image, str | os.PathLike):
            raise UsageError(f"image: expected an id, a file or an ImageInfo, got {type(image).__name__}")
        key = image if isinstance(image, str) else Path(image).as_posix()
        found = self._by_key.get(key)
        if found is None:
            raise UsageError(f"no image {key!r} in the run in {self.folder} ({len(self._images)} images)"
                             + _hint(key, list(self._by_key)))
        return found

    def maps(self, image: str | os.PathLike | ImageInfo, method: str,
             layer: str | None = None) -> tuple[np.ndarray, tuple[int, ...]]:
        """One image's maps of one method at one layer, as stored (not normalised).

        Args:
            image: an id, a file (path under the image folder) or an ``ImageInfo`` of this run.
            method: a method of ``methods``: a CAM or saliency method, or ``feature_maps``.
            layer: the layer; may be left out when the method has one layer, and must be for an input-level
                method (saliency, FullGrad, ...), whose maps explain the input pixels.

        Returns:
            ``(maps, targets)``: maps (T, h, w) float32, one per target class, at the layer's resolution (the
            input's for input-level methods), and the T target class indices. For ``feature_maps``: the top
            channels' activations (K, h, w) float32 and their K channel indices.

        Raises:
            UsageError: no such image, method or layer (the message names what the run has), or the maps file
                is in a format newer than this reportgen reads.
            DataError: the maps file is missing or damaged.
        """
        info = self.image(image)
        path = self.folder / info.maps_file
        with self._open(path) as f:
            map_key, target_key = self._key(_index(set(f.keys())), info, method, layer)
            maps, targets = f.get_tensor(map_key), f.get_tensor(target_key)
        import numpy as np

        return np.asarray(maps, dtype=np.float32), tuple(int(t) for t in targets)

    def _key(self, layout: dict[str, dict[str, tuple[str, str]]], info: ImageInfo, method: str,
             layer: str | None) -> tuple[str, str]:
        if method not in layout:
            have = ", ".join(m for m in self.methods if m in layout) or "none"
            raise UsageError(f"no maps of method {method!r} for image {info.id!r}; the run has: {have}"
                             + _hint(method, list(layout)))
        layers = layout[method]
        if "" in layers:  # an input-level method
            if layer:
                raise UsageError(f"{method} explains the input pixels: it has no layer; call maps(image, {method!r})")
            return layers[""]
        known = [la for la in self.layers if la in layers] + sorted(set(layers) - set(self.layers))  # run order
        if layer is None:
            if len(layers) > 1:
                raise UsageError(f"{method} was computed at {len(layers)} layers ({', '.join(known)}): pass layer=")
            return next(iter(layers.values()))
        if layer not in layers:
            raise UsageError(f"no {method} maps at layer {layer!r} for image {info.id!r}; it has: "
                             f"{', '.join(known)}" + _hint(layer, known))
        return layers[layer]

    def _first_layout(self) -> dict[str, dict[str, tuple[str, str]]]:
        """The maps of the first image (every image of a run has the same keys): only its file's header is read."""
        if self._layout is None:
            self._layout = {}
            if self._images:
                with self._open(self.folder / self._images[0].maps_file) as f:
                    self._layout = _index(set(f.keys()))
        return self._layout

    def _open(self, path: Path):
        """``safe_open`` on a maps file whose format version this reader knows."""
        from safetensors import SafetensorError, safe_open

        if not path.is_file():
            raise DataError(f"{path}: the maps file is missing; the run's folder is incomplete")
        try:
            handle = safe_open(str(path), framework="numpy")
        except (SafetensorError, OSError) as exc:
            raise DataError(f"{path}: cannot read the maps file: {exc}") from exc
        _check_version((handle.metadata() or {}).get("format", FORMAT_VERSION), path,
                       self.manifest.get("reportgen_version"))
        return handle
