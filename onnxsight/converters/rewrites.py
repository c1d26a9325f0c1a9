"""Fixes applied to the ONNX graph tf2onnx writes, before onnxsight hands it over.

Each function edits the model in place; the converter owns the copy it edits.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxsight.engine.graph import consumers, producers, toposorted, value_types
from onnxsight.errors import InternalError


def identity_source(graph: onnx.GraphProto, name: str) -> str:
    """The tensor ``name`` copies through a chain of Identity nodes (itself when none)."""
    made_by = producers(graph)
    while name in made_by and made_by[name].op_type == "Identity":
        name = made_by[name].input[0]
    return name


def drop_unused_identities(graph: onnx.GraphProto) -> None:
    """Remove Identity nodes whose output nobody reads and that is no graph output."""
    while True:
        read = set(consumers(graph)) | {v.name for v in graph.output}
        unused = [n for n in graph.node if n.op_type == "Identity" and n.output[0] not in read]
        if not unused:
            return
        for node in unused:
            graph.node.remove(node)


def route_through(graph: onnx.GraphProto, name: str) -> None:
    """Make tensor ``name`` lie on the path of the computation when it is a side branch.

    tf2onnx computes convolutions in NCHW and copies back to NHWC (a Transpose, or a Reshape
    when the spatial size is 1x1) only for the tensors it must return, so a layer's output can
    be a copy that nothing reads while the next layer reads the original. Those readers are
    redirected to the inverse of the copy applied to ``name``; onnxruntime cancels the pair.
    """
    node = producers(graph).get(name)
    if node is None or node.op_type not in ("Transpose", "Reshape") or name in consumers(graph):
        return
    source = node.input[0]
    readers = [n for n in consumers(graph).get(source, []) if n is not node and n.op_type not in ("Shape", "Size")]
    if not readers:
        return
    back = f"{name}/onnxsight_back"
    if node.op_type == "Transpose":
        perm = _perm(node)
        inverse = [helper.make_node("Transpose", [name], [back], name=back, perm=[perm.index(i) for i in range(len(perm))])]
    else:
        shape = f"{name}/onnxsight_source_shape"
        inverse = [helper.make_node("Shape", [source], [shape], name=shape),
                   helper.make_node("Reshape", [name, shape], [back], name=back)]
    for reader in readers:
        reader.input[:] = [back if n == source else n for n in reader.input]
    graph.node.extend(inverse)  # the caller runs ``toposort`` once after its edits


def toposort(graph: onnx.GraphProto) -> None:
    """Order the graph's nodes so each comes after the producers of its inputs, in place."""
    ordered = toposorted(graph.node)
    del graph.node[:]
    graph.node.extend(ordered)


def replace_erfc(model: onnx.ModelProto) -> None:
    """Rewrite every ``Erfc(x)`` (exact GELU in TensorFlow) as ``1 - Erf(x)``."""
    graph = model.graph
    types = value_types(model)
    for node in list(graph.node):
        if node.op_type != "Erfc":
            continue
        x, base = node.input[0], node.name or node.output[0]
        if x not in types:
            raise InternalError(f"no element type known for {x!r}, the input of Erfc {base!r}")
        one = numpy_helper.from_array(np.ones((), helper.tensor_dtype_to_np_dtype(types[x])), f"{base}/one")
        graph.initializer.append(one)
        erf = helper.make_node("Erf", [x], [f"{base}/erf"], name=f"{base}/erf")
        sub = helper.make_node("Sub", [one.name, erf.output[0]], list(node.output), name=base)
        position = list(graph.node).index(node)
        graph.node.remove(node)
        graph.node.insert(position, sub)
        graph.node.insert(position, erf)


def foreign_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes that are not operators of the default ONNX domain (leftover TensorFlow ops)."""
    return [
        node for node in model.graph.node
        if node.domain not in ("", "ai.onnx") or not onnx.defs.has(node.op_type)
    ]


def pre_softmax(graph: onnx.GraphProto, output: str) -> str | None:
    """The tensor a final Softmax reads, in the layout of ``output``; None without a final Softmax.

    tf2onnx runs a softmax over the channels of an NHWC tensor (a segmentation output) in NCHW,
    between Transposes: the logits are then the input of the Transpose before the Softmax when it
    undoes the one after it, else the Softmax's input transposed like the output (a new node).
    """
    producer = producers(graph)
    node, perm = producer.get(output), None
    if node is not None and node.op_type == "Transpose":
        perm = _perm(node)
        node = producer.get(node.input[0])
    if node is None or node.op_type != "Softmax":
        return None
    logits = node.input[0]
    if perm is None:
        return logits
    inner = producer.get(logits)
    if inner is not None and inner.op_type == "Transpose" and [_perm(inner)[i] for i in perm] == list(range(len(perm))):
        return inner.input[0]
    graph.node.append(helper.make_node("Transpose", [logits], [f"{logits}/onnxsight_layout"],
                                       name=f"{logits}/onnxsight_layout", perm=perm))
    return f"{logits}/onnxsight_layout"


def _perm(node: onnx.NodeProto) -> list[int]:
    return list(helper.get_attribute_value(next(a for a in node.attribute if a.name == "perm")))
