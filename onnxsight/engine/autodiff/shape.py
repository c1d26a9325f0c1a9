"""VJP rules of data movement: reshapes, transposes, concatenation, slicing, gathering, resizing.

Ops that pick elements (Slice, Pad, Gather) are differentiated by running the same op on the
flat indices of their input and scatter-adding the gradient back to those indices, so every
attribute (steps, negative starts, reflect padding, repeated indices) is honoured by
construction. The common cases that keep one block of the input (constant padding, unit-step
slices, with static bounds) take a Slice or a zero Pad instead: onnxruntime's ScatterElements is
slow on whole feature maps.
"""

from __future__ import annotations

import numpy as np
from onnx import helper

from .builder import GraphBuilder, Product, Routed, Scaled
from .registry import Node, rule


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _rest(n: Node, *grads):
    return list(grads) + [None] * (len(n.inputs) - len(grads))


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(g: GraphBuilder, n: Node):
    """Back to x's shape: a constant one (dim 0 copied from dy: shape inference keeps the batch
    symbol) when x's other dims are static and the reshape kept dim 0, else x's run-time shape."""
    shape = g.static_shape(n.x)
    if shape and None not in shape[1:] and g.same_first_dim(n.x, n.y):
        dx = g.op("Reshape", n.gy, g.ints([0, *shape[1:]]))
    else:
        dx = g.reshape_like(n.gy, n.x)
    product, flat = g.products.get(n.gy), g.static_shape(n.y)
    if (product is not None and product.dims is None and shape is not None and None not in shape[1:]
            and flat is not None and len(flat) == 2 and flat[1] == int(np.prod(shape[1:]))):  # columns split
        g.products[dx] = Product(product.left, product.right, tuple(shape[1:]))
    return _rest(n, dx)


@rule("Transpose")
def transpose(g: GraphBuilder, n: Node):
    perm = n.attr("perm")
    inverse = None if perm is None else [int(i) for i in np.argsort(perm)]  # None: reversing is its own inverse
    product = g.products.get(n.gy)
    if product is not None and product.dims is not None and inverse is not None and inverse[0] == 0:
        # dx[n, i] = gy[n, inverse·i]: the product's columns, permuted
        columns = np.arange(int(np.prod(product.dims))).reshape(product.dims).transpose([a - 1 for a in inverse[1:]])
        right = g.op("Gather", product.right, g.ints(columns.ravel()), axis=1)
        return [g.reshape_like(g.op("MatMul", product.left, right), n.x)]
    earlier = g.permuted.get(n.gy)
    if earlier is not None and inverse is not None and [earlier[1][a] for a in inverse] == list(range(len(inverse))):
        return [earlier[0]]  # two inverse transposes (an NHWC round trip): what the cotangent is survives
    dx = g.transpose(n.gy, inverse)
    if inverse is not None:
        g.permuted[dx] = (n.gy, inverse)
    scaled = g.scaled.get(n.gy)
    if scaled is not None:  # moved along: gy's axis a is dx's axis perm[a]
        axis = g.rank(n.y) - 1 - scaled.axis if perm is None else int(perm[scaled.axis])
        g.scaled[dx] = Scaled(g.op("Transpose", scaled.base, perm=inverse), scaled.scale, axis)
    routed = g.routed.get(n.gy)
    if routed is not None:  # a max pool's placement, moved along (the maxima keep their values)
        g.routed[dx] = Routed(routed.values, routed.maxima, n.x,
                              lambda values: g.op("Transpose", routed.place(values), perm=inverse))
    return [dx]


@rule("Expand")
def expand(g: GraphBuilder, n: Node):
    return [g.unbroadcast(n.gy, n.x, n.y), None]


@rule("Concat")
def concat(g: GraphBuilder, n: Node):
    axis = n.attr("axis")
    sizes = g.op("Concat", *(g.dim(x, axis) for x in n.inputs), axis=0)
    parts = g.op("Split", n.gy, sizes, axis=axis, outputs=len(n.inputs))
    return [parts] if isinstance(parts, str) else list(parts)


@rule("Split")
def split(g: GraphBuilder, n: Node):
    parts = [c if c is not None else g.zeros_like(o) for c, o in zip(n.cots, n.outputs)]
    return _rest(n, g.op("Concat", *parts, axis=n.attr("axis", 0)))


def _static_axes(g: GraphBuilder, n: Node, index: int, count: int) -> list[int] | None:
    """Input ``index`` (axes) as non-negative ints, every axis when absent; None when only known at run time."""
    rank = g.rank(n.x)
    if n.input(index) is None:
        return list(range(count if count else rank))
    axes = n.value(index)
    return None if axes is None else [int(a) % rank for a in axes]


def _zero_pad(g: GraphBuilder, gy: str, rank: int, before: dict[int, int], after: dict[int, int]) -> str:
    """``gy`` with ``before[a]``/``after[a]`` zeros added along each axis ``a`` (nothing when none)."""
    if not any(before.values()) and not any(after.values()):
        return gy
    pads = [before.get(a, 0) for a in range(rank)] + [after.get(a, 0) for a in range(rank)]
    return g.op("Pad", gy, g.ints(pads))


def _unit_step_slice(g: GraphBuilder, n: Node) -> str | None:
    """A Slice with steps 1 and static bounds on static dims keeps one block of ``x``: its
    gradient is ``gy`` zero-padded back to ``x``'s shape (None for other slices)."""
    starts, ends, steps = n.value(1), n.value(2), n.value(4)
    axes = _static_axes(g, n, 3, 0 if starts is None else len(starts))
    shape = g.static_shape(n.x)
    if starts is None or ends is None or axes is None or shape is None or (n.input(4) and (steps is None or (steps != 1).any())):
        return None
    before, after = {}, {}
    for axis, start, end in zip(axes, starts, ends):
        if shape[axis] is None:
            return None
        first, stop, _ = slice(int(start), int(end)).indices(shape[axis])
        before[axis], after[axis] = first, shape[axis] - first - max(stop - first, 0)
    return _zero_pad(g, n.gy, len(shape), before, after)


@rule("Slice")
def slice_(g: GraphBuilder, n: Node):
    """Steps 1 with static bounds: a zero Pad; otherwise the flat indices, sliced the same way."""
    dx = _unit_step_slice(g, n)
    if dx is None:
        picked = g.op("Slice", g.iota_like(n.x), *n.inputs[1:])
        dx = g.scatter_add(picked, n.gy, like=n.x)
    return _rest(n, dx)


def _unpad_constant(g: GraphBuilder, n: Node) -> str | None:
    """Constant padding with static pads: its gradient cuts the padding off ``gy`` (Slice) and puts
    back zeros where a negative pad cut ``x`` (Pad); None when the pads are known at run time only."""
    pads = n.value(1)
    axes = None if pads is None else _static_axes(g, n, 3, len(pads) // 2)
    if axes is None:
        return None
    rank, half = g.rank(n.x), len(pads) // 2
    begin, end = dict(zip(axes, map(int, pads[:half]))), dict(zip(axes, map(int, pads[half:])))
    transposed = g.transposed.get(n.gy)
    if transposed is not None and min(pads) >= 0 and not any(begin.get(a, 0) or end.get(a, 0) for a in (0, 1)):
        # a strided Conv's ConvTranspose gradient: cropped by its own pads (it computes no more)
        spatial = range(2, rank)
        crop = [begin.get(a, 0) for a in spatial] + [end.get(a, 0) for a in spatial]
        attrs = dict(transposed.attrs, pads=[p + c for p, c in zip(transposed.attrs["pads"], crop)])
        return g.op("ConvTranspose", transposed.gy, transposed.w, **attrs)
    cut = [a for a in axes if begin[a] > 0 or end[a] > 0]
    dx = n.gy
    if cut:
        ends = [-end[a] if end[a] > 0 else np.iinfo(np.int64).max for a in cut]
        dx = g.op("Slice", dx, g.ints([max(begin[a], 0) for a in cut]), g.ints(ends), g.ints(cut))
    return _zero_pad(g, dx, rank, {a: max(-b, 0) for a, b in begin.items()}, {a: max(-e, 0) for a, e in end.items()})


@rule("Pad")
def pad(g: GraphBuilder, n: Node):
    """Constant mode with static pads: a Slice. Otherwise pads the flat indices the same way
    (padding gets -1, reflect/edge repeat indices)."""
    n.constant(1, 2, 3)
    dx = _unpad_constant(g, n) if _text(n.attr("mode", "constant")) == "constant" else None
    if dx is None:
        inputs = [g.iota_like(n.x), n.inputs[1], g.ints(-1), *n.inputs[3:]]
        picked = g.op("Pad", *inputs, mode=n.attr("mode"))
        dx = g.scatter_add(picked, n.gy, like=n.x)
    return _rest(n, dx)


@rule("Gather")
def gather(g: GraphBuilder, n: Node):
    picked = g.op("Gather", g.iota_like(n.x), n.inputs[1], axis=n.attr("axis", 0))
    return [g.scatter_add(picked, n.gy, like=n.x), None]


@rule("Resize")
def resize(g: GraphBuilder, n: Node):
    """Resize is separable: per resized axis, the matrix A (out × in) is the same Resize applied
    to an identity matrix, and the gradient is dY·A along that axis (any mode: nearest, linear, cubic)."""
    n.constant(1, 2, 3)
    transform = n.attr("coordinate_transformation_mode", b"half_pixel")
    policy = n.attr("keep_aspect_ratio_policy", b"stretch")
    if transform in (b"tf_crop_and_resize", "tf_crop_and_resize") or policy not in (b"stretch", "stretch"):
        raise n.unsupported("coordinate_transformation_mode=tf_crop_and_resize or keep_aspect_ratio_policy")
    shape_in, shape_out = g.static_shape(n.x), g.static_shape(n.y)
    if shape_in is None or shape_out is None:
        raise n.unsupported("unknown input or output rank")
    rank = len(shape_in)
    axes = [a % rank for a in (n.attr("axes") or range(rank))]
    scales = n.value(2)
    per_axis_scale = dict(zip(axes, scales)) if scales is not None and scales.size else {}
    attrs = {a.name: helper.get_attribute_value(a) for a in n.proto.attribute if a.name not in ("axes",)}
    grad = n.gy
    for axis in range(rank):
        scale = per_axis_scale.get(axis)
        if shape_in[axis] == shape_out[axis] and (scale is None or scale == 1):
            continue
        if shape_in[axis] is None or shape_out[axis] is None:
            raise n.unsupported(f"a resized axis {axis} of dynamic size")
        eye = g.const(np.eye(shape_in[axis]), like=n.x)
        if scale is not None:
            matrix = g.op("Resize", eye, "", g.const(np.array([scale, 1.0], np.float32)), **attrs)
        else:
            matrix = g.op("Resize", eye, "", "", g.ints([shape_out[axis], shape_in[axis]]), **attrs)
        perm = [i for i in range(rank) if i != axis] + [axis]
        back = [int(i) for i in np.argsort(perm)]
        grad = g.op("Transpose", g.op("MatMul", g.op("Transpose", grad, perm=perm), matrix), perm=back)
    return _rest(n, grad)
