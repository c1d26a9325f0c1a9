"""Shapes of the data-path tensors that ONNX shape inference leaves unknown.

PyTorch's TorchScript exporter writes ``x.chunk`` and ``x.view(n, g, c // g, h, w)`` as Slice and
Reshape nodes whose sizes are computed from ``Shape`` at run time; ``onnx.shape_inference`` does
not follow that arithmetic, so every later tensor loses its dims and rules that need static sizes
(Conv, pooling) cannot be built. Two more sources fill the gaps, in order:

1. symbolic shape inference (``onnxruntime.tools.symbolic_shape_infer``, when ``sympy`` is
   installed), which follows the ``Shape`` arithmetic with the batch as a symbol;
2. a measured run: the model run once on random inputs of two batch sizes with the unresolved
   tensors as outputs; a dim equal in both runs is static, one equal to the batch size in both
   is the batch, any other stays unknown. Needs static non-batch input dims and a model
   onnxruntime can open (else the shapes stay as inference gave them).

Only models with one data input are completed (augmented models, with their cotangent input,
keep what inference gives: their forward part is already typed by the rules' builder).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from onnxsight.engine import graph as g
from onnxsight.errors import ModelFileError

_UNKNOWN_PREFIX = "unk__"  # symbolic inference's name for a dim it could not resolve
_PROBE_BATCHES = (2, 3)


def complete(model: onnx.ModelProto, infos: dict[str, onnx.ValueInfoProto]) -> dict[str, onnx.ValueInfoProto]:
    """``infos`` (from ONNX shape inference) with the unknown dims of data-path tensors filled
    from symbolic inference, then from a measured run; returns a new dict, ``model`` untouched."""
    if not g.data_inputs(model.graph):
        return infos
    missing = unresolved(model, infos)
    for source in (_symbolic, _measured):
        if not missing:
            break
        infos = _merge(infos, source(model, infos, missing), missing)
        missing = unresolved(model, infos)
    return infos


def unresolved(model: onnx.ModelProto, infos: dict[str, onnx.ValueInfoProto]) -> list[str]:
    """Data-path tensors whose rank or some dim is unknown (a named dim such as the batch counts as known)."""
    graph = model.graph
    dependent = g.dependent_tensors(graph, [v.name for v in g.data_inputs(graph)])
    names = [out for node in graph.node for out in node.output if out in dependent]
    return [name for name in dict.fromkeys(names) if _unknown_dims(infos.get(name))]


def _unknown_dims(info: onnx.ValueInfoProto | None) -> int:
    """How many dims are unknown (the rank counts as 1000 dims when it is unknown)."""
    if info is None or not info.type.tensor_type.HasField("shape"):
        return 1000
    return sum(not _known(d) for d in info.type.tensor_type.shape.dim)


def _known(dim: onnx.TensorShapeProto.Dimension) -> bool:
    return dim.HasField("dim_value") or (dim.HasField("dim_param") and not dim.dim_param.startswith(_UNKNOWN_PREFIX))


def _merge(infos, found: dict[str, onnx.ValueInfoProto], names: list[str]) -> dict[str, onnx.ValueInfoProto]:
    """``infos`` with each of ``names`` replaced by ``found``'s entry where that one knows more dims."""
    merged = dict(infos)
    for name in names:
        new = found.get(name)
        if new is None or _unknown_dims(new) >= _unknown_dims(infos.get(name)):
            continue
        old = infos.get(name)
        if old is not None and old.type.tensor_type.elem_type and not new.type.tensor_type.elem_type:
            new.type.tensor_type.elem_type = old.type.tensor_type.elem_type
        merged[name] = new
    return merged


def _symbolic(model, infos, names) -> dict[str, onnx.ValueInfoProto]:
    """Symbolic shape inference's value infos, as far as it gets; none when sympy is missing or it fails.

    Its ``infer_shapes`` runs the steps below and, when a shape stays unresolved, writes the model
    into the working directory (``sym_shape_infer_temp.onnx`` and a ``<uuid>.data`` of the weights)
    before raising: the user's folder is no scratch space, so the steps are run here.
    """
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except ImportError:  # it imports sympy, which onnxruntime does not require
        return {}
    try:
        inference = SymbolicShapeInference(2**31 - 1, True, False, 0)  # int_max, auto_merge, guess_output_rank, verbose
        inference._preprocess(model)
        while inference.run_:
            inference._infer_impl()
        inference._update_output_from_vi()
    except Exception:  # noqa: BLE001 - its failures (any type) only mean "ask the next source"
        return {}
    graph = inference.out_mp_.graph
    return {v.name: v for v in [*graph.value_info, *graph.output] if v.name in set(names)}


def _measured(model, infos, names) -> dict[str, onnx.ValueInfoProto]:
    """Shapes of ``names`` from running the model on random inputs of two batch sizes."""
    from onnxsight.engine.session import CPU, open_session  # the runtime lives behind session.py

    inputs = g.data_inputs(model.graph)
    shapes = [g.shape_of(data) for data in inputs]
    if not inputs or any(not shape or None in shape[1:] for shape in shapes):
        return {}
    data, shape = inputs[0], shapes[0]
    batch_param = data.type.tensor_type.shape.dim[0].dim_param or None
    batches = (shape[0],) if shape[0] is not None else _PROBE_BATCHES
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    for name in names:
        elem = infos[name].type.tensor_type.elem_type if name in infos else 0
        probe.graph.output.append(helper.make_tensor_value_info(name, elem, None) if elem
                                  else helper.make_empty_tensor_value_info(name))
    try:
        session = open_session(g.runtime_compatible(probe), CPU, "the shape probe")
    except ModelFileError:  # ops onnxruntime lacks (tf2onnx's Erfc before the converter rewrites it)
        return {}
    rng = np.random.default_rng(0)

    def feeds(n: int) -> dict[str, np.ndarray]:  # random floats; zeros for integer inputs (ids, indices)
        dtypes = [helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type) for v in inputs]
        return {v.name: rng.standard_normal((n, *s[1:])).astype(t) if np.issubdtype(t, np.floating)
                else np.zeros((n, *s[1:]), t) for v, s, t in zip(inputs, shapes, dtypes)}

    try:
        runs = [session.run(names, feeds(n)) for n in batches]
    except Exception:  # noqa: BLE001 - onnxruntime raises several types; a model it cannot run keeps its unknown dims
        return {}
    found = {}
    for i, name in enumerate(names):
        arrays = [run[i] for run in runs]
        if len({a.ndim for a in arrays}) != 1:
            continue
        dims = []
        for sizes in zip(*(a.shape for a in arrays)):
            if len(set(sizes)) == 1:
                dims.append(sizes[0])
            elif list(sizes) == list(batches):
                dims.append(batch_param)
            else:
                dims.append(f"{_UNKNOWN_PREFIX}measured")
        elem = helper.np_dtype_to_tensor_dtype(arrays[0].dtype)
        found[name] = helper.make_tensor_value_info(name, elem, dims)
    return found
