"""DeepLIFT (rescale rule) as a strict backprop modifier, with Captum's conventions.

The forward batch holds the inputs and their references stacked along the batch axis,
``[inputs; references]`` (2m rows), and the cotangent of the scored tensor is given to both
halves. Each rule faces every row with its partner in the other half (the halves swapped) to form
Δ = input half − reference half and writes the same multiplier into both halves (as Captum's hooks do):

- elementwise nonlinearities (Relu, LeakyRelu, PRelu with a constant slope, Elu, Selu, Sigmoid,
  Tanh, Softplus, Clip (ReLU6), HardSigmoid, HardSwish, Gelu, Erf): the rescale multiplier
  ``gy · Δy/Δx``, and the exact gradient of each half where ``|Δx| < eps``
  (``Modifier("deeplift", eps=1e-10)``, Captum's default);
- MaxPool: Captum's rule — with ``c = max(y, y₀)`` the pooled differences ``c − y₀`` (input half)
  and ``y − c`` (reference half) are placed at the window maxima of their own half, the two
  placements summed and divided by Δx;
- Mul, MatMul and Gemm of two data-dependent operands (Swish ``x·σ(x)``, squeeze-and-excitation
  gates): each operand's cotangent uses the other operand's mean over the two halves,
  ``Δ(ab) = ā·Δb + b̄·Δa`` exactly (the Shapley split of a product); with the Sigmoid's rescale
  this is the rescale multiplier of Swish as one activation, with no pattern pass;
- linear and structural ops keep their exact gradient (``KEPT``, and Conv/ConvTranspose with
  constant filters, Div by a constant, Mul/MatMul/Gemm by a constant): Δ passes through them exactly.

Every other op on the path is an error naming it (GlobalMaxPool, ReduceMax, Max/Min, Exp, Log,
Sqrt, LayerNormalization, a data-dependent Div denominator or Conv filter, ...). Captum instead applies the plain gradient to
any op it has no hook for (functional ``torch.mul``, ``nn.SiLU``, LayerNorm, a Div by a
data-dependent tensor, ...), which silently breaks summation-to-delta; an error here says
which op would have done so. Softmax is refused as well: Captum's rule treats it as elementwise
and subtracts a mean over the whole batch; attribute ``of="logits"`` instead (the DeepLIFT
paper's advice for softmax outputs).
"""

from __future__ import annotations

import dataclasses

from onnx import helper

from onnxsight.errors import UnsupportedOp

from .builder import GraphBuilder
from .registry import RULES, Node, rule, strict

MODIFIER = "deeplift"
EPS = 1e-10  # Captum's default: below it, Δx counts as zero and the gradient is used

KEPT = (
    "BatchNormalization", "AveragePool", "GlobalAveragePool",
    "ReduceSum", "ReduceMean", "Add", "Sub", "Sum", "Neg", "Identity", "Dropout",
    "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Expand", "Concat", "Split", "Slice", "Pad", "Resize",
    "Gather",
)
RESCALED = ("Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Sigmoid", "Tanh", "Softplus", "Clip", "HardSigmoid",
            "HardSwish", "Gelu", "Erf")

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
    """The node with each data-dependent operand replaced by its mean over the two halves."""
    inputs = list(n.inputs)
    for i, name in enumerate(inputs):
        if n.active[i]:
            inputs[i] = g.op("Mul", g.op("Add", name, swap(g, name)), g.const(0.5, like=name))
            g.record(inputs[i], like=name)
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
    """Exact for a constant denominator; a data-dependent one is an error."""
    if n.active[1]:
        raise UnsupportedOp(f"no deeplift rule for op Div with a data-dependent denominator (node {n.name!r}); "
                            "only division by a constant keeps summation-to-delta")
    return RULES["Div"](g, n)


@rule("Conv", "ConvTranspose", modifier=MODIFIER)
def convolution(g: GraphBuilder, n: Node):
    """Exact for constant filters (a linear map); filters computed from the input are an error."""
    if n.active[1]:
        raise UnsupportedOp(f"no deeplift rule for op {n.op_type} with data-dependent filters (node {n.name!r})")
    return RULES[n.op_type](g, n)


@rule("Softmax", "LogSoftmax", modifier=MODIFIER)
def softmax(g: GraphBuilder, n: Node):
    raise UnsupportedOp(f"no deeplift rule for op {n.op_type} (node {n.name!r}); it is not elementwise, so the "
                        "rescale rule does not apply: attribute the logits before it (of='logits')")
