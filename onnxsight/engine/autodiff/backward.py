"""The backward driver: one ONNX model that computes ``of``, then ``d(of · cotangent)/d(wrt)``.

The walk visits, in reverse, only the nodes between the ``wrt`` tensors and ``of``; a node
without an incoming cotangent is skipped; contributions to one tensor from several consumers
are summed with ``Add``. Tensors that do not depend on a ``wrt`` tensor are constants (weights,
``Shape`` results, ...): nothing flows into them. Gradient nodes a rule built but nobody reads
(e.g. towards a constant weight) are dropped at the end.

Gradient with respect to an intermediate tensor ``T`` is ``d(of · cotangent)/dT`` holding
everything upstream of ``T`` fixed. A ``wrt`` tensor that ``of`` does not depend on gets a zero
gradient of its own shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import onnx
from onnx import helper

from onnxsight.engine.graph import (
    ancestors, data_inputs, dependent_tensors, free_name, live_nodes, opset_version, runtime_compatible, tensor_names,
    value_infos,
)
from onnxsight.engine.opset import upgrade
from onnxsight.errors import InternalError, InvalidArgument, UnknownName, UnsupportedOp

from .builder import FLOAT_TYPES, GraphBuilder
from .registry import KEPT_GRADIENTS, Modifier, Node, constant_values, modifier_name, modifier_options, rules_for

# ScatterElements(reduction="add") (MaxPool, Gather, Slice, Pad gradients) needs opset 16.
MIN_OPSET = 16
COTANGENT_PREFIX = "onnxsight/cotangent"
GRADIENT_PREFIX = "onnxsight/gradient"


@dataclass(frozen=True)
class VJPGraph:
    """An augmented model and the names of what it adds.

    ``model`` takes the original inputs plus ``cotangent`` (shaped like ``of``) and returns
    ``outputs`` followed by the gradient outputs, ``gradients[wrt] -> output name``; ``infos`` has the
    value infos of the forward tensors, the cotangent and the gradient outputs.
    """

    model: onnx.ModelProto
    cotangent: str
    gradients: dict[str, str]
    outputs: tuple[str, ...]
    infos: dict[str, onnx.ValueInfoProto]


def build_vjp(
    model: onnx.ModelProto,
    of: str,
    wrt: Sequence[str],
    *,
    modifier: str | Modifier | None = None,
    keep_outputs: Sequence[str] = (),
    infos: Mapping[str, onnx.ValueInfoProto] | None = None,
) -> VJPGraph:
    """Returns a new model that also computes ``d(of · cotangent)/d(w)`` for each ``w`` in ``wrt``.

    ``modifier``: None (exact gradient), ``"guided"`` or ``"deconv"`` (Relu rule variants), or any
    registered modifier, by name or as a :class:`Modifier` with parameters. ``infos``: the value infos
    of ``model`` when the caller has them (``Model.values``), saving a shape inference.
    Raises UnknownName for names the graph lacks, InvalidArgument for constant ``of``/``wrt``
    tensors or unknown modifiers, UnsupportedOp when a node on the path has no rule.
    """
    rules, options = rules_for(modifier), modifier_options(modifier)
    if isinstance(wrt, str):
        raise InvalidArgument(f"wrt must be a sequence of tensor names, not the string {wrt!r}")
    wrt = list(dict.fromkeys(wrt))
    if not wrt:
        raise InvalidArgument("wrt is empty: name at least one tensor to differentiate with respect to")
    model = upgrade(model, MIN_OPSET)
    graph = model.graph

    known = tensor_names(graph)
    for name in [of, *wrt, *keep_outputs]:
        if name not in known:
            raise UnknownName("tensor", name, known)
    data_path = dependent_tensors(graph, [v.name for v in data_inputs(graph)])
    for name in [of, *wrt]:
        if name not in data_path:
            raise InvalidArgument(f"tensor {name!r} does not depend on the model input (it is a constant); "
                                  "only data-path tensors can be differentiated")

    infos = dict(infos) if infos is not None else value_infos(model)
    if infos.get(of) is None or infos[of].type.tensor_type.elem_type not in FLOAT_TYPES:
        raise InvalidArgument(f"tensor {of!r} is not a floating-point tensor; it cannot be differentiated")

    prefix = free_name(known, "onnxsight/vjp")
    g = GraphBuilder(infos, opset_version(model), prefix)
    cotangent = free_name(known, COTANGENT_PREFIX)
    g.record(cotangent, like=of)

    active = dependent_tensors(graph, wrt)
    upstream = ancestors(graph, of)
    path = [n for n in graph.node
            if any(i in active for i in n.input) and any(o in upstream for o in n.output)]

    contributions: dict[str, list[str]] = {of: [cotangent]}
    totals: dict[str, str | None] = {}

    def total(tensor: str) -> str | None:
        if tensor not in totals:
            parts = contributions.get(tensor, [])
            g.scope(f"sum/{tensor}")
            result = g.add(parts) if parts else None
            if result is not None:
                g.record(result, like=tensor)
            totals[tensor] = result
        return totals[tensor]

    constants = constant_values(graph)
    for index, proto in reversed(list(enumerate(path))):
        cots = [total(o) if o else None for o in proto.output]
        if all(c is None for c in cots):
            continue
        name = proto.name or f"{proto.op_type}_{index}"
        fn = rules.get(proto.op_type)
        if fn is None or proto.domain not in ("", "ai.onnx"):
            raise _unsupported(graph, proto, name, wrt, modifier_name(modifier))
        node = Node(proto, name, g.opset, cots, [i in active for i in proto.input], constants, options, graph)
        g.scope(name)
        results = fn(g, node)
        if not isinstance(results, (list, tuple)) or len(results) != len(proto.input):
            raise InternalError(f"the {proto.op_type} rule returned {results!r} for node {name!r}; "
                                f"expected one entry per input ({len(proto.input)})")
        for tensor, cot in zip(proto.input, results):
            if cot is not None and tensor in active:
                contributions.setdefault(tensor, []).append(cot)

    gradients: dict[str, str] = {}
    outputs = [o.name for o in graph.output]
    for name in [*keep_outputs, of]:
        if name not in outputs:
            outputs.append(name)
    new_outputs = [_output_info(infos, name) for name in outputs]
    for w in wrt:
        g.scope(f"gradient/{w}")
        grad = total(w)
        grad = g.zeros_like(w) if grad is None else grad
        out = f"{GRADIENT_PREFIX}/{w}"
        g.nodes.append(helper.make_node("Identity", [grad], [out], name=out))
        g.record(out, like=w)
        gradients[w] = out
        new_outputs.append(_output_info(infos, w, out))

    kept = live_nodes(g.nodes, {o.name for o in new_outputs})
    graph.node.extend(kept)
    graph.input.append(_output_info(infos, of, cotangent))
    del graph.output[:]
    graph.output.extend(new_outputs)
    runtime_compatible(model)
    onnx.checker.check_model(model, full_check=True)
    return VJPGraph(model=model, cotangent=cotangent, gradients=gradients, outputs=tuple(outputs), infos=g.infos)


def _output_info(infos: dict[str, onnx.ValueInfoProto], name: str, rename: str | None = None) -> onnx.ValueInfoProto:
    info = infos.get(name)
    if info is None or not info.type.tensor_type.elem_type:
        raise InvalidArgument(f"the element type of tensor {name!r} cannot be inferred; cannot expose it")
    copy = onnx.ValueInfoProto()
    copy.CopyFrom(info)
    copy.name = rename or name
    return copy


def _unsupported(graph: onnx.GraphProto, proto: onnx.NodeProto, name: str, wrt: list[str],
                 modifier: str | None) -> UnsupportedOp:
    """The error for a data-path node without a rule, naming the wrt tensors that avoid it."""
    upstream = set()
    for tensor in proto.input:
        if tensor:
            upstream |= ancestors(graph, tensor)
    still = [w for w in wrt if w not in upstream]
    domain = f" (domain {proto.domain!r})" if proto.domain not in ("", "ai.onnx") else ""
    hint = (f"gradients with respect to {', '.join(still)} are still computable without it; retry with wrt={still}"
            if still else f"no requested wrt tensor avoids it; tensors downstream of it (e.g. {list(proto.output)}) do")
    kind = f"{modifier} rule" if modifier in KEPT_GRADIENTS else "gradient rule"
    return UnsupportedOp(f"no {kind} for op {proto.op_type}{domain} (node {name!r}); {hint}", upstream)
