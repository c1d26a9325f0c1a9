"""The table ``{op_type: rule}`` and what a rule sees of its forward node.

A rule is ``rule(g, n) -> list[str | None]``: ``g`` is the :class:`GraphBuilder`, ``n`` the
:class:`Node` view (inputs, outputs, attributes, output cotangents). It returns one cotangent
name per forward input, ``None`` for inputs that are not differentiable (shapes, indices,
constant weights). Register with ``@rule("Relu")``; a backprop modifier registers a variant with
``@rule("Relu", modifier="guided")``. A modifier with parameters is asked for as
``Modifier("lrp-epsilon", epsilon=0.25)``; its rules read them as ``n.options``. A strict modifier
(``strict("lrp-epsilon", keeps=...)``) keeps the exact gradient rules of the listed op types only:
any other op on the path without a rule of its own is an error naming the op.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxsight.errors import InvalidArgument, UnsupportedOp

from .builder import GraphBuilder


@dataclass
class Node:
    """A forward node as a rule sees it."""

    proto: onnx.NodeProto
    name: str
    opset: int
    cots: list[str | None]  # one per output; None where nothing flows back
    active: list[bool]  # per input: does it depend on a wrt tensor (needs a cotangent)?
    constants: dict[str, np.ndarray] = field(default_factory=dict)  # initializers, Constant outputs
    options: Mapping[str, Any] = field(default_factory=dict)  # the modifier's parameters
    graph: onnx.GraphProto | None = None  # the forward graph, for rules that look at a node's neighbours

    @property
    def op_type(self) -> str:
        return self.proto.op_type

    @property
    def inputs(self) -> list[str]:
        return list(self.proto.input)

    @property
    def outputs(self) -> list[str]:
        return list(self.proto.output)

    @property
    def x(self) -> str:
        return self.proto.input[0]

    @property
    def y(self) -> str:
        return self.proto.output[0]

    @property
    def gy(self) -> str:
        """The cotangent of the first output."""
        cot = self.cots[0]
        if cot is None:
            raise UnsupportedOp(f"{self.op_type} node {self.name!r}: only its first output can be differentiated")
        return cot

    def attr(self, name: str, default=None):
        for a in self.proto.attribute:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default

    def input(self, i: int) -> str | None:
        """The ``i``-th input name, or None when absent or empty (optional input)."""
        return self.proto.input[i] if i < len(self.proto.input) and self.proto.input[i] else None

    def value(self, i: int) -> np.ndarray | None:
        """The value of input ``i`` when it is an initializer or a ``Constant`` output."""
        name = self.input(i)
        return None if name is None else self.constants.get(name)

    def constant(self, *indices: int) -> None:
        """Raises UnsupportedOp if any of these inputs is on the data path (this rule cannot differentiate it)."""
        for i in indices:
            if i < len(self.active) and self.active[i]:
                raise UnsupportedOp(
                    f"{self.op_type} node {self.name!r}: input {i} ({self.proto.input[i]!r}) depends on the "
                    "differentiated tensor; only its data input can be differentiated"
                )

    def unsupported(self, what: str) -> UnsupportedOp:
        return UnsupportedOp(f"{self.op_type} node {self.name!r}: {what} is not supported by its gradient rule")


@dataclass(frozen=True, init=False)
class Modifier:
    """A backprop modifier and its parameters, e.g. ``Modifier("lrp-epsilon", epsilon=0.25)``;
    hashable (it keys the augmentation cache) and printed as ``lrp-epsilon(epsilon=0.25)``."""

    name: str
    options: tuple[tuple[str, Any], ...]

    def __init__(self, name: str, **options):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "options", tuple(sorted(options.items())))

    def __str__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.options)})" if self.options else self.name


Rule = Callable[[GraphBuilder, Node], list]

RULES: dict[str, Rule] = {}
MODIFIER_RULES: dict[str, dict[str, Rule]] = {}
KEPT_GRADIENTS: dict[str, frozenset[str]] = {}  # strict modifier -> op types whose gradient rule it keeps


def rule(*op_types: str, modifier: str | None = None) -> Callable[[Rule], Rule]:
    """Registers the decorated function as the VJP rule of ``op_types`` (or a modifier's variant)."""

    def register(fn: Rule) -> Rule:
        table = RULES if modifier is None else MODIFIER_RULES.setdefault(modifier, {})
        for op_type in op_types:
            table[op_type] = fn
        return fn

    return register


def strict(modifier: str, keeps: Iterable[str]) -> None:
    """Makes ``modifier`` strict: besides its own rules, only the gradient rules of ``keeps`` apply."""
    MODIFIER_RULES.setdefault(modifier, {})
    KEPT_GRADIENTS[modifier] = frozenset(keeps)


def modifier_name(modifier: str | Modifier | None) -> str | None:
    return modifier.name if isinstance(modifier, Modifier) else modifier


def modifier_options(modifier: str | Modifier | None) -> dict[str, Any]:
    return dict(modifier.options) if isinstance(modifier, Modifier) else {}


def rules_for(modifier: str | Modifier | None) -> dict[str, Rule]:
    """The rule table with a backprop modifier's variants swapped in (a strict one's: only those)."""
    name = modifier_name(modifier)
    if name is None:
        return dict(RULES)
    if name not in MODIFIER_RULES:
        raise InvalidArgument(f"unknown backprop modifier {name!r}; known: None, {', '.join(sorted(MODIFIER_RULES))}")
    kept = KEPT_GRADIENTS.get(name)
    base = RULES if kept is None else {op: fn for op, fn in RULES.items() if op in kept}
    return {**base, **MODIFIER_RULES[name]}


def constant_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Values of initializers and of ``Constant`` node outputs (tensor-valued ones)."""
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute:
            a = node.attribute[0]
            if a.name == "value":
                values[node.output[0]] = numpy_helper.to_array(a.t)
            elif a.name in ("value_float", "value_int", "value_floats", "value_ints"):
                values[node.output[0]] = np.asarray(helper.get_attribute_value(a))
    return values
