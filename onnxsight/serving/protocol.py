"""The Open Inference Protocol (KServe v2) inference request and response, JSON and binary tensors.

A request body is a JSON object, optionally followed by raw tensor bytes (the binary tensor data
extension: the header ``Inference-Header-Content-Length`` gives the JSON's length, and each input
with ``parameters.binary_data_size`` takes that many bytes, in order). Parsing validates every
field's JSON type and every name, datatype, shape and value against the model's tensors and raises
:class:`ProtocolError` with the HTTP status and a one-line message for the client.

Both front ends, the JSON body here and the gRPC messages (``grpc_server``), state their inputs as
:class:`InputTensor` and check them in one place, :func:`decode_inputs`; requested output names go
through :func:`check_output` and results through :func:`check_finite`.

Neither kind of answer ever carries NaN or Inf: JSON cannot, so a binary answer does not either;
an output holding them is refused with 422, naming the model and the outputs.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

HEADER_LENGTH = "Inference-Header-Content-Length"
DATATYPES = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}
NO_CLASSIFICATION = "the classification extension is not supported; request the tensors"
ONNX_TYPES = {  # onnxruntime's type strings
    "tensor(bool)": "BOOL", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16", "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64", "tensor(int8)": "INT8", "tensor(int16)": "INT16", "tensor(int32)": "INT32",
    "tensor(int64)": "INT64", "tensor(float16)": "FP16", "tensor(float)": "FP32", "tensor(double)": "FP64",
}


class ProtocolError(Exception):
    """A request the server refuses: ``status`` is the HTTP status, the message goes to the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class TensorSpec:
    """A model tensor as the protocol describes it; ``-1`` marks a dynamic dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    optional: bool = False

    def metadata(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class InferRequest:
    """A validated request: input arrays by name, and the outputs wanted (name -> binary or not)."""

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: dict[str, bool] = field(default_factory=dict)


@dataclass(frozen=True)
class InputTensor:
    """An input as a request states it, not yet checked: ``data`` holds row-major bytes when ``raw``, else
    values (a flat or nested list); ``field`` names the request field they came in, for messages."""

    name: object
    datatype: object
    shape: object
    data: object
    raw: bool
    field: str


@dataclass(frozen=True)
class Limits:
    """What one request may ask for: rows along a dynamic first dimension."""

    max_batch: int = 64


def parse_request(body: bytes, header_length: str | None, inputs: list[TensorSpec], outputs: list[TensorSpec],
                  limits: Limits) -> InferRequest:
    """Parse and validate an inference request body for a model with these ``inputs`` and ``outputs``."""
    json_size = len(body) if header_length is None else _json_size(header_length, len(body))
    try:
        request = json.loads(body[:json_size])
    except (ValueError, RecursionError) as error:
        raise ProtocolError(400, f"malformed JSON in the request: {error}") from None
    if not isinstance(request, dict):
        raise ProtocolError(400, "the request must be a JSON object with an 'inputs' list")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError(400, "'id' must be a string")
    parameters = _object(request.get("parameters", {}), "request 'parameters'")
    raw = request.get("inputs")
    if not isinstance(raw, list) or not raw:
        raise ProtocolError(400, "'inputs' must be a non-empty list of tensors")
    arrays = decode_inputs(_json_tensors(raw, memoryview(body)[json_size:]), inputs, limits)
    return InferRequest(request_id, arrays, _requested_outputs(request, parameters, outputs))


def decode_inputs(tensors: Iterable[InputTensor], specs: list[TensorSpec], limits: Limits) -> dict[str, np.ndarray]:
    """The input arrays by name, each checked against the model's ``specs`` (name, datatype, shape, size, values),
    none missing, within the batch limit: the one validation path of the HTTP and gRPC front ends."""
    by_name, arrays = {spec.name: spec for spec in specs}, {}
    for tensor in tensors:
        name = _string(tensor.name, "each input's 'name'")
        if name not in by_name:
            raise ProtocolError(400, f"unknown input {_shown(name)}; the model's inputs are: {', '.join(by_name)}")
        if name in arrays:
            raise ProtocolError(400, f"input {name!r} is given twice")
        arrays[name] = _input_array(tensor, by_name[name])
    missing = [spec.name for spec in specs if not spec.optional and spec.name not in arrays]
    if missing:
        raise ProtocolError(400, f"missing input {', '.join(map(repr, missing))}")
    _check_batch(arrays, by_name, limits)
    return arrays


def check_output(name, outputs: list[TensorSpec]) -> str:
    """A requested output's name, refused unless the model has it."""
    name = _string(name, "each requested output's 'name'")
    if name not in {spec.name for spec in outputs}:
        raise ProtocolError(400, f"unknown output {_shown(name)}; the model's outputs are: {', '.join(s.name for s in outputs)}")
    return name


def check_finite(model: str, results: dict[str, np.ndarray]) -> None:
    """422 when an output holds NaN or Inf: no answer of this server carries them."""
    non_finite = [name for name, array in results.items() if array.dtype.kind == "f" and not np.isfinite(array).all()]
    if non_finite:
        raise ProtocolError(422, f"model {model!r} produced NaN or Inf in {', '.join(map(repr, non_finite))}; this "
                                 "server never returns non-finite values (are the inputs in the model's range?)")


def encode_response(model: str, version: str, request_id: str | None, results: dict[str, np.ndarray],
                    binary: dict[str, bool]) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers: JSON, followed by raw bytes of the outputs wanted in binary;
    422 when an output holds NaN or Inf (in either form)."""
    check_finite(model, results)
    entries, blobs = [], []
    for name, array in results.items():
        datatype = datatype_of(array.dtype)
        entry = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary.get(name, False):
            data = np.ascontiguousarray(array).tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            blobs.append(data)
        else:
            entry["data"] = array.ravel().tolist()
        entries.append(entry)
    response = {"model_name": model, "model_version": version, "outputs": entries}
    if request_id is not None:
        response["id"] = request_id
    header = json.dumps(response, allow_nan=False).encode()
    if not blobs:
        return header, {"content-type": "application/json"}
    return header + b"".join(blobs), {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(header))}


def datatype_of(dtype: np.dtype) -> str:
    for name, numpy_type in DATATYPES.items():
        if np.dtype(numpy_type) == dtype:
            return name
    raise ProtocolError(500, f"the model produced a {dtype} tensor that the protocol cannot carry")


# ---- validation --------------------------------------------------------------------------------
def _json_size(header_length: str, body_size: int) -> int:
    """The JSON part's length from the ``Inference-Header-Content-Length`` header: ASCII digits, within the body."""
    if not re.fullmatch(r"[0-9]{1,19}", header_length) or int(header_length) > body_size:
        raise ProtocolError(400, f"{HEADER_LENGTH} must be an integer no larger than the body ({body_size} bytes)")
    return int(header_length)


def _json_tensors(raw: list, binary: memoryview):
    """The JSON request's inputs as :class:`InputTensor`, each with its slice of the binary data when it has
    ``binary_data_size``; after the last one, refuses binary data no input claims."""
    offset = 0
    for tensor in raw:
        tensor = _object(tensor, "each input")
        name = tensor.get("name")
        parameters = _object(tensor.get("parameters", {}), f"input {_shown(name)} 'parameters'")
        size = parameters.get("binary_data_size")
        if size is None:
            if "data" not in tensor:
                raise ProtocolError(400, f"input {_shown(name)} has neither 'data' nor binary_data_size")
            yield InputTensor(name, tensor.get("datatype"), tensor.get("shape"), tensor["data"], False, "'data'")
            continue
        if "data" in tensor:
            raise ProtocolError(400, f"input {_shown(name)} has both 'data' and binary_data_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ProtocolError(400, f"input {_shown(name)}: binary_data_size must be a non-negative integer, "
                                     f"got {_shown(size)}")
        if offset + size > len(binary):
            raise ProtocolError(400, f"input {_shown(name)}: the body ends before its {size} bytes of binary data")
        yield InputTensor(name, tensor.get("datatype"), tensor.get("shape"), binary[offset:offset + size], True,
                          "binary_data_size")
        offset += size
    if offset != len(binary):
        raise ProtocolError(400, f"the body has {len(binary) - offset} bytes of binary data no input claims")


def _input_array(tensor: InputTensor, spec: TensorSpec) -> np.ndarray:
    """The input's array, checked against ``spec``."""
    name = spec.name
    datatype = _string(tensor.datatype, f"input {name!r}: 'datatype'")
    if datatype != spec.datatype:
        raise ProtocolError(400, f"input {name!r} has datatype {_shown(datatype)}; the model expects {spec.datatype}")
    shape = tensor.shape
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ProtocolError(400, f"input {name!r}: 'shape' must be a list of non-negative integers")
    if len(shape) != len(spec.shape) or any(want != -1 and got != want for got, want in zip(shape, spec.shape)):
        raise ProtocolError(400, f"input {name!r} has shape {_shown(shape)}; the model expects {list(spec.shape)} (-1: any size)")
    dtype = np.dtype(DATATYPES[datatype])
    count = math.prod(shape)
    if tensor.raw:
        if len(tensor.data) != count * dtype.itemsize:
            raise ProtocolError(400, f"input {name!r}: {tensor.field} must be {count * dtype.itemsize} bytes "
                                     f"for shape {_shown(shape)} of {datatype}, got {len(tensor.data)}")
        array = np.frombuffer(tensor.data, dtype=dtype).reshape(shape)
    else:
        array = _values_array(tensor.data, name, tensor.field, dtype, count).reshape(shape)
    if dtype.kind == "f" and not np.isfinite(array).all():
        raise ProtocolError(400, f"input {name!r} contains NaN or Inf values")
    return array


def _values_array(data, name: str, field: str, dtype: np.dtype, count: int) -> np.ndarray:
    """Tensor values (flat or nested row-major lists) as ``count`` values of ``dtype``."""
    try:
        values = np.asarray(data)
    except ValueError:
        raise ProtocolError(400, f"input {name!r}: {field} is a ragged or too deeply nested list") from None
    wanted = {"b": "b", "i": "biu", "u": "biu", "f": "biuf"}[dtype.kind]
    if values.size and values.dtype.kind not in wanted:
        kind = {"b": "booleans", "i": "integers", "u": "integers", "f": "numbers"}[dtype.kind]
        raise ProtocolError(400, f"input {name!r}: {field} must hold {kind} for {datatype_of(dtype)}")
    if values.size != count:
        raise ProtocolError(400, f"input {name!r}: {field} has {values.size} values; its shape needs {count}")
    if dtype.kind in "iu" and values.size:
        info = np.iinfo(dtype)
        if values.min() < info.min or values.max() > info.max:
            raise ProtocolError(400, f"input {name!r}: values out of range for {datatype_of(dtype)}")
    return values.astype(dtype).reshape(-1)


def _check_batch(arrays: dict[str, np.ndarray], specs: dict[str, TensorSpec], limits: Limits) -> None:
    """Inputs with a dynamic first dimension hold 1 to ``limits.max_batch`` rows."""
    for name, array in arrays.items():
        if not specs[name].shape or specs[name].shape[0] != -1:
            continue
        if array.shape[0] == 0:
            raise ProtocolError(400, f"input {name!r} is empty")
        if array.shape[0] > limits.max_batch:
            raise ProtocolError(400, f"input {name!r} has {array.shape[0]} rows; this server takes at most "
                                     f"{limits.max_batch} per request")


def _requested_outputs(request: dict, parameters: dict, outputs: list[TensorSpec]) -> dict[str, bool]:
    """Output name -> binary, in the order asked for (all outputs when none are named)."""
    default = parameters.get("binary_data_output", False)
    if not isinstance(default, bool):
        raise ProtocolError(400, "'binary_data_output' must be true or false")
    raw = request.get("outputs")
    if raw is None:
        return {spec.name: default for spec in outputs}
    if not isinstance(raw, list) or not raw:
        raise ProtocolError(400, "'outputs' must be a non-empty list when given")
    wanted = {}
    for tensor in raw:
        tensor = _object(tensor, "each requested output")
        name = check_output(tensor.get("name"), outputs)
        options = _object(tensor.get("parameters", {}), f"output {name!r} 'parameters'")
        if options.get("classification"):
            raise ProtocolError(400, NO_CLASSIFICATION)
        binary = options.get("binary_data", default)
        if not isinstance(binary, bool):
            raise ProtocolError(400, f"output {name!r}: 'binary_data' must be true or false")
        wanted[name] = binary
    return wanted


def _object(value, what: str) -> dict:
    if not isinstance(value, dict):
        raise ProtocolError(400, f"{what} must be a JSON object")
    return value


def _string(value, what: str) -> str:
    if not isinstance(value, str):
        raise ProtocolError(400, f"{what} must be a string, got {_shown(value)}")
    return value


def _shown(value, limit: int = 80) -> str:
    """A client's value quoted for an error message: one line, at most ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
