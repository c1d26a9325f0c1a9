"""VJP rules of normalisations: batch (inference), layer, instance, LRN, softmax."""

from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto

from .builder import GraphBuilder
from .registry import Node, rule


def _per_channel(g: GraphBuilder, v: str, rank: int) -> str:
    """A (C,) tensor shaped (C, 1, ..., 1) to broadcast against (N, C, spatial...)."""
    return g.unsqueeze(v, list(range(1, rank - 1))) if rank > 2 else v


def _only_first_output(n: Node) -> None:
    if any(c is not None for c in n.cots[1:]):
        raise n.unsupported("differentiating its secondary outputs")


def _normalized_backward(g: GraphBuilder, x: str, gxhat: str, axes: list[int], epsilon: float) -> tuple[str, str]:
    """For xhat = (x - mean)/sqrt(var + eps) over ``axes``: (dx, xhat) given d(loss)/d(xhat)."""
    centered = g.op("Sub", x, g.reduce_mean(x, axes))
    variance = g.reduce_mean(g.op("Mul", centered, centered), axes)
    rstd = g.op("Reciprocal", g.op("Sqrt", g.op("Add", variance, g.const(epsilon, like=x))))
    xhat = g.op("Mul", centered, rstd)
    return _through_normalization(g, gxhat, xhat, rstd, axes), xhat


def _through_normalization(g: GraphBuilder, gxhat: str, xhat: str, rstd: str, axes: list[int]) -> str:
    """dx = rstd · (dxhat - mean(dxhat) - xhat · mean(dxhat · xhat))."""
    inner = g.op("Sub", g.op("Sub", gxhat, g.reduce_mean(gxhat, axes)),
                 g.op("Mul", xhat, g.reduce_mean(g.op("Mul", gxhat, xhat), axes)))
    return g.op("Mul", inner, rstd)


@rule("BatchNormalization")
def batch_normalization(g: GraphBuilder, n: Node):
    """Inference mode: y = scale·(x - mean)/sqrt(var + eps) + B, a per-channel affine map of x."""
    n.constant(1, 2, 3, 4)
    if n.attr("training_mode", 0) or (len(n.outputs) > 1 and n.opset < 14):
        raise n.unsupported("training mode")
    scale, _, _, var = n.inputs[1:5]
    factor = g.op("Div", scale, g.op("Sqrt", g.op("Add", var, g.const(n.attr("epsilon", 1e-5), like=var))))
    return [g.op("Mul", n.gy, _per_channel(g, factor, g.rank(n.x))), None, None, None, None]


@rule("LayerNormalization")
def layer_normalization(g: GraphBuilder, n: Node):
    """xhat and 1/std from one LayerNormalization of x with unit scale (onnxruntime's fused kernel)
    instead of the moments recomputed in seven passes; in float64 the moments (its 1/std output is
    float32 at most)."""
    _only_first_output(n)
    rank = g.rank(n.x)
    axis = n.attr("axis", -1) % rank
    axes, scale, epsilon = list(range(axis, rank)), n.inputs[1], n.attr("epsilon", 1e-5)
    gxhat = g.op("Mul", n.gy, scale)
    if g.elem_type(n.x) == TensorProto.DOUBLE:
        dx, xhat = _normalized_backward(g, n.x, gxhat, axes, epsilon)
    else:
        unit = g.op("Expand", g.const(1.0, like=n.x), g.shape(scale))
        xhat, _, rstd = g.op("LayerNormalization", n.x, unit, axis=axis, epsilon=epsilon, outputs=3)
        if g.elem_type(n.x) != TensorProto.FLOAT:
            rstd = g.op("CastLike", rstd, n.x)
        dx = _through_normalization(g, gxhat, xhat, rstd, axes)
    grads = [dx, g.unbroadcast(g.op("Mul", n.gy, xhat), scale, n.y)]
    if len(n.inputs) > 2:
        grads.append(g.unbroadcast(n.gy, n.inputs[2], n.y) if n.input(2) else None)
    return grads


@rule("InstanceNormalization")
def instance_normalization(g: GraphBuilder, n: Node):
    rank = g.rank(n.x)
    scale, bias = n.inputs[1:3]
    gxhat = g.op("Mul", n.gy, _per_channel(g, scale, rank))
    dx, xhat = _normalized_backward(g, n.x, gxhat, list(range(2, rank)), n.attr("epsilon", 1e-5))
    others = [0, *range(2, rank)]
    return [dx, g.reduce_sum(g.op("Mul", n.gy, xhat), others, keepdims=0), g.reduce_sum(n.gy, others, keepdims=0)]


def _channel_window_sum(g: GraphBuilder, z: str, size: int, before: int, after: int) -> str:
    """sum_{c - before <= i <= c + after} z[:, i] for every channel c (a Conv over channels)."""
    folded_shape = g.op("Concat", g.dim(z, 0), g.ints([1]), g.dim(z, 1), g.ints([-1]), axis=0)
    folded = g.op("Reshape", z, folded_shape)
    ones = g.const(np.ones([1, 1, size, 1]), like=z)
    return g.reshape_like(g.op("Conv", folded, ones, pads=[before, 0, after, 0]), z)


@rule("LRN")
def lrn(g: GraphBuilder, n: Node):
    """y = x·d^-β, d = bias + α/size·Σ_window x²:
    dx = dy·d^-β - 2αβ/size · x · Σ_window'(dy·y/d), window' the mirrored window."""
    size = n.attr("size")
    alpha, beta, bias = n.attr("alpha", 1e-4), n.attr("beta", 0.75), n.attr("bias", 1.0)
    before, after = (size - 1) // 2, math.ceil((size - 1) / 2)
    x = n.x
    d = g.op("Add", g.const(bias, like=x),
             g.op("Mul", g.const(alpha / size, like=x), _channel_window_sum(g, g.op("Mul", x, x), size, before, after)))
    direct = g.op("Mul", n.gy, g.op("Pow", d, g.const(-beta, like=x)))
    through = _channel_window_sum(g, g.op("Div", g.op("Mul", n.gy, n.y), d), size, after, before)
    return [g.op("Sub", direct, g.op("Mul", g.const(2 * alpha * beta / size, like=x), g.op("Mul", x, through)))]


@rule("Softmax")
def softmax(g: GraphBuilder, n: Node):
    axis = n.attr("axis", -1 if n.opset >= 13 else 1)
    inner = g.reduce_sum(g.op("Mul", n.gy, n.y), [axis], keepdims=1)
    return [g.op("Mul", n.y, g.op("Sub", n.gy, inner))]


@rule("LogSoftmax")
def log_softmax(g: GraphBuilder, n: Node):
    axis = n.attr("axis", -1 if n.opset >= 13 else 1)
    total = g.reduce_sum(n.gy, [axis], keepdims=1)
    return [g.op("Sub", n.gy, g.op("Mul", g.op("Exp", n.y), total))]
