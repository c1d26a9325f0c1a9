"""Facts about an ONNX graph — inputs, producers, data dependence, shapes, names — and what graph
edits share: the two orderings of nodes (topological, live), fresh names and renaming."""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from onnxsight.errors import InternalError

# onnxruntime 1.2x reads IR versions up to 10; onnx >= 1.19 writes newer ones by default.
RUNTIME_IR_VERSION = 10


def initializer_names(graph: onnx.GraphProto) -> set[str]:
    """Names of the graph's initializers (weights)."""
    return {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}


def data_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are real data, not initializers listed as inputs (old model-zoo files)."""
    weights = initializer_names(graph)
    return [v for v in graph.input if v.name not in weights]


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """Map tensor name -> node producing it."""
    return {out: node for node in graph.node for out in node.output if out}


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Map tensor name -> nodes reading it."""
    result: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            if name:
                result.setdefault(name, []).append(node)
    return result


def ancestors(graph: onnx.GraphProto, tensor: str) -> set[str]:
    """``tensor`` and every tensor it is computed from."""
    made_by = producers(graph)
    seen, stack = {tensor}, [tensor]
    while stack:
        node = made_by.get(stack.pop())
        if node is None:
            continue
        for name in node.input:
            if name and name not in seen:
                seen.add(name)
                stack.append(name)
    return seen


def dependent_tensors(graph: onnx.GraphProto, sources: Iterable[str]) -> set[str]:
    """Tensors whose value depends on any of ``sources``; the rest are constants.

    Shape-only consumers (``Shape``, ``Size``) break the dependence: their result is fixed
    for a fixed input shape, which is what differentiation needs.
    """
    dependent = set(sources)
    for node in graph.node:  # ONNX nodes are topologically sorted
        if node.op_type in ("Shape", "Size"):
            continue
        if any(name in dependent for name in node.input if name):
            dependent.update(out for out in node.output if out)
    return dependent


def value_infos(model: onnx.ModelProto, complete_shapes: bool = True) -> dict[str, onnx.ValueInfoProto]:
    """Type and shape of every tensor that shape inference reaches (inputs, outputs included).

    Data-path dims that ONNX shape inference leaves unknown (sizes computed from ``Shape`` at run
    time, as PyTorch's exporter writes ``chunk`` and ``view``) are completed by symbolic shape
    inference and, failing that, a measured run (:mod:`onnxsight.engine.shapes`), so that rules
    needing static sizes do not depend on what ``onnx.shape_inference`` happens to resolve;
    ``complete_shapes=False`` skips that (element types only need ONNX's inference).
    """
    from onnxsight.engine.shapes import complete  # shapes runs the model: it imports this module

    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except onnx.shape_inference.InferenceError:
        inferred = model
    graph = inferred.graph
    infos = {v.name: v for v in [*graph.value_info, *graph.input, *graph.output]}
    for init in graph.initializer:
        infos.setdefault(init.name, onnx.helper.make_tensor_value_info(init.name, init.data_type, init.dims))
    return complete(model, infos) if complete_shapes else infos


def shape_of(info: onnx.ValueInfoProto) -> tuple[int | None, ...] | None:
    """The static shape in a value info; unknown dims are None, an unknown rank is None."""
    tensor_type = info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim)


def value_shapes(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    """Inferred shapes of every tensor shape inference can reach; unknown dims are None."""
    shapes = {name: shape_of(info) for name, info in value_infos(model).items()}
    return {name: shape for name, shape in shapes.items() if shape is not None}


def value_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element types (``onnx.TensorProto`` enum) of every tensor shape inference can reach."""
    return {name: info.type.tensor_type.elem_type for name, info in value_infos(model, complete_shapes=False).items()}


def opset_version(model: onnx.ModelProto) -> int:
    """The model's version of the default ONNX domain."""
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            return opset.version
    raise onnx.checker.ValidationError("model imports no version of the default ONNX domain")


def with_batch(model: onnx.ModelProto, size: int) -> onnx.ModelProto:
    """A copy of ``model`` whose data inputs have the fixed batch size ``size`` (first axis), so
    that shape inference and onnxruntime see static shapes and fold the shape arithmetic."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for info in data_inputs(fixed.graph):
        dims = info.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            dims[0].dim_value = size
    del fixed.graph.value_info[:]
    return fixed


def runtime_compatible(model: onnx.ModelProto) -> onnx.ModelProto:
    """Lower the IR version in place to one onnxruntime reads; returns the model."""
    if model.ir_version > RUNTIME_IR_VERSION:
        model.ir_version = RUNTIME_IR_VERSION
    return model


# Ops that only change the layout of class scores: walked through between a Softmax and the output.
_RESHAPING = {"Identity", "Flatten", "Reshape", "Squeeze", "Unsqueeze"}


def softmax_input(graph: onnx.GraphProto, tensor: str) -> str:
    """The input of the Softmax that produces ``tensor`` through reshaping ops only (a classifier's
    logits, whatever their layout: (N, C) or (N, C, 1, 1)), else ``tensor``."""
    producer = producers(graph)
    node = producer.get(tensor)
    while node is not None and node.op_type in _RESHAPING:
        node = producer.get(node.input[0])
    return node.input[0] if node is not None and node.op_type == "Softmax" else tensor


def constant_value(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    """The value of an initializer, a ``Constant`` node output, or a ``ConstantOfShape`` of a constant
    shape (the weights of the onnx package's "light" model-zoo files), else None."""
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    node = producers(graph).get(name)
    if node is not None and node.op_type == "Constant":
        return numpy_helper.to_array(onnx.helper.get_attribute_value(node.attribute[0]))
    if node is not None and node.op_type == "ConstantOfShape":
        shape = constant_value(graph, node.input[0])
        fill = numpy_helper.to_array(node.attribute[0].t) if node.attribute else np.zeros(1, np.float32)
        return None if shape is None else np.full(shape.astype(np.int64), fill.reshape(-1)[0], fill.dtype)
    return None


def toposorted(nodes: Sequence[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """``nodes`` ordered so each comes after the producers of its inputs, the order kept otherwise
    (inputs no node makes are graph inputs or initializers)."""
    nodes = list(nodes)
    made_by = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    waiting_on = [{made_by[name] for name in node.input if name in made_by} for node in nodes]
    readers: dict[int, list[int]] = {}
    for i, needs in enumerate(waiting_on):
        for j in needs:
            readers.setdefault(j, []).append(i)
    ready = [i for i, needs in enumerate(waiting_on) if not needs]
    heapq.heapify(ready)
    ordered = []
    while ready:
        i = heapq.heappop(ready)
        ordered.append(nodes[i])
        for k in readers.get(i, []):
            waiting_on[k].discard(i)
            if not waiting_on[k]:
                heapq.heappush(ready, k)
    if len(ordered) != len(nodes):
        raise InternalError("the graph has a cycle; cannot order its nodes")
    return ordered


def live_nodes(nodes: Sequence[onnx.NodeProto], wanted: set[str]) -> list[onnx.NodeProto]:
    """The nodes (in order) that some ``wanted`` tensor depends on: dead-code elimination."""
    needed, keep = set(wanted), []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    return keep[::-1]


def fed_at(
    model: onnx.ModelProto, tensor: str, feed: str, outputs: Sequence[str], values: Mapping[str, onnx.ValueInfoProto]
) -> onnx.ModelProto:
    """A copy of ``model`` computing ``outputs`` (typed from ``values``) with ``tensor``'s consumers
    reading a new graph input ``feed`` instead, the rest of the graph from there on.

    A ``Shape`` of a tensor upstream of ``feed`` (an exporter's flatten) becomes a constant where
    that shape is static, or is rebuilt from the batch of ``feed`` where only its batch is dynamic;
    the nodes and graph inputs no output needs any more are dropped, so only the inputs still read
    need feeding besides ``feed``.
    """
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == tensor:
                node.input[i] = feed
    downstream, nodes = dependent_tensors(graph, [feed]), []
    for node in graph.node:
        shape = shape_of(values[node.input[0]]) if node.op_type == "Shape" and node.input[0] in values else None
        if shape is None or node.input[0] in downstream or None in shape[1:] or node.attribute:
            nodes.append(node)
            continue
        if shape[0] is not None:
            nodes.append(onnx.helper.make_node("Constant", [], list(node.output), name=node.name,
                                               value=numpy_helper.from_array(np.asarray(shape, np.int64))))
            continue
        base = f"{feed}/shape/{len(nodes)}"
        constants = {name: numpy_helper.from_array(np.asarray(value, np.int64), f"{base}/{name}")
                     for name, value in (("rest", shape[1:]), ("start", [0]), ("end", [1]))}
        graph.initializer.extend(constants.values())
        nodes += [onnx.helper.make_node("Shape", [feed], [f"{base}/fed"], name=f"{base}/fed"),
                  onnx.helper.make_node("Slice", [f"{base}/fed", f"{base}/start", f"{base}/end"], [f"{base}/batch"],
                                        name=f"{base}/batch"),
                  onnx.helper.make_node("Concat", [f"{base}/batch", f"{base}/rest"], list(node.output), name=node.name, axis=0)]
    kept = live_nodes(nodes, set(outputs))
    read = {name for node in kept for name in node.input} | set(outputs)
    inputs = [v for v in graph.input if v.name in read]
    weights = [t for t in graph.initializer if t.name in read]
    for field, items in ((graph.node, kept), (graph.input, inputs), (graph.initializer, weights)):
        del field[:]
        field.extend(items)
    fed = graph.input.add()
    fed.name = feed
    fed.type.CopyFrom(values[tensor].type)  # its rank: OpenVINO compiles no input of unknown rank
    del graph.output[:]
    graph.output.extend(onnx.helper.make_tensor_value_info(n, values[n].type.tensor_type.elem_type, None) for n in outputs)
    return result


def tensor_names(graph: onnx.GraphProto) -> list[str]:
    """Every tensor name the graph uses, in order: inputs, initializers, node outputs."""
    names = [v.name for v in graph.input] + [t.name for t in graph.initializer]
    names += [out for node in graph.node for out in node.output if out]
    return list(dict.fromkeys(names))


def free_name(names: Iterable[str], base: str) -> str:
    """``base``, or ``base_1``, ``base_2``... : the first that neither is in ``names`` nor prefixes
    one of them as ``<name>/...`` (so that it can also serve as a prefix of new names)."""
    names = set(names)
    candidate, k = base, 0
    while candidate in names or any(n.startswith(candidate + "/") for n in names):
        k += 1
        candidate = f"{base}_{k}"
    return candidate


def rename_tensor(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename tensor ``old`` to ``new`` everywhere in ``graph`` (initializers and subgraphs included)."""
    if new in tensor_names(graph):
        raise InternalError(f"cannot rename {old!r} to {new!r}: the name is taken")
    _rename_in(graph, old, new)


def _rename_in(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
        for attr in node.attribute:
            for sub in [attr.g, *attr.graphs] if attr.type in _GRAPH_ATTRS else []:
                _rename_in(sub, old, new)
    for value in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]:
        if value.name == old:
            value.name = new


_GRAPH_ATTRS = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)


def bottlenecks(graph: onnx.GraphProto, source: str, sink: str) -> set[str]:
    """Tensors that every path from ``source`` to ``sink`` passes through (both ends included):
    a residual block's output is one, a layer inside the block or a squeeze-excitation branch is not.

    In a topological order a path cannot skip a tensor unless one of its edges jumps over it, so
    a tensor on the ``source``→``sink`` paths is a bottleneck when no edge between such tensors
    spans its position.
    """
    relevant = dependent_tensors(graph, [source]) & ancestors(graph, sink)
    order = [source] + [o for node in graph.node for o in node.output if o in relevant and o != source]
    position = {name: i for i, name in enumerate(order)}
    if sink not in position:
        return set()
    jumps = [0] * (len(order) + 1)
    for node in graph.node:
        for out in (o for o in node.output if o in position):
            for name in {i for i in node.input if i in position}:
                if position[out] - position[name] > 1:
                    jumps[position[name] + 1] += 1
                    jumps[position[out]] -= 1
    covered, result = 0, set()
    for i, name in enumerate(order):
        covered += jumps[i]
        if covered == 0 and position[name] <= position[sink]:
            result.add(name)
    return result
