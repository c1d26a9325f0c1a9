"""A small graph builder for VJP subgraphs: ``g.op("Mul", a, b)`` returns a tensor name.

Every node a rule adds is named ``<prefix>/<forward node>/<k>`` so that an onnxruntime error
points at the rule that built it. Broadcast reduction, typed constants and zeros live here once,
never repeated in rules. Rules stay dtype-agnostic: constants follow their ``like`` tensor
through ``CastLike``, shapes are read at run time (dynamic batch) with ``Shape``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxsight.errors import InternalError, UnsupportedOp

_INT64_MAX = np.iinfo(np.int64).max
FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}


@dataclass(frozen=True)
class Routed:
    """A max-pool cotangent ``place(values)``: each pooled cotangent in ``values`` lands on one
    element of the forward tensor ``onto`` that holds its window's maximum (the forward tensor
    ``maxima``, shaped like ``values``); every other element is zero. A rule downstream can mask
    ``values`` at the pooled size instead of the placed cotangent at full size (see Relu)."""

    values: str
    maxima: str
    onto: str
    place: Callable[[str], str]


@dataclass(frozen=True)
class Product:
    """A cotangent ``left · right`` (2-D MatMul, ``right`` constant), seen with shape (N, *dims)
    once a Reshape split its columns. A Transpose that keeps the batch axis then permutes the
    columns of ``right`` (a constant: onnxruntime folds it at load) rather than the cotangent at
    run time, so a Flatten after an NCHW→NHWC Transpose (tf2onnx's Keras Flatten) costs no
    transpose backwards."""

    left: str
    right: str
    dims: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Scaled:
    """A cotangent ``base · scale`` with ``scale`` a constant vector along ``axis`` (a batch norm's
    factor): a Conv whose output channels lie along ``axis`` folds ``scale`` into its kernel (a
    constant: onnxruntime folds it at load) instead of multiplying the cotangent at run time."""

    base: str
    scale: str
    axis: int


@dataclass(frozen=True)
class Transposed:
    """A cotangent ``ConvTranspose(gy, w, **attrs)`` (a strided Conv's input gradient): a constant
    Pad before the Conv crops it by ConvTranspose's own pads instead of a Slice of its output."""

    gy: str
    w: str
    attrs: dict


def same_dim(a: onnx.TensorShapeProto.Dimension, b: onnx.TensorShapeProto.Dimension) -> bool:
    """The same static size, or the same symbol."""
    return ((a.HasField("dim_value") and b.HasField("dim_value") and a.dim_value == b.dim_value)
            or (a.HasField("dim_param") and b.HasField("dim_param") and a.dim_param == b.dim_param))


class GraphBuilder:
    """Appends nodes to a list; knows the types and static shapes inferred for the forward graph."""

    def __init__(self, infos: dict[str, onnx.ValueInfoProto], opset: int, prefix: str):
        self.infos = infos
        self.opset = opset
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self._scope = "graph"
        self._counter: dict[str, int] = {}
        self.routed: dict[str, Routed] = {}  # cotangent name -> how a max pool placed it
        self.products: dict[str, Product] = {}  # cotangent name -> the constant matrix product it is
        self.scaled: dict[str, Scaled] = {}  # cotangent name -> the constant per-axis scaling it is
        self.transposed: dict[str, Transposed] = {}  # cotangent name -> the ConvTranspose it is
        self.permuted: dict[str, tuple[str, list[int]]] = {}  # cotangent name -> (source, perm) of its Transpose

    # -- naming -------------------------------------------------------------------------
    def scope(self, name: str) -> None:
        """Names the following nodes after the forward node ``name``."""
        self._scope = name

    def _fresh(self) -> str:
        k = self._counter.get(self._scope, 0)
        self._counter[self._scope] = k + 1
        return f"{self.prefix}/{self._scope}/{k}"

    # -- nodes --------------------------------------------------------------------------
    def op(self, op_type: str, *inputs: str | None, outputs: int = 1, **attrs) -> str | tuple[str, ...]:
        """Adds one node; returns its output name (a tuple when ``outputs > 1``)."""
        name = self._fresh()
        outs = [name] if outputs == 1 else [f"{name}:{i}" for i in range(outputs)]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op_type, [i or "" for i in inputs], outs, name=name, **attrs))
        return outs[0] if outputs == 1 else tuple(outs)

    def const(self, value, like: str | None = None) -> str:
        """A constant; with ``like`` it takes that tensor's element type (statically when
        shape inference knows it, else through ``CastLike``)."""
        known = self.elem_type(like) if like is not None else TensorProto.UNDEFINED
        if like is None:
            array = np.asarray(value)
        elif known != TensorProto.UNDEFINED:
            array = np.asarray(value, dtype=helper.tensor_dtype_to_np_dtype(known))
        else:
            array = np.asarray(value, dtype=np.float64)
        c = self.op("Constant", value=numpy_helper.from_array(array, name=self._fresh() + ":value"))
        return c if like is None or known != TensorProto.UNDEFINED else self.op("CastLike", c, like)

    def ints(self, values: Sequence[int] | int) -> str:
        """An int64 constant (axes, shapes, indices); a bare int gives a scalar."""
        return self.op("Constant", value=numpy_helper.from_array(np.asarray(values, dtype=np.int64), name=self._fresh() + ":value"))

    def shape(self, x: str) -> str:
        return self.op("Shape", x)

    def dim(self, x: str, axis: int) -> str:
        """The size of ``x`` along ``axis`` at run time, as a 1-element int64 tensor."""
        return self.op("Gather", self.shape(x), self.ints([axis]))

    def zeros_like(self, x: str) -> str:
        return self.op("Expand", self.const(0.0, like=x), self.shape(x))

    def ones_like(self, x: str) -> str:
        return self.op("Expand", self.const(1.0, like=x), self.shape(x))

    def add(self, parts: Sequence[str]) -> str:
        """The sum of one or more same-typed tensors, as a chain of ``Add`` nodes."""
        total = parts[0]
        for part in parts[1:]:
            total = self.op("Add", total, part)
        return total

    def where(self, cond: str, a: str, b: str | float) -> str:
        """``Where`` with a scalar ``b`` taking ``a``'s type."""
        if not isinstance(b, str):
            b = self.const(b, like=a)
        return self.op("Where", cond, a, b)

    def mask(self, cond: str, like: str) -> str:
        """A boolean condition as 0/1 in ``like``'s type (multiplying by it is faster in onnxruntime
        than ``Where``)."""
        known = self.elem_type(like)
        return self.op("CastLike", cond, like) if known == TensorProto.UNDEFINED else self.op("Cast", cond, to=known)

    def reduce_sum(self, x: str, axes: Sequence[int] | str | None, keepdims: int = 1) -> str:
        """``ReduceSum`` over ``axes`` (a list or an int64 tensor name); ``None`` reduces all."""
        if axes is None:
            return self.op("ReduceSum", x, keepdims=keepdims)
        axes = axes if isinstance(axes, str) else self.ints(list(axes))
        return self.op("ReduceSum", x, axes, keepdims=keepdims)

    def reduce_mean(self, x: str, axes: Sequence[int], keepdims: int = 1) -> str:
        if self.opset >= 18:
            return self.op("ReduceMean", x, self.ints(list(axes)), keepdims=keepdims)
        return self.op("ReduceMean", x, axes=list(axes), keepdims=keepdims)

    def unsqueeze(self, x: str, axes: Sequence[int] | str) -> str:
        return self.op("Unsqueeze", x, axes if isinstance(axes, str) else self.ints(list(axes)))

    def reshape_like(self, x: str, like: str) -> str:
        """``x`` reshaped to ``like``'s shape: a constant (its one unknown dim as -1) when shape inference
        knows all but one dim, so that no ``Shape`` runs."""
        shape = self.static_shape(like)
        if shape is not None and shape.count(None) <= 1 and all(d != 0 for d in shape):
            return self.op("Reshape", x, self.ints([-1 if d is None else d for d in shape]))
        return self.op("Reshape", x, self.shape(like))

    def transpose(self, x: str, perm: Sequence[int] | None) -> str:
        """``Transpose(x, perm)``; when ``x`` has size-1 axes and shape inference knows all its dims
        but one, those axes are dropped and axes that stay neighbours merged, by Reshapes around a
        smaller Transpose: onnxruntime moved a (32, 4, 1, 16, 145) attention tensor to
        (32, 145, 1, 4, 16) 10× faster as (32, 64, 145) to (32, 145, 64). Without size-1 axes it is
        left alone (merging a CNN's 4-D layout transposes made ResNet50's gradient ~10% slower:
        onnxruntime's layout optimizer no longer folds them)."""
        shape = self.static_shape(x)
        if shape is None or 1 not in shape or shape.count(None) > 1 or 0 in shape:
            return self.op("Transpose", x, perm=perm)
        perm = list(perm) if perm is not None else list(range(len(shape)))[::-1]
        kept = [a for a in range(len(shape)) if shape[a] != 1]
        groups: list[list[int]] = []  # runs of kept input axes that stay together, in output order
        for axis in (a for a in perm if shape[a] != 1):
            if groups and kept.index(axis) == kept.index(groups[-1][-1]) + 1:
                groups[-1].append(axis)
            else:
                groups.append([axis])
        if len(groups) == len(shape):
            return self.op("Transpose", x, perm=perm)
        ordered = sorted(groups)
        sizes = [-1 if any(shape[a] is None for a in axes) else int(np.prod([shape[a] for a in axes])) for axes in ordered]
        merged = self.op("Reshape", x, self.ints(sizes))
        small = [ordered.index(axes) for axes in groups]
        moved = self.op("Transpose", merged, perm=small) if small != sorted(small) else merged
        return self.op("Reshape", moved, self.ints([-1 if shape[a] is None else shape[a] for a in perm]))

    # -- broadcasting and scattering -----------------------------------------------------
    def unbroadcast(self, grad: str, like: str, shaped: str | None = None, rank: int | None = None,
                    matched: int = 0) -> str:
        """Sums ``grad`` over the axes along which ``like`` was broadcast; result has ``like``'s shape.

        ``shaped`` names a forward tensor known to have ``grad``'s shape (usually the node's
        output); ``rank`` is ``grad``'s rank where shape inference does not know it; ``matched``: how many
        trailing axes the caller knows ``grad`` and ``like`` to share (a MatMul's matrix axes). Statically
        equal shapes need nothing; axes that shape inference tells apart are summed directly; with both ranks
        known, one Reshape and a ReduceSum over static axes (``_split_sum``: OpenVINO refuses axes of unknown
        length); with a rank unknown, the axes are found at run time (``Shape`` comparisons + ``NonZero``).
        A dynamic batch works in both.
        """
        if self.same_type_shape(shaped or grad, like):
            return grad
        axes = self._broadcast_axes(shaped or grad, like)
        if axes == []:  # every dim matched
            return grad
        if axes is not None:
            same_rank = self.rank(like) == self.rank(shaped or grad)  # then only like's 1s are summed: kept
            summed = self.op("ReduceSum", grad, self.ints(axes), keepdims=int(same_rank))
            return summed if same_rank else self.reshape_like(summed, like)
        wide, narrow = self.static_shape(shaped or grad), self.static_shape(like)
        wide = wide if wide is not None else (None,) * rank if rank is not None else None
        if wide is not None and narrow is not None and len(wide) >= len(narrow):
            return self._split_sum(grad, like, wide, narrow, matched)
        g_shape, x_shape = self.shape(grad), self.shape(like)
        pad = self.op("Sub", self.op("Size", g_shape), self.op("Size", x_shape))
        ones = self.op("ConstantOfShape", self.op("Reshape", pad, self.ints([1])),
                       value=numpy_helper.from_array(np.array([1], np.int64)))
        padded = self.op("Concat", ones, x_shape, axis=0)
        axes = self.op("Reshape", self.op("NonZero", self.op("Not", self.op("Equal", g_shape, padded))), self.ints([-1]))
        summed = self.op("ReduceSum", grad, axes, keepdims=1, noop_with_empty_axes=1)
        return self.op("Reshape", summed, x_shape)

    def _split_sum(self, grad: str, like: str, wide: tuple, narrow: tuple, matched: int = 0) -> str:
        """``unbroadcast`` with both ranks known: ``grad`` reshaped so that each axis neither shape inference nor
        ``matched`` decides becomes (``like``'s size, the rest), then one ReduceSum over static axes: the rests and
        the axes ``like`` lacks or has as 1. Neighbouring axes summed alike are merged and static 1s dropped, so the ReduceSum has
        few axes (OpenVINO runs one of rank > 5 on a slow reference kernel)."""
        g_shape, x_shape = self.shape(grad), self.shape(like)
        pieces = []  # (summed?, size: an int or a 1-element int64 tensor), one per axis of the split grad
        for axis, size in enumerate(wide):
            at = axis - len(wide) + len(narrow)
            kept = narrow[at] if at >= 0 else 1
            if kept is None and axis >= len(wide) - matched:  # like's size, as the caller knows
                pieces.append((False, self.op("Gather", x_shape, self.ints([at]))))
            elif kept is None:  # like's size or 1
                dim = self.op("Gather", x_shape, self.ints([at]))
                rest = self.op("Div", self.op("Gather", g_shape, self.ints([axis])), self.op("Max", dim, self.ints([1])))
                pieces += [(False, dim), (True, rest)]
            elif kept == 1:  # broadcast: the whole axis is summed
                pieces.append((True, size if size is not None else self.op("Gather", g_shape, self.ints([axis]))))
            else:  # grad has like's static size
                pieces.append((False, kept))
        merged = []
        for summed, size in pieces:
            if isinstance(size, int) and size == 1:
                continue
            if merged and merged[-1][0] == summed:
                before = merged[-1][1]
                size = before * size if isinstance(before, int) and isinstance(size, int) else \
                    self.op("Mul", self._size(before), self._size(size))
                merged[-1] = (summed, size)
            else:
                merged.append((summed, size))
        if not any(summed for summed, _ in merged):  # only sizes grad must share with like
            return self.op("Reshape", grad, x_shape)
        split = self.op("Reshape", grad, self.op("Concat", *(self._size(size) for _, size in merged), axis=0))
        summed = self.op("ReduceSum", split, self.ints([i for i, (s, _) in enumerate(merged) if s]), keepdims=0)
        return self.op("Reshape", summed, x_shape)

    def _size(self, size: int | str) -> str:
        return self.ints([size]) if isinstance(size, int) else size

    def _broadcast_axes(self, wide: str, like: str) -> list[int] | None:
        """The axes of ``wide`` along which ``like`` was broadcast, when shape inference tells:
        ``like``'s missing leading axes and its static 1s (summing a size-1 axis changes nothing);
        None when a pair of dims is neither. Equal symbols prove nothing: ONNX's broadcast
        inference names (n0, 1) + (n1, 3) as (n1, 3)."""
        a, b = (self.infos.get(t) for t in (wide, like))
        if a is None or b is None or not (a.type.tensor_type.HasField("shape") and b.type.tensor_type.HasField("shape")):
            return None
        da, db = a.type.tensor_type.shape.dim, b.type.tensor_type.shape.dim
        extra = len(da) - len(db)
        if extra < 0:
            return None
        axes = list(range(extra))
        for axis, (x, y) in enumerate(zip(da[extra:], db), start=extra):
            if y.HasField("dim_value") and y.dim_value == 1:
                if not (x.HasField("dim_value") and x.dim_value == 1):
                    axes.append(axis)
            elif not (x.HasField("dim_value") and y.HasField("dim_value") and x.dim_value == y.dim_value):
                return None
        return axes

    def iota_like(self, x: str) -> str:
        """The flat index of every element of ``x``, shaped like ``x`` (int64)."""
        size = self.op("Size", x)
        return self.op("Reshape", self.op("Range", self.ints(0), size, self.ints(1)), self.shape(x))

    def scatter_add(self, index: str, grad: str, like: str) -> str:
        """Adds each ``grad`` element into the element of ``like`` whose flat index ``index`` holds.

        Negative indices (padding) are dropped. ``index`` and ``grad`` have the same shape.
        """
        size = self.op("Size", like)
        flat_index = self.op("Reshape", index, self.ints([-1]))
        flat_index = self.op("Where", self.op("Less", flat_index, self.ints(0)), size, flat_index)
        extended = self.op("Add", size, self.ints(1))
        zeros = self.op("Expand", self.const(0.0, like=grad), self.op("Reshape", extended, self.ints([1])))
        summed = self.op("ScatterElements", zeros, flat_index, self.op("Reshape", grad, self.ints([-1])),
                         axis=0, reduction="add")
        kept = self.op("Slice", summed, self.ints([0]), self.op("Reshape", size, self.ints([1])))
        return self.op("Reshape", kept, self.shape(like))

    # -- facts about forward tensors ------------------------------------------------------
    def elem_type(self, name: str) -> int:
        info = self.infos.get(name)
        return info.type.tensor_type.elem_type if info is not None else TensorProto.UNDEFINED

    def static_shape(self, name: str) -> tuple[int | None, ...] | None:
        """Inferred shape with None for unknown dims; None when even the rank is unknown."""
        info = self.infos.get(name)
        if info is None or not info.type.tensor_type.HasField("shape"):
            return None
        return tuple(d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim)

    def rank(self, name: str) -> int:
        shape = self.static_shape(name)
        if shape is None:
            raise UnsupportedOp(f"the rank of {name!r} is unknown after shape inference; its rule needs it")
        return len(shape)

    def spatial_dims(self, name: str, what: str) -> list[int]:
        """Static sizes of the dims after N, C; raises when any is dynamic."""
        shape = self.static_shape(name)
        if shape is None or any(d is None for d in shape[2:]):
            raise UnsupportedOp(f"{what} needs static spatial dims for {name!r}, got {shape}")
        return list(shape[2:])  # type: ignore[arg-type]

    def same_type_shape(self, a: str, b: str) -> bool:
        """True when shape inference proves ``a`` and ``b`` have the same shape."""
        ia, ib = self.infos.get(a), self.infos.get(b)
        if ia is None or ib is None:
            return False
        sa, sb = ia.type.tensor_type, ib.type.tensor_type
        if not (sa.HasField("shape") and sb.HasField("shape")) or len(sa.shape.dim) != len(sb.shape.dim):
            return False
        return all(same_dim(da, db) for da, db in zip(sa.shape.dim, sb.shape.dim))

    def same_first_dim(self, a: str, b: str) -> bool:
        """True when shape inference proves dim 0 of ``a`` and ``b`` equal."""
        dims = [info.type.tensor_type.shape.dim if info is not None and info.type.tensor_type.HasField("shape") else []
                for info in (self.infos.get(a), self.infos.get(b))]
        return all(dims) and same_dim(dims[0][0], dims[1][0])

    def record(self, name: str, like: str) -> None:
        """Declares that builder tensor ``name`` has the same type and shape as ``like``."""
        info = self.infos.get(like)
        if info is None:
            return
        copy = onnx.ValueInfoProto()
        copy.CopyFrom(info)
        copy.name = name
        self.infos[name] = copy


def ensure(condition: bool, message: str) -> None:
    """An internal contract check that survives ``python -O``."""
    if not condition:
        raise InternalError(message)
