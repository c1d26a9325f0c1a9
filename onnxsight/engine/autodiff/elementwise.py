"""VJP rules of elementwise ops: arithmetic with broadcasting, activations, unary math."""

from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto, helper

from .builder import FLOAT_TYPES, GraphBuilder, Scaled
from .registry import Node, rule


def _positive(g: GraphBuilder, x: str) -> str:
    return g.op("Greater", x, g.const(0.0, like=x))


# -- arithmetic (broadcasting) ------------------------------------------------------------
def _unbroadcast(g: GraphBuilder, grad: str, like: str, y: str) -> str:
    """``grad`` summed to ``like``'s shape (``y``: the forward output it is shaped like)."""
    return g.unbroadcast_batch(grad, like, y) or g.unbroadcast(grad, like, y)


@rule("Add")
def add(g: GraphBuilder, n: Node):
    a, b = n.inputs
    return [_unbroadcast(g, n.gy, a, n.y), _unbroadcast(g, n.gy, b, n.y)]


@rule("Sub")
def sub(g: GraphBuilder, n: Node):
    a, b = n.inputs
    return [_unbroadcast(g, n.gy, a, n.y), _unbroadcast(g, g.op("Neg", n.gy), b, n.y)]


def _sigmoid_of(n: Node, a: str, b: str) -> bool:
    """Whether ``b`` is ``Sigmoid(a)`` in the forward graph (``a · b`` is then a swish)."""
    return n.graph is not None and any(p.op_type == "Sigmoid" and p.output[0] == b and p.input[0] == a
                                       for p in n.graph.node)


def _vector_axis(g: GraphBuilder, n: Node, factor: int) -> int | None:
    """The one axis along which the constant input ``factor`` varies, when the other input has the
    output's shape (a batch norm's per-channel factor); else None."""
    value, data = n.value(factor), n.inputs[1 - factor]
    if value is None or n.active[factor] or not g.same_type_shape(data, n.y):
        return None
    shape = (1,) * (g.rank(n.y) - value.ndim) + value.shape
    varying = [axis for axis, size in enumerate(shape) if size != 1]
    return varying[0] if len(varying) == 1 else None


@rule("Mul")
def mul(g: GraphBuilder, n: Node):
    """Swish ``x · Sigmoid(x)`` in one rule: dx = dy (s + y (1 - s)), four passes instead of six.
    A constant per-axis factor is recorded (``g.scaled``) so that a Conv before it can fold it in."""
    a, b = n.inputs
    for x, s, order in ((a, b, 1), (b, a, -1)):
        if _sigmoid_of(n, x, s):
            slope = g.op("Add", s, g.op("Mul", n.y, g.op("Sub", g.const(1.0, like=s), s)))
            return [g.op("Mul", n.gy, slope), None][::order]
    grads = [_unbroadcast(g, g.op("Mul", n.gy, b), a, n.y), _unbroadcast(g, g.op("Mul", n.gy, a), b, n.y)]
    for factor in (1, 0):
        axis = _vector_axis(g, n, factor)
        if axis is not None:
            g.scaled[grads[1 - factor]] = Scaled(n.gy, g.op("Reshape", n.inputs[factor], g.ints([-1])), axis)
            break
    return grads


@rule("Div")
def div(g: GraphBuilder, n: Node):
    a, b = n.inputs  # d(a/b)/db = -y/b
    return [_unbroadcast(g, g.op("Div", n.gy, b), a, n.y),
            _unbroadcast(g, g.op("Neg", g.op("Mul", n.gy, g.op("Div", n.y, b))), b, n.y)]


@rule("Sum")
def sum_(g: GraphBuilder, n: Node):
    return [g.unbroadcast(n.gy, x, n.y) for x in n.inputs]


@rule("Max", "Min")
def max_min(g: GraphBuilder, n: Node):
    """The gradient goes to the inputs equal to the result, split equally among ties."""
    hits = [g.mask(g.op("Equal", x, n.y), n.y) for x in n.inputs]
    count = hits[0] if len(hits) == 1 else g.op("Sum", *hits)
    share = g.op("Div", n.gy, count)
    return [g.unbroadcast(g.op("Mul", share, hit), x, n.y) for x, hit in zip(n.inputs, hits)]


@rule("Pow")
def pow_(g: GraphBuilder, n: Node):
    x, e = n.inputs  # d/dx = e x^(e-1); d/de = y log x
    e_like = g.op("CastLike", e, x)
    dx = g.op("Mul", n.gy, g.op("Mul", e_like, g.op("Pow", x, g.op("Sub", e_like, g.const(1.0, like=x)))))
    de = g.op("Mul", g.op("Mul", n.gy, n.y), g.op("Log", x))
    return [g.unbroadcast(dx, x, n.y), g.unbroadcast(g.op("CastLike", de, e), e, n.y)]


# -- piecewise-linear activations ---------------------------------------------------------
@rule("Relu")
def relu(g: GraphBuilder, n: Node):
    """Where a max pool reads y, its gradient lands only on window maxima, where y equals the
    pooled maximum: masking the pooled gradient gives the same result on far fewer elements (a
    window of zeros routes to its first element, whose x is not positive either). That mask is a
    product (faster in onnxruntime than Where): a NaN or infinite gradient on a window of zeros
    gives NaN, not 0."""
    routed = g.routed.get(n.gy)
    if routed is not None and routed.onto == n.y:
        mask = g.mask(_positive(g, routed.maxima), routed.values)
        return [routed.place(g.op("Mul", routed.values, mask))]
    return [g.op("Mul", n.gy, g.mask(_positive(g, n.y), n.gy))]


@rule("Relu", modifier="guided")
def relu_guided(g: GraphBuilder, n: Node):
    """Guided backprop: only positive gradients through positive activations."""
    return [g.op("Mul", g.op("Relu", n.gy), g.mask(_positive(g, n.y), n.gy))]


@rule("Relu", modifier="deconv")
def relu_deconv(g: GraphBuilder, n: Node):
    """Deconvnet ("rectified") backprop: the Relu is applied to the gradient instead."""
    return [g.op("Relu", n.gy)]


def _pick(g: GraphBuilder, mask: str, where_one: str | float, where_zero: str | float) -> str:
    """``where_one`` where the 0/1 ``mask`` is 1, ``where_zero`` where it is 0: ``m·a + (1 - m)·b``,
    exact for finite a and b (one product is a times 1, the other a zero that adds nothing)."""
    parts = []
    for m, value in ((mask, where_one), (g.op("Sub", g.const(1.0, like=mask), mask), where_zero)):
        parts.append(m if value == 1.0 else g.op("Mul", m, value if isinstance(value, str) else g.const(value, like=mask)))
    return g.op("Add", *parts)


@rule("LeakyRelu")
def leaky_relu(g: GraphBuilder, n: Node):
    """Slope 1 where x > 0, alpha elsewhere (TensorFlow's, alpha at 0). A positive alpha keeps y's
    sign, so the mask reads y (a forward LeakyRelu stays fused into the Conv before it); for
    0 <= alpha <= 1 the slope is max(mask, alpha)."""
    alpha = float(n.attr("alpha", 0.01))
    mask = g.mask(_positive(g, n.y if alpha > 0 else n.x), n.gy)
    if 0 <= alpha <= 1:
        return [g.op("Mul", n.gy, g.op("Max", mask, g.const(alpha, like=mask)))]
    return [g.op("Mul", n.gy, _pick(g, mask, 1.0, alpha))]


@rule("PRelu")
def prelu(g: GraphBuilder, n: Node):
    """Slope ``slope`` where x < 0, 1 elsewhere (1 at 0). A Where: an exact 0/1 pick of a slope of
    any sign takes three full-size ops more, 15% slower in onnxruntime (32x144x24x24)."""
    x, slope = n.inputs
    negative = g.op("Less", x, g.const(0.0, like=x))
    dx = g.where(negative, g.op("Mul", n.gy, slope), n.gy)
    dslope = g.op("Mul", g.op("Mul", n.gy, x), g.mask(negative, n.gy))
    return [g.unbroadcast(dx, x, n.y), g.unbroadcast(dslope, slope, n.y)]


Bound = str | float | None  # a tensor name, a number, or no bound


def _inside(g: GraphBuilder, y: str, low: Bound, high: Bound) -> str:
    """0/1 in ``y``'s type: 1 where ``low < y < high`` (exact in any precision; measured as fast in
    onnxruntime as ``Clip(y, next float above low, next float below high) == y``)."""
    tests = [g.op(op, y, g.op("CastLike", b, y) if isinstance(b, str) else g.const(b, like=y))
             for b, op in ((low, "Greater"), (high, "Less")) if b is not None]
    return g.mask(tests[0] if len(tests) == 1 else g.op("And", *tests), y)


@rule("Clip")
def clip(g: GraphBuilder, n: Node):
    """Gradient passes where ``min < x < max`` (as TensorFlow's relu6), read from the output alone
    so that onnxruntime keeps the forward Clip fused into the convolution before it."""
    n.constant(1, 2)
    if n.input(1) is None and n.input(2) is None:
        return [n.gy] + [None] * (len(n.inputs) - 1)
    return [g.op("Mul", n.gy, _inside(g, n.y, _bound(n, 1), _bound(n, 2)))] + [None] * (len(n.inputs) - 1)


def _bound(n: Node, i: int) -> Bound:
    """Clip's bound ``i``: its value when constant (no cast at run time), else its name; None when absent."""
    value = n.value(i)
    return n.input(i) if value is None else float(value.item())


@rule("HardSigmoid")
def hard_sigmoid(g: GraphBuilder, n: Node):
    """Slope alpha where the output is strictly between 0 and 1."""
    slope = g.op("Mul", _inside(g, n.y, 0.0, 1.0), g.const(n.attr("alpha", 0.2), like=n.x))
    return [g.op("Mul", n.gy, slope)]


@rule("HardSwish")
def hard_swish(g: GraphBuilder, n: Node):
    """y = x·h(x), h = clip(x/6 + 1/2, 0, 1): slope h(x) + x/6 on (-3, 3), h(x) elsewhere (as
    TensorFlow's x·relu6(x + 3)/6)."""
    x = n.x
    ramp = g.op("Mul", g.op("Mul", x, g.const(1 / 6, like=x)), _inside(g, x, -3.0, 3.0))
    return [g.op("Mul", n.gy, g.op("Add", g.op("HardSigmoid", x, alpha=1 / 6, beta=0.5), ramp))]


# -- smooth activations -------------------------------------------------------------------
@rule("Elu")
def elu(g: GraphBuilder, n: Node):
    """Slope 1 where x > 0, y + alpha elsewhere (Keras's, alpha at 0). With alpha = 1 that is
    min(y + 1, 1): y + 1 <= 1 exactly where x <= 0."""
    alpha = float(n.attr("alpha", 1.0))
    shifted = g.op("Add", n.y, g.const(alpha, like=n.y))
    if alpha == 1.0:
        return [g.op("Mul", n.gy, g.op("Min", shifted, g.const(1.0, like=n.y)))]
    return [g.op("Mul", n.gy, _pick(g, g.mask(_positive(g, n.x), n.gy), 1.0, shifted))]


@rule("Selu")
def selu(g: GraphBuilder, n: Node):
    """Slope y + alpha·gamma where y < 0, gamma elsewhere (TensorFlow's, gamma at 0): min(y, 0) +
    alpha·gamma, less (alpha·gamma - gamma) where y >= 0. In y's precision that difference is exact
    for gamma <= alpha·gamma <= 2·gamma (the defaults), so gamma comes back exactly; else a pick."""
    alpha, gamma = n.attr("alpha", 1.67326319217681884765625), n.attr("gamma", 1.05070102214813232421875)
    known = g.elem_type(n.y)
    dtype = helper.tensor_dtype_to_np_dtype(known) if known in FLOAT_TYPES - {TensorProto.BFLOAT16} else None
    scaled = None if dtype is None else (np.asarray(alpha * gamma, dtype), np.asarray(gamma, dtype))
    if scaled is None or not scaled[1] <= scaled[0] <= 2 * scaled[1]:
        negative = g.mask(g.op("Less", n.y, g.const(0.0, like=n.y)), n.gy)
        shifted = g.op("Add", n.y, g.const(alpha * gamma, like=n.y))
        return [g.op("Mul", n.gy, _pick(g, negative, shifted, gamma))]
    shifted = g.op("Add", g.op("Min", n.y, g.const(0.0, like=n.y)), g.const(scaled[0], like=n.y))
    positive = g.mask(g.op("GreaterOrEqual", n.y, g.const(0.0, like=n.y)), n.gy)
    slope = g.op("Sub", shifted, g.op("Mul", positive, g.const(scaled[0] - scaled[1], like=n.y)))
    return [g.op("Mul", n.gy, slope)]


@rule("Sigmoid")
def sigmoid(g: GraphBuilder, n: Node):
    return [g.op("Mul", n.gy, g.op("Mul", n.y, g.op("Sub", g.const(1.0, like=n.y), n.y)))]


@rule("Tanh")
def tanh(g: GraphBuilder, n: Node):
    return [g.op("Mul", n.gy, g.op("Sub", g.const(1.0, like=n.y), g.op("Mul", n.y, n.y)))]


@rule("Softplus")
def softplus(g: GraphBuilder, n: Node):
    return [g.op("Mul", n.gy, g.op("Sigmoid", n.x))]


@rule("Erf")
def erf(g: GraphBuilder, n: Node):
    density = g.op("Exp", g.op("Neg", g.op("Mul", n.x, n.x)))
    return [g.op("Mul", n.gy, g.op("Mul", density, g.const(2.0 / math.sqrt(math.pi), like=n.x)))]


@rule("Gelu")
def gelu(g: GraphBuilder, n: Node):
    x = n.x
    if n.attr("approximate", b"none") in (b"tanh", "tanh"):  # y = x/2 (1 + tanh(u)), u = c (x + k x^3)
        c, k = math.sqrt(2.0 / math.pi), 0.044715
        x2 = g.op("Mul", x, x)
        u = g.op("Mul", g.const(c, like=x), g.op("Add", x, g.op("Mul", g.const(k, like=x), g.op("Mul", x2, x))))
        t = g.op("Tanh", u)
        du = g.op("Mul", g.const(c, like=x), g.op("Add", g.const(1.0, like=x), g.op("Mul", g.const(3 * k, like=x), x2)))
        sech2 = g.op("Sub", g.const(1.0, like=x), g.op("Mul", t, t))
        slope = g.op("Add", g.op("Mul", g.const(0.5, like=x), g.op("Add", g.const(1.0, like=x), t)),
                     g.op("Mul", g.op("Mul", g.const(0.5, like=x), x), g.op("Mul", sech2, du)))
    else:  # Φ(x) + x φ(x)
        cdf = g.op("Mul", g.const(0.5, like=x),
                   g.op("Add", g.const(1.0, like=x), g.op("Erf", g.op("Mul", x, g.const(1 / math.sqrt(2.0), like=x)))))
        pdf = g.op("Mul", g.const(1 / math.sqrt(2 * math.pi), like=x),
                   g.op("Exp", g.op("Mul", g.const(-0.5, like=x), g.op("Mul", x, x))))
        slope = g.op("Add", cdf, g.op("Mul", x, pdf))
    return [g.op("Mul", n.gy, slope)]


# -- unary math -----------------------------------------------------------------------------
@rule("Exp")
def exp(g: GraphBuilder, n: Node):
    return [g.op("Mul", n.gy, n.y)]


@rule("Log")
def log(g: GraphBuilder, n: Node):
    return [g.op("Div", n.gy, n.x)]


@rule("Sqrt")
def sqrt(g: GraphBuilder, n: Node):
    return [g.op("Div", n.gy, g.op("Mul", n.y, g.const(2.0, like=n.y)))]


@rule("Reciprocal")
def reciprocal(g: GraphBuilder, n: Node):
    return [g.op("Neg", g.op("Mul", n.gy, g.op("Mul", n.y, n.y)))]


@rule("Neg")
def neg(g: GraphBuilder, n: Node):
    return [g.op("Neg", n.gy)]


@rule("Abs")
def abs_(g: GraphBuilder, n: Node):
    return [g.op("Mul", n.gy, g.op("Sign", n.x))]


# -- identities -------------------------------------------------------------------------------
@rule("Identity")
def identity(g: GraphBuilder, n: Node):
    return [n.gy]


@rule("Dropout")
def dropout(g: GraphBuilder, n: Node):
    """Inference-mode Dropout is the identity; training mode is refused."""
    n.constant(1, 2)
    training = n.value(2)
    if n.input(2) is not None and (training is None or bool(training)):
        raise n.unsupported("training_mode (or one not known to be false)")
    return [n.gy] + [None] * (len(n.inputs) - 1)


@rule("Cast")
def cast(g: GraphBuilder, n: Node):
    """Casting back the gradient; from a non-float type nothing flows."""
    if g.elem_type(n.x) not in FLOAT_TYPES or n.attr("to") not in FLOAT_TYPES:
        return [None]
    return [g.op("CastLike", n.gy, n.x)]


@rule("Where")
def where(g: GraphBuilder, n: Node):
    cond, a, b = n.inputs
    return [None, g.unbroadcast(g.where(cond, n.gy, 0.0), a, n.y),
            g.unbroadcast(g.op("Where", cond, g.const(0.0, like=n.gy), n.gy), b, n.y)]

