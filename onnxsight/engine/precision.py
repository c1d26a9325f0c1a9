"""Change a model's floating-point precision: float32 tensors, constants and casts to float64."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

_FLOAT = TensorProto.FLOAT
_DOUBLE = TensorProto.DOUBLE


def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` computing in float64 (for finite differences); integers are untouched."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.type.tensor_type.elem_type == _FLOAT:
            value.type.tensor_type.elem_type = _DOUBLE
    for i, init in enumerate(graph.initializer):
        if init.data_type == _FLOAT:
            graph.initializer[i].CopyFrom(_double(init))
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == _FLOAT:
                attribute.t.CopyFrom(_double(attribute.t))
            if attribute.name in ("to", "dtype") and attribute.type == onnx.AttributeProto.INT and attribute.i == _FLOAT:
                attribute.i = _DOUBLE
    return result


def _double(tensor: onnx.TensorProto) -> onnx.TensorProto:
    return numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float64), tensor.name)
