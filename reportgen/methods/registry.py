"""The one registry of visualization methods: the CLI, config validation and the tests all read it.

The catalogue at the bottom declares every method (torch-free, so validating a config stays cheap); each
implementation module maps the same names to code and checks at import that the two agree.
"""

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


for _spec in (
    MethodSpec("kernels", "Kernel gallery", "kernels",
               "a conv layer's filters drawn as images: RGB for the first layer, diverging colormap for the rest",
               "Krizhevsky et al., NeurIPS 2012 (Fig. 3)", "W[o, i] for the kernels of largest L2 norm"),
    MethodSpec("feature_maps", "Feature maps", "feature_maps",
               "the top-k channels of a layer's output by mean activation, caught with a forward hook",
               "Zeiler & Fergus, ECCV 2014", "rank c by mean_hw(A_c); show A_c"),
    MethodSpec("gradcam", "Grad-CAM", "cam", "channels weighted by their spatially averaged gradient",
               "Selvaraju et al., ICCV 2017", "relu(sum_c mean_hw(dy/dA_c) * A_c)"),
    MethodSpec("gradcampp", "Grad-CAM++", "cam", "second-order weighting of positive gradients",
               "Chattopadhay et al., WACV 2018", "relu(sum_c sum_hw(relu(G) * G^2 / (2G^2 + sum_hw(A) G^3)) * A_c)"),
    MethodSpec("xgradcam", "XGrad-CAM", "cam", "gradients weighted by normalised activations (axiom-based)",
               "Fu et al., BMVC 2020", "relu(sum_c sum_hw(G * A / sum_hw(A)) * A_c)"),
    MethodSpec("hirescam", "HiResCAM", "cam", "element-wise gradient x activation, summed over channels",
               "Draelos & Carin, 2020", "relu(sum_c G_c * A_c)"),
    MethodSpec("layercam", "LayerCAM", "cam", "element-wise positive gradient x activation",
               "Jiang et al., IEEE TIP 2021", "relu(sum_c relu(G_c) * A_c)"),
):
    register(_spec)
