"""Gradients of ONNX graphs as ONNX graphs: one VJP rule per op type, one backward driver."""

from . import conv, elementwise, linalg, normalization, reduction, shape  # noqa: F401  (fills the rule table)
from . import norms, rearrange, unary  # noqa: F401  (more rules: unary math, rearrangements, norms)
from . import deeplift, relevance  # noqa: F401,E402  (the deeplift and LRP modifiers; after the gradient rules they reuse)
from .backward import VJPGraph, build_vjp
from .registry import MODIFIER_RULES, RULES, Modifier, Node, rule, rules_for, strict

__all__ = ["MODIFIER_RULES", "RULES", "Modifier", "Node", "VJPGraph", "build_vjp", "rule", "rules_for", "strict"]
