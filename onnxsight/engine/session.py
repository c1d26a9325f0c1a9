"""onnxruntime sessions and devices: which providers really work, and how to open a session."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from onnxsight.engine.graph import runtime_compatible
from onnxsight.errors import InvalidArgument, ModelFileError

DEVICES = ("auto", "cpu", "cuda")
CPU = ["CPUExecutionProvider"]
CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]
_QUIET = 4  # onnxruntime's FATAL: nothing below it is printed
_DEFAULT_SEVERITY = 3  # ERROR


@functools.lru_cache(maxsize=1)
def cuda_works() -> bool:
    """True when a CUDA session really opens and runs (not merely when the provider is listed)."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    probe = helper.make_model(
        helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])],
            "cuda_probe",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    ort.set_default_logger_severity(_QUIET)  # a missing CUDA library is logged at ERROR level
    try:
        options = ort.SessionOptions()
        options.log_severity_level = _QUIET
        session = ort.InferenceSession(runtime_compatible(probe).SerializeToString(), options, providers=CUDA)
        if "CUDAExecutionProvider" not in session.get_providers():
            return False
        session.run(None, {"x": np.ones(1, np.float32)})
        return True
    except Exception:  # noqa: BLE001 - any failure here means "no usable CUDA"
        return False
    finally:
        ort.set_default_logger_severity(_DEFAULT_SEVERITY)


def providers_for(device: str) -> list[str]:
    """onnxruntime providers for "auto", "cpu" or "cuda"; "cuda" fails clearly without CUDA."""
    if device not in DEVICES:
        raise InvalidArgument(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "cpu":
        return CPU
    if cuda_works():
        return CUDA
    if device == "cuda":
        raise InvalidArgument("device 'cuda' requested but onnxruntime's CUDA provider does not work here")
    return CPU


def open_session(model: onnx.ModelProto, providers: list[str], source: str, threads: int | None = None) -> ort.InferenceSession:
    """A session for ``model`` with ``threads`` intra-op threads (None: onnxruntime's default, one
    per core); onnxruntime's refusal becomes one line naming ``source``."""
    options = ort.SessionOptions()
    options.log_severity_level = _DEFAULT_SEVERITY
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=providers)
    except Exception as error:  # noqa: BLE001 - onnxruntime raises several unrelated types
        raise ModelFileError(f"onnxruntime cannot run {source}: {first_line(error)}") from error


def first_line(error: BaseException) -> str:
    """The informative first line of an exception message, without onnxruntime's prefix."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    for prefix in ("[ONNXRuntimeError] : ",):
        text = text.replace(prefix, "")
    return text
