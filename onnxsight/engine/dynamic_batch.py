"""A dynamic batch for models whose batch is fixed (old model-zoo files: input (1, 3, 224, 224) and
Reshapes to constant shapes ``[1, ...]``), where that is exact, proven by running the result."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxsight.engine import graph as g
from onnxsight.engine.session import CPU, first_line, open_session
from onnxsight.errors import InvalidArgument

if TYPE_CHECKING:
    from onnxsight.engine.model import Model

BATCH = "N"
# Each row of the rewritten model's batch must equal the original's run of that row alone.
_RTOL, _ATOL = 1e-4, 1e-5


def fixed_batch(model: onnx.ModelProto) -> int | None:
    """The fixed batch size of the model's data inputs, None when it is dynamic."""
    sizes = {dims[0].dim_value for dims in (v.type.tensor_type.shape.dim for v in g.data_inputs(model.graph))
             if len(dims) and dims[0].HasField("dim_value")}
    return sizes.pop() if len(sizes) == 1 else None


def dynamic_batch(model: onnx.ModelProto, source: str = "the model") -> onnx.ModelProto:
    """A copy of ``model`` whose batch is dynamic (``model`` copied as it is when it already is).

    Data inputs and the outputs that have the batch first get the symbolic first axis ``N``; a
    Reshape of data to a constant shape whose first entry is the batch gets -1 there (0, "copy the
    input's batch", when another entry is already -1). The result is checked by running a batch of
    two and comparing each row with the original on that row alone. InvalidArgument, naming the
    node, where that is not exact: a constant shape that does not start with the batch mixes it
    with other axes.
    """
    result = onnx.ModelProto()
    result.CopyFrom(model)
    batch = fixed_batch(model)
    if batch is None:
        return result
    graph = result.graph
    inputs = [v.name for v in g.data_inputs(graph)]
    dependent = g.dependent_tensors(graph, inputs)
    names = set(g.tensor_names(graph))
    nodes = []
    for node in graph.node:
        if node.op_type == "Reshape" and len(node.input) == 2 and node.input[0] in dependent and node.input[1] not in dependent:
            shape = _dynamic_shape(graph, node, batch, source)
            name = g.free_name(names, f"{node.input[1]}/dynamic_batch")
            names.add(name)
            nodes.append(helper.make_node("Constant", [], [name], name=name, value=numpy_helper.from_array(shape)))
            node.input[1] = name
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    for value in [*(v for v in graph.input if v.name in inputs), *graph.output]:
        dims = value.type.tensor_type.shape.dim
        if len(dims) and dims[0].HasField("dim_value") and dims[0].dim_value == batch:
            dims[0].dim_param = BATCH
    del graph.value_info[:]  # inferred with the fixed batch
    onnx.checker.check_model(result, full_check=True)
    _check_rows(model, result, batch, source)
    return result


def with_dynamic_batch(model: "Model") -> "Model":
    """``model`` itself when its batch is dynamic, else the same model (and head) reloaded with a dynamic batch."""
    from onnxsight.engine.model import Model

    if fixed_batch(model.proto) is None:
        return model
    return Model(dynamic_batch(model.proto, model.source), model.source, model.device, model.threads).with_output(model.head)


def _dynamic_shape(graph: onnx.GraphProto, node: onnx.NodeProto, batch: int, source: str) -> np.ndarray:
    """The constant target shape of a Reshape with its first entry made batch-independent."""
    shape = g.constant_value(graph, node.input[1])
    where = f"{source}: Reshape {node.name or node.output[0]!r} to the constant shape"
    if shape is None or shape.ndim != 1 or not len(shape):
        raise InvalidArgument(f"{where} {node.input[1]!r} cannot be read; its batch cannot be made dynamic")
    allowzero = next((a.i for a in node.attribute if a.name == "allowzero"), 0)
    first = int(shape[0])
    if first == -1 or (first == 0 and not allowzero):
        return shape
    if first != batch:
        raise InvalidArgument(f"{where} {shape.tolist()} does not start with the batch {batch}: it mixes the batch "
                              "with other axes, so the batch cannot be made dynamic")
    if -1 not in shape[1:]:
        return np.array([-1, *shape[1:]], shape.dtype)
    if allowzero:
        raise InvalidArgument(f"{where} {shape.tolist()} already infers another axis (-1) and reads 0 as an empty "
                              "axis (allowzero), so the batch cannot be made dynamic")
    return np.array([0, *shape[1:]], shape.dtype)


def _check_rows(original: onnx.ModelProto, rewritten: onnx.ModelProto, batch: int, source: str) -> None:
    """InvalidArgument unless the rewritten model on two batches at once equals the original on each."""
    rng = np.random.default_rng(0)
    feeds = []
    for value in g.data_inputs(original.graph):
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in value.type.tensor_type.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        feeds.append((value.name, rng.uniform(0, 1, (2 * batch, *dims[1:])).astype(dtype)))
    outputs = [v.name for v in original.graph.output]
    alone, together = open_session(original, CPU, source), open_session(rewritten, CPU, source)
    try:
        expected = [np.concatenate(parts) for parts in zip(*(
            alone.run(outputs, {name: x[start:start + batch] for name, x in feeds}) for start in (0, batch)))]
        got = together.run(outputs, dict(feeds))
    except Exception as error:  # noqa: BLE001 - onnxruntime raises several unrelated types
        raise InvalidArgument(f"{source}: with a dynamic batch the model does not run ({first_line(error)}); "
                              "its batch cannot be made dynamic") from error
    for name, want, have in zip(outputs, expected, got):
        if want.shape != have.shape or not np.allclose(have, want, rtol=_RTOL, atol=_ATOL):
            raise InvalidArgument(f"{source}: with a dynamic batch, output {name!r} of a batch of {2 * batch} differs "
                                  f"from the original run in batches of {batch}; its batch cannot be made dynamic")
