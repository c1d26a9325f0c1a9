"""Upgrade a model's opset with onnx's version converter, mending what it leaves behind."""

from __future__ import annotations

import onnx
from onnx import numpy_helper, version_converter

from onnxsight.engine.graph import opset_version
from onnxsight.errors import UnsupportedOp

# IR version that opsets up to 18 need; initializers need not be graph inputs from IR 4 on.
_IR_FOR_UPGRADES = 8


def upgrade(model: onnx.ModelProto, target: int) -> onnx.ModelProto:
    """A copy of ``model`` at opset ``target`` or newer; never the input object."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    current = opset_version(copy)
    if current >= target:
        return copy
    if current < 7:
        _per_channel_prelu_slopes(copy)
    resized = {n.output[0] for n in copy.graph.node if n.op_type in ("Upsample", "Resize")} if current < 11 else set()
    try:
        upgraded = version_converter.convert_version(copy, target)
    except Exception as error:  # noqa: BLE001 - the converter raises bare RuntimeErrors from C++
        raise UnsupportedOp(f"the model's opset {current} could not be converted to opset {target}: {error}") from error
    upgraded.ir_version = max(upgraded.ir_version, _IR_FOR_UPGRADES)
    _asymmetric_resizes(upgraded, resized)
    return upgraded


def _asymmetric_resizes(model: onnx.ModelProto, outputs: set[str]) -> None:
    """Upsample and Resize before opset 11 read output pixel i from input pixel i/scale, nearest
    rounding down; the converter leaves Resize-11's defaults (half_pixel, round_prefer_floor) instead."""
    for node in model.graph.node:
        if node.op_type == "Resize" and node.output[0] in outputs:
            kept = [a for a in node.attribute if a.name not in ("coordinate_transformation_mode", "nearest_mode")]
            del node.attribute[:]
            node.attribute.extend(kept)
            node.attribute.append(onnx.helper.make_attribute("coordinate_transformation_mode", "asymmetric"))
            node.attribute.append(onnx.helper.make_attribute("nearest_mode", "floor"))


def _per_channel_prelu_slopes(model: onnx.ModelProto) -> None:
    """PRelu before opset 7 applied a (C,) slope per channel; numpy broadcasting needs (C, 1, ..., 1).

    The version converter keeps the old slope shape, which then broadcasts over the last axis.
    """
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in model.graph.input}
    initializers = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "PRelu" or node.input[1] not in initializers:
            continue
        slope = numpy_helper.to_array(initializers[node.input[1]])
        rank = ranks.get(node.input[0])
        if slope.ndim == 1 and slope.size > 1 and rank and rank > 2:
            reshaped = slope.reshape(-1, *[1] * (rank - 2))
            initializers[node.input[1]].CopyFrom(numpy_helper.from_array(reshaped, node.input[1]))
            for value in model.graph.input:  # old files list initializers as inputs too
                if value.name == node.input[1]:
                    value.CopyFrom(onnx.helper.make_tensor_value_info(value.name, value.type.tensor_type.elem_type,
                                                                      reshaped.shape))
