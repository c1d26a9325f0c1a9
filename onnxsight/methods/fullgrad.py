"""FullGrad (Srinivas & Fleuret 2019) as pytorch-grad-cam computes it: the input-gradient term and
one bias-gradient term per biased spatial layer, each scaled per channel, upsampled and summed."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from onnxsight.engine import graph as gr
from onnxsight.engine import targets
from onnxsight.engine.model import Inputs, Model, take
from onnxsight.kernels import cam as k
from onnxsight.kernels.colors import normalize_each
from onnxsight.methods.common import Tally, require_image, rows_of, rows_per_run, spatial_size, split_inputs, with_context


def fullgrad(
    model: Model,
    x: Inputs,
    target: targets.Target = "predicted",
    *,
    upsample: str = "bilinear",
    normalize: bool = True,
    of: str = "logits",
    output: str | None = None,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """FullGrad maps of a batch ``x`` at the input's size, (N, H, W) float32.

    The map is ψ(|∇ₓf ⊙ x|) + Σ_b ψ(|∇_z f ⊙ b|) over every spatial (4-D) tensor z = Conv(…) + b,
    BatchNormalization (b = β − μγ/√(σ² + ε)) or a per-channel constant added to a 4-D tensor; ψ
    scales each channel's map to [0, 1] (min subtracted, divided by max + 1e-7), upsamples it and
    sums the channels, as pytorch-grad-cam does (its layers: Conv2d and BatchNorm2d with a bias). A
    BatchNorm folded into its convolution by the exporter is one bias term, as the graph has it; a
    model without biases (freshly initialised Keras BatchNorms fold to a Mul) has the input term only.
    target, of, output: as for :func:`onnxsight.gradcam`; upsample: "bilinear" (default, OpenCV as
    pytorch-grad-cam), "nearest" or "align_corners"; normalize: min-max scale each map (default True).
    All gradients come from one augmented graph, ``batch_size`` rows per run, each reported as
    ``progress(images done, images)``.
    """
    model = model.with_output(output)
    image, context = split_inputs(model, x)
    inputs = with_context(model, image, context)
    input_axis = require_image(model, "fullgrad")
    size = spatial_size(image, input_axis)
    biases = bias_terms(model)
    indices = model.resolve_target(inputs, target, of, batch_size)
    wrt = [model.input_name, *biases]
    tally, parts = Tally(len(image), progress), []
    for run in tally.runs(len(image), rows_per_run(model, batch_size)):
        grads = model.gradient(take(inputs, run), of=of, target=rows_of(indices, run), wrt=wrt, batch_size=batch_size)
        cam = k.fullgrad_term(grads[model.input_name] * image[run], input_axis, size, upsample)
        for tensor, (bias, axis) in biases.items():
            cam += k.fullgrad_term(grads[tensor] * bias, axis, size, upsample)
        parts.append(cam)
    cam = np.concatenate(parts)
    return (normalize_each(cam) if normalize else cam).astype(np.float32)


def bias_terms(model: Model) -> dict[str, tuple[np.ndarray, int]]:
    """{4-D data-path tensor: (its bias, broadcastable to it; its channel axis)} for FullGrad, in graph order."""
    graph = model.proto.graph
    data = gr.dependent_tensors(graph, model.input_names)
    terms = {}
    for node in graph.node:
        tensor = node.output[0] if node.output else ""
        if tensor not in data or len(model.shapes.get(tensor) or ()) != 4:
            continue
        found = _bias(graph, node, data)
        if found is not None and np.any(found[0]):  # a zero bias's term is zero
            terms[tensor] = found
    return terms


def _bias(graph: onnx.GraphProto, node: onnx.NodeProto, data: set[str]) -> tuple[np.ndarray, int] | None:
    def value(i: int) -> np.ndarray | None:
        return gr.constant_value(graph, node.input[i]) if i < len(node.input) and node.input[i] else None

    if node.op_type == "Conv" and value(2) is not None:
        return value(2).astype(np.float64).reshape(1, -1, 1, 1), 1
    if node.op_type == "BatchNormalization" and len(node.output) == 1:
        scale, beta, mean, var = (value(i) for i in range(1, 5))
        if any(v is None for v in (scale, beta, mean, var)):
            return None
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        return (beta - mean * scale / np.sqrt(var + eps)).astype(np.float64).reshape(1, -1, 1, 1), 1
    if node.op_type == "Add" and sum(i in data for i in node.input) == 1:
        constant = value(1) if node.input[0] in data else value(0)
        if constant is None or constant.ndim > 4:
            return None
        aligned = constant.reshape((1,) * (4 - constant.ndim) + constant.shape)
        channels = [axis for axis in range(1, 4) if aligned.shape[axis] > 1]
        if aligned.shape[0] == 1 and len(channels) == 1:
            return aligned.astype(np.float64), channels[0]
    return None
