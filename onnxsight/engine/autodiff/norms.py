"""VJP rules of norms: p-norm reductions, Lp normalisation and pooling, group and RMS normalisation.

Where a norm is zero (an all-zero vector or window) its gradient is taken as zero, PyTorch's
subgradient, instead of 0/0.
"""

from __future__ import annotations

import numpy as np

from .builder import GraphBuilder
from .conv import summing_window
from .normalization import _normalized_backward, _per_channel
from .registry import Node, rule


# -- reductions over the node's own axes ---------------------------------------------------------------
def _axes(g: GraphBuilder, n: Node) -> str | None:
    """The reduced axes as an int64 tensor name (input from opset 18, attribute before); None for all."""
    if n.opset >= 18:
        n.constant(1)
        value = n.value(1)
        axes = None if n.input(1) is None or (value is not None and value.size == 0) else n.input(1)
    else:
        axes = g.ints(list(n.attr("axes"))) if n.attr("axes") else None
    if axes is None and n.attr("noop_with_empty_axes", 0):
        raise n.unsupported("noop_with_empty_axes with no axes")
    return axes


def _kept(g: GraphBuilder, n: Node, t: str, axes: str | None) -> str:
    """``t`` (shaped like the output) with the reduced axes back as size-1 dims."""
    return t if axes is None or n.attr("keepdims", 1) else g.unsqueeze(t, axes)


def _reduce(g: GraphBuilder, n: Node, op_type: str, x: str, axes: str | None) -> str:
    """``op_type`` over the node's axes, keeping them (axes as an input or attribute, as the opset wants)."""
    if op_type == "ReduceSum":
        return g.reduce_sum(x, axes, keepdims=1)
    if n.opset >= 18:
        return g.op(op_type, x, axes, keepdims=1)
    return g.op(op_type, x, axes=n.attr("axes"), keepdims=1)


def _rest(n: Node, grad: str) -> list[str | None]:
    return [grad] + [None] * (len(n.inputs) - 1)


def _over_nonzero(g: GraphBuilder, numerator: str, norm: str) -> str:
    """``numerator / norm``, zero where ``norm`` is zero."""
    zero = g.op("Equal", norm, g.const(0.0, like=norm))
    return g.where(zero, g.const(0.0, like=norm), g.op("Div", numerator, g.where(zero, g.const(1.0, like=norm), norm)))


@rule("ReduceSumSquare")
def reduce_sum_square(g: GraphBuilder, n: Node):
    kept = _kept(g, n, n.gy, _axes(g, n))
    return _rest(n, g.op("Mul", g.op("Add", n.x, n.x), kept))


@rule("ReduceL1")
def reduce_l1(g: GraphBuilder, n: Node):
    """sign(x)·dy (TensorFlow's gradient of reduce_sum(abs(x)): zero at zero)."""
    return _rest(n, g.op("Mul", g.op("Sign", n.x), _kept(g, n, n.gy, _axes(g, n))))


@rule("ReduceL2")
def reduce_l2(g: GraphBuilder, n: Node):
    """x·dy/y."""
    axes = _axes(g, n)
    return _rest(n, g.op("Mul", n.x, _over_nonzero(g, _kept(g, n, n.gy, axes), _kept(g, n, n.y, axes))))


@rule("ReduceLogSum")
def reduce_log_sum(g: GraphBuilder, n: Node):
    """dy/Σx, the sum read back as exp(y)."""
    axes = _axes(g, n)
    grad = g.op("Div", _kept(g, n, n.gy, axes), g.op("Exp", _kept(g, n, n.y, axes)))
    return _rest(n, g.op("Expand", grad, g.shape(n.x)))


@rule("ReduceLogSumExp")
def reduce_log_sum_exp(g: GraphBuilder, n: Node):
    """dy·softmax(x) over the axes: exp(x - y)."""
    axes = _axes(g, n)
    return _rest(n, g.op("Mul", _kept(g, n, n.gy, axes), g.op("Exp", g.op("Sub", n.x, _kept(g, n, n.y, axes)))))


@rule("ReduceProd")
def reduce_prod(g: GraphBuilder, n: Node):
    """dy times the product of the other elements, exact with zeros: with p the product of the
    non-zero elements and z the number of zeros, p/x where z = 0, p at the zero where z = 1, 0 else."""
    axes = _axes(g, n)
    x, kept = n.x, _kept(g, n, n.gy, axes)
    is_zero = g.op("Equal", x, g.const(0.0, like=x))
    nonzero = g.where(is_zero, g.const(1.0, like=x), x)
    product = _reduce(g, n, "ReduceProd", nonzero, axes)
    zeros = _reduce(g, n, "ReduceSum", g.mask(is_zero, x), axes)
    at_zero = g.op("Mul", product, g.mask(g.op("Equal", zeros, g.const(1.0, like=x)), x))
    elsewhere = g.op("Mul", g.op("Div", product, nonzero), g.mask(g.op("Equal", zeros, g.const(0.0, like=x)), x))
    return _rest(n, g.op("Mul", kept, g.op("Where", is_zero, at_zero, elsewhere)))


# -- Lp normalisation and pooling ------------------------------------------------------------------------
def _lp_slope(g: GraphBuilder, x: str, p: int) -> str:
    """d|x|ᵖ/dx / p = |x|ᵖ⁻¹·sign(x)."""
    if p == 1:
        return g.op("Sign", x)
    if p == 2:
        return x
    return g.op("Mul", g.op("Pow", g.op("Abs", x), g.const(p - 1.0, like=x)), g.op("Sign", x))


def _per_norm(g: GraphBuilder, gy: str, y: str, p: int) -> str:
    """dy·y¹⁻ᵖ for y = (Σ|x|ᵖ)^(1/p) (so that dx = that · |x|ᵖ⁻¹·sign(x)), zero where y is."""
    if p == 1:
        return gy
    return _over_nonzero(g, gy, y if p == 2 else g.op("Pow", y, g.const(p - 1.0, like=y)))


@rule("LpNormalization")
def lp_normalization(g: GraphBuilder, n: Node):
    """y = x/‖x‖ₚ along the axis (p = 1, 2): dx = (dy - d·Σ(dy·y))/‖x‖ₚ, d = y (p = 2) or sign(x)."""
    p, axis = n.attr("p", 2), n.attr("axis", -1)
    if p not in (1, 2):
        raise n.unsupported(f"p={p}")
    x = n.x
    if n.opset >= 18:
        norm = g.op("ReduceL2" if p == 2 else "ReduceL1", x, g.ints([axis]), keepdims=1)
    else:
        norm = g.op("ReduceL2" if p == 2 else "ReduceL1", x, axes=[axis], keepdims=1)
    inner = g.reduce_sum(g.op("Mul", n.gy, n.y), [axis], keepdims=1)
    direction = n.y if p == 2 else g.op("Sign", x)
    return [g.op("Div", g.op("Sub", n.gy, g.op("Mul", direction, inner)), norm)]


@rule("GlobalLpPool")
def global_lp_pool(g: GraphBuilder, n: Node):
    """y = (Σ over space |x|ᵖ)^(1/p): dx = dy·y¹⁻ᵖ·|x|ᵖ⁻¹·sign(x)."""
    p = int(n.attr("p", 2))
    return [g.op("Mul", _per_norm(g, n.gy, n.y, p), _lp_slope(g, n.x, p))]


@rule("LpPool")
def lp_pool(g: GraphBuilder, n: Node):
    """y = S(|x|ᵖ)^(1/p), S the window sum over zero padding (ceil_mode: over the windows'
    part inside the input): dx = Sᵀ(dy·y¹⁻ᵖ)·|x|ᵖ⁻¹·sign(x), Sᵀ a ones-kernel ConvTranspose."""
    p, kernel = int(n.attr("p", 2)), list(n.attr("kernel_shape"))
    window = summing_window(g, n, kernel)
    scaled = g.op("Reshape", _per_norm(g, n.gy, n.y, p), g.ints([-1, 1, *window.outputs()]))
    ones = g.const(np.ones([1, 1, *kernel]), like=n.x)
    summed = g.reshape_like(g.op("ConvTranspose", scaled, ones, **window.transpose_attrs()), n.x)
    return [g.op("Mul", summed, _lp_slope(g, n.x, p))]


# -- normalisations -------------------------------------------------------------------------------------
@rule("GroupNormalization")
def group_normalization(g: GraphBuilder, n: Node):
    """Normalised over (C/G, spatial...) per group: x viewed as (N, G, -1); scale and bias per
    channel (opset 21; onnx's checker refuses the per-group form of opsets 18-20 as deprecated)."""
    if n.opset < 21:
        raise n.unsupported("GroupNormalization before opset 21 (per-group scale and bias, deprecated by onnx)")
    x, scale, _ = n.inputs
    groups, rank = n.attr("num_groups"), g.rank(x)
    grouped = g.ints([0, groups, -1])
    gxhat = g.op("Reshape", g.op("Mul", n.gy, _per_channel(g, scale, rank)), grouped)
    dx, xhat = _normalized_backward(g, g.op("Reshape", x, grouped), gxhat, [2], n.attr("epsilon", 1e-5))
    others = [0, *range(2, rank)]
    grad_scale = g.reduce_sum(g.op("Mul", n.gy, g.reshape_like(xhat, x)), others, keepdims=0)
    grad_bias = g.reduce_sum(n.gy, others, keepdims=0)
    return [g.reshape_like(dx, x), grad_scale, grad_bias]


@rule("RMSNormalization")
def rms_normalization(g: GraphBuilder, n: Node):
    """y = x·r·scale, r = (mean(x²) + ε)^(-1/2) over the axes from ``axis`` on:
    dx = r·(dx̂ - x̂·mean(dx̂·x̂)), x̂ = x·r, dx̂ = dy·scale."""
    x, scale = n.inputs
    rank = g.rank(x)
    axes = list(range(n.attr("axis", -1) % rank, rank))
    mean_square = g.reduce_mean(g.op("Mul", x, x), axes)
    r = g.op("Reciprocal", g.op("Sqrt", g.op("Add", mean_square, g.const(n.attr("epsilon", 1e-5), like=x))))
    xhat = g.op("Mul", x, r)
    gxhat = g.op("Mul", n.gy, scale)
    dx = g.op("Mul", r, g.op("Sub", gxhat, g.op("Mul", xhat, g.reduce_mean(g.op("Mul", gxhat, xhat), axes))))
    return [dx, g.unbroadcast(g.op("Mul", n.gy, xhat), scale, n.y)]
