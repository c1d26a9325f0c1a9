"""VJP rules of univariate math ops: each is ``dx = dy · f'(x)``, with f' written from x or y.

Piecewise-constant ops (Sign, Round, Floor, Ceil) have a zero gradient wherever it exists, as in
TensorFlow; the rule returns that zero (not None) so that modifiers reusing it see a tensor.
"""

from __future__ import annotations

from .builder import GraphBuilder
from .registry import Node, rule


def _slope(g: GraphBuilder, n: Node, slope: str) -> list[str]:
    return [g.op("Mul", n.gy, slope)]


def _one(g: GraphBuilder, x: str) -> str:
    return g.const(1.0, like=x)


# -- activations ------------------------------------------------------------------------------
@rule("Mish")
def mish(g: GraphBuilder, n: Node):
    """y = x·tanh(softplus(x)): slope t + x·σ(x)·(1 - t²), t = tanh(softplus(x))."""
    x = n.x
    t = g.op("Tanh", g.op("Softplus", x))
    sech2 = g.op("Sub", _one(g, x), g.op("Mul", t, t))
    return _slope(g, n, g.op("Add", t, g.op("Mul", g.op("Mul", x, g.op("Sigmoid", x)), sech2)))


@rule("Swish")
def swish(g: GraphBuilder, n: Node):
    """y = x·σ(αx): slope s + α·y·(1 - s), s = σ(αx)."""
    x, alpha = n.x, n.attr("alpha", 1.0)
    s = g.op("Sigmoid", x if alpha == 1.0 else g.op("Mul", x, g.const(alpha, like=x)))
    ramp = g.op("Mul", n.y, g.op("Sub", _one(g, x), s))
    return _slope(g, n, g.op("Add", s, ramp if alpha == 1.0 else g.op("Mul", ramp, g.const(alpha, like=x))))


@rule("Softsign")
def softsign(g: GraphBuilder, n: Node):
    """y = x/(1 + |x|): slope 1/(1 + |x|)²."""
    denominator = g.op("Add", _one(g, n.x), g.op("Abs", n.x))
    return [g.op("Div", n.gy, g.op("Mul", denominator, denominator))]


@rule("Celu")
def celu(g: GraphBuilder, n: Node):
    """Slope 1 for x > 0, exp(x/α) = y/α + 1 elsewhere."""
    alpha = n.attr("alpha", 1.0)
    negative = g.op("Add", g.op("Mul", n.y, g.const(1.0 / alpha, like=n.y)), _one(g, n.y))
    return [g.where(g.op("Greater", n.x, g.const(0.0, like=n.x)), n.gy, g.op("Mul", n.gy, negative))]


@rule("ThresholdedRelu")
def thresholded_relu(g: GraphBuilder, n: Node):
    """Slope 1 where x > α, 0 elsewhere."""
    return _slope(g, n, g.mask(g.op("Greater", n.x, g.const(n.attr("alpha", 1.0), like=n.x)), n.gy))


@rule("Shrink")
def shrink(g: GraphBuilder, n: Node):
    """Slope 1 outside the dead band |x| ≤ λ, 0 inside it."""
    return _slope(g, n, g.mask(g.op("Greater", g.op("Abs", n.x), g.const(n.attr("lambd", 0.5), like=n.x)), n.gy))


# -- trigonometric and hyperbolic ---------------------------------------------------------------
@rule("Sin")
def sin(g: GraphBuilder, n: Node):
    return _slope(g, n, g.op("Cos", n.x))


@rule("Cos")
def cos(g: GraphBuilder, n: Node):
    return [g.op("Neg", g.op("Mul", n.gy, g.op("Sin", n.x)))]


@rule("Tan")
def tan(g: GraphBuilder, n: Node):
    """Slope 1 + y²."""
    return _slope(g, n, g.op("Add", _one(g, n.y), g.op("Mul", n.y, n.y)))


@rule("Sinh")
def sinh(g: GraphBuilder, n: Node):
    return _slope(g, n, g.op("Cosh", n.x))


@rule("Cosh")
def cosh(g: GraphBuilder, n: Node):
    return _slope(g, n, g.op("Sinh", n.x))


def _one_minus_square(g: GraphBuilder, x: str) -> str:
    return g.op("Sub", _one(g, x), g.op("Mul", x, x))


@rule("Asin")
def asin(g: GraphBuilder, n: Node):
    """Slope 1/√(1 - x²)."""
    return [g.op("Div", n.gy, g.op("Sqrt", _one_minus_square(g, n.x)))]


@rule("Acos")
def acos(g: GraphBuilder, n: Node):
    """Slope -1/√(1 - x²)."""
    return [g.op("Neg", g.op("Div", n.gy, g.op("Sqrt", _one_minus_square(g, n.x))))]


@rule("Atan")
def atan(g: GraphBuilder, n: Node):
    """Slope 1/(1 + x²)."""
    return [g.op("Div", n.gy, g.op("Add", _one(g, n.x), g.op("Mul", n.x, n.x)))]


@rule("Asinh")
def asinh(g: GraphBuilder, n: Node):
    """Slope 1/√(x² + 1)."""
    return [g.op("Div", n.gy, g.op("Sqrt", g.op("Add", g.op("Mul", n.x, n.x), _one(g, n.x))))]


@rule("Acosh")
def acosh(g: GraphBuilder, n: Node):
    """Slope 1/√(x² - 1)."""
    return [g.op("Div", n.gy, g.op("Sqrt", g.op("Sub", g.op("Mul", n.x, n.x), _one(g, n.x))))]


@rule("Atanh")
def atanh(g: GraphBuilder, n: Node):
    """Slope 1/(1 - x²)."""
    return [g.op("Div", n.gy, _one_minus_square(g, n.x))]


# -- piecewise constant -------------------------------------------------------------------------
@rule("Sign", "Round", "Floor", "Ceil")
def piecewise_constant(g: GraphBuilder, n: Node):
    """Zero almost everywhere (TensorFlow's gradient of sign, round, floor and ceil)."""
    return [g.zeros_like(n.x)]
