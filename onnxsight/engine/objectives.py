"""Objective heads: a per-image scalar appended to a model graph, for activation maximization.

``objective_head`` is a pure graph edit: it returns a NEW ModelProto whose only output is
``(N,)`` — one score per image — computed from a layer by a few standard ONNX ops, and never
mutates the model it reads. The unit or class of each image is not baked into the graph: it
comes in through the int64 graph input ``UNIT_INPUT`` (shape ``(N,)``) and selects by ``OneHot``,
so one head (and one gradient graph of it) serves any units. The objectives:

- ``"unit"``: the mean of channel ``unit`` of ``layer`` over all other axes (a conv layer: over
  space; a dense layer: the unit's value) — the score ``Model.gradient`` uses for a channel.
- ``"norm"``: the L2 norm of the layer's activation per image (seed 004's ``tf.norm``); with a
  unit, the norm of that channel only; without, of the whole layer (no unit input then). An
  all-zero activation has norm 1e-15 and gradient 0 (see ``NORM_FLOOR``).
- ``"logit"``: a class score (scores shaped like (N, C, 1, 1) are read as (N, C)); when ``layer``
  is produced by a Softmax (a Keras "preds" layer, the model output), possibly reshaped after it,
  its input — the logits — is used instead, as keras-vis swaps softmax for linear.
- ``"cross_entropy"``: ``log softmax(logits)[class] = −CE`` (seed 004 minimises CE; a head is
  always maximised, so CE enters with a minus sign). Logits as for ``"logit"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import onnx
from onnx import TensorProto, helper

from onnxsight.engine import graph as g
from onnxsight.engine.autodiff.backward import MIN_OPSET
from onnxsight.engine.autodiff.builder import GraphBuilder
from onnxsight.engine.opset import upgrade
from onnxsight.errors import InvalidArgument

if TYPE_CHECKING:
    from onnxsight.engine.model import Model

OBJECTIVES = ("unit", "norm", "logit", "cross_entropy")
PREFIX = "onnxsight/objective"
UNIT_INPUT = f"{PREFIX}/unit"  # int64 (N,): the unit (channel or class) of each image
VALUE = f"{PREFIX}/value"  # (N,): the objective of each image
# "norm" is sqrt(max(sum of squares, NORM_FLOOR)): an all-zero activation (dead ReLUs) then has
# gradient 0 instead of 0/0, and the value is off by at most 1e-15.
NORM_FLOOR = 1e-30


@dataclass(frozen=True)
class ObjectiveHead:
    """A model whose single output ``value`` is the objective per image.

    ``unit_input`` is the int64 (N,) input selecting each image's unit/class, None for the
    norm of a whole layer. ``tensor`` is the layer tensor read (the logits for "logit" and
    "cross_entropy" on a softmax layer); ``channels`` its size along ``channel_axis``.
    """

    model: onnx.ModelProto
    value: str
    unit_input: str | None
    objective: str
    layer: str
    tensor: str
    channel_axis: int
    channels: int | None


def objective_head(model: "Model", layer: str, objective: str, with_unit: bool = True) -> ObjectiveHead:
    """``model`` plus an objective output; see the module docstring for the objectives.

    ``with_unit`` (only for "norm") False: the norm of the whole layer, no unit input.
    Checks the result with ``onnx.checker`` (full check); raises UnknownName for unknown
    layers and InvalidArgument for an unknown objective or a layer it cannot score.
    """
    if objective not in OBJECTIVES:
        raise InvalidArgument(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    tensor = model.tensor(layer)
    if objective in ("logit", "cross_entropy"):
        tensor = pre_softmax(model, tensor)
    shape = model.shapes.get(tensor)
    if shape is None:
        raise InvalidArgument(f"layer {layer!r} (tensor {tensor!r}) has no inferred shape; it cannot be scored")
    classes = objective in ("logit", "cross_entropy")
    if classes and (len(shape) < 2 or sum(d != 1 for d in shape[1:]) != 1):
        raise InvalidArgument(f"objective {objective!r} needs class scores (N, classes), or that with axes of "
                              f"length 1 such as (N, classes, 1, 1); layer {layer!r} has shape {_shape_text(shape)}")
    if len(shape) < 2:
        raise InvalidArgument(f"layer {layer!r} has shape {_shape_text(shape)}; it needs a batch axis and units")
    axis = (3 if model.input_layout == "NHWC" and not classes else 1) if len(shape) == 4 else 1
    channels = (None if None in shape[1:] else math.prod(shape[1:])) if classes else shape[axis]
    with_unit = with_unit or objective != "norm"
    if with_unit and channels is None:
        raise InvalidArgument(f"layer {layer!r} has a dynamic number of units {_shape_text(shape)}; "
                              "a unit cannot be selected")

    proto = upgrade(model.proto, MIN_OPSET)  # the head's ops (ReduceSum with axes as an input) need opset 13+
    infos = g.value_infos(proto)
    b = GraphBuilder(infos, g.opset_version(proto), PREFIX)
    b.scope(objective)
    others = [a for a in range(1, len(shape)) if a != axis and not classes]
    unit_input = UNIT_INPUT if with_unit else None
    if objective == "norm":
        selected = tensor
        if with_unit:  # zero every other channel: a one-hot (N, C) broadcast along the channel axis
            selected = b.op("Mul", tensor, b.unsqueeze(_one_hot(b, channels, tensor), others) if others
                            else _one_hot(b, channels, tensor))
        squares = b.reduce_sum(b.op("Mul", selected, selected), list(range(1, len(shape))), keepdims=0)
        value = b.op("Sqrt", b.op("Max", squares, b.const(NORM_FLOOR, like=tensor)))
    else:
        scores = b.op("Flatten", tensor, axis=1) if classes and len(shape) > 2 else tensor  # (N, C, 1, 1) -> (N, C)
        if objective == "cross_entropy":
            scores = b.op("LogSoftmax", scores, axis=1)
        elif others:  # a channel's mean over the other axes: (N, C)
            scores = b.reduce_mean(tensor, others, keepdims=0)
        value = b.reduce_sum(b.op("Mul", scores, _one_hot(b, channels, tensor)), [1], keepdims=0)

    nodes = [*proto.graph.node, *b.nodes, helper.make_node("Identity", [value], [VALUE], name=VALUE)]
    del proto.graph.node[:]
    proto.graph.node.extend(g.live_nodes(nodes, {VALUE}))  # e.g. a final softmax the objective does not read
    if unit_input is not None:
        batch = _batch_dim(model)
        proto.graph.input.append(helper.make_tensor_value_info(unit_input, TensorProto.INT64, [batch]))
    del proto.graph.output[:]
    elem = infos[tensor].type.tensor_type.elem_type
    proto.graph.output.append(helper.make_tensor_value_info(VALUE, elem, [_batch_dim(model)]))
    g.runtime_compatible(proto)
    onnx.checker.check_model(proto, full_check=True)
    return ObjectiveHead(proto, VALUE, unit_input, objective, layer, tensor, axis, channels)


def pre_softmax(model: "Model", tensor: str) -> str:
    """The input of the Softmax that produces ``tensor`` (through Identity and reshaping nodes), else ``tensor``."""
    return g.softmax_input(model.proto.graph, tensor)


def _one_hot(b: GraphBuilder, channels: int, like: str) -> str:
    """(N, channels) one-hot rows of the unit input, in ``like``'s element type."""
    return b.op("OneHot", UNIT_INPUT, b.ints(channels), b.const([0.0, 1.0], like=like), axis=-1)


def _batch_dim(model: "Model") -> str | int:
    dims = model.proto.graph.input
    info = next(v for v in dims if v.name == model.input_name)
    first = info.type.tensor_type.shape.dim[0]
    return first.dim_value if first.HasField("dim_value") else (first.dim_param or "N")


def _shape_text(shape) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"
