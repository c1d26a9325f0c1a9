"""VJP rules of reductions: the gradient is broadcast back over the reduced axes."""

from __future__ import annotations

from .builder import GraphBuilder
from .registry import Node, rule

# Opset from which each reduction takes its axes as an input instead of an attribute.
_AXES_AS_INPUT = {"ReduceSum": 13, "ReduceMean": 18, "ReduceMax": 18, "ReduceMin": 18}


def _axes(g: GraphBuilder, n: Node) -> str | None:
    """The reduced axes as an int64 tensor name; None when every axis is reduced."""
    if n.opset >= _AXES_AS_INPUT[n.op_type]:
        n.constant(1)
        value = n.value(1)
        return None if n.input(1) is None or (value is not None and value.size == 0) else n.input(1)
    axes = n.attr("axes")
    return g.ints(list(axes)) if axes else None


def _kept(g: GraphBuilder, n: Node, t: str, axes: str | None) -> str:
    """``t`` (shaped like the output) with the reduced axes back as size-1 dims."""
    return t if axes is None or n.attr("keepdims", 1) else g.unsqueeze(t, axes)


def _is_noop(n: Node, axes: str | None) -> bool:
    return axes is None and bool(n.attr("noop_with_empty_axes", 0))


@rule("ReduceSum")
def reduce_sum(g: GraphBuilder, n: Node):
    axes = _axes(g, n)
    if _is_noop(n, axes):
        return [n.gy] + [None] * (len(n.inputs) - 1)
    return [g.op("Expand", _kept(g, n, n.gy, axes), g.shape(n.x))] + [None] * (len(n.inputs) - 1)


@rule("ReduceMean")
def reduce_mean(g: GraphBuilder, n: Node):
    """dy divided by the count at the reduced size, then spread (one pass over x's size, not two)."""
    axes = _axes(g, n)
    if _is_noop(n, axes):
        return [n.gy] + [None] * (len(n.inputs) - 1)
    count = g.op("CastLike", g.op("Div", g.op("Size", n.x), g.op("Size", n.y)), n.x)
    return [g.op("Expand", g.op("Div", _kept(g, n, n.gy, axes), count), g.shape(n.x))] + [None] * (len(n.inputs) - 1)


@rule("ReduceMax", "ReduceMin")
def reduce_max_min(g: GraphBuilder, n: Node):
    """To the extreme elements, split equally among ties (as TensorFlow's reduce_max)."""
    axes = _axes(g, n)
    if _is_noop(n, axes):
        return [n.gy] + [None] * (len(n.inputs) - 1)
    hits = g.mask(g.op("Equal", n.x, _kept(g, n, n.y, axes)), n.x)
    count = g.reduce_sum(hits, axes, keepdims=1)
    return [g.op("Mul", hits, g.op("Div", _kept(g, n, n.gy, axes), count))] + [None] * (len(n.inputs) - 1)
