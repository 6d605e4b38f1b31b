"""The one registry of visualization methods: the CLI, config validation and the tests all read it."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MethodSpec", "register", "get_method", "list_methods", "cam_method_names"]


@dataclass(frozen=True)
class MethodSpec:
    """What a method is, for people and for validation.

    Attributes:
        name: config name, lowercase (``gradcam``).
        title: display name (``Grad-CAM``).
        kind: ``kernels`` (per layer), ``feature_maps`` (per image and layer) or ``cam`` (per image, layer, target).
        description: one line.
        paper: short citation.
        formula: the method in one line.
    """

    name: str
    title: str
    kind: str
    description: str
    paper: str
    formula: str = ""


_REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    """Add ``spec``; a second method with the same name is a programming error."""
    if spec.name in _REGISTRY:
        raise ValueError(f"method {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    return _REGISTRY[name]


def list_methods(kind: str | None = None) -> list[MethodSpec]:
    return [s for s in _REGISTRY.values() if kind is None or s.kind == kind]


def cam_method_names() -> tuple[str, ...]:
    return tuple(s.name for s in list_methods("cam"))
