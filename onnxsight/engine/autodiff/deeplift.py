"""DeepLIFT (rescale rule) as a strict backprop modifier, with Captum's conventions.

The forward batch holds the inputs and their references stacked along the batch axis,
``[inputs; references]`` (2m rows), and the cotangent of the scored tensor is given to both
halves. Each rule faces every row with its partner in the other half (the halves swapped) to form
Δ = input half − reference half and writes the same multiplier into both halves (as Captum's hooks do).
Every rule below satisfies ``Δy = Σᵢ mᵢ·Δxᵢ`` exactly, so the attributions sum to the score's Δ:

- univariate nonlinearities (Relu, LeakyRelu, PRelu with a constant slope, Elu, Selu, Sigmoid,
  Tanh, Softplus, Clip (ReLU6), HardSigmoid, HardSwish, Gelu, Erf, Exp, Log, Abs, Pow with a
  constant exponent, and the unary math of ``unary.py``: Mish, Swish, Softsign, trigonometric, the
  piecewise-constant Sign/Round/Floor/Ceil, ...): the rescale multiplier ``gy · Δy/Δx``, and the
  exact gradient of each half where ``|Δx| < eps`` (``Modifier("deeplift", eps=1e-10)``, Captum's
  default); Sqrt and Reciprocal use the closed forms of ``Δy/Δx``, ``1/(√x + √x₀)`` and
  ``−1/(x·x₀)`` (no cancellation; the gradient itself at Δx = 0);
- MaxPool: Captum's rule — with ``c = max(y, y₀)`` the pooled differences ``c − y₀`` (input half)
  and ``y − c`` (reference half) are placed at the window maxima of their own half, the two
  placements summed and divided by Δx;
- Mul, MatMul and Gemm of two data-dependent operands (Swish ``x·σ(x)``, squeeze-and-excitation
  gates, attention's ``Q·Kᵀ`` and ``A·V``, a variance's ``x·x``): each operand's cotangent uses the
  other operand's mean over the two halves, ``Δ(ab) = ā·Δb + b̄·Δa`` exactly (the Shapley split of
  a product; ``Δ(x²) = (x + x₀)·Δx``); with the Sigmoid's rescale this is the rescale multiplier of
  Swish as one activation, with no pattern pass;
- Div by a data-dependent denominator, ``a · (1/b)``: the product's split with the reciprocal's
  quotient, ``Δ(a/b) = mean(1/b)·Δa − mean(a)·Δb/(b·b₀)``;
- Softmax and LogSoftmax inside the network (attention): decomposed as ``exp(u)`` (``u``) with
  ``u = z − c − log S`` and ``S = Σ exp(z − c)``: the three exponentials/logs rescaled, the sum and
  differences kept. The shift ``c``, the larger of the two halves' maxima, is one constant for both
  halves, so ``Δ(z − c) = Δz``, both halves are computed exactly and nothing overflows (``log S``
  stays finite, by ReduceLogSumExp, where the other half's maximum is so far above that S underflows);
  the multipliers do not depend on ``c``. (Splitting ``e · (1/S)`` as a product is exact too, but its
  contributions grow like ``S/S₀`` and cancel; through the log they grow like ``log(S/S₀)``.)
- LayerNormalization (constant scale and bias): decomposed into its mean, centring ``x − μ``,
  variance ``mean(c·c)`` (product), ``(var + ε)^(−1/2)`` (its exact quotient
  ``−r·r₀/(√s + √s₀)``) and ``c · r`` (product);
- linear and structural ops keep their exact gradient (``KEPT``, and Conv/ConvTranspose with
  constant filters, Div by a constant, Mul/MatMul/Gemm by a constant): Δ passes through them exactly.

Every other op on the path is an error naming it (GlobalMaxPool, ReduceMax, Max/Min, Where, a
data-dependent Conv filter, ...). Captum instead applies the plain gradient to any op it has no
hook for (functional ``torch.mul``, ``nn.SiLU``, LayerNorm, a Div by a data-dependent tensor, ...),
which silently breaks summation-to-delta; an error here says which op would have done so. A
Softmax (LogSoftmax) whose output is the scored tensor is refused as well: attribute
``of="logits"`` instead (the DeepLIFT paper's advice for softmax outputs; Captum's rule treats it
as elementwise and subtracts a mean over the whole batch).
"""

from __future__ import annotations

import dataclasses

from onnx import helper

from onnxsight.errors import UnsupportedOp

from .backward import COTANGENT_PREFIX
from .builder import GraphBuilder
from .registry import RULES, Node, rule, strict

MODIFIER = "deeplift"
EPS = 1e-10  # Captum's default: below it, Δx counts as zero and the gradient is used

KEPT = (
    "BatchNormalization", "AveragePool", "GlobalAveragePool",
    "ReduceSum", "ReduceMean", "Add", "Sub", "Sum", "Neg", "Identity", "Dropout",
    "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Expand", "Concat", "Split", "Slice", "Pad", "Resize",
    "Gather",
    "DepthToSpace", "SpaceToDepth", "Tile", "CumSum", "Trilu", "ReverseSequence", "Mean", "GatherElements", "GatherND",
    "Compress", "ScatterElements", "ScatterND",
)
RESCALED = ("Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Sigmoid", "Tanh", "Softplus", "Clip", "HardSigmoid",
            "HardSwish", "Gelu", "Erf", "Exp", "Log", "Abs", "Pow",
            "Mish", "Swish", "Softsign", "Celu", "ThresholdedRelu", "Shrink", "Sin", "Cos", "Tan", "Sinh", "Cosh",
            "Asin", "Acos", "Atan", "Asinh", "Acosh", "Atanh", "Sign", "Round", "Floor", "Ceil")

strict(MODIFIER, keeps=KEPT)


def swap(g: GraphBuilder, t: str) -> str:
    """A forward tensor with its two halves swapped: row i of the input half faces row i of the
    reference half. Differences and means against it are the same in both halves up to sign
    (Δy/Δx not even that), and it never fails on an odd batch (shape probes run one)."""
    half = g.op("Div", g.dim(t, 0), g.ints([2]))
    later = g.op("Slice", t, half, g.ints([2**62]), g.ints([0]))
    return g.op("Concat", later, g.op("Slice", t, g.ints([0]), half, g.ints([0])), axis=0)


def difference(g: GraphBuilder, t: str) -> str:
    """``t − swap(t)``: Δt in the input half, −Δt in the reference half."""
    return g.op("Sub", t, swap(g, t))


def mean(g: GraphBuilder, t: str) -> str:
    """``(t + swap(t))/2``: the mean of each row and its partner, the same in both halves."""
    average = g.op("Mul", g.op("Add", t, swap(g, t)), g.const(0.5, like=t))
    g.record(average, like=t)
    return average


def sign(g: GraphBuilder, t: str) -> str:
    """+1 on the input half's rows, −1 on the reference half's, broadcastable to ``t``."""
    count = g.dim(t, 0)
    rows = g.op("Range", g.ints(0), g.op("Squeeze", count, g.ints([0])), g.ints(1))
    first = g.op("Less", g.op("Mul", rows, g.ints(2)), count)
    return g.op("Reshape", g.where(first, g.const(1.0, like=t), -1.0), g.ints([-1] + [1] * (g.rank(t) - 1)))


def _eps(g: GraphBuilder, n: Node, like: str) -> str:
    return g.const(n.options.get("eps", EPS), like=like)


def _rescaled(g: GraphBuilder, n: Node, numerator: str, dx: str, exact: str) -> str:
    """``numerator / Δx`` (both as ``t − swap(t)``: the signs cancel), and the exact gradient
    where ``|Δx| < eps`` (Captum's ``torch.where``), as products (faster in onnxruntime than Where;
    a non-finite exact gradient where Δx is not small gives NaN, not the ratio)."""
    small = g.mask(g.op("Less", g.op("Abs", dx), _eps(g, n, dx)), dx)
    ratio = g.op("Div", numerator, g.op("Add", dx, small))  # the ratio is not used where Δx is small
    return g.op("Add", ratio, g.op("Mul", small, g.op("Sub", exact, ratio)))


@rule(*RESCALED, modifier=MODIFIER)
def rescale(g: GraphBuilder, n: Node):
    """The rescale rule ``gy · Δy/Δx`` of an elementwise nonlinearity."""
    n.constant(*range(1, len(n.inputs)))
    exact = RULES[n.op_type](g, n)
    return [_rescaled(g, n, g.op("Mul", n.gy, difference(g, n.y)), difference(g, n.x), exact[0]), *exact[1:]]


@rule("Sqrt", modifier=MODIFIER)
def sqrt(g: GraphBuilder, n: Node):
    """``Δ√x/Δx = 1/(√x + √x₀)``: exact, and the gradient at Δx = 0."""
    return [g.op("Div", n.gy, g.op("Add", n.y, swap(g, n.y)))]


@rule("Reciprocal", modifier=MODIFIER)
def reciprocal(g: GraphBuilder, n: Node):
    """``Δ(1/x)/Δx = −1/(x·x₀)``: exact, and the gradient at Δx = 0."""
    return [g.op("Neg", g.op("Mul", n.gy, g.op("Mul", n.y, swap(g, n.y))))]


@rule("MaxPool", modifier=MODIFIER)
def max_pool(g: GraphBuilder, n: Node):
    """Captum's maxpool rule (see the module docstring); needs no ``Indices`` output."""
    if len(n.outputs) > 1 and n.cots[1:] != [None] * (len(n.outputs) - 1):
        raise UnsupportedOp(f"MaxPool node {n.name!r}: its Indices output cannot be differentiated by deeplift")
    signs = sign(g, n.y)
    top = g.op("Max", n.y, swap(g, n.y))  # max(y, y₀) in both halves
    pooled = g.op("Mul", signs, g.op("Sub", top, swap(g, n.y)))  # c − y₀ | y − c
    exact = RULES["MaxPool"](g, n)[0]
    placed = g.routed[exact].place(g.op("Mul", n.gy, pooled))  # the same window maxima, found once
    summed = g.op("Mul", g.op("Add", placed, swap(g, placed)), signs)  # over Δx as x − swap(x): signs cancel
    return [_rescaled(g, n, summed, difference(g, n.x), exact)]


def _means(g: GraphBuilder, n: Node) -> Node:
    """The node with each data-dependent operand replaced by its mean over the two halves (once for ``x·x``)."""
    means = {name: mean(g, name) for name, active in zip(n.inputs, n.active) if active}
    inputs = [means.get(name, name) for name in n.inputs]
    proto = helper.make_node(n.op_type, inputs, n.outputs, name=n.proto.name)
    proto.attribute.extend(n.proto.attribute)
    return dataclasses.replace(n, proto=proto)


@rule("Mul", "MatMul", "Gemm", modifier=MODIFIER)
def product(g: GraphBuilder, n: Node):
    """Exact for a constant factor; for two data-dependent factors the Shapley split
    ``Δ(ab) = ā·Δb + b̄·Δa`` (each cotangent uses the other factor's mean over the halves;
    Gemm's C, a sum, keeps its exact cotangent)."""
    if all(n.active[:2]):
        return RULES[n.op_type](g, _means(g, n))
    return RULES[n.op_type](g, n)


@rule("Div", modifier=MODIFIER)
def div(g: GraphBuilder, n: Node):
    """Exact for a constant denominator; ``a · (1/b)`` for a data-dependent one: the product's
    split with the reciprocal's exact quotient, ``Δ(a/b) = mean(1/b)·Δa − mean(a)·Δb/(b·b₀)``."""
    if not n.active[1]:
        return RULES["Div"](g, n)
    a, b = n.inputs
    inverse = g.op("Reciprocal", b)
    numerator = mean(g, a) if n.active[0] else a
    through_inverse = g.unbroadcast(g.op("Mul", n.gy, numerator), b, n.y)
    grad_b = g.op("Neg", g.op("Mul", through_inverse, g.op("Mul", inverse, swap(g, inverse))))
    grad_a = g.unbroadcast(g.op("Mul", n.gy, mean(g, inverse)), a, n.y) if n.active[0] else None
    return [grad_a, grad_b]


@rule("Conv", "ConvTranspose", modifier=MODIFIER)
def convolution(g: GraphBuilder, n: Node):
    """Exact for constant filters (a linear map); filters computed from the input are an error."""
    if n.active[1]:
        raise UnsupportedOp(f"no deeplift rule for op {n.op_type} with data-dependent filters (node {n.name!r})")
    return RULES[n.op_type](g, n)


def _reduce(g: GraphBuilder, op_type: str, x: str, axis: int) -> str:
    if g.opset >= 18:
        return g.op(op_type, x, g.ints([axis]), keepdims=1)
    return g.op(op_type, x, axes=[axis], keepdims=1)


@rule("Softmax", "LogSoftmax", modifier=MODIFIER)
def softmax(g: GraphBuilder, n: Node):
    """Inside the network, ``exp(u)`` (Softmax) or ``u`` (LogSoftmax) with ``u = z − c − log S``,
    ``S = Σ exp(z − c)``: the exponentials and the log rescaled, the sum and differences kept; ``c``
    is one constant for both halves (see the module docstring). On the scored tensor: refused."""
    if n.gy.startswith(COTANGENT_PREFIX):
        raise UnsupportedOp(f"no deeplift rule for op {n.op_type} on the scored output (node {n.name!r}): "
                            "attribute the logits before it (of='logits')")
    axis = n.attr("axis", -1)  # the model is at opset >= 13 (backward.MIN_OPSET)
    shifted = g.op("Sub", n.x, _reduce(g, "ReduceMax", g.op("Max", n.x, swap(g, n.x)), axis))
    e = g.op("Exp", shifted)
    total = g.reduce_sum(e, [axis])
    log_total = _reduce(g, "ReduceLogSumExp", shifted, axis)  # finite where a half's total underflows
    grad_u = n.gy
    if n.op_type == "Softmax":
        u = g.op("Sub", shifted, log_total)
        grad_u = _rescaled(g, n, g.op("Mul", n.gy, difference(g, n.y)), difference(g, u), g.op("Mul", n.gy, n.y))
    # log's gradient 1/S serves where |ΔS| < eps, so S ≈ S₀ ≥ 1 (c is the larger half's maximum): clamped at
    # eps, a total that underflowed in the other half gives no 0·inf
    exact = g.op("Reciprocal", g.op("Max", total, _eps(g, n, total)))
    per_total = _rescaled(g, n, difference(g, log_total), difference(g, total), exact)
    grad_e = g.op("Neg", g.op("Mul", g.reduce_sum(grad_u, [axis]), per_total))
    return [g.op("Add", grad_u, _rescaled(g, n, g.op("Mul", grad_e, difference(g, e)), difference(g, n.x),
                                          g.op("Mul", grad_e, e)))]


@rule("LayerNormalization", modifier=MODIFIER)
def layer_normalization(g: GraphBuilder, n: Node):
    """``c · r · scale + bias`` with ``c = x − mean(x)``, ``r = (mean(c·c) + ε)^(−1/2)``: the
    products split by their means, ``r`` by its exact quotient ``−r·r₀/(√s + √s₀)``."""
    n.constant(1, 2)
    if any(c is not None for c in n.cots[1:]):
        raise UnsupportedOp(f"LayerNormalization node {n.name!r}: its Mean and InvStdDev outputs cannot be "
                            "differentiated by deeplift")
    rank = g.rank(n.x)
    axes = list(range(n.attr("axis", -1) % rank, rank))
    centred = g.op("Sub", n.x, g.reduce_mean(n.x, axes))
    variance = g.reduce_mean(g.op("Mul", centred, centred), axes)
    root = g.op("Sqrt", g.op("Add", variance, g.const(n.attr("epsilon", 1e-5), like=n.x)))
    inverse = g.op("Reciprocal", root)
    grad_normalised = g.op("Mul", n.gy, n.inputs[1])
    grad_inverse = g.reduce_sum(g.op("Mul", grad_normalised, mean(g, centred)), axes)
    quotient = g.op("Div", g.op("Mul", inverse, swap(g, inverse)), g.op("Add", root, swap(g, root)))
    count = g.op("CastLike", g.op("Div", g.op("Size", n.x), g.op("Size", variance)), n.x)
    grad_square = g.op("Div", g.op("Mul", grad_inverse, quotient), count)  # to each c·c, through the mean
    grad_centred = g.op("Sub", g.op("Mul", grad_normalised, mean(g, inverse)),
                        g.op("Mul", g.op("Add", grad_square, grad_square), mean(g, centred)))
    grad_x = g.op("Sub", grad_centred, g.reduce_mean(grad_centred, axes))
    return [grad_x] + [None] * (len(n.inputs) - 1)
