"""VJP rules of ops that move, copy, mask or pick elements: the gradient undoes the movement.

Permutations (DepthToSpace, SpaceToDepth, ReverseSequence) run their inverse; masks (Trilu) apply
the same mask; copies (Tile, Mean) sum back; GatherElements scatter-adds back at its indices; GatherND
and Compress run on the flat indices of their input and scatter-add the gradient back to them, so
negative indices, batch dims and repeats are honoured by construction.
"""

from __future__ import annotations

from .builder import GraphBuilder
from .registry import Node, rule


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _rest(n: Node, *grads):
    return list(grads) + [None] * (len(n.inputs) - len(grads))


def _picked(g: GraphBuilder, n: Node, picked: str) -> str:
    """The gradient of an op that picks elements of ``x``, given that op applied to ``x``'s flat indices."""
    return g.scatter_add(picked, n.gy, like=n.x)


# -- permutations and masks -----------------------------------------------------------------------
@rule("DepthToSpace")
def depth_to_space(g: GraphBuilder, n: Node):
    """DCR is undone by SpaceToDepth; CRD by the reshape-transpose-reshape that inverts it."""
    b = n.attr("blocksize")
    if _text(n.attr("mode", "DCR")) == "DCR":
        return [g.op("SpaceToDepth", n.gy, blocksize=b)]
    _, channels, height, width = g.static_shape(n.x) or (None,) * 4
    if None in (channels, height, width):  # (N, C/b², H, b, W, b) read at run time
        block = g.ints([b])
        split = g.op("Concat", g.dim(n.y, 0), g.dim(n.y, 1), g.dim(n.x, 2), block, g.dim(n.x, 3), block, axis=0)
    else:
        split = g.ints([0, channels // (b * b), height, b, width, b])
    return [g.reshape_like(g.op("Transpose", g.op("Reshape", n.gy, split), perm=[0, 1, 3, 5, 2, 4]), n.x)]


@rule("SpaceToDepth")
def space_to_depth(g: GraphBuilder, n: Node):
    return [g.op("DepthToSpace", n.gy, blocksize=n.attr("blocksize"), mode="DCR")]


@rule("ReverseSequence")
def reverse_sequence(g: GraphBuilder, n: Node):
    """Reversing the same prefixes again is the inverse."""
    attrs = {"batch_axis": n.attr("batch_axis", 1), "time_axis": n.attr("time_axis", 0)}
    return [g.op("ReverseSequence", n.gy, n.inputs[1], **attrs), None]


@rule("Trilu")
def trilu(g: GraphBuilder, n: Node):
    """The same triangle of the gradient."""
    return _rest(n, g.op("Trilu", n.gy, n.input(1), upper=n.attr("upper", 1)))


@rule("CumSum")
def cum_sum(g: GraphBuilder, n: Node):
    """dx_j = Σ over the outputs that summed x_j: the cumulative sum in the other direction."""
    reverse = 1 - n.attr("reverse", 0)
    return [g.op("CumSum", n.gy, n.inputs[1], exclusive=n.attr("exclusive", 0), reverse=reverse), None]


# -- copies -----------------------------------------------------------------------------------------
@rule("Tile")
def tile(g: GraphBuilder, n: Node):
    """y viewed as (r₀, d₀, r₁, d₁, ...) holds r copies of x: summed over the r axes."""
    rank = g.rank(n.x)
    column = g.ints([1])
    pairs = g.op("Concat", g.op("Unsqueeze", n.inputs[1], column), g.op("Unsqueeze", g.shape(n.x), column), axis=1)
    split = g.op("Reshape", n.gy, g.op("Reshape", pairs, g.ints([-1])))
    return [g.op("ReduceSum", split, g.ints(list(range(0, 2 * rank, 2))), keepdims=0), None]


@rule("Mean")
def mean(g: GraphBuilder, n: Node):
    share = g.op("Div", n.gy, g.const(float(len(n.inputs)), like=n.gy))
    return [g.unbroadcast(share, x, n.y) for x in n.inputs]


# -- picking and scattering -------------------------------------------------------------------------
@rule("GatherElements")
def gather_elements(g: GraphBuilder, n: Node):
    """Its exact inverse placement: ScatterElements adding each gradient at its index."""
    indices = n.inputs[1]
    return [g.op("ScatterElements", g.zeros_like(n.x), indices, n.gy, axis=n.attr("axis", 0), reduction="add"), None]


@rule("GatherND")
def gather_nd(g: GraphBuilder, n: Node):
    return [_picked(g, n, g.op("GatherND", g.iota_like(n.x), n.inputs[1], batch_dims=n.attr("batch_dims", 0))), None]


@rule("Compress")
def compress(g: GraphBuilder, n: Node):
    return [_picked(g, n, g.op("Compress", g.iota_like(n.x), n.inputs[1], axis=n.attr("axis"))), None]


def _scatter_reduction(n: Node) -> str:
    reduction = _text(n.attr("reduction", "none"))
    if reduction not in ("none", "add"):
        raise n.unsupported(f"reduction={reduction} (only none and add are)")
    return reduction


@rule("ScatterElements")
def scatter_elements(g: GraphBuilder, n: Node):
    """The updates get the gradient at their targets; the data gets the rest (reduction none) or
    all of it (add). With repeated indices and reduction none, every repeat gets its target's gradient."""
    _, indices, updates = n.inputs
    axis = n.attr("axis", 0)
    grad_data = n.gy
    if _scatter_reduction(n) == "none":
        grad_data = g.op("ScatterElements", n.gy, indices, g.zeros_like(updates), axis=axis)
    return [grad_data, None, g.op("GatherElements", n.gy, indices, axis=axis)]


@rule("ScatterND")
def scatter_nd(g: GraphBuilder, n: Node):
    """As ScatterElements, with GatherND picking the updates' gradient."""
    _, indices, updates = n.inputs
    grad_data = n.gy
    if _scatter_reduction(n) == "none":
        grad_data = g.op("ScatterND", n.gy, indices, g.zeros_like(updates))
    return [grad_data, None, g.op("GatherND", n.gy, indices)]
