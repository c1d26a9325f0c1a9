"""A Triton Inference Server model repository entry: ``<repo>/<name>/config.pbtxt`` and ``<repo>/<name>/1/model.onnx``.

The configuration names every tensor with its type and dims (``-1`` for dynamic ones) and
``max_batch_size: 0``: the batch dimension is part of the dims, which Triton's onnxruntime
backend requires for inputs backed by an initializer (an explainer's optional ``target``). A scalar
tensor is declared with dims ``[1]`` reshaped to ``[]``, since Triton refuses empty dims.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import onnx
from onnx import TensorProto

from onnxsight.data.files import atomic_write, refuse_overwrite, safe_name
from onnxsight.errors import InvalidArgument

PLATFORM = "onnxruntime_onnx"
VERSION = "1"
TRITON_TYPES = {
    TensorProto.BOOL: "TYPE_BOOL", TensorProto.UINT8: "TYPE_UINT8", TensorProto.UINT16: "TYPE_UINT16",
    TensorProto.UINT32: "TYPE_UINT32", TensorProto.UINT64: "TYPE_UINT64", TensorProto.INT8: "TYPE_INT8",
    TensorProto.INT16: "TYPE_INT16", TensorProto.INT32: "TYPE_INT32", TensorProto.INT64: "TYPE_INT64",
    TensorProto.FLOAT16: "TYPE_FP16", TensorProto.FLOAT: "TYPE_FP32", TensorProto.DOUBLE: "TYPE_FP64",
    TensorProto.BFLOAT16: "TYPE_BF16", TensorProto.STRING: "TYPE_STRING",
}


def config_pbtxt(model: onnx.ModelProto, name: str, optional: Iterable[str] = ()) -> str:
    """Triton's ``config.pbtxt`` (protobuf text format) for ``model`` served as ``name``.

    Inputs are the graph inputs without an initializer, plus those in ``optional`` (inputs with
    a default value), which are marked ``optional: true``.
    """
    optional = set(optional)
    graph = model.graph
    defaults = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in defaults or v.name in optional]
    lines = [f"name: {json.dumps(name)}", f"platform: {json.dumps(PLATFORM)}", "max_batch_size: 0"]
    for section, values in (("input", inputs), ("output", list(graph.output))):
        entries = [_tensor_entry(v, v.name in optional and section == "input") for v in values]
        lines.append(f"{section} [\n" + ",\n".join(entries) + "\n]")
    return "\n".join(lines) + "\n"


def write_triton_entry(model: onnx.ModelProto, repository: str | Path, name: str, optional: Iterable[str] = (),
                       force: bool = False) -> Path:
    """Writes ``model`` into the Triton model repository ``repository`` as ``name``; returns the model folder.

    Existing files are kept unless ``force``; files are written atomically.
    """
    if safe_name(name) != name:
        raise InvalidArgument(f"Triton model name {name!r} must be a plain file name (letters, digits, . _ -)")
    folder = Path(repository) / name
    config, weights = folder / "config.pbtxt", folder / VERSION / "model.onnx"
    for target in (config, weights):
        refuse_overwrite(target, force)
    weights.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(weights, model.SerializeToString())
    atomic_write(config, config_pbtxt(model, name, optional).encode())
    return folder


def _tensor_entry(value: onnx.ValueInfoProto, optional: bool) -> str:
    tensor_type = value.type.tensor_type
    if tensor_type.elem_type not in TRITON_TYPES:
        raise InvalidArgument(f"tensor {value.name!r} has an element type Triton does not serve")
    if not tensor_type.HasField("shape"):
        raise InvalidArgument(f"tensor {value.name!r} has no declared shape; Triton needs its dims")
    dims = ", ".join(str(d.dim_value) if d.HasField("dim_value") else "-1" for d in tensor_type.shape.dim)
    fields = [f"name: {json.dumps(value.name)}", f"data_type: {TRITON_TYPES[tensor_type.elem_type]}", f"dims: [ {dims or 1} ]"]
    if not dims:  # Triton refuses empty dims: a scalar is declared [1] and reshaped to []
        fields.append("reshape: { shape: [ ] }")
    if optional:
        fields.append("optional: true")
    return "  {\n" + "".join(f"    {field}\n" for field in fields) + "  }"
