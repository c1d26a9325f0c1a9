"""Explainer models: a classifier and one attribution method as a single plain ONNX graph.

The graph takes ``image`` (dynamic batch, the model's own input layout; a model with several
inputs: its primary input, the others keep their names) and an optional ``target`` (int64, one
class per image or one for all; default ``[-1]``: the predicted class) and returns
``probabilities`` (the model's output, its ``head`` for a model with several), ``target_class`` (the class each map
explains; an ONNX graph cannot reuse the input's name for an output) and ``heatmap`` (N, H, W),
min-max normalised per image. Everything runs inside the graph: the one-hot cotangent, the
gradient (onnxsight's VJP subgraphs), the CAM weighting, ReLU, bilinear ``Resize`` and the
normalisation, so any ONNX runtime or inference server returns the map.
Methods that need many rows per image stack them along the batch inside the graph: SmoothGrad's
noisy copies and Integrated Gradients' path points after the N images, copy-major (copy s of image n
at row N + s·N + n), in one VJP run; occlusion's copies (windows × N) the same way when they take
less than ``OCCLUSION_CHUNK_BYTES`` of activations per image, else in the steps of a ``Loop`` that
repeats the model's forward nodes, so that memory does not grow with the number of windows.
Every map is reduced back to N maps, for any N, and an image's map does not depend on the other
images of its batch. Memory grows with N × samples (SmoothGrad) or N × steps (IG) rows.
The numbers equal the library's methods with the options below (see :func:`export_explainer`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxsight.engine.autodiff import build_vjp
from onnxsight.engine.autodiff.backward import MIN_OPSET
from onnxsight.engine.autodiff.builder import GraphBuilder
from onnxsight.engine.autodiff.relevance import COMPOSITES as RELEVANCE  # lrp-epsilon, ..., deeptaylor: LRP heatmaps
from onnxsight.engine.dynamic_batch import with_dynamic_batch
from onnxsight.engine.graph import (
    free_name, live_nodes, opset_version, rename_tensor, runtime_compatible, tensor_names, toposorted,
)
from onnxsight.engine.metadata import AUGMENTED, set_props
from onnxsight.engine.opset import upgrade
from onnxsight.engine.model import Model
from onnxsight.errors import InvalidArgument
from onnxsight.kernels import attribution
from onnxsight.kernels import cam as cam_kernels
from onnxsight.kernels import occlusion as occlusion_kernels
from onnxsight.kernels.attribution import noise_scale, smoothgrad_noise
from onnxsight.methods.cam import check_cam_layer, default_cam_layer
from onnxsight.methods.common import attributed_inputs, require_image
from onnxsight.methods.occlusion import CHUNK_BYTES as OCCLUSION_CHUNK_BYTES
from onnxsight.methods.occlusion import default_window
from onnxsight.methods.relevance import relevance_modifier

CAM_METHODS = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam")  # onnxsight.gradcam's variant names
# Served by default. Each explainer a server offers costs one export and one session at start-up (about 1 s
# for the seed CNN, 3 to 15 s for MobileNetV2 at 96x96 on 2 loaded cores: these six about 55 s, the seven
# newer ones 35 s more), so the others are served when asked for by name.
METHODS = ("saliency", "guided", "gradcam", "guided-gradcam", "smoothgrad", "deeplift")
RELEVANCE_METHODS = tuple(RELEVANCE)
NAMED_METHODS = ("gradient-x-input", "ig", *CAM_METHODS[1:], "occlusion", *RELEVANCE_METHODS)
ALL_METHODS = METHODS + NAMED_METHODS
IG_BASELINES = ("black", "grey", "gray")  # or a number
IMAGE, TARGET = "image", "target"  # inputs
PROBABILITIES, TARGET_CLASS, HEATMAP = "probabilities", "target_class", "heatmap"  # outputs
PUBLIC_NAMES = (IMAGE, TARGET, PROBABILITIES, TARGET_CLASS, HEATMAP)
EXPLAINER = "onnxsight.explainer"  # metadata key: JSON description of the explainer
PREDICTED = -1  # a target below 0 means "the predicted class"
_IR_VERSION = 8  # inputs with an initializer (optional inputs) need IR >= 4
_BATCH, _TARGETS = "N", "targets"  # symbolic dims of the public tensors


@dataclass(frozen=True)
class _Gradient:
    """One VJP subgraph to add: its backprop modifier, the tensor to differentiate with respect to,
    and (for CAMs) the tensor whose activation is kept as an output."""

    modifier: str | None
    wrt: str
    keep: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Copies:
    """The rows a method stacks after the N images, ``count`` per image, copy-major: ``build(g)``
    returns the (count·N, ...) copies of the primary input; ``noised``: the other inputs that get
    their own noise (SmoothGrad), the rest are tiled."""

    count: int
    build: Callable[[GraphBuilder], str]
    noised: tuple[str, ...] = ()


def export_explainer(
    model: Model,
    method: str = "gradcam",
    *,
    layer: str | None = None,
    samples: int = 20,
    noise: float = 0.15,
    seed: int = 0,
    steps: int = 50,
    baseline: str | float = "black",
    quadrature: str = "riemann_trapezoid",
    window: int | tuple[int, int] | None = None,
    stride: int | tuple[int, int] | None = None,
    fill: float | str = 0.0,
) -> onnx.ModelProto:
    """The explainer ModelProto of ``model`` for ``method`` (see the module docstring).

    method: "saliency" (|gradient| of the target logit, max over channels), "guided" (the same
        with guided backprop), "gradient-x-input" (gradient × image summed over channels), "gradcam",
        "gradcam++", "xgradcam", "layercam", "hirescam" (the CAM variant at ``layer``, ReLU, bilinear
        upsampling), "guided-gradcam" (Grad-CAM × guided saliency), "smoothgrad" (mean |gradient| over
        ``samples`` noisy copies with σ = ``noise`` × each image's value range), "ig" (Integrated
        Gradients summed over channels), "occlusion" (the target logit's drop under a sliding window),
        "deeplift" (channel sum of DeepLIFT attributions against the black reference, see
        ``_deeplift_explainer``), or an LRP rule "lrp-epsilon", "lrp-zplus", "lrp-epsilon-plus", ...,
        "deeptaylor" (the relevance summed over channels, not normalised:
        ``onnxsight.lrp(m, x, t, rule=...).sum(channel axis)``, default options).
    layer: the CAM layer, default :func:`onnxsight.methods.cam.default_cam_layer`.
    samples, noise, seed: SmoothGrad's noise, drawn once at export for one image with
        :func:`onnxsight.kernels.attribution.smoothgrad_noise` (its unit draws are the same for every
        image of a batch) and baked into the graph (with several inputs, every float input gets its
        own, as there).
    steps, baseline, quadrature: Integrated Gradients' path points, baked in: ``baseline`` "black"
        (zeros), "grey" (each image's midpoint (min + max) / 2) or a number; ``quadrature`` a rule
        of :func:`onnxsight.kernels.attribution.path_nodes`.
    window, stride, fill: occlusion's windows, baked in (defaults :func:`onnxsight.methods.occlusion.default_window`);
        ``fill`` a number or "mean" (each image's per-channel mean). Copies that take more than
        ``OCCLUSION_CHUNK_BYTES`` of activations per image run in the steps of a Loop.
    Equal to, per image, with ``normalize_each`` the min-max scaling:
    ``onnxsight.saliency(m, x, t, modifier=None|"guided", normalize=True, [smooth_samples=samples,
    smooth_noise=noise, seed=seed])``, ``normalize_each(onnxsight.saliency(m, x, t, times_input=True,
    absolute=False, reduce="sum"))``, ``onnxsight.gradcam(m, x, t, layer=layer, variant=method,
    guided=False|True)``, ``normalize_each(onnxsight.integrated_gradients(m, x, t, steps=steps,
    baseline=baseline, method=quadrature, reduce="sum"))`` and ``normalize_each(onnxsight.occlusion(m,
    x, t, window=window, stride=stride, fill=fill))``.
    """
    model = with_dynamic_batch(model)
    input_axis, cam_layer = _check(model, method, layer, samples)
    if method == "deeplift":
        return _deeplift_explainer(model, input_axis)
    others = [name for name in model.input_names if name != model.input_name]
    tracked = [model.input_name, model.head, model.tensor("logits"), *others]
    proto, names, infos = _free_public_names(model, tracked + ([model.tensor(cam_layer)] if cam_layer else []))
    x, output, logits = names[:3]
    others = dict(zip(others, names[3:3 + len(others)]))  # public name -> name in the graph
    cam_tensor = names[-1] if cam_layer else None
    if method == "occlusion":  # no VJP to raise the opset to the one the added ops need
        proto = upgrade(proto, MIN_OPSET)
    elem = next(v for v in proto.graph.input if v.name == x).type.tensor_type.elem_type
    copies, options = _copies(model, method, input_axis, elem, dict(
        samples=samples, noise=noise, seed=seed, steps=steps, baseline=baseline, quadrature=quadrature,
        window=window, stride=stride, fill=fill))
    if copies:  # the other inputs are read through their rows tiled (or noised) to the copies'
        for public, inner in list(others.items()):
            others[public] = free_name(tensor_names(proto.graph), f"{inner}/rows")
            rename_tensor(proto.graph, inner, others[public])
            infos[others[public]] = infos.pop(inner)
    cam = _Gradient(None, cam_tensor, (cam_tensor,))
    gradients = {
        "saliency": [_Gradient(None, x)],
        "guided": [_Gradient("guided", x)],
        "gradient-x-input": [_Gradient(None, x)],
        "smoothgrad": [_Gradient(None, x)],
        "ig": [_Gradient(None, x)],
        "occlusion": [],
        **dict.fromkeys(CAM_METHODS, [cam]),
        "guided-gradcam": [cam, _Gradient("guided", x)],
        **{name: [_Gradient(relevance_modifier(name.removeprefix("lrp-")), x)] for name in RELEVANCE},
    }[method]
    cotangents, grads = [], []
    for gradient in gradients:
        vjp = build_vjp(proto, logits, [gradient.wrt], modifier=gradient.modifier, keep_outputs=gradient.keep,
                        infos=infos)
        proto, infos = vjp.model, vjp.infos
        cotangents.append(vjp.cotangent)
        grads.append(vjp.gradients[gradient.wrt])

    size = tuple(d for axis, d in enumerate(model.input_shape) if axis not in (0, input_axis))
    classes = math.prod(model.shapes[model.tensor("logits")][1:])
    inputs = [
        helper.make_tensor_value_info(IMAGE, elem, [_BATCH, *model.input_shape[1:]]),
        helper.make_tensor_value_info(TARGET, TensorProto.INT64, [_TARGETS]),
        *(helper.make_tensor_value_info(name, infos[inner].type.tensor_type.elem_type, [_BATCH, *model.shapes[name][1:]])
          for name, inner in others.items() if copies),
    ]
    outputs = [
        helper.make_tensor_value_info(PROBABILITIES, infos[output].type.tensor_type.elem_type, [_BATCH, classes]),
        helper.make_tensor_value_info(TARGET_CLASS, TensorProto.INT64, [_BATCH]),
        helper.make_tensor_value_info(HEATMAP, elem, [_BATCH, *size]),
    ]
    g = GraphBuilder(infos | {v.name: v for v in inputs}, opset_version(proto), free_name([*tensor_names(proto.graph), *(n.name for n in proto.graph.node)], "onnxsight/explain"))

    g.scope("input")
    batch = g.dim(IMAGE, 0)
    if copies:  # rows: the N images, then copy s of image n at row N + s·N + n
        _alias(g, g.op("Concat", IMAGE, copies.build(g), axis=0), x)
        noised = attributed_inputs(model)  # as onnxsight.saliency: input k of these draws with seed + k
        for name, inner in others.items():
            shape, kind = model.shapes[name], infos[inner].type.tensor_type.elem_type
            rows = g.op("Concat", name, _noisy_copies(g, name, shape, samples, noise, seed + noised.index(name), kind),
                        axis=0) if name in copies.noised else g.op("Tile", name, g.ints([copies.count + 1] + [1] * (len(shape) - 1)))
            _alias(g, rows, inner)
    else:
        _alias(g, IMAGE, x)
    clean = (lambda t: g.op("Slice", t, g.ints([0]), batch)) if copies else (lambda t: t)
    copy_rows = lambda t: g.op("Slice", t, batch, g.ints([np.iinfo(np.int64).max]))  # noqa: E731
    per_copy = lambda t: g.op("Reshape", copy_rows(t), g.ints([copies.count, -1, *model.input_shape[1:]]))  # noqa: E731

    g.scope("target")
    resolved, cotangent = _one_hot(g, clean(logits), logits, batch, copies.count if copies else 0)
    if method in RELEVANCE:  # onnxsight.lrp's start="score": the relevance of the logits is the target's logit
        cotangent = g.op("Mul", cotangent, logits)
    for name in cotangents:
        _alias(g, cotangent, name)

    g.scope("heatmap")
    if method in RELEVANCE:  # the relevance summed over channels, raw: its sum is the explained logit
        heatmap = g.reduce_sum(grads[0], [input_axis], keepdims=0)
    elif method in ("saliency", "guided"):
        heatmap = _normalize(g, _reduce(g, "ReduceMax", g.op("Abs", grads[0]), [input_axis], keepdims=0))
    elif method == "gradient-x-input":
        heatmap = _normalize(g, g.reduce_sum(g.op("Mul", grads[0], IMAGE), [input_axis], keepdims=0))
    elif method == "smoothgrad":
        mean = _reduce(g, "ReduceMean", g.op("Abs", per_copy(grads[0])), [0], keepdims=0)
        heatmap = _normalize(g, _reduce(g, "ReduceMax", mean, [input_axis], keepdims=0))
    elif method == "ig":
        heatmap = _normalize(g, _integrated(g, per_copy(grads[0]), options, input_axis, elem))
    elif method == "occlusion" and copies:  # every window in one step: the copies are rows of this graph
        rows = g.reduce_sum(g.op("Mul", g.op("Flatten", logits, axis=1), g.op("Flatten", cotangent, axis=1)), [1], keepdims=0)
        scores = g.op("Reshape", copy_rows(rows), g.ints([copies.count, -1]))
        heatmap = _normalize(g, _occlusion_drops(g, clean(logits), scores, resolved, options, elem))
    elif method == "occlusion":
        scores = _occluded_scores(g, proto, x, logits, g.op("Flatten", cotangent, axis=1), options, model, input_axis, elem)
        heatmap = _normalize(g, _occlusion_drops(g, logits, scores, resolved, options, elem))
    else:
        heatmap = _cam(g, "gradcam" if method == "guided-gradcam" else method, cam_tensor, grads[0],
                       model.channel_axis(cam_layer), size)
        if method == "guided-gradcam":  # the CAM itself times the guided gradient, normalised once
            heatmap = _reduce(g, "ReduceMax", g.op("Abs", g.op("Mul", grads[1], g.unsqueeze(heatmap, [input_axis]))),
                              [input_axis], keepdims=0)
        heatmap = _normalize(g, heatmap)

    g.scope("outputs")
    _alias(g, g.op("Flatten", clean(output), axis=1), PROBABILITIES)  # (N, C, 1, 1) scores too
    _alias(g, resolved, TARGET_CLASS)
    _alias(g, heatmap, HEATMAP)
    description = {
        "method": method, "layer": cam_layer, "of": "logits", "head": model.head, "classes": classes,
        "samples": None, "noise": None, "seed": None, **{key: value for key, value in options.items() if key[0] != "_"},
        "source": Path(model.source).name, "input_layout": model.input_layout, "optional_inputs": [TARGET],
        "meaning": _meaning(method) + "; target < 0 (default) explains the predicted class",
    }
    replaced = [x, *cotangents, *(others.values() if copies else ())]
    return _assemble(proto, g.nodes, inputs, outputs, replaced, description)


def _meaning(method: str) -> str:
    """What the heatmap holds, for the description."""
    if method in RELEVANCE:
        return "heatmap: (N, H, W) relevance summed over channels, not normalised"
    if method in ("gradient-x-input", "ig"):
        return "heatmap: (N, H, W) signed attributions summed over channels, min-max normalised per image"
    if method == "occlusion":
        return "heatmap: (N, H, W) mean drop of the target logit under the windows covering a pixel, min-max normalised per image"
    return "heatmap: (N, H, W) min-max normalised per image"


def _copies(model: Model, method: str, input_axis: int, elem: int, given: dict) -> tuple[_Copies | None, dict]:
    """The rows ``method`` stacks after the images (None for one row per image), and its checked
    options as the description records them (keys starting with "_": graph constants, not recorded)."""
    if method == "smoothgrad":
        noised = attributed_inputs(model)  # as onnxsight.saliency: input k of these draws with seed + k
        options = {key: given[key] for key in ("samples", "noise", "seed")}
        build = lambda g: _noisy_copies(g, IMAGE, model.input_shape, given["samples"], given["noise"],  # noqa: E731
                                        given["seed"] + noised.index(model.input_name), elem)
        return _Copies(given["samples"], build, tuple(n for n in noised if n != model.input_name)), options
    if method == "ig":
        if attributed_inputs(model) != [model.input_name]:
            raise InvalidArgument(f"the ig explainer takes a model with one float input; {model.source} has "
                                  f"{', '.join(model.input_names)}")
        baseline = _ig_baseline(given["baseline"])
        alphas, weights = attribution.path_nodes(given["steps"], given["quadrature"])
        options = {"steps": given["steps"], "baseline": baseline, "quadrature": given["quadrature"], "_weights": weights}
        return _Copies(len(alphas), lambda g: _path_points(g, model.input_shape, baseline, alphas, elem)), options
    if method == "occlusion":
        height, width = (d for axis, d in enumerate(model.input_shape[1:], 1) if axis != input_axis)
        window, stride = default_window(height, width, given["window"], given["stride"])
        fill = given["fill"]
        if not (fill == "mean" or isinstance(fill, (int, float)) and not isinstance(fill, bool) and math.isfinite(fill)):
            raise InvalidArgument(f"an occlusion explainer's fill must be a finite number or 'mean'; got {fill!r}")
        rows, cols = occlusion_kernels.grid(height, width, window, stride)
        row_bytes = sum(4 * math.prod(shape[1:]) for shape in model.shapes.values()
                        if len(shape) > 1 and shape[0] is None and None not in shape[1:])
        chunk = int(np.clip(OCCLUSION_CHUNK_BYTES // max(1, row_bytes), 1, len(rows)))
        options = {"window": list(window), "stride": list(stride), "fill": fill, "windows_per_step": chunk,
                   "_rows": rows, "_cols": cols}
        if chunk < len(rows):  # a Loop over steps of windows, see _occluded_scores
            return None, options
        build = lambda g: _occluded_copies(g, IMAGE, model.input_shape, input_axis, g.const(rows), g.const(cols),  # noqa: E731
                                           fill, elem)
        return _Copies(len(rows), build), options
    return None, {}


def _deeplift_explainer(model: Model, input_axis: int) -> onnx.ModelProto:
    """DeepLIFT (rescale) against the black reference: the graph stacks ``[image; zeros]`` along the
    batch, takes the ``deeplift`` VJP with the one-hot cotangent in both halves, and maps
    Σ_channels image × multipliers of the image rows, min-max normalised. Equal per image to
    ``normalize_each(onnxsight.deeplift(m, x, t, reduce="sum"))``."""
    from onnxsight.engine.autodiff import Modifier
    from onnxsight.engine.autodiff.deeplift import EPS, MODIFIER

    if len(model.input_names) > 1:
        raise InvalidArgument(f"the deeplift explainer takes a model with one input; {model.source} has "
                              f"{', '.join(model.input_names)}")
    proto, (x, output, logits), infos = _free_public_names(model, [model.input_name, model.head, model.tensor("logits")])
    vjp = build_vjp(proto, logits, [x], modifier=Modifier(MODIFIER, eps=EPS), infos=infos)
    proto, infos = vjp.model, vjp.infos
    elem = infos[x].type.tensor_type.elem_type
    size = tuple(d for axis, d in enumerate(model.input_shape) if axis not in (0, input_axis))
    classes = math.prod(model.shapes[model.tensor("logits")][1:])
    inputs = [helper.make_tensor_value_info(IMAGE, elem, [_BATCH, *model.input_shape[1:]]),
              helper.make_tensor_value_info(TARGET, TensorProto.INT64, [_TARGETS])]
    outputs = [
        helper.make_tensor_value_info(PROBABILITIES, infos[output].type.tensor_type.elem_type, [_BATCH, classes]),
        helper.make_tensor_value_info(TARGET_CLASS, TensorProto.INT64, [_BATCH]),
        helper.make_tensor_value_info(HEATMAP, elem, [_BATCH, *size]),
    ]
    g = GraphBuilder(infos | {v.name: v for v in inputs}, opset_version(proto),
                     free_name([*tensor_names(proto.graph), *(n.name for n in proto.graph.node)], "onnxsight/explain"))
    g.scope("input")
    batch = g.dim(IMAGE, 0)
    _alias(g, g.op("Concat", IMAGE, g.zeros_like(IMAGE), axis=0), x)  # rows: the images, then their references
    clean = lambda t: g.op("Slice", t, g.ints([0]), batch)  # noqa: E731  (the image rows)
    g.scope("target")
    resolved, one_hot = _one_hot(g, clean(logits), clean(logits), batch, 0)
    _alias(g, g.op("Concat", one_hot, one_hot, axis=0), vjp.cotangent)
    g.scope("heatmap")
    attributions = g.op("Mul", IMAGE, clean(vjp.gradients[x]))
    heatmap = _normalize(g, g.reduce_sum(attributions, [input_axis], keepdims=0))
    g.scope("outputs")
    _alias(g, g.op("Flatten", clean(output), axis=1), PROBABILITIES)
    _alias(g, resolved, TARGET_CLASS)
    _alias(g, heatmap, HEATMAP)
    description = {
        "method": "deeplift", "layer": None, "of": "logits", "head": model.head, "classes": classes,
        "baseline": "black", "eps": EPS, "source": Path(model.source).name, "input_layout": model.input_layout,
        "optional_inputs": [TARGET],
        "meaning": "heatmap: (N, H, W) channel sum of DeepLIFT attributions against zeros, min-max normalised per "
                   "image; target < 0 (default) explains the predicted class",
    }
    return _assemble(proto, g.nodes, inputs, outputs, [x, vjp.cotangent], description)


def _check(model: Model, method: str, layer: str | None, samples: int) -> tuple[int, str | None]:
    """The input's channel axis and the CAM layer (None for other methods), or InvalidArgument."""
    if method not in ALL_METHODS:
        raise InvalidArgument(f"unknown explainer method {method!r}; choose one of {', '.join(ALL_METHODS)}")
    input_axis = require_image(model, "an explainer")
    logits = model.tensor("logits")
    shape = model.shapes.get(logits, ())
    if len(shape) < 2 or sum(d != 1 for d in shape[1:]) != 1:
        raise InvalidArgument(f"an explainer needs class scores of shape (N, classes), or that with axes of length 1 "
                              f"such as (N, classes, 1, 1); {logits!r} has shape {model.shapes.get(logits)}")
    if method == "smoothgrad" and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
        raise InvalidArgument(f"samples must be an integer >= 1, got {samples!r}")
    if method in (*CAM_METHODS, "guided-gradcam"):
        return input_axis, default_cam_layer(model) if layer is None else check_cam_layer(model, layer)
    if layer is not None:
        raise InvalidArgument(f"--layer applies to {', '.join(CAM_METHODS)} and guided-gradcam, not to {method}")
    return input_axis, None


def _ig_baseline(baseline) -> str | float:
    """IG's baseline as the explainer bakes it: "black", "grey" or a finite number."""
    if isinstance(baseline, str) and baseline in IG_BASELINES:
        return "grey" if baseline == "gray" else baseline
    if isinstance(baseline, (int, float, np.number)) and not isinstance(baseline, bool) and math.isfinite(baseline):
        return float(baseline)
    shown = repr(baseline) if isinstance(baseline, (str, int, float)) else f"a {type(baseline).__name__}"
    raise InvalidArgument(f"an ig explainer's baseline must be 'black', 'grey' or a finite number; got {shown}")


# ---- graph pieces -------------------------------------------------------------------------------
def _noisy_copies(g: GraphBuilder, image: str, input_shape, samples: int, noise: float, seed: int, elem: int) -> str:
    """(samples·N, ...) noisy copies, sample-major: ``image + ε_s · noise · (max − min)`` per image,
    with ``ε`` the unit draws ``onnxsight.saliency`` shares between the images of any batch."""
    one = np.zeros((1, *input_shape[1:]), np.float32)
    noise_scale(one, noise)  # validates ``noise``
    unit = smoothgrad_noise(one, samples, 1.0, "absolute", seed)  # (samples, 1, ...), σ = 1
    epsilon = numpy_helper.from_array(unit.astype(helper.tensor_dtype_to_np_dtype(elem)), name=f"{image}/noise")
    flat = g.op("Reshape", image, g.ints([0, -1]))
    spread = g.op("Sub", _reduce(g, "ReduceMax", flat, [1], 1), _reduce(g, "ReduceMin", flat, [1], 1))
    sigma = g.op("Mul", g.const(noise, like=image), spread)
    sigma = g.op("Reshape", sigma, g.ints([1, -1] + [1] * (len(input_shape) - 1)))
    copies = g.op("Add", g.unsqueeze(image, [0]), g.op("Mul", g.op("Constant", value=epsilon), sigma))
    return g.op("Reshape", copies, g.ints([-1, *input_shape[1:]]))


def _one_hot(g: GraphBuilder, clean_logits: str, logits: str, batch: str, copies: int) -> tuple[str, str]:
    """The class explained per image (``target``, or the argmax of the logits where it is < 0)
    and the one-hot cotangent of ``logits``; with ``copies`` noisy copies after the N clean rows,
    the clean rows get zeros and every copy its image's class."""
    requested = g.op("Expand", TARGET, batch)
    predicted = g.op("ArgMax", g.op("Flatten", clean_logits, axis=1), axis=1, keepdims=0)
    resolved = g.op("Where", g.op("Less", requested, g.ints(0)), predicted, requested)
    indices = resolved
    if copies:  # -1 matches no class: a zero row
        indices = g.op("Concat", g.op("Expand", g.ints([-1]), batch), g.op("Tile", resolved, g.ints([copies])), axis=0)
    classes = g.op("Gather", g.shape(g.op("Flatten", logits, axis=1)), g.ints(1))
    one_hot = g.op("Equal", g.unsqueeze(indices, [1]), g.op("Range", g.ints(0), classes, g.ints(1)))
    return resolved, g.op("Reshape", g.op("CastLike", one_hot, logits), g.shape(logits))  # (N, C, 1, 1) logits too


def _path_points(g: GraphBuilder, input_shape, baseline: str | float, alphas: np.ndarray, elem: int) -> str:
    """(S·N, ...) path points, step-major: ``b + α(x − b)`` for α < ½, ``x − (1 − α)(x − b)`` from
    there on (``kernels.attribution.path_points``, the same float32 operations)."""
    start = _baseline(g, baseline)
    delta = g.op("Sub", IMAGE, start)
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    shaped = np.asarray(alphas, np.float64).reshape((-1,) + (1,) * len(input_shape))
    near = g.op("Add", g.unsqueeze(g.op("Expand", start, g.shape(IMAGE)), [0]),
                g.op("Mul", g.const(shaped.astype(dtype)), g.unsqueeze(delta, [0])))
    far = g.op("Sub", g.unsqueeze(IMAGE, [0]), g.op("Mul", g.const((1 - shaped).astype(dtype)), g.unsqueeze(delta, [0])))
    points = g.op("Where", g.const(shaped < 0.5), near, far)
    return g.op("Reshape", points, g.ints([-1, *input_shape[1:]]))


def _baseline(g: GraphBuilder, baseline: str | float) -> str:
    """IG's reference: zeros ("black"), each image's midpoint ("grey", (N, 1, ...)) or a constant."""
    if baseline == "grey":
        flat = g.op("Reshape", IMAGE, g.ints([0, -1]))
        middle = g.op("Mul", g.const(0.5, like=IMAGE),
                      g.op("Add", _reduce(g, "ReduceMin", flat, [1], 1), _reduce(g, "ReduceMax", flat, [1], 1)))
        return g.op("Reshape", middle, g.ints([-1] + [1] * (g.rank(IMAGE) - 1)))
    return g.const(0.0 if baseline == "black" else baseline, like=IMAGE)


def _integrated(g: GraphBuilder, gradients: str, options: dict, input_axis: int, elem: int) -> str:
    """(N, H, W): the quadrature of the (S, N, ...) path gradients, times ``x − b``, summed over channels."""
    weights = np.asarray(options["_weights"]).reshape((-1,) + (1,) * (g.rank(IMAGE)))
    integral = g.reduce_sum(g.op("Mul", gradients, g.const(weights.astype(helper.tensor_dtype_to_np_dtype(elem)))), [0], keepdims=0)
    attributions = g.op("Mul", integral, g.op("Sub", IMAGE, _baseline(g, options["baseline"])))
    return g.reduce_sum(attributions, [input_axis], keepdims=0)


def _occluded_copies(g: GraphBuilder, image: str, input_shape, input_axis: int, rows: str, cols: str,
                     fill: float | str, elem: int) -> str:
    """(P·N, ...) copies, window-major: window p of the boolean ``rows`` (P, H) × ``cols`` (P, W) set to
    ``fill`` (a number, or "mean": each image's per-channel mean) in image n (``kernels.occlusion.occlude``)."""
    inside = g.op("And", g.unsqueeze(rows, [2]), g.unsqueeze(cols, [1]))  # (P, H, W)
    inside = g.unsqueeze(inside, [1, 1 + input_axis])  # (P, 1, ...) with the image's channel axis
    if fill == "mean":
        spatial = [axis for axis in (1, 2, 3) if axis != input_axis]
        value = g.unsqueeze(_reduce(g, "ReduceMean", image, spatial, keepdims=1), [0])
    else:
        value = g.const(np.asarray(fill, helper.tensor_dtype_to_np_dtype(elem)))
    copies = g.op("Where", inside, value, g.unsqueeze(image, [0]))
    return g.op("Reshape", copies, g.ints([-1, *input_shape[1:]]))


def _occluded_scores(g: GraphBuilder, proto: onnx.ModelProto, x: str, logits: str, one_hot: str, options: dict,
                     model: Model, input_axis: int, elem: int) -> str:
    """(P, N): the target logit of every occluded copy. A ``Loop`` runs the model's forward nodes on
    ``windows_per_step`` windows of all N images at a time (about ``OCCLUSION_CHUNK_BYTES`` of
    activations per image), so memory does not grow with the number of windows. (onnxruntime runs
    a Loop's body slower than the same nodes in the graph itself: 1.6x on the seed CNN, so windows
    that fit in one step are rows of the graph instead.)"""
    rows, cols, chunk = options["_rows"], options["_cols"], options["windows_per_step"]
    steps = -(-len(rows) // chunk)
    padded = [np.concatenate([a, np.zeros((steps * chunk - len(a), a.shape[1]), bool)]).reshape(steps, chunk, -1)
              for a in (rows, cols)]  # the padding windows cover nothing; their scores are dropped
    b = GraphBuilder({}, g.opset, f"{g.prefix}/windows")
    step, condition, image, target = (f"{b.prefix}/{name}" for name in ("step", "condition", "image", "target"))
    b.scope("copies")
    chunk_rows, chunk_cols = (b.op("Gather", b.const(a), step, axis=0) for a in padded)
    copies = _occluded_copies(b, image, model.input_shape, input_axis, chunk_rows, chunk_cols, options["fill"], elem)
    forward = live_nodes(list(proto.graph.node), {logits})
    inputs = {v.name: v for v in proto.graph.input if v.name not in {t.name for t in proto.graph.initializer}}
    renames = {x: copies}
    b.scope("inputs")  # the model's other inputs (outer scope), one row per copy
    for name in inputs.keys() - {x}:
        renames[name] = b.op("Tile", name, b.ints([chunk] + [1] * (len(model.shapes[name]) - 1)))
    renames |= {out: f"{b.prefix}/model/{out}" for node in forward for out in node.output if out}
    nodes = []
    for node in forward:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise InvalidArgument(f"the occlusion explainer cannot repeat a model with control flow ({node.op_type})")
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.input[:] = [renames.get(i, i) for i in node.input]
        copy.output[:] = [renames.get(o, o) for o in node.output]
        copy.name = f"{b.prefix}/model/{node.name or node.output[0]}"
        nodes.append(copy)
    b.scope("scores")
    tiled = b.op("Tile", target, b.ints([chunk, 1]))
    scores = b.reduce_sum(b.op("Mul", b.op("Flatten", renames[logits], axis=1), tiled), [1], keepdims=0)
    scores = b.op("Reshape", scores, b.ints([chunk, -1]))
    passed = [b.op("Identity", name) for name in (condition, image, target)]
    body = helper.make_graph(
        toposorted([*b.nodes, *nodes]), "occlusion_windows",
        [helper.make_tensor_value_info(step, TensorProto.INT64, []),
         helper.make_tensor_value_info(condition, TensorProto.BOOL, []),
         helper.make_tensor_value_info(image, elem, [_BATCH, *model.input_shape[1:]]),
         helper.make_tensor_value_info(target, elem, [_BATCH, None])],
        [helper.make_tensor_value_info(passed[0], TensorProto.BOOL, []),
         helper.make_tensor_value_info(passed[1], elem, [_BATCH, *model.input_shape[1:]]),
         helper.make_tensor_value_info(passed[2], elem, [_BATCH, None]),
         helper.make_tensor_value_info(scores, elem, [chunk, _BATCH])])
    # an explicit condition: onnx.reference runs no step without one
    *_, scores = g.op("Loop", g.ints(steps), g.const(np.array(True)), IMAGE, one_hot, outputs=3, body=body)
    flat = g.op("Reshape", scores, g.ints([steps * chunk, -1]))  # (steps, chunk, N) stacked
    return g.op("Slice", flat, g.ints([0]), g.ints([len(rows)]))


def _occlusion_drops(g: GraphBuilder, logits: str, scores: str, resolved: str, options: dict, elem: int) -> str:
    """(N, H, W): each image's target logit minus the (P, N) ``scores`` of its occluded copies, averaged
    per pixel over the windows covering it (``kernels.occlusion.average_drops``)."""
    clean = g.op("GatherElements", g.op("Flatten", logits, axis=1), g.unsqueeze(resolved, [1]), axis=1)  # (N, 1)
    drops = g.op("Sub", clean, g.op("Transpose", scores, perm=[1, 0]))  # (N, P)
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    rows, cols = options["_rows"].astype(np.float64), options["_cols"].astype(np.float64)
    counts = rows.T @ cols
    by_row = g.op("Mul", g.unsqueeze(drops, [2]), g.const(rows.astype(dtype)))  # (N, P, H)
    sums = g.op("MatMul", g.op("Transpose", by_row, perm=[0, 2, 1]), g.const(cols.astype(dtype)))  # (N, H, W)
    inverse = np.divide(1.0, counts, out=np.zeros_like(counts), where=counts > 0)
    return g.op("Mul", sums, g.const(inverse.astype(dtype)))


def _cam(g: GraphBuilder, variant: str, activation: str, gradient: str, channel_axis: int, size: tuple[int, int]) -> str:
    """A CAM: the variant's channel weights (``_CAM_WEIGHTS``), ReLU(weighted sum); bilinear
    upsampling to ``size`` (``half_pixel``, as OpenCV's INTER_LINEAR); not normalised. (N, H, W)."""
    spatial = [axis for axis in (1, 2, 3) if axis != channel_axis]
    weights = _CAM_WEIGHTS[variant](g, activation, gradient, spatial)
    cam = g.op("Relu", g.reduce_sum(g.op("Mul", activation, weights), [channel_axis], keepdims=0))
    stacked = g.unsqueeze(cam, [1])
    sizes = g.op("Concat", g.op("Slice", g.shape(stacked), g.ints([0]), g.ints([2])), g.ints(list(size)), axis=0)
    resized = g.op("Resize", stacked, "", "", sizes, mode="linear", coordinate_transformation_mode="half_pixel")
    return g.op("Squeeze", resized, g.ints([1]))


def _gradcam_plus_plus(g: GraphBuilder, a: str, grad: str, spatial: list[int]) -> str:
    """alpha = g² / (2 g² + Σ_ij a · g³) where g > 0 and that is not 0, else 0; weights Σ_ij alpha · relu(g)."""
    squared = g.op("Mul", grad, grad)
    denominator = g.op("Add", g.op("Mul", g.const(2.0, like=grad), squared),
                       g.op("Mul", g.reduce_sum(a, spatial), g.op("Mul", squared, grad)))
    used = g.op("And", g.op("Greater", grad, g.const(0.0, like=grad)),
                g.op("Not", g.op("Equal", denominator, g.const(0.0, like=grad))))
    alpha = g.where(used, g.op("Div", squared, g.where(used, denominator, 1.0)), 0.0)
    return g.reduce_sum(g.op("Mul", alpha, g.op("Relu", grad)), spatial)


# the CAM variants' channel weights in the graph, (g, activation, gradient, spatial axes) -> weights
# broadcastable to the activation: the formulas of ``onnxsight.kernels.cam`` (onnxsight's convention)
_CAM_WEIGHTS: dict[str, Callable[[GraphBuilder, str, str, list[int]], str]] = {
    "gradcam": lambda g, a, grad, spatial: _reduce(g, "ReduceMean", grad, spatial, keepdims=1),
    "gradcam++": _gradcam_plus_plus,
    "xgradcam": lambda g, a, grad, spatial: g.op("Div", g.reduce_sum(g.op("Mul", a, grad), spatial),
                                                 g.op("Add", g.reduce_sum(a, spatial), g.const(cam_kernels.XGRADCAM_EPS, like=a))),
    "layercam": lambda g, a, grad, spatial: g.op("Relu", grad),
    "hirescam": lambda g, a, grad, spatial: grad,
}


def _normalize(g: GraphBuilder, maps: str) -> str:
    """Min-max scale each map to [0, 1]; a constant map becomes 0 (``kernels.colors.normalize_each``)."""
    flat = g.op("Reshape", maps, g.ints([0, -1]))
    low = _reduce(g, "ReduceMin", flat, [1], keepdims=1)
    span = g.op("Sub", _reduce(g, "ReduceMax", flat, [1], keepdims=1), low)
    positive = g.op("Greater", span, g.const(0.0, like=maps))
    scaled = g.op("Div", g.op("Sub", flat, low), g.where(positive, span, 1.0))
    return g.op("Reshape", g.where(positive, scaled, 0.0), g.shape(maps))


def _reduce(g: GraphBuilder, op: str, x: str, axes: list[int], keepdims: int) -> str:
    """ReduceMax/Min/Mean over ``axes``: an input from opset 18 on, an attribute before."""
    if g.opset >= 18:
        return g.op(op, x, g.ints(axes), keepdims=keepdims)
    return g.op(op, x, axes=axes, keepdims=keepdims)


def _alias(g: GraphBuilder, source: str, name: str) -> None:
    """Makes the existing tensor ``source`` available under ``name`` (an Identity node)."""
    g.nodes.append(helper.make_node("Identity", [source], [name], name=f"{g.prefix}/alias/{name}"))


# ---- assembly -----------------------------------------------------------------------------------
def _assemble(proto: onnx.ModelProto, added: list[onnx.NodeProto], inputs, outputs, replaced: Iterable[str],
              description: dict) -> onnx.ModelProto:
    """The final model: the public inputs (``target`` with its default) and outputs, the nodes
    sorted topologically and pruned to what the outputs read, checked with ``full_check``."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    replaced = set(replaced)
    weights = {t.name for t in graph.initializer}  # old exports list them as inputs too: not the explainer's
    kept_inputs = [v for v in graph.input if v.name not in replaced and v.name not in weights]
    default = numpy_helper.from_array(np.array([PREDICTED], np.int64), name=TARGET)
    nodes = live_nodes(toposorted([*graph.node, *added]), {o.name for o in outputs})
    read = {i for node in nodes for i in node.input} | {o.name for o in outputs}
    initializers = [t for t in graph.initializer if t.name in read]
    del graph.node[:], graph.input[:], graph.output[:], graph.initializer[:], graph.value_info[:]
    graph.node.extend(nodes)
    graph.input.extend([*inputs, *(v for v in kept_inputs if v.name in read)])
    graph.output.extend(outputs)
    graph.initializer.extend([*initializers, default])
    model.ir_version = max(model.ir_version, _IR_VERSION)
    props = {p.key: p.value for p in model.metadata_props if p.key != AUGMENTED}
    props[EXPLAINER] = json.dumps(description)
    del model.metadata_props[:]
    set_props(model, props)
    runtime_compatible(model)
    onnx.checker.check_model(model, full_check=True)
    return model


def _free_public_names(source: Model, tracked: list[str]) -> tuple[onnx.ModelProto, list[str], dict]:
    """A copy of ``source``'s graph where tensors already called image/target/probabilities/heatmap are
    renamed; returns it, the (possibly new) names of ``tracked`` and ``source.values`` under the new names."""
    model = onnx.ModelProto()
    model.CopyFrom(source.proto)
    graph = model.graph
    taken = {*tensor_names(graph), *(v.name for v in [*graph.output, *graph.value_info])}
    renames = {}
    for name in PUBLIC_NAMES:
        if name in taken:
            renames[name] = free_name(taken, name)
            taken.add(renames[name])
            rename_tensor(graph, name, renames[name])
    values = {renames.get(name, name): info for name, info in source.values.items()}
    return model, [renames.get(n, n) for n in tracked], values
