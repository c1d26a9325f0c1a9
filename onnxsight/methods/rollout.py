"""Attention rollout (Abnar & Zuidema 2020) for vision transformers: how much each patch flows into
the class token (or, without one, into all tokens) through the attention layers and their
residual connections."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from onnxsight.engine import graph as g
from onnxsight.engine.model import DEFAULT_BATCH_SIZE, Inputs, Model
from onnxsight.errors import InvalidArgument
from onnxsight.kernels import cam as cam_kernels
from onnxsight.kernels import tokens as k
from onnxsight.kernels.colors import normalize_each
from onnxsight.methods.common import require_image, spatial_size, split_inputs, with_context


def attention_rollout(
    model: Model,
    x: Inputs,
    target: None = None,
    *,
    layers: Sequence[str] | None = None,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    residual: float = 0.5,
    tokens_grid: Sequence[int] | None = None,
    upsample: str = "bilinear",
    normalize: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """Attention rollout maps of a batch ``x`` at the input's size, (N, H, W) float32.

    target: must be None — rollout is class-agnostic (for a class, use ``gradcam`` on a token layer).
    layers: the attention probabilities (N, heads, T, T) to roll out, first layer first, as layer or
        tensor names; default :func:`attention_tensors` (every softmax over a T×T attention).
    head_fusion: "mean" (default), "max" or "min" over heads; ``discard_ratio`` (default 0) zeroes
        that fraction of the smallest fused weights per image (the diagonal kept); ``residual``
        (default 0.5) weighs the identity for the residual connection: ``r·I + (1 − r)·A``, rows
        renormalised (see :func:`onnxsight.kernels.tokens.rollout`).
    The map is the class token's row of the product over the patch tokens; with no extra token
    (mean-pooled models) the mean of all rows. tokens_grid: (rows, columns) of patches; default
    found from T and the input size (:func:`onnxsight.kernels.tokens.patch_grid`), the extra
    tokens being the leading ones. upsample: "bilinear" (default) or "nearest" to the input size;
    normalize: min-max per map (default True).
    """
    if target is not None:
        raise InvalidArgument("attention rollout is class-agnostic: pass target=None "
                              "(for a class, run gradcam at a token layer)")
    input_axis = require_image(model, "attention_rollout")
    cam_kernels.check_upsample(upsample)
    image, context = split_inputs(model, x)
    size = spatial_size(image, input_axis)
    names = attention_tensors(model) if layers is None else [model.tensor(name) for name in layers]
    attentions = model.run(with_context(model, image, context), names, batch_size=batch_size)
    for name, attention in zip(names, attentions):
        if attention.ndim != 4 or attention.shape[-1] != attention.shape[-2]:
            raise InvalidArgument(f"{name!r} is not an attention (N, heads, T, T); its shape is {attention.shape}")
    joint = k.rollout(attentions, head_fusion, discard_ratio, residual)
    tokens = joint.shape[-1]
    rows, columns = k.patch_grid(tokens, size) if tokens_grid is None else tokens_grid
    extra = tokens - rows * columns
    if extra < 0:
        raise InvalidArgument(f"a {rows}x{columns} grid needs {rows * columns} tokens; the attention has {tokens}")
    flow = joint[:, 0, extra:] if extra else joint.mean(axis=1)
    maps = cam_kernels.upsample(flow.reshape(len(image), rows, columns), size, upsample)
    return (normalize_each(maps) if normalize else maps).astype(np.float32)


def attention_tensors(model: Model) -> list[str]:
    """The outputs of the Softmax nodes on the input's path that give (N, heads, T, T) attention
    probabilities over the last axis, in graph order; InvalidArgument when there are none."""
    graph = model.proto.graph
    dependent = g.dependent_tensors(graph, model.input_names)
    found = []
    for node in graph.node:
        shape = model.shapes.get(node.output[0])
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        if (node.op_type == "Softmax" and node.output[0] in dependent and shape is not None and len(shape) == 4
                and axis in (-1, 3) and (shape[2] is None or shape[3] is None or shape[2] == shape[3])):
            found.append(node.output[0])
    if not found:
        raise InvalidArgument(f"{model.source} has no attention softmax (N, heads, T, T); name the attention "
                              "probabilities with layers=")
    return found
