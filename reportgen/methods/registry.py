"""The one registry of visualization methods: the CLI, config validation and the tests all read it.

The catalogue at the bottom declares every method with its parameters (torch-free, so validating a config
stays cheap); each implementation module maps the same names to code, and ``compute.py`` checks at import
that the two agree.

Kinds: ``kernels`` (per conv layer), ``feature_maps`` (per image and layer), ``cam`` (per image, target and
— when ``needs_layer`` — layer), ``filters`` (per layer and channel: activation maximization).
Engines of ``cam`` methods: ``gradient`` methods are formulas of one layer's activations A and gradients G,
all derived from ONE forward and one backward pass per batch; ``map`` methods run their own passes
(perturbations, input gradients).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ParamSpec", "MethodSpec", "register", "get_method", "list_methods", "cam_method_names"]


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of a method, as written under ``cams.params.<method>`` in a config."""

    name: str
    kind: type
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class MethodSpec:
    """What a method is, for people and for validation.

    Attributes:
        name: config name, lowercase (``gradcam``).
        title: display name (``Grad-CAM``).
        kind: ``kernels``, ``feature_maps``, ``cam`` or ``filters``.
        description: one line.
        paper: short citation.
        formula: the method in one line.
        engine: for ``cam``: ``gradient`` (formula of A and G) or ``map`` (own passes).
        needs_layer: for ``cam``: explains a layer (True) or the input pixels (False).
        uses_gradients: for ``gradient`` engine methods: whether G is needed (EigenCAM needs only A).
        params: the parameters it accepts.
    """

    name: str
    title: str
    kind: str
    description: str
    paper: str
    formula: str = ""
    engine: str = ""
    needs_layer: bool = True
    uses_gradients: bool = True
    params: tuple[ParamSpec, ...] = ()

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}


_REGISTRY: dict[str, MethodSpec] = {}
_KINDS = ("kernels", "feature_maps", "cam", "filters")


def register(spec: MethodSpec) -> MethodSpec:
    """Add ``spec``; a second method with the same name, or an unknown kind or engine, is a programming error."""
    if spec.name in _REGISTRY:
        raise ValueError(f"method {spec.name!r} is already registered")
    if spec.kind not in _KINDS:
        raise ValueError(f"method {spec.name!r}: expected kind in {_KINDS}, got {spec.kind!r}")
    if (spec.kind == "cam") != (spec.engine in ("gradient", "map")):
        raise ValueError(f"method {spec.name!r}: a cam method needs engine 'gradient' or 'map', others none")
    _REGISTRY[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    return _REGISTRY[name]


def list_methods(kind: str | None = None, engine: str | None = None) -> list[MethodSpec]:
    return [s for s in _REGISTRY.values() if (kind is None or s.kind == kind) and (engine is None or s.engine == engine)]


def cam_method_names() -> tuple[str, ...]:
    return tuple(s.name for s in list_methods("cam"))


_BATCH = ParamSpec("batch_size", int, 64, "inputs per forward pass (the memory budget)", 1, 65536)
_BF16 = ParamSpec("bf16", bool, False, "bfloat16 autocast of the masked passes (CUDA, or a CPU with native bf16); false = exact fp32")


def _gradient(name: str, title: str, description: str, paper: str, formula: str, uses_gradients: bool = True) -> MethodSpec:
    return MethodSpec(name, title, "cam", description, paper, formula, engine="gradient", uses_gradients=uses_gradients)


for _spec in (
    MethodSpec("kernels", "Kernel gallery", "kernels",
               "a conv layer's filters drawn as images: RGB for the first layer, diverging colormap for the rest",
               "Krizhevsky et al., NeurIPS 2012 (Fig. 3)", "W[o, i] for the kernels of largest L2 norm"),
    MethodSpec("feature_maps", "Feature maps", "feature_maps",
               "the top-k channels of a layer's output by mean activation, caught with a forward hook",
               "Zeiler & Fergus, ECCV 2014", "rank c by mean_hw(A_c); show A_c"),
    _gradient("gradcam", "Grad-CAM", "channels weighted by their spatially averaged gradient",
              "Selvaraju et al., ICCV 2017", "relu(sum_c mean_hw(dy/dA_c) * A_c)"),
    _gradient("gradcampp", "Grad-CAM++", "second-order weighting of positive gradients",
              "Chattopadhay et al., WACV 2018", "relu(sum_c sum_hw(relu(G) * G^2 / (2G^2 + sum_hw(A) G^3)) * A_c)"),
    _gradient("xgradcam", "XGrad-CAM", "gradients weighted by normalised activations (axiom-based)",
              "Fu et al., BMVC 2020", "relu(sum_c sum_hw(G * A / sum_hw(A)) * A_c)"),
    _gradient("hirescam", "HiResCAM", "element-wise gradient x activation, summed over channels",
              "Draelos & Carin, 2020", "relu(sum_c G_c * A_c)"),
    _gradient("layercam", "LayerCAM", "element-wise positive gradient x activation",
              "Jiang et al., IEEE TIP 2021", "relu(sum_c relu(G_c) * A_c)"),
    _gradient("eigencam", "EigenCAM", "first principal component of the activations (class-agnostic)",
              "Muhammad & Yeasin, IJCNN 2020", "relu(A projected on its first principal component)",
              uses_gradients=False),
    _gradient("eigengradcam", "EigenGradCAM", "first principal component of gradient x activation",
              "Muhammad & Yeasin, IJCNN 2020 (pytorch-grad-cam variant)", "relu(G*A projected on its first PC)"),
    MethodSpec("scorecam", "Score-CAM", "cam", "channels weighted by the score of the input masked with each channel",
               "Wang et al., CVPR-W 2020", "relu(sum_c softmax_c(y(x * norm(up(A_c)))) * A_c)", engine="map",
               params=(_BATCH, _BF16)),
    MethodSpec("ablationcam", "Ablation-CAM", "cam", "channels weighted by the score drop when each is ablated",
               "Desai & Ramaswamy, WACV 2020", "relu(sum_c (y - y_without_c) / y * A_c)", engine="map",
               params=(_BATCH, _BF16)),
    MethodSpec("fullgrad", "FullGrad", "cam",
               "input-gradient x input plus bias-gradients of every conv/BatchNorm layer (subclasses, frozen and "
               "timm norm-act layers included; other biases are named in the log and the entry's metadata)",
               "Srinivas & Fleuret, NeurIPS 2019", "sum over layers of up(|grad_b * b|) + |grad_x * x|", engine="map",
               needs_layer=False),
    MethodSpec("saliency", "Saliency", "cam", "vanilla gradient of the target score w.r.t. the input pixels",
               "Simonyan et al., ICLR-W 2014", "max_rgb |dy/dx|", engine="map", needs_layer=False),
    MethodSpec("guided_backprop", "Guided backprop", "cam",
               "input gradient with negative gradients zeroed at every ReLU on the way back",
               "Springenberg et al., ICLR-W 2015", "max_rgb |guided dy/dx|", engine="map", needs_layer=False),
    MethodSpec("smoothgrad", "SmoothGrad", "cam", "input gradients averaged over noisy copies of the image",
               "Smilkov et al., 2017", "max_rgb |mean_n dy/dx(x + noise_n)|", engine="map", needs_layer=False,
               params=(ParamSpec("samples", int, 25, "noisy copies per image", 1, 1024),
                       ParamSpec("noise", float, 0.15, "noise std as a fraction of the input's range", 0.0, 10.0),
                       ParamSpec("seed", int, 0, "noise seed", 0, 2**31 - 1), _BATCH)),
    MethodSpec("integrated_gradients", "Integrated Gradients", "cam",
               "gradients integrated along the straight path from a baseline image x0 to the image "
               "(default: black, pixel value 0)",
               "Sundararajan et al., ICML 2017", "max_rgb |(x - x0) * mean_a dy/dx(x0 + a (x - x0))|", engine="map",
               needs_layer=False,
               params=(ParamSpec("steps", int, 32, "points on the path", 2, 4096),
                       ParamSpec("baseline", str, "black", "x0: black (pixel value 0), zero (0 after normalisation: "
                                 "the mean colour) or blur (the image blurred)", choices=("black", "zero", "blur")),
                       ParamSpec("blur_sigma", float, 10.0, "the blur baseline's Gaussian std, in input pixels",
                                 0.1, 1000.0),
                       _BATCH)),
    MethodSpec("activation_max", "Filter visualization", "filters",
               "an image optimised to excite one channel: Fourier parameterization, decorrelated colour, jitter",
               "Erhan et al., 2009; Olah et al., Distill 2017", "argmax_x mean_hw(A_c(T(x)))"),
):
    register(_spec)
