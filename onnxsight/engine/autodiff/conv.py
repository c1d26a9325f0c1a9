"""VJP rules of convolution and pooling.

Conv and ConvTranspose are each other's transpose: the input gradient of one is the other with
the same weights, strides, dilations, groups and pads (``output_padding`` restores the rows a
strided Conv never read); at stride 1 a Conv's input gradient is itself a Conv, with the kernel
flipped. Average pooling is a window sum times a per-position factor, so its gradient is a
ones-kernel ConvTranspose. Max pooling over windows that tile the input finds each window's
first maximum from the maxima of boxes inside the window, at the pooled size; other max pools
route the gradient through the ``Indices`` output of a second MaxPool with
``ScatterElements(reduction="add")``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto, helper

from .builder import GraphBuilder, Routed, Transposed
from .registry import Node, rule


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class Window:
    """Static geometry of a sliding window over the spatial dims."""

    spatial: list[int]
    kernel: list[int]
    strides: list[int]
    dilations: list[int]
    begin: list[int]
    end: list[int]

    @property
    def effective(self) -> list[int]:
        return [(k - 1) * d + 1 for k, d in zip(self.kernel, self.dilations)]

    def remainders(self) -> list[int]:
        """Rows at the end that the last window never reached: ConvTranspose's output_padding."""
        return [(i + b + e - k) % s for i, b, e, k, s in zip(self.spatial, self.begin, self.end, self.effective, self.strides)]

    def outputs(self) -> list[int]:
        return [(i + b + e - k) // s + 1 for i, b, e, k, s in zip(self.spatial, self.begin, self.end, self.effective, self.strides)]

    def flipped_pads(self) -> list[int]:
        """Pads of the stride-1 Conv with the flipped kernel that maps the output back onto the
        input: full padding less the forward pads (negative where the forward pads reach past it)."""
        full = [e - 1 for e in self.effective]
        return [f - b for f, b in zip(full, self.begin)] + [f - e for f, e in zip(full, self.end)]

    def transpose_attrs(self) -> dict:
        return dict(strides=self.strides, dilations=self.dilations, pads=self.begin + self.end,
                    output_padding=self.remainders())


def _window(g: GraphBuilder, n: Node, kernel: list[int]) -> Window:
    spatial = g.spatial_dims(n.x, f"the {n.op_type} gradient of node {n.name!r}")
    r = len(spatial)
    strides = list(n.attr("strides", [1] * r))
    dilations = list(n.attr("dilations", [1] * r))
    pads = list(n.attr("pads", [0] * 2 * r))
    auto_pad = _text(n.attr("auto_pad", "NOTSET"))
    if auto_pad == "VALID":
        pads = [0] * 2 * r
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * 2 * r
        for i, (size, k, s, d) in enumerate(zip(spatial, kernel, strides, dilations)):
            total = max(0, (-(-size // s) - 1) * s + (k - 1) * d + 1 - size)
            small = total // 2
            pads[i], pads[i + r] = (small, total - small) if auto_pad == "SAME_UPPER" else (total - small, small)
    elif auto_pad != "NOTSET":
        raise n.unsupported(f"auto_pad={auto_pad}")
    return Window(spatial, list(kernel), strides, dilations, pads[:r], pads[r:])


def _channel_sum(g: GraphBuilder, gy: str, rank: int) -> str:
    """Sum over every axis but the channel axis 1 (a per-channel bias gradient)."""
    return g.reduce_sum(gy, [0, *range(2, rank)], keepdims=0)


# At stride 1 the input gradient is a full-padding Conv with the flipped kernel; onnxruntime's blocked
# (NCHWc) Conv runs it up to 2-3x faster than ConvTranspose, but slower for narrow inputs (images).
_WIDE_CHANNELS = 16


def _flipped_kernel(g: GraphBuilder, w: str, group: int) -> str:
    """Conv's (M, C/G, k...) kernel as the (C, M/G, k...) kernel of its transpose: channels
    swapped within each group, spatially flipped."""
    out_channels, group_channels, *kernel = g.static_shape(w)
    r = len(kernel)
    grouped = g.op("Reshape", w, g.ints([group, out_channels // group, group_channels, *kernel]))
    axes = list(range(3, 3 + r))
    swapped = g.op("Transpose", grouped, perm=[0, 2, 1, *axes])
    first = np.iinfo(np.int64).min
    flipped = g.op("Slice", swapped, g.ints([-1] * r), g.ints([first] * r), g.ints(axes), g.ints([-1] * r))
    return g.op("Reshape", flipped, g.ints([group * group_channels, out_channels // group, *kernel]))


@rule("Conv")
def conv(g: GraphBuilder, n: Node):
    n.constant(1)
    w = n.inputs[1]
    kernel = n.attr("kernel_shape") or list(g.static_shape(w) or [])[2:]
    if not kernel or None in kernel:
        raise n.unsupported("a kernel of unknown shape")
    window = _window(g, n, list(kernel))
    group = n.attr("group", 1)
    w_shape = g.static_shape(w) or (None,)
    pads = window.flipped_pads()
    gy, scaled = n.gy, g.scaled.get(n.gy)
    if scaled is not None and scaled.axis == 1:  # a per-channel factor after the Conv: into the kernel
        gy, folded = scaled.base, g.op("Mul", w, g.op("Reshape", scaled.scale, g.ints([-1] + [1] * (len(kernel) + 1))))
        g.record(folded, like=w)
        w = folded
    wide = None not in w_shape and group * w_shape[1] >= _WIDE_CHANNELS
    if set(window.strides) == {1} and min(pads) >= 0 and wide:
        dx = g.op("Conv", gy, _flipped_kernel(g, w, group), group=group, kernel_shape=list(kernel),
                  dilations=window.dilations, pads=pads)
    else:
        attrs = dict(group=group, kernel_shape=list(kernel), **window.transpose_attrs())
        dx = g.op("ConvTranspose", gy, w, **attrs)
        g.transposed[dx] = Transposed(gy, w, attrs)
    grads = [dx, None]
    if n.input(2) is not None:
        grads.append(_channel_sum(g, n.gy, g.rank(n.x)))
    return grads


@rule("ConvTranspose")
def conv_transpose(g: GraphBuilder, n: Node):
    n.constant(1)
    auto_pad = _text(n.attr("auto_pad", "NOTSET"))
    if n.attr("output_shape") is not None or auto_pad not in ("NOTSET", "VALID"):
        raise n.unsupported("output_shape or auto_pad SAME")
    w = n.inputs[1]
    kernel = n.attr("kernel_shape") or list(g.static_shape(w) or [])[2:]
    r = len(kernel)
    pads = [0] * 2 * r if auto_pad == "VALID" else list(n.attr("pads", [0] * 2 * r))
    dx = g.op("Conv", n.gy, w, group=n.attr("group", 1), kernel_shape=list(kernel), pads=pads,
              strides=list(n.attr("strides", [1] * r)), dilations=list(n.attr("dilations", [1] * r)))
    grads = [dx, None]
    if n.input(2) is not None:
        grads.append(_channel_sum(g, n.gy, g.rank(n.x)))
    return grads


_EXACT_FLOAT32 = 2**24  # the offsets of _tiled_max_pool are exact float32 integers up to this plane size


def _tiling(g: GraphBuilder, n: Node) -> Window | None:
    """The window of a pool whose windows tile its input (kernel == strides, no padding or
    dilation, static spatial dims; a floor-mode remainder is left out), else None."""
    shape = g.static_shape(n.x)
    if shape is None or None in shape[2:]:
        return None
    window = _window(g, n, list(n.attr("kernel_shape")))
    if (window.strides != window.kernel or set(window.dilations) != {1} or any(window.begin + window.end)
            or (n.attr("ceil_mode", 0) and any(window.remainders()))):
        return None
    return window


def _first_maximum_steps(kernel: list[int], covered: list[int]) -> list[tuple[list[tuple], int]]:
    """For each window position p but the last, in row-major order: the boxes whose maxima tell
    whether the window's first maximum lies at or before p, and the offset step from p to the
    next position. A box starts at the window's origin and is named by its far corner. The
    positions up to p are the box of p plus, for each axis j with p_j > 0 and a later coordinate
    short of its last, the box of (p_0..p_{j-1}, p_j - 1, last, ..., last)."""
    last = [k - 1 for k in kernel]
    steps = [int(np.prod(covered[j + 1:])) for j in range(len(kernel))]
    positions = list(np.ndindex(*kernel))
    table = []
    for p, q in zip(positions, positions[1:]):
        boxes = [p] + [(*p[:j], p[j] - 1, *last[j + 1:]) for j in range(len(p))
                       if p[j] > 0 and list(p[j + 1:]) != last[j + 1:]]
        table.append((boxes, sum((b - a) * s for a, b, s in zip(p, q, steps))))
    return table


def _tiled_max_pool(g: GraphBuilder, n: Node, window: Window) -> Callable[[str], str]:
    """Each window's gradient goes to its first maximum in row-major order, as MaxPool's
    ``Indices`` (and TensorFlow) choose it, found at the pooled size: a box from the window's
    origin holds the maximum iff its own MaxPool (kernel = the box, strides = the pool's) equals y.
    With G(p) = "the first maximum lies at or before p", the maximum's offset in its window is
    that of the window's last element less the sum of the offset steps after every p with G(p);
    MaxUnpool places the gradient. Rows a floor-mode pool never read get zeros."""
    r, out, kernel, spatial = len(window.kernel), window.outputs(), window.kernel, window.spatial
    covered = [o * k for o, k in zip(out, kernel)]
    axes = list(range(2, 2 + r))
    holds: dict[tuple, str] = {}

    def holds_maximum(corner: tuple) -> str:
        if corner not in holds:
            box = [c + 1 for c in corner]
            y = g.op("MaxPool", n.x, kernel_shape=box, strides=kernel)
            if [(s - b) // k + 1 for s, b, k in zip(spatial, box, kernel)] != out:
                y = g.op("Slice", y, g.ints([0] * r), g.ints(out), g.ints(axes))
            holds[corner] = g.op("Equal", y, n.y)
        return holds[corner]

    by_step: dict[int, list[str]] = {}
    for boxes, step in _first_maximum_steps(kernel, covered):
        reached = holds_maximum(boxes[0])
        for box in boxes[1:]:
            reached = g.op("Or", reached, holds_maximum(box))
        by_step.setdefault(step, []).append(g.op("Cast", reached, to=TensorProto.FLOAT))
    before = g.add([g.add(flags) if step == 1 else g.op("Mul", g.add(flags), g.const(np.float32(step)))
                    for step, flags in by_step.items()])
    # offset of each window's last element in its plane, less the steps the first maximum precedes
    corners = np.zeros(out, np.int64)
    for j, k in enumerate(kernel):
        stride = int(np.prod(covered[j + 1:]))
        corners = corners + ((np.arange(out[j]) * k + k - 1) * stride).reshape([-1 if i == j else 1 for i in range(r)])
    offset = g.op("Cast", g.op("Sub", g.const(corners.astype(np.float32)), before), to=TensorProto.INT64)
    plane = int(np.prod(covered))
    lead_dims = (g.static_shape(n.y) or (None, None))[:2]
    if None in lead_dims:  # N, C known at run time only: plane starts 0, plane, ..., (N·C - 1)·plane
        lead = g.op("Slice", g.shape(n.y), g.ints([0]), g.ints([2]))
        total = g.op("Mul", g.op("Size", n.y), g.ints(int(np.prod(kernel))))  # N * C * plane
        starts = g.op("Range", g.ints(0), total, g.ints(plane))
        starts = g.op("Reshape", starts, g.op("Concat", lead, g.ints([1] * r), axis=0))
    else:
        planes = int(np.prod(lead_dims))
        starts = g.ints(np.arange(0, planes * plane, plane).reshape(*lead_dims, *[1] * r))
    index = g.op("Add", offset, starts)

    def place(gy: str) -> str:
        dx = g.op("MaxUnpool", gy, index, kernel_shape=kernel, strides=kernel)
        if covered != spatial:
            dx = g.op("Pad", dx, g.ints([0] * (2 + r) + [0, 0] + [s - c for s, c in zip(spatial, covered)]))
        return dx

    return place


@rule("MaxPool")
def max_pool(g: GraphBuilder, n: Node):
    """Each output's gradient goes to the input element its window's (first) maximum came from."""
    if n.attr("storage_order", 0) != 0:
        raise n.unsupported("storage_order=1")
    window = _tiling(g, n)
    if window is not None and np.prod(window.spatial) <= _EXACT_FLOAT32:
        place = _tiled_max_pool(g, n, window)
    else:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.proto.attribute}
        _, indices = g.op("MaxPool", n.x, outputs=2, **attrs)
        place = lambda gy: g.scatter_add(indices, gy, like=n.x)  # noqa: E731
    dx = place(n.gy)
    g.routed[dx] = Routed(n.gy, n.y, n.x, place)
    return [dx]


def summing_window(g: GraphBuilder, n: Node, kernel: list[int]) -> Window:
    """The pool's window with its end padding extended (ceil_mode) so that a floor-mode window sum gives
    the node's output size; raises when no such padding does."""
    window = _window(g, n, kernel)
    out = g.spatial_dims(n.y, f"the {n.op_type} gradient of node {n.name!r}")
    extra = [max(0, (o - 1) * s + k - (i + b + e)) for o, s, k, i, b, e in
             zip(out, window.strides, window.effective, window.spatial, window.begin, window.end)]
    window = Window(window.spatial, kernel, window.strides, window.dilations, window.begin,
                    [e + x for e, x in zip(window.end, extra)])
    if window.outputs() != out:
        raise n.unsupported(f"a ceil_mode output size {out} that a window sum does not reproduce")
    return window


@rule("AveragePool")
def average_pool(g: GraphBuilder, n: Node):
    """y = S(x)·c with S the window sum and c = AveragePool(1)/S(1) per output position
    (whatever divisor count_include_pad and ceil_mode give); dx = Sᵀ(dy·c)."""
    kernel = list(n.attr("kernel_shape"))
    window = summing_window(g, n, kernel)
    ones_kernel = g.const(np.ones([1, 1, *kernel]), like=n.x)
    ones_input = g.const(np.ones([1, 1, *window.spatial]), like=n.x)
    attrs = {a.name: helper.get_attribute_value(a) for a in n.proto.attribute}
    averaged = g.op("AveragePool", ones_input, **attrs)
    counted = g.op("Conv", ones_input, ones_kernel, strides=window.strides, dilations=window.dilations,
                   pads=window.begin + window.end)
    factor = g.op("Div", averaged, g.op("Max", counted, g.const(1.0, like=n.x)))
    scaled = g.op("Reshape", g.op("Mul", n.gy, factor), g.ints([-1, 1, *window.outputs()]))
    dx = g.op("ConvTranspose", scaled, ones_kernel, **window.transpose_attrs())
    return [g.reshape_like(dx, n.x)]


@rule("GlobalAveragePool")
def global_average_pool(g: GraphBuilder, n: Node):
    """dy divided by the window size (at the pooled size), then spread over the window. With static
    spatial dims the spread is to a constant (1, 1, H, W), so that shape inference sees dx's batch
    as dy's (onnxruntime keeps only elementwise ops of provably equal shapes in its blocked layout)."""
    shape = g.static_shape(n.x)
    if shape is not None and None not in shape[2:]:
        count = g.const(float(np.prod(shape[2:])), like=n.x)
        return [g.op("Expand", g.op("Div", n.gy, count), g.ints([1, 1, *shape[2:]]))]
    count = g.op("CastLike", g.op("Div", g.op("Size", n.x), g.op("Size", n.y)), n.x)
    return [g.op("Expand", g.op("Div", n.gy, count), g.shape(n.x))]


@rule("GlobalMaxPool")
def global_max_pool(g: GraphBuilder, n: Node):
    """To the maxima of each channel, split equally among ties (as TensorFlow's reduce_max)."""
    hits = g.mask(g.op("Equal", n.x, n.y), n.x)
    count = g.reduce_sum(hits, list(range(2, g.rank(n.x))), keepdims=1)
    return [g.op("Mul", hits, g.op("Div", n.gy, count))]
