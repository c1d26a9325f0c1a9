"""Runtimes and devices: which ones really work, and how to open a session on one.

The only module that knows a runtime: onnxruntime (CPU, or CUDA when it really works) here, and
OpenVINO through ``engine/openvino_session.py``. Everything above opens sessions with a
:class:`Runtime` and uses the session's ``run(output_names, feeds)``, ``get_inputs()`` and
``get_outputs()``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from onnxsight.engine.graph import runtime_compatible
from onnxsight.errors import InvalidArgument, ModelFileError

DEVICES = ("auto", "cpu", "cuda", "openvino")
_CPU_PROVIDERS = ["CPUExecutionProvider"]
_CUDA_PROVIDERS = ["CUDAExecutionProvider", "CPUExecutionProvider"]
_QUIET = 4  # onnxruntime's FATAL: nothing below it is printed
_DEFAULT_SEVERITY = 3  # ERROR


@dataclass(frozen=True)
class Runtime:
    """A resolved device: "cpu" or "cuda" (onnxruntime) or "openvino" (OpenVINO on the CPU)."""

    device: str

    @property
    def name(self) -> str:
        """The runtime's name, for messages."""
        return "openvino" if self.device == "openvino" else "onnxruntime"

    @property
    def float64(self) -> bool:
        """Whether float64 graphs run in float64 (OpenVINO's CPU plugin computes them in float32)."""
        return self.device != "openvino"


CPU = Runtime("cpu")


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
        session = ort.InferenceSession(runtime_compatible(probe).SerializeToString(), options, providers=_CUDA_PROVIDERS)
        if "CUDAExecutionProvider" not in session.get_providers():
            return False
        session.run(None, {"x": np.ones(1, np.float32)})
        return True
    except Exception:  # noqa: BLE001 - any failure here means "no usable CUDA"
        return False
    finally:
        ort.set_default_logger_severity(_DEFAULT_SEVERITY)


def resolve(device: str) -> Runtime:
    """The runtime for "auto" (CUDA when it really works, else onnxruntime's CPU), "cpu", "cuda"
    or "openvino"; "cuda" fails clearly without CUDA, "openvino" without the openvino package."""
    if device not in DEVICES:
        raise InvalidArgument(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "openvino":
        from onnxsight.engine.openvino_session import require_openvino

        require_openvino()
        return Runtime("openvino")
    if device == "cpu":
        return CPU
    if cuda_works():
        return Runtime("cuda")
    if device == "cuda":
        raise InvalidArgument("device 'cuda' requested but onnxruntime's CUDA provider does not work here")
    return CPU


def open_session(model: onnx.ModelProto, runtime: Runtime, source: str, threads: int | None = None):
    """A session for ``model`` on ``runtime`` with ``threads`` intra-op threads (None: the runtime's
    default, one per core); the runtime's refusal becomes one line naming ``source``."""
    if runtime.device == "openvino":
        from onnxsight.engine.openvino_session import OpenVinoSession

        return OpenVinoSession.open(model, source, threads)
    options = ort.SessionOptions()
    options.log_severity_level = _DEFAULT_SEVERITY
    # idle threads sleep instead of spinning: measured faster on 2 cores alone (MobileNetV2 input gradient at
    # batch 1: 7.7 vs 11.2 ms; seed CNN at batch 64: 13-18 vs 22-29 ms) and far faster beside other work
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    providers = _CUDA_PROVIDERS if runtime.device == "cuda" else _CPU_PROVIDERS
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
