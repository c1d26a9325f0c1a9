"""Relevance rules (LRP, Deep Taylor) as strict backprop modifiers: the backward signal IS the relevance.

As Zennit's hooks do, the cotangent fed at ``of`` is the initial relevance and every rule maps the
relevance of a node's output onto its inputs:

- weighted linear ops (Conv, ConvTranspose: "convolutions"; Gemm, MatMul: "dense") with constant
  weights ``W`` and bias ``b`` (their own, or a constant ``Add`` right after them, as tf2onnx writes
  a Keras Dense or Conv bias) take the rule their modifier gives them; each rule runs the op
  forward on modified inputs/weights and takes the exact VJP of that copy (Zennit's BasicHook):

  ====================  =====================================================================
  epsilon               R_x = x ⊙ Wᵀ(R / stab_ε(z)),  z = Wx + b
  zplus                 R_x = x⁺ ⊙ W⁺ᵀs + x⁻ ⊙ W⁻ᵀs,  s = R / stab(W⁺x⁺ + b⁺ + W⁻x⁻)
  alphabeta             α·(the z⁺ term) − β·(the same with W⁻x⁺ + b⁻ + W⁺x⁻)
  gamma                 the z⁺/z⁻ terms with W + γW⁺ / W + γW⁻ (b + γb±), chosen by the sign of z
  flat                  R_x = 1ᵀ(R / stab(1·1))        (no input, no bias)
  wsquare               R_x = (W²)ᵀ(R / stab(W²·1 + b²))
  zbox                  R_x = x ⊙ Wᵀs − l ⊙ W⁺ᵀs − h ⊙ W⁻ᵀs,  s = R / stab(Wx − W⁺l − W⁻h)
  ====================  =====================================================================

  with ``stab(z) = z + ε·sign(z)`` (sign(0) = +1; Zennit's ``stabilize``), ε = ``epsilon`` for the
  epsilon rule and ``stabilizer`` (default 1e-6) for every other; with ε = 0 a zero denominator
  gives zero relevance (iNNvestigate's SafeDivide). The z^B bounds ``low``/``high`` are in the
  units of the layer's own input; None (default) takes each image's min/max of that input.
- parameter-free linear ops (AveragePool, GlobalAveragePool, ReduceMean, ReduceSum, Resize, Sum,
  Add/Sub of data tensors or of a constant, Mul/Div by a constant, BatchNormalization) share
  relevance in proportion to each input's contribution (Zennit's ``Norm``: R_i = x_i ⊙ Jᵢᵀ(R /
  stab(y))); a constant operand (a bias) keeps its share.
- monotone elementwise activations pass relevance unchanged (Zennit's ``Pass``); ``Mul(x, g)``
  with ``g`` the output of a Sigmoid/HardSigmoid is a gate (SiLU/Swish ``x·σ(x)``, squeeze-and-
  excitation; the gate possibly reshaped or transposed): all relevance goes to ``x``, none to the
  gate (signal-take-all, Arras et al. 2017).
- structural ops keep their exact gradient (``keeps``): reshapes, transposes, slices, pads,
  concatenation, depth/space shuffles, tiles, triangles, reversed sequences, gathers, MaxPool
  (winner takes all), Identity, Dropout, Cast.
  Any other op on the path is the strict error ``no <modifier> rule for op X (node ...)``.

Composites pick a rule per kind of layer; the first layer is a weighted op whose data input no
other weighted op feeds (reached from a graph input through parameter-free ops only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import onnx
from onnx import helper

from onnxsight.engine.graph import data_inputs, dependent_tensors
from onnxsight.errors import UnsupportedOp

from .builder import GraphBuilder
from .registry import RULES, Node, rule, strict

CONVOLUTIONS = ("Conv", "ConvTranspose")
DENSE = ("Gemm", "MatMul")
WEIGHTED = CONVOLUTIONS + DENSE
PROPORTIONAL = ("AveragePool", "GlobalAveragePool", "ReduceMean", "ReduceSum", "Resize", "Sum", "Add", "Sub",
                "BatchNormalization")
ACTIVATIONS = ("Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "Tanh", "Elu", "Selu", "Softplus", "HardSigmoid",
               "HardSwish", "Gelu")
GATES = ("Sigmoid", "HardSigmoid")
KEEPS = ("Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Split", "Slice", "Gather", "Pad",
         "Identity", "Dropout", "MaxPool", "GlobalMaxPool", "Expand", "Cast",
         "DepthToSpace", "SpaceToDepth", "Tile", "Trilu", "ReverseSequence", "GatherElements", "GatherND")
DEFAULTS = {"epsilon": 1e-6, "stabilizer": 1e-6, "gamma": 0.25, "alpha": 2.0, "beta": 1.0, "low": None, "high": None}


@dataclass(frozen=True)
class Composite:
    """The rule of convolutions, of dense layers, and (None: the same) of the first layer."""

    convolution: str
    dense: str
    first: str | None = None


COMPOSITES = {
    "lrp-epsilon": Composite("epsilon", "epsilon"),
    "lrp-zplus": Composite("zplus", "zplus"),
    "lrp-alphabeta": Composite("alphabeta", "alphabeta"),
    "lrp-flat": Composite("flat", "flat"),
    "lrp-wsquare": Composite("wsquare", "wsquare"),
    "lrp-gamma": Composite("gamma", "gamma"),
    "lrp-zbox": Composite("zbox", "zbox"),
    "lrp-epsilon-plus": Composite("zplus", "epsilon"),  # Zennit's EpsilonPlus
    "lrp-epsilon-plus-flat": Composite("zplus", "epsilon", "flat"),  # EpsilonPlusFlat
    "lrp-epsilon-alpha2-beta1": Composite("alphabeta", "epsilon"),  # EpsilonAlpha2Beta1
    "lrp-epsilon-alpha2-beta1-flat": Composite("alphabeta", "epsilon", "flat"),  # EpsilonAlpha2Beta1Flat
    "lrp-epsilon-gamma-box": Composite("gamma", "epsilon", "zbox"),  # EpsilonGammaBox
    "deeptaylor": Composite("zplus", "zplus", "zbox"),  # iNNvestigate's deep_taylor.bounded
}


def option(n: Node, name: str):
    return n.options.get(name, DEFAULTS[name])


# ---- the graph around a node ------------------------------------------------------------------
def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: node for node in graph.node for o in node.output if o}


def _consumers(graph: onnx.GraphProto, tensor: str) -> list[onnx.NodeProto]:
    return [node for node in graph.node if tensor in node.input]


def _fused_bias_add(n: Node, tensor: str) -> onnx.NodeProto | None:
    """The ``Add`` of a constant that is the only reader of a weighted op's bias-free output ``tensor``."""
    readers = _consumers(n.graph, tensor)
    if len(readers) != 1 or readers[0].op_type != "Add" or tensor in {o.name for o in n.graph.output}:
        return None
    add = readers[0]
    other = [i for i in add.input if i != tensor]
    return add if len(other) == 1 and other[0] in n.constants else None


def _bias_owner(n: Node, data: str) -> bool:
    """Whether the Add node ``n`` adds the constant bias of the weighted op producing ``data``."""
    producer = _producers(n.graph).get(data)
    return (producer is not None and producer.op_type in WEIGHTED and _own_bias(producer) is None
            and _fused_bias_add(n, data) is n.proto)


RESHAPING = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Expand", "Cast")


def _is_gate(made_by: dict[str, onnx.NodeProto], tensor: str) -> bool:
    """Whether ``tensor`` is a Sigmoid/HardSigmoid output, possibly reshaped or transposed (tf2onnx's layouts)."""
    producer = made_by.get(tensor)
    while producer is not None and producer.op_type in RESHAPING:
        producer = made_by.get(producer.input[0])
    return producer is not None and producer.op_type in GATES


def _own_bias(proto: onnx.NodeProto) -> str | None:
    return proto.input[2] if proto.op_type in ("Conv", "ConvTranspose", "Gemm") and len(proto.input) > 2 and proto.input[2] else None


def is_first_layer(n: Node) -> bool:
    """No weighted op computes this node's data input (it is reached from a graph input through
    parameter-free ops only)."""
    graph = n.graph
    made_by = _producers(graph)
    live = dependent_tensors(graph, [v.name for v in data_inputs(graph)])
    stack, seen = [n.inputs[_data_index(n)]], set()
    while stack:
        tensor = stack.pop()
        if tensor in seen or tensor not in live:
            continue
        seen.add(tensor)
        producer = made_by.get(tensor)
        if producer is None:
            continue
        if producer.op_type in WEIGHTED:
            return False
        stack.extend(i for i in producer.input if i)
    return True


def _data_index(n: Node) -> int:
    """The index of the data operand of a weighted op (the other one, its weight, is constant)."""
    active = [i for i in (0, 1) if n.active[i]]
    if len(active) != 1:
        raise UnsupportedOp(f"no relevance rule for op {n.op_type} of two data tensors (node {n.name!r}); "
                            "only a weight that does not depend on the input can be explained")
    return active[0]


# ---- arithmetic helpers ------------------------------------------------------------------------
def stabilized_ratio(g: GraphBuilder, r: str, z: str, epsilon: float) -> str:
    """``r / (z + ε·sign(z))`` with sign(0) = +1; with ε = 0, zero where z = 0."""
    zero = g.const(0.0, like=z)
    if epsilon == 0:
        empty = g.op("Equal", z, zero)
        return g.op("Where", empty, zero, g.op("Div", r, g.where(empty, g.const(1.0, like=z), z)))
    eps = g.const(float(epsilon), like=z)
    return g.op("Div", r, g.op("Where", g.op("Less", z, zero), g.op("Sub", z, eps), g.op("Add", z, eps)))


def _positive_part(g: GraphBuilder, x: str) -> str:
    return g.op("Relu", x)


def _negative_part(g: GraphBuilder, x: str) -> str:
    return g.op("Min", x, g.const(0.0, like=x))


def _with_cotangent(n: Node, cotangent: str, proto: onnx.NodeProto | None = None,
                    active: list[bool] | None = None) -> Node:
    return Node(proto or n.proto, n.name, n.opset, [cotangent, *n.cots[1:]], active or n.active, n.constants,
                n.options, n.graph)


def proportional(g: GraphBuilder, n: Node, epsilon: float | None = None) -> list[str | None]:
    """Zennit's Norm/Epsilon on an op linear in each data input: R_i = x_i ⊙ Jᵢᵀ(R / stab(y))."""
    ratio = stabilized_ratio(g, n.gy, n.y, option(n, "stabilizer") if epsilon is None else epsilon)
    grads = RULES[n.op_type](g, _with_cotangent(n, ratio))
    return [g.op("Mul", x, grad) if grad is not None and active else None
            for x, grad, active in zip(n.inputs, grads, n.active)]


# ---- weighted ops -----------------------------------------------------------------------------
@dataclass
class _Linear:
    """A weighted node seen as z = op(x, W) + b, and how to run it on other inputs and weights."""

    g: GraphBuilder
    n: Node
    data: int
    bias: str | None  # its own bias input, or the constant of a fused Add
    fused: onnx.NodeProto | None  # the Add that adds the bias, if not its own

    @classmethod
    def of(cls, g: GraphBuilder, n: Node) -> "_Linear":
        data = _data_index(n)
        fused = None if _own_bias(n.proto) else _fused_bias_add(n, n.y)
        bias = _own_bias(n.proto) or (next(i for i in fused.input if i != n.y) if fused is not None else None)
        return cls(g, n, data, bias, fused)

    @property
    def x(self) -> str:
        return self.n.inputs[self.data]

    @property
    def weight(self) -> str:
        return self.n.inputs[1 - self.data]

    @property
    def z(self) -> str:
        """The forward output with its bias."""
        return self.fused.output[0] if self.fused is not None else self.n.y

    def _attrs(self) -> dict:
        return {a.name: helper.get_attribute_value(a) for a in self.n.proto.attribute}

    def forward(self, x: str, weight: str, bias: str | None) -> str:
        """The op on ``x`` with ``weight`` (plus ``bias`` if not None), as the forward node's output."""
        g, n = self.g, self.n
        inputs = [x, weight] if self.data == 0 else [weight, x]
        own = bias is not None and self.fused is None
        z = g.op(n.op_type, *inputs, *([bias] if own else []), **self._attrs())
        g.record(z, like=n.y)
        if bias is not None and not own:
            z = g.op("Add", z, bias)
            g.record(z, like=self.z)
        return z

    def vjp(self, x: str, weight: str, cotangent: str) -> str:
        """The exact VJP with respect to the data input of the op run on ``x`` with ``weight``."""
        g, n = self.g, self.n
        inputs = [x, weight] if self.data == 0 else [weight, x]
        g.record(x, like=self.x)
        g.record(weight, like=self.weight)
        proto = helper.make_node(n.op_type, inputs, [n.y], **self._attrs())  # its output only lends its shape
        active = [i == self.data for i in range(2)]
        return RULES[n.op_type](g, _with_cotangent(n, cotangent, proto, active))[self.data]

    def ratio(self, z: str, epsilon: float | None = None) -> str:
        return stabilized_ratio(self.g, self.n.gy, z, option(self.n, "stabilizer") if epsilon is None else epsilon)

    def pos(self, t: str | None) -> str | None:
        return None if t is None else _positive_part(self.g, t)

    def neg(self, t: str | None) -> str | None:
        return None if t is None else _negative_part(self.g, t)

    def times(self, a: str, b: str) -> str:
        return self.g.op("Mul", a, b)


def _epsilon(t: _Linear) -> str:
    ratio = t.ratio(t.z, option(t.n, "epsilon"))
    return t.times(t.x, t.vjp(t.x, t.weight, ratio))


def _plus_terms(t: _Linear, wp: str, wn: str, bias: str | None, ratio_of: Callable[[str], str]) -> str:
    """x⁺ ⊙ vjp(wp; s) + x⁻ ⊙ vjp(wn; s), s = ratio_of(op(x⁺, wp) + bias + op(x⁻, wn))."""
    g = t.g
    xp, xn = t.pos(t.x), t.neg(t.x)
    z = g.op("Add", t.forward(xp, wp, bias), t.forward(xn, wn, None))
    s = ratio_of(z)
    return g.op("Add", t.times(xp, t.vjp(xp, wp, s)), t.times(xn, t.vjp(xn, wn, s)))


def _zplus(t: _Linear) -> str:
    return _plus_terms(t, t.pos(t.weight), t.neg(t.weight), t.pos(t.bias), t.ratio)


def _alphabeta(t: _Linear) -> str:
    g, alpha, beta = t.g, option(t.n, "alpha"), option(t.n, "beta")
    wp, wn = t.pos(t.weight), t.neg(t.weight)
    positive = _plus_terms(t, wp, wn, t.pos(t.bias), t.ratio)
    negative = _plus_terms(t, wn, wp, t.neg(t.bias), t.ratio)
    return g.op("Sub", g.op("Mul", positive, g.const(alpha, like=positive)),
                g.op("Mul", negative, g.const(beta, like=negative)))


def _gamma(t: _Linear) -> str:
    g, gamma = t.g, option(t.n, "gamma")

    def boosted(p: str | None, part) -> str | None:
        return None if p is None else g.op("Add", p, g.op("Mul", part(p), g.const(gamma, like=p)))

    zero = g.const(0.0, like=t.z)
    terms = []
    for sign, (first, second) in (("Greater", (t.pos, t.neg)), ("Less", (t.neg, t.pos))):
        mask = g.mask(g.op(sign, t.z, zero), t.z)
        terms.append(_plus_terms(t, boosted(t.weight, first), boosted(t.weight, second), boosted(t.bias, first),
                                 lambda z, mask=mask: g.op("Mul", t.ratio(z), mask)))
    return g.op("Add", *terms)


def _flat(t: _Linear) -> str:
    ones_x, ones_w = t.g.ones_like(t.x), t.g.ones_like(t.weight)
    return t.vjp(ones_x, ones_w, t.ratio(t.forward(ones_x, ones_w, None)))


def _wsquare(t: _Linear) -> str:
    g = t.g
    square = (lambda v: None if v is None else g.op("Mul", v, v))
    ones_x, w2 = g.ones_like(t.x), square(t.weight)
    return t.vjp(ones_x, w2, t.ratio(t.forward(ones_x, w2, square(t.bias))))


def _zbox(t: _Linear) -> str:
    g, n = t.g, t.n
    x = t.x
    rank = g.rank(x)
    bounds = []
    for name, reduce in (("low", "ReduceMin"), ("high", "ReduceMax")):
        value = option(n, name)
        if value is None:  # each image's data range
            axes = list(range(1, rank))
            bound = g.op(reduce, x, g.ints(axes), keepdims=1) if g.opset >= 18 else g.op(reduce, x, axes=axes, keepdims=1)
        else:
            bound = g.const(float(value), like=x)
        bounds.append(g.op("Expand", bound, g.shape(x)))
    low, high = bounds
    wp, wn = t.pos(t.weight), t.neg(t.weight)
    z = g.op("Sub", g.op("Sub", t.forward(x, t.weight, t.bias), t.forward(low, wp, t.pos(t.bias))),
             t.forward(high, wn, t.neg(t.bias)))
    s = t.ratio(z)
    return g.op("Sub", g.op("Sub", t.times(x, t.vjp(x, t.weight, s)), t.times(low, t.vjp(low, wp, s))),
                t.times(high, t.vjp(high, wn, s)))


LINEAR_RULES: dict[str, Callable[[_Linear], str]] = {
    "epsilon": _epsilon, "zplus": _zplus, "alphabeta": _alphabeta, "gamma": _gamma, "flat": _flat,
    "wsquare": _wsquare, "zbox": _zbox,
}


# ---- registration -----------------------------------------------------------------------------
def _register(name: str, composite: Composite) -> None:
    def unsupported(n: Node, what: str) -> UnsupportedOp:
        return UnsupportedOp(f"no {name} rule for op {n.op_type} {what} (node {n.name!r})")

    @rule(*WEIGHTED, modifier=name)
    def weighted(g: GraphBuilder, n: Node):
        if (n.active[0] and n.active[1]) or any(n.active[2:]):
            raise unsupported(n, "of two data tensors")
        chosen = composite.convolution if n.op_type in CONVOLUTIONS else composite.dense
        if composite.first is not None and is_first_layer(n):
            chosen = composite.first
        linear = _Linear.of(g, n)
        result: list[str | None] = [None] * len(n.inputs)
        result[linear.data] = LINEAR_RULES[chosen](linear)
        return result

    @rule(*PROPORTIONAL, modifier=name)
    def shared(g: GraphBuilder, n: Node):
        if n.op_type == "Add" and sum(n.active) == 1:
            data = n.inputs[n.active.index(True)]
            if _bias_owner(n, data):  # the weighted op below counts the bias in its own rule
                return [g.unbroadcast(n.gy, x, n.y) if active else None for x, active in zip(n.inputs, n.active)]
        return proportional(g, n)

    @rule("Mul", "Div", modifier=name)
    def scaled(g: GraphBuilder, n: Node):
        if n.op_type == "Div" and n.active[1]:
            raise unsupported(n, "by a data tensor")
        if not all(n.active):
            return proportional(g, n)
        gates = [i for i, x in enumerate(n.inputs) if _is_gate(_producers(n.graph), x)]
        if n.op_type != "Mul" or len(gates) != 1:
            raise unsupported(n, "of two data tensors")
        signal = 1 - gates[0]
        result: list[str | None] = [None, None]
        result[signal] = g.unbroadcast(n.gy, n.inputs[signal], n.y)
        return result

    @rule(*ACTIVATIONS, modifier=name)
    def passed(g: GraphBuilder, n: Node):
        return [n.gy] + [None] * (len(n.inputs) - 1)

    strict(name, keeps=KEEPS)


for _name, _composite in COMPOSITES.items():
    _register(_name, _composite)
