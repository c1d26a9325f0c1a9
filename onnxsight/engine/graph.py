"""Read-only facts about an ONNX graph: inputs, producers, data dependence, shapes."""

from __future__ import annotations

from collections.abc import Iterable

import onnx
from onnx import shape_inference

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


def value_shapes(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    """Inferred shapes of every tensor shape inference can reach; unknown dims are None."""
    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except onnx.shape_inference.InferenceError:
        inferred = model
    graph = inferred.graph
    shapes = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor_type = value.type.tensor_type
        if tensor_type.HasField("shape"):
            shapes[value.name] = tuple(
                d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim
            )
    for init in graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def value_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element types (``onnx.TensorProto`` enum) of graph inputs, outputs and inferred values."""
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.value_info, *graph.output]}
    types.update({t.name: t.data_type for t in graph.initializer})
    return types


def opset_version(model: onnx.ModelProto) -> int:
    """The model's version of the default ONNX domain."""
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            return opset.version
    raise onnx.checker.ValidationError("model imports no version of the default ONNX domain")


def runtime_compatible(model: onnx.ModelProto) -> onnx.ModelProto:
    """Lower the IR version in place to one onnxruntime reads; returns the model."""
    if model.ir_version > RUNTIME_IR_VERSION:
        model.ir_version = RUNTIME_IR_VERSION
    return model
