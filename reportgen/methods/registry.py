"""The one registry of visualization methods: the CLI, config validation, the compute engine and the tests all
read it.

Each entry is the whole method for everyone but its code: name, title, paper, formula, parameters (torch-free, so
validating a config stays cheap) and ``impl``, the ``module:function`` that computes it, imported only when a run
needs it (``MethodSpec.implementation``). There is no second table of names anywhere: adding a method is one
entry here, its implementation file, its test and its row in docs/METHODS.md. ``tests/test_registry.py`` imports
every ``impl`` and runs every method on a tiny model.

Kinds: ``kernels`` (per conv layer), ``feature_maps`` (per image and layer), ``cam`` (per image, target and
— when ``needs_layer`` — layer), ``filters`` (per layer and channel: activation maximization).
Engines of ``cam`` methods:

* ``gradient``: a formula of one layer's activations ``A`` and the gradients ``G`` of the target score w.r.t.
  ``A`` (both (N, C, h, w) float32), all derived from ONE forward and one backward pass per batch. With
  ``output="weighted"`` the function returns the weighted activations (N, C, h, w) and the engine takes
  relu(sum over channels) — or, with ``eigen_smooth``, their first principal component; with ``output="map"`` it
  returns the map (N, h, w) itself.
* ``map``: ``f(model, x, targets, [layer=...], **params, [mean=, std=])`` runs its own passes (perturbations,
  input gradients) and returns (N, T, h, w), or ``((N, T, h, w), notes)`` with string notes stored beside the maps.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
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
        impl: ``module:function`` that computes it (see the module docstring for each engine's signature).
        output: for ``gradient`` engine methods: ``weighted`` (N, C, h, w) or ``map`` (N, h, w).
        wants_preprocess: for ``map`` engine methods: called with the model's ``mean=`` and ``std=`` too.
        signed: its map is ``saliency.magnitude`` of ``saliency.raw_attributions(..., method=name)`` (max over the
            colour channels of |a|): ``report.raw_maps: full`` keeps the signed (3, H, W) attribution too.
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
    impl: str = ""
    output: str = ""
    wants_preprocess: bool = False
    signed: bool = False

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    @property
    def explains_class(self) -> bool:
        """A map per target class (every ``cam`` method but Deep Feature Factorization, whose maps are concepts):
        what the trust metrics can score."""
        return self.kind == "cam" and self.name != "dff"

    def implementation(self) -> Any:
        """The function named by ``impl``, imported now (torch and the method's module load here, not before)."""
        return _resolve(self.impl)


@cache
def _resolve(impl: str) -> Any:
    module, _, name = impl.partition(":")
    return getattr(importlib.import_module(module), name)


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
    module, colon, function = spec.impl.partition(":")
    if not (colon and module.startswith("reportgen.") and function.isidentifier()):
        raise ValueError(f"method {spec.name!r}: impl must be 'reportgen.module:function', got {spec.impl!r}")
    if (spec.engine == "gradient") != (spec.output in ("weighted", "map")):
        raise ValueError(f"method {spec.name!r}: a gradient method needs output 'weighted' or 'map', others none")
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


def _gradient(name: str, title: str, description: str, paper: str, formula: str, impl: str, *,
              uses_gradients: bool = True, output: str = "weighted") -> MethodSpec:
    return MethodSpec(name, title, "cam", description, paper, formula, engine="gradient",
                      uses_gradients=uses_gradients, impl=impl, output=output)


_CAM = "reportgen.methods.cam:"
_EIGEN = "reportgen.methods.eigen:"
_SALIENCY = "reportgen.methods.saliency:"
_PERTURBATION = "reportgen.methods.perturbation:"


for _spec in (
    MethodSpec("kernels", "Kernel gallery", "kernels",
               "a conv layer's filters drawn as images: RGB for the first layer, diverging colormap for the rest",
               "Krizhevsky et al., NeurIPS 2012 (Fig. 3)", "W[o, i] for the kernels of largest L2 norm",
               impl="reportgen.methods.kernels:select_kernels"),
    MethodSpec("feature_maps", "Feature maps", "feature_maps",
               "the top-k channels of a layer's output by mean activation, caught with a forward hook",
               "Zeiler & Fergus, ECCV 2014", "rank c by mean_hw(A_c); show A_c",
               impl="reportgen.methods.feature_maps:top_channels"),
    _gradient("gradcam", "Grad-CAM", "channels weighted by their spatially averaged gradient",
              "Selvaraju et al., ICCV 2017", "relu(sum_c mean_hw(dy/dA_c) * A_c)", _CAM + "gradcam"),
    _gradient("gradcampp", "Grad-CAM++", "second-order weighting of positive gradients",
              "Chattopadhay et al., WACV 2018", "relu(sum_c sum_hw(relu(G) * G^2 / (2G^2 + sum_hw(A) G^3)) * A_c)",
              _CAM + "gradcampp"),
    _gradient("xgradcam", "XGrad-CAM", "gradients weighted by normalised activations (axiom-based)",
              "Fu et al., BMVC 2020", "relu(sum_c sum_hw(G * A / sum_hw(A)) * A_c)", _CAM + "xgradcam"),
    _gradient("hirescam", "HiResCAM", "element-wise gradient x activation, summed over channels",
              "Draelos & Carin, 2020", "relu(sum_c G_c * A_c)", _CAM + "hirescam"),
    _gradient("layercam", "LayerCAM", "element-wise positive gradient x activation",
              "Jiang et al., IEEE TIP 2021", "relu(sum_c relu(G_c) * A_c)", _CAM + "layercam"),
    _gradient("eigencam", "EigenCAM", "first principal component of the activations (class-agnostic)",
              "Muhammad & Yeasin, IJCNN 2020", "relu(A projected on its first principal component)",
              _EIGEN + "eigencam", uses_gradients=False, output="map"),
    _gradient("eigengradcam", "EigenGradCAM", "first principal component of gradient x activation",
              "Muhammad & Yeasin, IJCNN 2020 (pytorch-grad-cam variant)", "relu(G*A projected on its first PC)",
              _EIGEN + "eigengradcam", output="map"),
    # pytorch-grad-cam 1.5.7 methods (issue 9): one file each under reportgen/methods/, tests/test_methods_pgc.py
    _gradient("gradcam_elementwise", "Grad-CAM ElementWise", "positive part of gradient x activation per element",
              "pytorch-grad-cam (Gildenblat et al.), after Draelos & Carin 2020", "relu(sum_c relu(G_c * A_c))",
              "reportgen.methods.gradcam_elementwise:gradcam_elementwise"),
    MethodSpec("kpcacam", "KPCA-CAM", "cam", "first kernel principal component of the activations (class-agnostic)",
               "Karmani et al., IEEE MMSP 2024", "relu(sqrt(l1) u1), (l1, u1) top eigenpair of the centred kernel "
               "matrix k(A_i, A_j) over positions", engine="gradient", uses_gradients=False, output="map",
               params=(ParamSpec("kernel", str, "sigmoid", "kernel of the positions' activation vectors",
                                 choices=("sigmoid", "rbf", "poly", "linear", "cosine")),
                       ParamSpec("gamma", float, 0.0, "kernel scale; 0 = 1 / channels (scikit-learn's default)",
                                 0.0, 1e6)),
               impl="reportgen.methods.kpca_cam:kpcacam"),
    MethodSpec("fem", "FEM", "cam", "channels weighted by the share of positions above mean + k std (class-agnostic)",
               "Fuad et al., IPTA 2020", "relu(sum_c mean_hw(A_c > mean_hw(A_c) + k std_hw(A_c)) * A_c)",
               engine="gradient", uses_gradients=False, output="weighted",
               params=(ParamSpec("k", float, 2.0, "threshold in standard deviations above each channel's mean",
                                 -100.0, 100.0),),
               impl="reportgen.methods.fem:fem"),
    MethodSpec("randomcam", "Random-CAM", "cam", "channels weighted by seeded uniform(-1, 1) numbers: the sanity-check "
               "baseline (class-agnostic)", "pytorch-grad-cam; Adebayo et al., NeurIPS 2018",
               "relu(sum_c w_c * A_c), w_c ~ U(-1, 1) from seed", engine="gradient", uses_gradients=False,
               output="weighted", params=(ParamSpec("seed", int, 0, "seed of the random weights", 0, 2**63 - 1),),
               impl="reportgen.methods.random_cam:randomcam"),
    MethodSpec("shapleycam", "Shapley-CAM", "cam", "gradient weights corrected by a Hessian-vector product",
               "Cai et al., arXiv:2501.06261 (2025)", "relu(sum_c mean_hw(G_c - 0.5 (H A)_c) * A_c)", engine="map",
               impl="reportgen.methods.shapley_cam:shapleycam"),
    MethodSpec("finercam", "Finer-CAM", "cam", "Grad-CAM of the target's score against its most similar classes",
               "Zhang et al., CVPR 2025", "Grad-CAM of sum_j p_j (y_c - alpha y_j) / sum_j p_j, j = closest logits",
               engine="map",
               params=(ParamSpec("alpha", float, 1.0, "comparison strength", 0.0, 100.0),
                       ParamSpec("comparisons", int, 3, "classes with the closest logits to compare with", 1, 1000)),
               impl="reportgen.methods.finer_cam:finercam"),
    MethodSpec("dff", "Deep Feature Factorization", "cam", "K concepts shared by the images of a batch: NMF of the "
               "layer's activations at all their positions (class-agnostic; a map depends on its batch)",
               "Collins et al., ECCV 2018", "A (C, N*h*w) - min_c ~ W (C, K) H (K, N*h*w), W, H >= 0; maps = H",
               engine="map",
               params=(ParamSpec("n_components", int, 5, "K, concepts per batch", 1, 64),
                       ParamSpec("max_iter", int, 200, "multiplicative-update rounds of the NMF", 1, 100000),
                       ParamSpec("seed", int, 0, "seed of the NMF's initial factors", 0, 2**63 - 1), _BATCH),
               impl="reportgen.methods.dff:dff"),
    MethodSpec("scorecam", "Score-CAM", "cam", "channels weighted by the score of the input masked with each channel",
               "Wang et al., CVPR-W 2020", "relu(sum_c softmax_c(y(x * norm(up(A_c)))) * A_c)", engine="map",
               params=(_BATCH, _BF16), impl=_PERTURBATION + "scorecam"),
    MethodSpec("ablationcam", "Ablation-CAM", "cam", "channels weighted by the score drop when each is ablated",
               "Desai & Ramaswamy, WACV 2020", "relu(sum_c (y - y_without_c) / y * A_c)", engine="map",
               params=(_BATCH, _BF16), impl=_PERTURBATION + "ablationcam"),
    MethodSpec("fullgrad", "FullGrad", "cam",
               "input-gradient x input plus bias-gradients of every conv/BatchNorm layer (subclasses, frozen and "
               "timm norm-act layers included; other biases are named in the log and the entry's metadata)",
               "Srinivas & Fleuret, NeurIPS 2019", "sum over layers of up(|grad_b * b|) + |grad_x * x|", engine="map",
               needs_layer=False, impl="reportgen.methods.fullgrad:fullgrad_with_notes"),
    MethodSpec("saliency", "Saliency", "cam", "vanilla gradient of the target score w.r.t. the input pixels",
               "Simonyan et al., ICLR-W 2014", "max_rgb |dy/dx|", engine="map", needs_layer=False,
               impl=_SALIENCY + "saliency", signed=True),
    MethodSpec("guided_backprop", "Guided backprop", "cam",
               "input gradient with negative gradients zeroed at every ReLU on the way back",
               "Springenberg et al., ICLR-W 2015", "max_rgb |guided dy/dx|", engine="map", needs_layer=False,
               impl=_SALIENCY + "guided_backprop", signed=True),
    MethodSpec("smoothgrad", "SmoothGrad", "cam", "input gradients averaged over noisy copies of the image",
               "Smilkov et al., 2017", "max_rgb |mean_n dy/dx(x + noise_n)|", engine="map", needs_layer=False,
               params=(ParamSpec("samples", int, 25, "noisy copies per image", 1, 1024),
                       ParamSpec("noise", float, 0.15, "noise std as a fraction of the input's range", 0.0, 10.0),
                       ParamSpec("seed", int, 0, "noise seed", 0, 2**31 - 1), _BATCH),
               impl=_SALIENCY + "smoothgrad", signed=True),
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
                       _BATCH),
               impl=_SALIENCY + "integrated_gradients", wants_preprocess=True, signed=True),
    MethodSpec("activation_max", "Filter visualization", "filters",
               "an image optimised to excite one channel: Fourier parameterization, decorrelated colour, jitter",
               "Erhan et al., 2009; Olah et al., Distill 2017", "argmax_x mean_hw(A_c(T(x)))",
               impl="reportgen.methods.activation_max:visualize_filters"),
):
    register(_spec)


# torchcam 0.5.0's methods (original CAM, Smooth Grad-CAM++, SS-CAM, IS-CAM) and SESS, which wraps any gradient
# CAM registered above (so its ``base`` choices are read from the registry here, after them).
_SEED = ParamSpec("seed", int, 0, "noise seed (each noise sample is one draw shared by every image)", 0, 2**31 - 1)
for _spec in (
    MethodSpec("cam", "CAM", "cam", "the classifier's weights on the channels pooled into it (no gradients)",
               "Zhou et al., CVPR 2016", "relu(sum_c W_fc[target, c] * A_c)", engine="map",
               params=(ParamSpec("fc_layer", str, "", "the nn.Linear fed by the global average pool of the layer "
                                 "(empty: the model's last nn.Linear with in_features = the layer's channels)"),),
               impl="reportgen.methods.fc_cam:cam"),
    MethodSpec("smoothgradcampp", "Smooth Grad-CAM++", "cam",
               "Grad-CAM++ with its derivatives averaged over noisy copies of the input",
               "Omeiza et al., 2019", "relu(sum_c sum_hw(D2 / (2 D2 + sum_hw(A) D3) * relu(D1)) * A_c), "
               "Dp = mean_n (dy/dA(x + noise_n))^p", engine="map",
               params=(ParamSpec("num_samples", int, 4, "noisy copies per image", 1, 1024),
                       ParamSpec("std", float, 0.3, "noise std, in normalised input units", 0.0, 100.0),
                       _SEED, _BATCH),
               impl="reportgen.methods.smooth_gradcampp:smoothgradcampp"),
    MethodSpec("sscam", "SS-CAM", "cam", "Score-CAM with each channel's score averaged over noisy masks",
               "Wang et al., 2020 (SS-CAM)", "relu(sum_c softmax_c(mean_n y(x * (up(norm(A_c)) + noise_n))) * A_c)",
               engine="map",
               params=(ParamSpec("num_samples", int, 35, "noisy masks per channel", 1, 1024),
                       ParamSpec("std", float, 2.0, "noise std added to the [0, 1] masks", 0.0, 100.0),
                       _SEED, _BATCH, _BF16),
               impl="reportgen.methods.sscam:sscam"),
    MethodSpec("iscam", "IS-CAM", "cam", "Score-CAM with each channel's score integrated over a ramp of mask scales",
               "Naidu et al., 2020 (IS-CAM)", "relu(sum_c softmax_c(mean_i y(r_i x * up(norm(A_c)))) * A_c), "
               "r_i = sum_{j<=i} j / N", engine="map",
               params=(ParamSpec("num_samples", int, 10, "points of the ramp", 1, 1024), _BATCH, _BF16),
               impl="reportgen.methods.iscam:iscam"),
    MethodSpec("sess", "SESS", "cam", "a gradient CAM of sliding windows over several scales, pasted back and fused",
               "Tyagi et al., ECCV 2022", "blur(mean over windows p of score_p / max score * paste_p(norm(base(p))))",
               engine="map",
               params=(ParamSpec("base", str, "gradcam", "the gradient CAM run on every window",
                                 choices=tuple(s.name for s in list_methods("cam", "gradient"))),
                       ParamSpec("num_scales", int, 12, "scales of the image", 1, 64),
                       ParamSpec("scale_step", float, 2 / 7, "scale i: window * (1 + i * scale_step)", 0.0, 10.0),
                       ParamSpec("window", int, 0, "window side in pixels (0: the image's shorter side)", 0, 65536),
                       ParamSpec("step", int, 0, "window stride in pixels (0: the window side)", 0, 65536),
                       ParamSpec("pre_filter", float, 0.0, "fraction of lowest-scoring windows left out", 0.0, 0.99),
                       ParamSpec("theta", float, 0.0, "mean fusion: values <= theta are not averaged", 0.0, 1.0),
                       ParamSpec("pool", str, "mean", "fusion over windows", choices=("mean", "max")),
                       ParamSpec("smooth", bool, True, "Gaussian blur of the fused map (11x11, sigma 5)"),
                       ParamSpec("softmax_scores", bool, True, "weight windows by softmax probability (else the "
                                 "logit clipped at 0)"),
                       ParamSpec("batch_size", int, 32, "windows per pass", 1, 65536)),
               impl="reportgen.methods.sess:sess"),
):
    register(_spec)
