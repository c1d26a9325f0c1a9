"""The report's sections: one function per section, ``(Context) -> Section``, in ``SECTIONS`` order.

Each section computes its maps with the public methods, draws them (matplotlib for anything
with a colour bar, a curve or titles; opencv grids for plain image tiles) and says in one
sentence what it shows.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from onnxsight.engine.dynamic_batch import with_dynamic_batch
from onnxsight.engine.gradcheck import gradcheck as check_gradients
from onnxsight.engine.gradcheck import runner
from onnxsight.engine.graph import dependent_tensors
from onnxsight.engine.model import Model
from onnxsight.engine.targets import class_scores
from onnxsight.errors import GradientCheckFailed, InvalidArgument, UnsupportedOp
from onnxsight.kernels.colors import as_rgb8, normalize, normalize_each, overlay
from onnxsight.kernels.grids import activation_figure, filter_grid, tile
from onnxsight.kernels.images import to_hwc
from onnxsight.kernels.occlusion import window_starts
from onnxsight.kernels.stats import softmax
from onnxsight.methods.cam import default_cam_layer, gradcam
from onnxsight.methods.common import require_image, spatial_size
from onnxsight.methods.dataset import class_saliency as class_saliency_map
from onnxsight.methods.dataset import embedding as embed
from onnxsight.methods.dataset import top_k_images
from onnxsight.methods.deeplift import deeplift
from onnxsight.methods.integrated_gradients import integrated_gradients
from onnxsight.methods.maximize import maximize
from onnxsight.methods.occlusion import occlusion as occlude
from onnxsight.methods.relevance import lrp
from onnxsight.methods.rise import rise
from onnxsight.methods.saliency import saliency as saliency_map
from onnxsight.metrics.evaluation import METHODS as EVALUATION_METHODS
from onnxsight.metrics.evaluation import evaluate as evaluate_methods
from onnxsight.metrics.sanity import randomized_models, weighted_layers
from onnxsight.report import figures
from onnxsight.report.html import Figure, Section, Table


@dataclass(frozen=True)
class ReportData:
    """The images a report looks at, in the model's input layout, with labels when known."""

    x: np.ndarray
    labels: np.ndarray | None = None
    class_names: Sequence[str] | None = None
    name: str = "images"


@dataclass(frozen=True)
class ReportOptions:
    """How much each section computes; the defaults keep the demo's report under a minute on 2 cores.

    images: sample images, one per class, for the per-image sections. predictions: test images
    in the predictions grid. feature_layers / feature_images: layers (default: the first two
    convolutions) and images shown in the feature maps. smooth_samples, ig_steps: SmoothGrad
    copies and Integrated-Gradients steps. window, stride: occlusion of the samples.
    saliency_count / saliency_classes: images per class and classes in the class saliency maps.
    topk_layer (default: the Grad-CAM layer), topk_units, k, topk_window, topk_stride: seed 003's
    top-K images per unit and their occlusion masks. embed_layer (default: the last flat layer
    before the logits), embed_count, embed_method: the 2-D scatter. maximize_steps: activation
    maximization of every class (of at most maximize_classes: else the samples' classes).
    gradcheck_layers: layers checked besides the input (default: every layer the logits depend
    on). sections: ids to include (default all). section_seconds: about how long a section may
    take; occlusion strides, SmoothGrad/IG samples, class-saliency images, maximization steps and
    checked layers are sized down (maximization's finite-difference check and the gradient check
    left out when even their least is too slow in float64) to fit it, estimated from a timed forward pass of 8 images (a
    backward pass counts as three), and each section says when it was.
    """

    images: int = 10
    predictions: int = 20
    feature_layers: Sequence[str] | None = None
    feature_images: int = 2
    smooth_samples: int = 20
    ig_steps: int = 32
    window: int = 4
    stride: int = 2
    saliency_count: int = 100
    saliency_classes: int = 3
    topk_layer: str | None = None
    topk_units: int = 4
    k: int = 6
    topk_window: int = 11
    topk_stride: int = 4
    embed_layer: str | None = None
    embed_count: int = 500
    embed_method: str = "auto"
    maximize_steps: int = 200
    maximize_classes: int = 10
    gradcheck_layers: Sequence[str] | None = None
    sections: Sequence[str] | None = None
    seed: int = 0
    batch_size: int = 64
    section_seconds: float = 30.0


class Context:
    """What every section shares: the model, the data, the options, and predictions made once."""

    def __init__(self, model: Model, data: ReportData, options: ReportOptions):
        model = with_dynamic_batch(model)  # sections run batches: the gradient check two images, maximization one per class
        self.model, self.data, self.options = model, data, options
        self.channel_axis = require_image(model, "a report")
        self.x = model.check_input(data.x)
        if data.labels is not None and len(data.labels) != len(self.x):
            raise InvalidArgument(f"{len(data.labels)} labels for {len(self.x)} images")
        self.labels = None if data.labels is None else np.asarray(data.labels).astype(np.int64).ravel()
        logits = class_scores(model.run(self.x, [model.tensor("logits")], batch_size=options.batch_size)[0])
        self.probabilities = softmax(logits)
        self.seconds_per_pass = _seconds_per_image(model, self.x)
        self.predicted = self.probabilities.argmax(axis=1)
        self.class_names = list(data.class_names or [str(c) for c in range(logits.shape[1])])
        self.samples = self._samples(options.images)
        # a sample's target: its true class when labelled (seed 002 explains each class), else the prediction
        self.targets = (self.labels if self.labels is not None else self.predicted)[self.samples]

    def _samples(self, count: int) -> np.ndarray:
        """The first image of each of the first ``count`` classes (the first ``count`` images without labels)."""
        if self.labels is None:
            return np.arange(min(count, len(self.x)))
        classes = np.unique(self.labels)[:count]
        return np.array([np.flatnonzero(self.labels == c)[0] for c in classes])

    def picture(self, index: int) -> np.ndarray:
        """Image ``index`` as an RGB uint8 picture."""
        return as_rgb8(to_hwc(self.x[index:index + 1], self.model.input_layout)[0])

    def name(self, cls: int) -> str:
        return self.class_names[cls] if 0 <= cls < len(self.class_names) else str(cls)

    def row_labels(self) -> list[str]:
        return [f"{'class' if self.labels is not None else 'pred.'} {self.name(int(t))}" for t in self.targets]

    @functools.cached_property
    def float64_pass(self) -> tuple[float, str]:
        """Seconds per image of a float64 forward pass as finite differences run it, and the runtime
        that runs it (onnx.reference where onnxruntime lacks float64 kernels: much slower)."""
        run, runtime = runner(self.model.proto, [self.model.tensor("logits")], "float64", self.model)
        x = self.x[:2].astype(np.float64)
        started = time.perf_counter()
        run({self.model.input_name: x})
        return (time.perf_counter() - started) / len(x), runtime

    def fits(self, passes: float) -> float:
        """The share of ``passes`` forward passes that fits ``section_seconds`` (at most 1)."""
        return min(1.0, self.options.section_seconds / (passes * self.seconds_per_pass))

    def sized_down(self, what: str) -> str:
        """The sentence a section adds when it did less than asked."""
        return (f" Sized down to {what} to take about {self.options.section_seconds:g} s at "
                f"{self.seconds_per_pass * 1e3:.3g} ms per forward pass.")


# ---- layer choices ------------------------------------------------------------------------
def conv_layers(model: Model) -> list[str]:
    """Layers made by a convolution, in order."""
    return [layer.name for layer in model.layers
            if (layer.op == "Conv" or layer.kind.startswith("Conv")) and layer.shape is not None and len(layer.shape) == 4]


def flat_feature_layer(model: Model) -> str | None:
    """The last layer with a flat output before the logits ((N, D), or pooled (N, D, 1, 1)): seed 003's
    feature extractor; None when there is none."""
    ends = {model.tensor("logits"), *model.output_names}
    flat = [layer.name for layer in model.layers
            if layer.shape is not None and len(layer.shape) >= 2 and sum(d != 1 for d in layer.shape[1:]) == 1
            and layer.tensor not in ends]
    return flat[-1] if flat else None


def differentiable_layers(model: Model) -> list[str]:
    """One layer per distinct tensor that the logits depend on (the input excluded)."""
    logits, seen, names = model.tensor("logits"), set(), []
    for layer in model.layers:
        if layer.tensor in seen or layer.tensor == logits or layer.tensor in model.output_names:
            continue
        if logits in dependent_tensors(model.proto.graph, [layer.tensor]):
            seen.add(layer.tensor)
            names.append(layer.name)
    return names


# ---- sections -----------------------------------------------------------------------------
def summary(ctx: Context) -> Section:
    m = ctx.model
    rows = [(layer.name, layer.kind or layer.op, _shape(layer.shape), layer.params) for layer in m.layers]
    facts = Table(("property", "value"), [
        ("model file", m.source), ("input", f"{m.input_name} {_shape(m.input_shape)} ({m.input_layout})"),
        ("class scores", f"{m.tensor('logits')} (softmax swapped for linear)"), ("classes", len(ctx.class_names)),
        ("parameters", sum(layer.params for layer in m.layers)), ("data", f"{ctx.data.name}: {len(ctx.x)} images"),
    ])
    return Section("summary", "Model summary",
                   "The layers onnxsight reads from the ONNX file, by the names the model was built with, "
                   "with their output shapes and parameter counts.",
                   tables=(facts, Table(("layer", "type", "output shape", "parameters"), rows)))


def accuracy(ctx: Context) -> Section:
    classes = len(ctx.class_names)
    matrix = np.zeros((classes, classes), np.int64)
    np.add.at(matrix, (ctx.labels, ctx.predicted), 1)
    correct = float(np.mean(ctx.labels == ctx.predicted))
    return Section("accuracy", "Accuracy and confusion matrix",
                   f"Top-1 accuracy is {correct:.2%} on the {len(ctx.x)} labelled images; row i, column j counts "
                   "images of class i that the model predicts as class j.",
                   figures=(Figure(figures.confusion(matrix, ctx.class_names)),))


def predictions(ctx: Context) -> Section:
    chosen = np.arange(min(ctx.options.predictions, len(ctx.x)))
    truth = ctx.labels[chosen] if ctx.labels is not None else None
    titles = [(f"{ctx.name(int(truth[j]))} → " if truth is not None else "")
              + f"{ctx.name(int(ctx.predicted[i]))} {ctx.probabilities[i, ctx.predicted[i]]:.2f}"
              for j, i in enumerate(chosen)]
    good = [True] * len(chosen) if truth is None else list(truth == ctx.predicted[chosen])
    image = figures.labelled_pictures([ctx.picture(i) for i in chosen], titles, good, columns=min(10, len(chosen)))
    return Section("predictions", "Sample predictions",
                   "The first test images titled 'true → predicted probability' (seed 001), "
                   "green when the prediction is right and red when it is wrong.",
                   figures=(Figure(image),))


def filters(ctx: Context) -> Section:
    layers = conv_layers(ctx.model)
    if not layers:
        raise InvalidArgument(f"{ctx.model.source} has no convolution whose filters could be shown")
    kernels = ctx.model.kernel(layers[0])
    colour = kernels.shape[1] == 3
    return Section("filters", "First-layer filters",
                   f"The {len(kernels)} {kernels.shape[2]}×{kernels.shape[3]} kernels of {layers[0]}, "
                   + ("as RGB pictures, each min-max scaled (seed 001)." if colour else
                      "averaged over input channels: blue negative, white zero, red positive, "
                      "scaled by the largest |weight| (seed 001)."),
                   figures=(Figure(filter_grid(kernels)),))


def feature_maps(ctx: Context) -> Section:
    layers = list(ctx.options.feature_layers or conv_layers(ctx.model)[:2])
    chosen = ctx.samples[:ctx.options.feature_images]
    values = ctx.model.activations(ctx.x[chosen], layers, batch_size=ctx.options.batch_size)
    shown = []
    for layer in layers:
        maps = values[layer]
        if maps.ndim == 4:
            maps = np.moveaxis(maps, ctx.model.channel_axis(layer), 1)
        for i, index in enumerate(chosen):
            shown.append(Figure(activation_figure(ctx.picture(index), maps[i], columns=8),
                                f"{layer}, test image {index} ({_truth(ctx, index)})"))
    return Section("feature-maps", "Feature maps",
                   f"What {', '.join(layers)} output for chosen test images, one grey tile per channel, each "
                   "min-max scaled (seed 001's predictUntilLayer).", figures=shown)


def saliency(ctx: Context) -> Section:
    x, target = ctx.x[ctx.samples], ctx.targets
    common = dict(target=target, normalize=True, batch_size=ctx.options.batch_size)
    columns = {
        "vanilla": saliency_map(ctx.model, x, **common),
        "guided": saliency_map(ctx.model, x, modifier="guided", **common),
        "deconv (rectified)": saliency_map(ctx.model, x, modifier="deconv", **common),
        "negated (guided)": saliency_map(ctx.model, x, modifier="guided", negate=True, absolute=False, **common),
    }
    cells = [[ctx.picture(i), *(maps[r] for maps in columns.values())] for r, i in enumerate(ctx.samples)]
    image = figures.image_grid(cells, ["input", *columns], ctx.row_labels(), colorbar_label="gradient, min-max per map")
    return Section("saliency", "Saliency: vanilla, guided, deconv and negated",
                   "Per class, the gradient of the class score (softmax swapped for linear) with respect to the "
                   "input: |gradient| as it is, through guided or deconv ReLUs, and the negated guided gradient "
                   "that shows what speaks against the class (seed 002's grid).",
                   figures=(Figure(image),))


def cams(ctx: Context) -> Section:
    x, target = ctx.x[ctx.samples], ctx.targets
    layer = default_cam_layer(ctx.model)
    columns = {
        "Grad-CAM": gradcam(ctx.model, x, target, layer=layer, batch_size=ctx.options.batch_size),
        "guided": gradcam(ctx.model, x, target, layer=layer, modifier="guided", batch_size=ctx.options.batch_size),
        "rectified": gradcam(ctx.model, x, target, layer=layer, modifier="deconv", batch_size=ctx.options.batch_size),
        "Guided Grad-CAM": gradcam(ctx.model, x, target, layer=layer, guided=True, batch_size=ctx.options.batch_size),
    }
    cells = [[ctx.picture(i), *(overlay(ctx.picture(i), maps[r]) for maps in columns.values())]
             for r, i in enumerate(ctx.samples)]
    image = figures.image_grid(cells, ["input", *columns], ctx.row_labels(), colorbar_label="class activation map")
    return Section("gradcam", "Grad-CAM: vanilla, guided, rectified",
                   f"Class activation maps of {layer} over the input: Grad-CAM, its keras-vis variants whose "
                   "gradient to the layer passes guided or deconv ReLUs (seed 002), and Guided Grad-CAM "
                   "(the map times the guided-backprop gradient).",
                   figures=(Figure(image),))


def smoothgrad_ig(ctx: Context) -> Section:
    x, target, o = ctx.x[ctx.samples], ctx.targets, ctx.options
    share = ctx.fits(3 * len(x) * (o.smooth_samples + o.ig_steps))
    samples, steps = max(2, int(o.smooth_samples * share)), max(2, int(o.ig_steps * share))
    smooth = saliency_map(ctx.model, x, target, smooth_samples=samples, normalize=True, seed=o.seed,
                          batch_size=o.batch_size)
    ig = integrated_gradients(ctx.model, x, target, steps=steps, batch_size=o.batch_size)
    ig = normalize_each(np.abs(ig).max(axis=ctx.channel_axis))
    cells = [[ctx.picture(i), smooth[r], ig[r]] for r, i in enumerate(ctx.samples)]
    image = figures.image_grid(cells, ["input", "SmoothGrad", "Integrated Gradients"], ctx.row_labels(),
                               colorbar_label="|attribution|, min-max per map")
    return Section("smoothgrad-ig", "SmoothGrad and Integrated Gradients",
                   f"SmoothGrad averages |gradient| over {samples} noisy copies (noise 15 % of the image's "
                   f"range); Integrated Gradients sums gradients along {steps} steps from a black image, "
                   "shown as |attribution| (max over channels)."
                   + (ctx.sized_down(f"{samples} copies and {steps} steps")
                      if (samples, steps) != (o.smooth_samples, o.ig_steps) else ""),
                   figures=(Figure(image),))


# RISE's masks at full size; the section sizes them down to fit its time.
RISE_MASKS = 4000


def relevance(ctx: Context) -> Section:
    x, target, o = ctx.x[ctx.samples], ctx.targets, ctx.options
    masks = max(100, int(RISE_MASKS * ctx.fits(2 * RISE_MASKS * len(x))))
    methods = {
        "LRP (ε-z⁺-flat)": lambda: np.sum(lrp(ctx.model, x, target, rule="epsilon-plus-flat",
                                               batch_size=o.batch_size), axis=ctx.channel_axis),
        "DeepLIFT": lambda: deeplift(ctx.model, x, target, reduce="sum", batch_size=o.batch_size),
        "FullGrad": lambda: gradcam(ctx.model, x, target, variant="fullgrad", batch_size=o.batch_size),
        "RISE": lambda: rise(ctx.model, x, target, masks=masks, seed=o.seed, batch_size=o.batch_size),
    }
    columns, missing = {}, []
    for name, method in methods.items():
        try:
            columns[name] = normalize_each(np.abs(method()))
        except (UnsupportedOp, InvalidArgument) as error:  # a rule the model's ops lack, a fixed batch, ...
            missing.append(f"{name} ({error})")
    cells = [[ctx.picture(i), *(overlay(ctx.picture(i), maps[r]) for maps in columns.values())]
             for r, i in enumerate(ctx.samples)]
    image = figures.image_grid(cells, ["input", *columns], ctx.row_labels(), colorbar_label="|attribution|, min-max per map")
    return Section("relevance", "Relevance, DeepLIFT, FullGrad and RISE",
                   "Four other views of the same images: LRP's relevance (z⁺ for convolutions, ε for dense layers, "
                   "flat for the first layer) and DeepLIFT against a black image, both summed over channels; FullGrad's "
                   f"input and bias gradients; and RISE, the class probability under {masks} random masks."
                   + (f" Left out: {'; '.join(missing)}." if missing else "")
                   + (ctx.sized_down(f"{masks} RISE masks") if masks < RISE_MASKS else ""),
                   figures=(Figure(image),))


# "Which map to trust": the methods and metrics scored, and how many randomised models the sanity grid shows.
TRUST_METHODS = ("saliency", "gradcam", "ig", "lrp")
TRUST_METRICS = ("deletion", "insertion", "max-sensitivity", "sparseness")
TRUST_PASSES = 2 * 101 + 10 * 3  # per image and method: two 100-step curves, 10 re-explained copies
RANDOMIZED_LAYERS = 4


def trust(ctx: Context) -> Section:
    samples = ctx.samples[:max(2, int(len(ctx.samples) * ctx.fits(len(ctx.samples) * len(TRUST_METHODS) * TRUST_PASSES)))]
    x, target = ctx.x[samples], ctx.targets[:len(samples)]
    methods, missing = [], []
    for name in TRUST_METHODS:
        try:
            EVALUATION_METHODS[name](ctx.model, x[:1], target[:1], ctx.options.batch_size)
            methods.append(name)
        except (UnsupportedOp, InvalidArgument) as error:
            missing.append(f"{name} ({error})")
    result = evaluate_methods(ctx.model, x, target, methods=methods, metrics=TRUST_METRICS,
                              batch_size=ctx.options.batch_size)
    rows = [(r["method"], r["metric"], f"{r['mean']:.4g} ± {r['ci95']:.2g}", r["better"], r["rank"])
            for r in result.table]
    series = {name: np.stack([c.mean(axis=0) for c in per_method.values()], axis=1)
              for name, per_method in result.curves.items()}
    curves = figures.curves(series, methods, "mean target probability as the top pixels are removed / inserted")
    return Section("trust", "Which map to trust",
                   f"Each method's maps of {len(x)} images scored: deletion (lower is better) and insertion (higher) "
                   "areas as pixels are removed or inserted in the map's order, max-sensitivity under 2 % noise "
                   "(lower) and sparseness (higher), with 95 % confidence half-widths and a rank per metric; then "
                   "the sanity check: saliency as the layers are randomised from the top down."
                   + (f" Left out: {'; '.join(missing)}." if missing else ""),
                   figures=(Figure(curves), Figure(_randomization_grid(ctx, ctx.samples[0]))),
                   tables=(Table(("method", "metric", "mean ± 95 % CI", "better", "rank"), rows),))


def _randomization_grid(ctx: Context, index: int) -> np.ndarray:
    """One image's saliency on the model and on its cascade of randomised copies (Adebayo et al. 2018),
    at most ``RANDOMIZED_LAYERS`` evenly spaced steps."""
    x, target = ctx.x[index:index + 1], ctx.targets[:1]
    names = [name for name, _ in weighted_layers(ctx.model)]
    chosen = [names[i] for i in np.unique(np.linspace(0, len(names) - 1, min(RANDOMIZED_LAYERS, len(names))).astype(int))]
    maps = {"original": saliency_map(ctx.model, x, target, normalize=True)}
    for layer, randomized in randomized_models(ctx.model, layers=chosen, seed=ctx.options.seed):
        maps[f"up to {layer}"] = saliency_map(randomized, x, target, normalize=True)
    cells = [[ctx.picture(index), *(m[0] for m in maps.values())]]
    return figures.image_grid(cells, ["input", *maps], colorbar_label="|gradient|, min-max")


# An occluded copy costs its forward pass and about half of one more to make it.
OCCLUDED_PASSES = 1.5


def occlusion_grid(ctx: Context, window: int, stride: int, passes_per_position: float) -> tuple[int, int, str]:
    """Window and stride for occluding the report's images: as asked, or the stride grown (and the
    window with it, in proportion) until ``passes_per_position`` passes per position fit the budget;
    with the sentence saying so."""
    height, width = spatial_size(ctx.x, ctx.channel_axis)
    grown = stride
    sized, positions = _scaled_grid(window, stride, grown, height, width)
    while grown < max(height, width) and ctx.fits(passes_per_position * positions) < 1:
        grown += 1
        sized, positions = _scaled_grid(window, stride, grown, height, width)
    note = ctx.sized_down(f"window {sized}, stride {grown} (asked: {window}, {stride})") if grown > stride else ""
    return sized, grown, note


def _scaled_grid(window: int, stride: int, grown: int, height: int, width: int) -> tuple[int, int]:
    """The window grown in proportion to the stride (within the image), and how many positions it takes."""
    sized = min(max(window, round(window * grown / stride)), height, width)
    return sized, len(window_starts(height, sized, grown)) * len(window_starts(width, sized, grown))


def occlusion(ctx: Context) -> Section:
    x, target, o = ctx.x[ctx.samples], ctx.targets, ctx.options
    window, stride, note = occlusion_grid(ctx, o.window, o.stride, OCCLUDED_PASSES * len(x))
    drops = occlude(ctx.model, x, target, window=window, stride=stride, batch_size=max(o.batch_size, 256))
    peak = float(np.abs(drops).max()) or 1.0
    cells = [[ctx.picture(i), drops[r] / peak] for r, i in enumerate(ctx.samples)]
    image = figures.image_grid(cells, ["input", "score drop"], ctx.row_labels(), cmap=figures.SIGNED_CMAP,
                               value_range=(-1.0, 1.0), colorbar_label=f"score drop / {peak:.3g}")
    return Section("occlusion", "Occlusion",
                   f"How much the class score falls when a {window}×{window} black square (stride {stride}) "
                   "hides each pixel: red where hiding hurts the class, blue where it helps." + note,
                   figures=(Figure(image),))


def class_saliency(ctx: Context) -> Section:
    o = ctx.options
    asked = [int(c) for c in ctx.targets[:o.saliency_classes]]
    classes = [c for c in asked if np.sum(ctx.labels == c) >= 2]  # a mean and its SEM need two maps
    count = max(2, int(o.saliency_count * ctx.fits(3 * len(classes) * o.saliency_count)))
    shown = []
    for cls in classes:
        result = class_saliency_map(ctx.model, ctx.x, ctx.labels, cls, count=count, batch_size=o.batch_size)
        title = f"class {ctx.name(cls)}: mean of {len(result.indices)} guided saliency maps"
        shown.append(Figure(figures.class_saliency(result.mean, result.sem, title, "mean |guided gradient|")))
    few = [ctx.name(c) for c in asked if c not in classes]
    return Section("class-saliency", "Class saliency with uncertainty",
                   f"Per class, the mean guided saliency map over up to {count} of its images, with the "
                   "column and row sums beside it and their standard error of the mean shaded (seed 000)."
                   + (f" Left out, with fewer than 2 images: class {', '.join(few)}." if few else "")
                   + (ctx.sized_down(f"{count} images per class") if count < o.saliency_count and classes else ""),
                   figures=shown)


def top_k(ctx: Context) -> Section:
    o = ctx.options
    layer = o.topk_layer or default_cam_layer(ctx.model)
    units = range(min(o.topk_units, ctx.model.shapes[ctx.model.tensor(layer)][ctx.model.channel_axis(layer)]))
    # seed 003's 11 px, or the whole of a small image
    window, stride, note = occlusion_grid(ctx, o.topk_window, o.topk_stride,
                                          OCCLUDED_PASSES * len(units) * min(o.k, len(ctx.x)))
    result = top_k_images(ctx.model, ctx.x, layer, k=min(o.k, len(ctx.x)), units=units, batch_size=o.batch_size)
    shown = []
    for column, unit in enumerate(result.units):
        chosen = result.indices[:, column]
        pictures = [ctx.picture(i) for i in chosen]
        masks = occlude(ctx.model, ctx.x[chosen], target=int(unit), of=layer, window=window,
                        stride=stride, batch_size=max(o.batch_size, 256))
        rows = [tile(pictures, len(pictures), cell=72, labels=[f"{s:.2f}" for s in result.scores[:, column]]),
                tile([overlay(p, normalize(h)) for p, h in zip(pictures, masks)], len(pictures), cell=72)]
        shown.append(Figure(np.concatenate(rows, axis=0), f"{layer} unit {unit}: top {len(chosen)} images "
                                                          "(activation above each) and their occlusion masks"))
    return Section("top-k", "Top-K images per unit",
                   f"For units of {layer}, the test images that activate each most, and below them where a "
                   f"{window}×{window} occluder (stride {stride}) lowers that unit most, in jet "
                   "(seed 003)." + note, figures=shown)


def embedding(ctx: Context) -> Section:
    o = ctx.options
    layer = o.embed_layer or flat_feature_layer(ctx.model)
    count = min(o.embed_count, len(ctx.x))
    if count < 3 or layer is None:
        why = (f"a 2-D map needs at least 3 images and this report has {count}" if count < 3 else
               f"{ctx.model.source} has no flat layer before its logits (choose one with embed_layer)")
        return Section("embedding", "Embedding of the features", f"No map of the features is drawn: {why}.")
    result = embed(ctx.model, ctx.x[:count], layer, method=o.embed_method, seed=o.seed, batch_size=o.batch_size)
    labels = ctx.labels[:count] if ctx.labels is not None else ctx.predicted[:count]
    method = "t-SNE" if result.method == "tsne" else "PCA"
    image = figures.scatter(result.points, labels, ctx.class_names, f"{method} of {layer} ({count} images)")
    return Section("embedding", f"{method} of the features",
                   f"A 2-D {method} map of {layer}'s features of {count} test images, coloured by "
                   f"{'true' if ctx.labels is not None else 'predicted'} class (seed 003).",
                   figures=(Figure(image),))


# L2 alone leaves high-frequency patterns; TV, jitter and a light blur give legible digits (all still
# classified as their class with p = 1.00 on the demo model).
MAXIMIZE_REGULARIZERS = {"l2": 1e-3, "tv": 5e-3, "blur_every": 10, "blur_sigma": 0.5}


# Fewest maximization steps a report shows, however slow the model; float64 forward passes per
# image of a finite-difference check (a few directions, two sides, at step 0 and every 50 steps).
MIN_MAXIMIZE_STEPS = 10
MAXIMIZE_CHECK_PASSES = 30
# Forward passes per image and step, about (the objective's forward and backward graph, penalties,
# jitter and blur: 0.23 s a step at 19 ms a pass on SqueezeNet).
MAXIMIZE_STEP_PASSES = 12


def maximization(ctx: Context) -> Section:
    o = ctx.options
    classes, chosen = list(range(len(ctx.class_names))), "every class"
    if len(classes) > o.maximize_classes:
        classes = list(dict.fromkeys(int(t) for t in ctx.targets))[:o.maximize_classes]
        chosen = f"{len(classes)} of {len(ctx.class_names)} classes, the samples'"
    share = ctx.fits(MAXIMIZE_STEP_PASSES * len(classes) * o.maximize_steps)
    steps = min(o.maximize_steps, max(MIN_MAXIMIZE_STEPS, int(o.maximize_steps * share)))
    title = f"Activation maximization of {chosen}"
    seconds, runtime = ctx.float64_pass
    checked = ctx.fits(MAXIMIZE_CHECK_PASSES * len(classes) * seconds / ctx.seconds_per_pass) >= 1
    try:
        result = maximize(ctx.model, "logits", classes, "logit", steps=steps, lr=0.05, seed=o.seed,
                          check_every=50 if checked else None,
                          regularizers=MAXIMIZE_REGULARIZERS, modifiers={"jitter": 2})
    except GradientCheckFailed as error:  # the report says so instead of drawing from a wrong gradient
        return Section("maximization", title, f"The finite-difference check stopped the ascent, so no image is shown: {error}.")
    pictures = [as_rgb8(image) for image in to_hwc(result.images, ctx.model.input_layout)]
    grid = tile(pictures, len(pictures), cell=96, labels=[ctx.name(c) for c in classes])
    names = [ctx.name(c) for c in classes]
    curves = figures.curves({"class logit − penalties": result.series("total"),
                             "image L2 norm ‖x‖": result.series("image_norm")}, names,
                            f"activation maximization, {steps} steps")
    errors = result.fd_errors
    check = (f"{errors.size} finite-difference checks passed, largest relative error {errors.max():.1e}"
             if errors.size else "no finite-difference check found a smooth direction" if checked else
             f"the finite-difference check is left out: its float64 runs take {seconds:.2g} s per image in {runtime} here")
    return Section("maximization", title,
                   f"Images grown from grey by gradient ascent on each class logit (seeds 000/004) with tf-keras-vis' "
                   f"regularisers — L2 and total-variation penalties, 2-pixel jitter, a light blur every 10 steps — "
                   f"all classes in one batch; {check}."
                   + (ctx.sized_down(f"{steps} steps (asked: {o.maximize_steps})") if steps < o.maximize_steps else ""),
                   figures=(Figure(grid, "one image per class"), Figure(curves, "objective and image norm per step")))


# float64 runs of the two random images per checked layer, about: 7 forward ones and a share of the backward.
GRADCHECK_RUNS = 8


def gradcheck(ctx: Context) -> Section:
    o = ctx.options
    layers = list(o.gradcheck_layers) if o.gradcheck_layers is not None else differentiable_layers(ctx.model)
    seconds, runtime = ctx.float64_pass
    per_layer = 2 * GRADCHECK_RUNS * seconds / ctx.seconds_per_pass  # in forward passes of the model
    if ctx.fits(per_layer) < 1:  # float32 differences of a deep network would report noise as failures
        return Section("gradcheck", "Gradient check",
                       f"The gradient check is left out: its float64 runs take {seconds:.2g} s per image in {runtime} "
                       f"here, more than the section's {ctx.options.section_seconds:g} s allow even for the input "
                       "alone; `onnxsight gradcheck` runs it.")
    asked = len(layers)
    kept = max(1, int(asked * ctx.fits(per_layer * (asked + 1)))) if layers else 0
    layers = [layers[i] for i in np.linspace(0, asked - 1, kept).round().astype(int)] if kept < asked else layers
    low, high = float(ctx.x.min()), float(ctx.x.max())
    x = np.random.default_rng(o.seed).uniform(low, high, (2, *ctx.x.shape[1:])).astype(ctx.x.dtype)
    report = check_gradients(ctx.model, x, wrt=["input", *layers], seed=o.seed)
    rows = [(row.wrt, row.relative_error, row.analytic, row.numeric, f"{row.kinks}/{report.directions}", row.status)
            for row in report.rows]
    return Section("gradcheck", "Gradient check",
                   f"Every gradient above comes from ONNX graphs that onnxsight adds; here they are compared with "
                   f"{report.precision} central differences ({report.runtime}, tolerance {report.tolerance:g}) "
                   "along random directions on two random inputs: 'kink' means every step crossed a ReLU or "
                   "max-pool switch."
                   + (ctx.sized_down(f"{kept} of {asked} layers, evenly spaced") if kept < asked else ""),
                   tables=(Table(("with respect to", "relative error", "analytic", "numeric", "kinks", "status"), rows),))


def _seconds_per_image(model: Model, x: np.ndarray, rows: int = 8) -> float:
    """Seconds per image of a forward pass in a batch of ``rows`` (copies of ``x``), the best of two."""
    batch, logits = np.resize(x, (rows, *x.shape[1:])), model.tensor("logits")
    spent = []
    for _ in range(2):
        started = time.perf_counter()
        model.run(batch, [logits], batch_size=rows)
        spent.append(time.perf_counter() - started)
    return min(spent) / rows


def _shape(shape) -> str:
    return "?" if shape is None else "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"


def _truth(ctx: Context, index: int) -> str:
    label = f"label {ctx.name(int(ctx.labels[index]))}, " if ctx.labels is not None else ""
    return f"{label}predicted {ctx.name(int(ctx.predicted[index]))}"


# id -> (section function, needs labels)
SECTIONS: dict[str, tuple[Callable[[Context], Section], bool]] = {
    "summary": (summary, False),
    "accuracy": (accuracy, True),
    "predictions": (predictions, False),
    "filters": (filters, False),
    "feature-maps": (feature_maps, False),
    "saliency": (saliency, False),
    "gradcam": (cams, False),
    "smoothgrad-ig": (smoothgrad_ig, False),
    "relevance": (relevance, False),
    "occlusion": (occlusion, False),
    "class-saliency": (class_saliency, True),
    "top-k": (top_k, False),
    "embedding": (embedding, False),
    "maximization": (maximization, False),
    "trust": (trust, False),
    "gradcheck": (gradcheck, False),
}
