"""Explainer models: a classifier and one attribution method as a single plain ONNX graph.

The graph takes ``image`` (dynamic batch, the model's own input layout; a model with several
inputs: its primary input, the others keep their names) and an optional ``target`` (int64, one
class per image or one for all; default ``[-1]``: the predicted class) and returns
``probabilities`` (the model's output, its ``head`` for a model with several), ``target_class`` (the class each map
explains; an ONNX graph cannot reuse the input's name for an output) and ``heatmap`` (N, H, W),
min-max normalised per image. Everything runs inside the graph: the one-hot cotangent, the
gradient (onnxsight's VJP subgraphs), the CAM weighting, ReLU, bilinear ``Resize`` and the
normalisation, so any ONNX runtime or inference server returns the map.
The numbers equal ``onnxsight.saliency`` / ``onnxsight.gradcam`` with the options below.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxsight.engine.autodiff import build_vjp
from onnxsight.engine.autodiff.builder import GraphBuilder
from onnxsight.engine.autodiff.relevance import COMPOSITES as RELEVANCE  # lrp-epsilon, ..., deeptaylor: LRP heatmaps
from onnxsight.engine.dynamic_batch import with_dynamic_batch
from onnxsight.engine.graph import (
    free_name, live_nodes, opset_version, rename_tensor, runtime_compatible, tensor_names, toposorted, value_infos,
)
from onnxsight.engine.metadata import AUGMENTED, set_props
from onnxsight.engine.model import Model
from onnxsight.errors import InvalidArgument
from onnxsight.kernels.attribution import noise_scale, smoothgrad_noise
from onnxsight.methods.cam import check_cam_layer, default_cam_layer
from onnxsight.methods.common import attributed_inputs, require_image
from onnxsight.methods.relevance import relevance_modifier

METHODS = ("saliency", "guided", "gradcam", "guided-gradcam", "smoothgrad", "deeplift")  # served by default
RELEVANCE_METHODS = tuple(RELEVANCE)  # exported and served when asked for by name
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


def export_explainer(
    model: Model,
    method: str = "gradcam",
    *,
    layer: str | None = None,
    samples: int = 20,
    noise: float = 0.15,
    seed: int = 0,
) -> onnx.ModelProto:
    """The explainer ModelProto of ``model`` for ``method`` (see the module docstring).

    method: "saliency" (|gradient| of the target logit, max over channels), "guided" (the same
        with guided backprop), "gradcam" (Grad-CAM at ``layer``, ReLU, bilinear upsampling),
        "guided-gradcam" (Grad-CAM × guided saliency), "smoothgrad" (mean |gradient| over
        ``samples`` noisy copies with σ = ``noise`` × each image's value range), "deeplift"
        (channel sum of DeepLIFT attributions against the black reference, see ``_deeplift_explainer``),
        or an LRP rule "lrp-epsilon", "lrp-zplus", "lrp-epsilon-plus", ..., "deeptaylor" (the relevance
        summed over channels, not normalised: ``onnxsight.lrp(m, x, t, rule=...).sum(channel axis)``,
        default options).
    layer: the CAM layer, default :func:`onnxsight.methods.cam.default_cam_layer`.
    samples, noise, seed: SmoothGrad's noise, drawn once at export with
        :func:`onnxsight.kernels.attribution.smoothgrad_noise` for a single image and baked into
        the graph: every image of a batch gets the noise ``onnxsight.saliency`` gives one image
        (with several inputs, every float input gets its own, as there).
    Equal to, per image: ``onnxsight.saliency(m, x, t, modifier=None|"guided", normalize=True,
    [smooth_samples=samples, smooth_noise=noise, seed=seed])`` and ``onnxsight.gradcam(m, x, t,
    layer=layer, guided=False|True)``.
    """
    model = with_dynamic_batch(model)
    input_axis, cam_layer = _check(model, method, layer, samples)
    if method == "deeplift":
        return _deeplift_explainer(model, input_axis)
    others = [name for name in model.input_names if name != model.input_name]
    tracked = [model.input_name, model.head, model.tensor("logits"), *others]
    proto, names = _free_public_names(model.proto, tracked + ([model.tensor(cam_layer)] if cam_layer else []))
    x, output, logits = names[:3]
    others = dict(zip(others, names[3:3 + len(others)]))  # public name -> name in the graph
    cam_tensor = names[-1] if cam_layer else None
    copies = samples if method == "smoothgrad" else 0
    if copies:  # the other inputs are read through their rows tiled to the noisy copies'
        for public, inner in list(others.items()):
            others[public] = free_name(tensor_names(proto.graph), f"{inner}/rows")
            rename_tensor(proto.graph, inner, others[public])
    gradients = {
        "saliency": [_Gradient(None, x)],
        "guided": [_Gradient("guided", x)],
        "smoothgrad": [_Gradient(None, x)],
        "gradcam": [_Gradient(None, cam_tensor, (cam_tensor,))],
        "guided-gradcam": [_Gradient(None, cam_tensor, (cam_tensor,)), _Gradient("guided", x)],
        **{name: [_Gradient(relevance_modifier(name.removeprefix("lrp-")), x)] for name in RELEVANCE},
    }[method]
    cotangents, grads = [], []
    for gradient in gradients:
        vjp = build_vjp(proto, logits, [gradient.wrt], modifier=gradient.modifier, keep_outputs=gradient.keep)
        proto = vjp.model
        cotangents.append(vjp.cotangent)
        grads.append(vjp.gradients[gradient.wrt])

    infos = value_infos(proto)
    elem = infos[x].type.tensor_type.elem_type
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
        noised = attributed_inputs(model)  # as onnxsight.saliency: input k of these draws with seed + k
        noisy = _noisy_copies(g, IMAGE, model.input_shape, samples, noise, seed + noised.index(model.input_name), elem)
        _alias(g, g.op("Concat", IMAGE, noisy, axis=0), x)
        for name, inner in others.items():
            shape, kind = model.shapes[name], infos[inner].type.tensor_type.elem_type
            rows = g.op("Concat", name, _noisy_copies(g, name, shape, samples, noise, seed + noised.index(name), kind),
                        axis=0) if name in noised else g.op("Tile", name, g.ints([samples + 1] + [1] * (len(shape) - 1)))
            _alias(g, rows, inner)
    else:
        _alias(g, IMAGE, x)
    clean = (lambda t: g.op("Slice", t, g.ints([0]), batch)) if copies else (lambda t: t)

    g.scope("target")
    resolved, cotangent = _one_hot(g, clean(logits), logits, batch, copies)
    if method in RELEVANCE:  # onnxsight.lrp's start="score": the relevance of the logits is the target's logit
        cotangent = g.op("Mul", cotangent, logits)
    for name in cotangents:
        _alias(g, cotangent, name)

    g.scope("heatmap")
    if method in RELEVANCE:  # the relevance summed over channels, raw: its sum is the explained logit
        heatmap = g.reduce_sum(grads[0], [input_axis], keepdims=0)
    elif method in ("saliency", "guided"):
        heatmap = _normalize(g, _reduce(g, "ReduceMax", g.op("Abs", grads[0]), [input_axis], keepdims=0))
    elif method == "smoothgrad":
        rows = g.op("Slice", grads[0], batch, g.ints([np.iinfo(np.int64).max]))
        per_sample = g.op("Reshape", rows, g.ints([samples, -1, *model.input_shape[1:]]))
        mean = _reduce(g, "ReduceMean", g.op("Abs", per_sample), [0], keepdims=0)
        heatmap = _normalize(g, _reduce(g, "ReduceMax", mean, [input_axis], keepdims=0))
    else:
        heatmap = _gradcam(g, cam_tensor, grads[0], model.channel_axis(cam_layer), size)
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
        "samples": samples if copies else None, "noise": noise if copies else None, "seed": seed if copies else None,
        "source": Path(model.source).name, "input_layout": model.input_layout, "optional_inputs": [TARGET],
        "meaning": ("heatmap: (N, H, W) relevance summed over channels, not normalised" if method in RELEVANCE else
                    "heatmap: (N, H, W) min-max normalised per image") + "; target < 0 (default) explains the predicted class",
    }
    replaced = [x, *cotangents, *(others.values() if copies else ())]
    return _assemble(proto, g.nodes, inputs, outputs, replaced, description)


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
    proto, (x, output, logits) = _free_public_names(model.proto, [model.input_name, model.head, model.tensor("logits")])
    vjp = build_vjp(proto, logits, [x], modifier=Modifier(MODIFIER, eps=EPS))
    proto = vjp.model
    infos = value_infos(proto)
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
    """The input's channel axis and the CAM layer (None for saliency methods), or InvalidArgument."""
    if method not in METHODS + RELEVANCE_METHODS:
        raise InvalidArgument(f"unknown explainer method {method!r}; choose one of {', '.join(METHODS + RELEVANCE_METHODS)}")
    input_axis = require_image(model, "an explainer")
    logits = model.tensor("logits")
    shape = model.shapes.get(logits, ())
    if len(shape) < 2 or sum(d != 1 for d in shape[1:]) != 1:
        raise InvalidArgument(f"an explainer needs class scores of shape (N, classes), or that with axes of length 1 "
                              f"such as (N, classes, 1, 1); {logits!r} has shape {model.shapes.get(logits)}")
    if method == "smoothgrad" and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
        raise InvalidArgument(f"samples must be an integer >= 1, got {samples!r}")
    if method in ("gradcam", "guided-gradcam"):
        return input_axis, default_cam_layer(model) if layer is None else check_cam_layer(model, layer)
    if layer is not None:
        raise InvalidArgument(f"--layer applies to gradcam and guided-gradcam, not to {method}")
    return input_axis, None


# ---- graph pieces -------------------------------------------------------------------------------
def _noisy_copies(g: GraphBuilder, image: str, input_shape, samples: int, noise: float, seed: int, elem: int) -> str:
    """(samples·N, ...) noisy copies, sample-major: ``image + ε_s · noise · (max − min)`` per image,
    with ``ε`` the standard normal draw ``onnxsight.saliency`` makes for a single image."""
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


def _gradcam(g: GraphBuilder, activation: str, gradient: str, channel_axis: int, size: tuple[int, int]) -> str:
    """Grad-CAM: channel weights = spatial mean of the gradient; ReLU(weighted sum); bilinear
    upsampling to ``size`` (``half_pixel``, as OpenCV's INTER_LINEAR); not normalised. (N, H, W)."""
    spatial = [axis for axis in (1, 2, 3) if axis != channel_axis]
    weights = _reduce(g, "ReduceMean", gradient, spatial, keepdims=1)
    cam = g.op("Relu", g.reduce_sum(g.op("Mul", activation, weights), [channel_axis], keepdims=0))
    stacked = g.unsqueeze(cam, [1])
    sizes = g.op("Concat", g.op("Slice", g.shape(stacked), g.ints([0]), g.ints([2])), g.ints(list(size)), axis=0)
    resized = g.op("Resize", stacked, "", "", sizes, mode="linear", coordinate_transformation_mode="half_pixel")
    return g.op("Squeeze", resized, g.ints([1]))


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


def _free_public_names(proto: onnx.ModelProto, tracked: list[str]) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``proto`` where tensors already called image/target/probabilities/heatmap are renamed;
    returns it and the (possibly new) names of ``tracked``."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    taken = {*tensor_names(graph), *(v.name for v in [*graph.output, *graph.value_info])}
    renames = {}
    for name in PUBLIC_NAMES:
        if name in taken:
            renames[name] = free_name(taken, name)
            taken.add(renames[name])
            rename_tensor(graph, name, renames[name])
    return model, [renames.get(n, n) for n in tracked]
