"""OpenVINO sessions: an ONNX graph compiled once for OpenVINO's CPU plugin, run like an onnxruntime
session (``run(output_names, feeds)``, ``get_inputs()``, ``get_outputs()``). Only ``session.py`` imports this.

Compiled in full float32 (``INFERENCE_PRECISION_HINT=f32``, ``EXECUTION_MODE_HINT=ACCURACY``) for one
synchronous run per call (``PERFORMANCE_HINT=LATENCY``): on CPUs with AVX-512 BF16 or AMX the plugin's
default is bfloat16, which put relative errors of 3e-3 to 2e-1 in outputs and 1e-1 to 9e-1 in input
gradients of the seed CNN, a ResNet18 and a MobileNetV2. A graph input that also has an initializer (an
optional input with a default, e.g. an explainer's ``target``) stays an input that ``run`` fills with its
default when omitted.
OpenVINO has no MaxUnpool (which the MaxPool gradient rule emits): it becomes a ScatterElements into zeros.
"""

from __future__ import annotations

import functools
import queue
import re
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxsight.engine import graph as g
from onnxsight.engine.autodiff.builder import GraphBuilder
from onnxsight.errors import MissingDependency, ModelFileError

_CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "EXECUTION_MODE_HINT": "ACCURACY", "PERFORMANCE_HINT": "LATENCY"}
_LOCATION = re.compile(r"^(Exception from \S+:\d+:|Check '.*' failed at \S+:\d+:)$")


@dataclass(frozen=True)
class TensorInfo:
    """A session input or output as onnxruntime describes it: dims are ints, names or None."""

    name: str
    shape: list
    type: str
    dtype: object = None  # the numpy dtype, None when the graph does not say


def require_openvino():
    """The openvino module, or MissingDependency naming the extra to install."""
    try:
        import openvino
    except ImportError as error:
        raise MissingDependency("openvino", "openvino") from error
    return openvino


@functools.lru_cache(maxsize=1)
def _core():
    return require_openvino().Core()


class OpenVinoSession:
    """One graph compiled for OpenVINO's CPU plugin; ``run`` is thread-safe (one infer request per
    concurrent call, reused)."""

    def __init__(self, compiled, inputs: list[TensorInfo], optional: list[TensorInfo], outputs: list[TensorInfo],
                 defaults: dict[str, np.ndarray]):
        self._compiled = compiled
        self._inputs, self._optional, self._outputs, self._defaults = inputs, optional, outputs, defaults
        self._ports = {name: port for port in compiled.outputs for name in port.get_names()}
        self._dtypes = {o.name: np.dtype(o.dtype) for o in outputs if o.dtype is not None}
        self._requests: queue.SimpleQueue = queue.SimpleQueue()

    @classmethod
    def open(cls, model: onnx.ModelProto, source: str, threads: int | None = None) -> "OpenVinoSession":
        """``model`` compiled with ``threads`` inference threads (None: one per core); OpenVINO's
        refusal becomes one line naming ``source``."""
        graph = model.graph
        initializers = {t.name: t for t in graph.initializer}
        defaults = {v.name: numpy_helper.to_array(initializers[v.name]) for v in graph.input if v.name in initializers}
        visible = without_max_unpool(model)
        kept = [t for t in visible.graph.initializer if t.name not in defaults]  # OpenVINO folds inputs with initializers
        del visible.graph.initializer[:]
        visible.graph.initializer.extend(kept)
        config = dict(_CONFIG)
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            compiled = _core().compile_model(_core().read_model(visible.SerializeToString(), b""), "CPU", config)
        except Exception as error:  # noqa: BLE001 - OpenVINO raises RuntimeError and others
            raise ModelFileError(f"openvino cannot run {source}: {reason(error)}") from error
        inputs = [_info(v) for v in graph.input if v.name not in defaults]
        optional = [_info(v) for v in graph.input if v.name in defaults]
        return cls(compiled, inputs, optional, [_info(v) for v in graph.output], defaults)

    def get_inputs(self) -> list[TensorInfo]:
        return list(self._inputs)

    def get_outputs(self) -> list[TensorInfo]:
        return list(self._outputs)

    def get_overridable_initializers(self) -> list[TensorInfo]:
        """The optional inputs: graph inputs with a default value."""
        return list(self._optional)

    def run(self, output_names, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs ``output_names`` (None: all) for ``feeds`` by input name, as numpy arrays."""
        names = [o.name for o in self._outputs] if output_names is None else list(output_names)
        unknown = [name for name in names if name not in self._ports]
        if unknown:
            raise ValueError(f"unknown output {unknown[0]!r}; the graph's outputs: {', '.join(self._ports)}")
        known = {i.name for i in self._inputs} | set(self._defaults)
        extra = [name for name in feeds if name not in known]
        if extra:
            raise ValueError(f"unknown input {extra[0]!r}; the graph's inputs: {', '.join(sorted(known))}")
        try:
            request = self._requests.get_nowait()
        except queue.Empty:
            request = self._compiled.create_infer_request()
        try:
            results = request.infer({**self._defaults, **feeds})
            arrays = [results[self._ports[name]] for name in names]
            return [a if name not in self._dtypes else a.astype(self._dtypes[name], copy=False) for name, a in zip(names, arrays)]
        except Exception as error:  # noqa: BLE001 - OpenVINO raises RuntimeError and others
            raise RuntimeError(reason(error)) from error
        finally:
            self._requests.put(request)


def reason(error: BaseException) -> str:
    """An OpenVINO error in one line: the summary of a failed conversion ("No conversion rule found
    for operations: Det-17"), else its first line that is not a source location."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip() and not _LOCATION.match(line.strip())]
    summary = lines[lines.index("Summary:") + 1:] if "Summary:" in lines else []
    listed = [line[3:] for line in summary if line.startswith("-- ")]
    return "; ".join(listed) if listed else (lines or [type(error).__name__])[0]


def without_max_unpool(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with each MaxUnpool written as a ScatterElements of its flattened input at its
    flat indices into zeros of its output's shape (``output_shape``, else ``(in - 1)·strides + kernel - pads``)."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    if not any(node.op_type == "MaxUnpool" for node in model.graph.node):
        return result
    graph = result.graph
    names = [*g.tensor_names(graph), *(node.name for node in graph.node)]
    b = GraphBuilder({}, g.opset_version(model), g.free_name(names, "onnxsight/openvino"))
    nodes = []
    for node in graph.node:
        if node.op_type != "MaxUnpool":
            nodes.append(node)
            continue
        b.scope(node.name or node.output[0])
        start = len(b.nodes)
        x, index = node.input[0], node.input[1]
        shape = node.input[2] if len(node.input) > 2 and node.input[2] else _unpooled_shape(b, node, x)
        zeros = b.op("Reshape", b.op("CastLike", b.op("ConstantOfShape", shape), x), b.ints([-1]))
        flat = b.op("ScatterElements", zeros, b.op("Reshape", index, b.ints([-1])), b.op("Reshape", x, b.ints([-1])), axis=0)
        b.op("Reshape", flat, shape)
        b.nodes[-1].output[0] = node.output[0]  # the unpooled tensor keeps its name
        nodes.extend(b.nodes[start:])
    del graph.node[:]
    graph.node.extend(nodes)
    return result


def _unpooled_shape(b: GraphBuilder, node: onnx.NodeProto, x: str) -> str:
    attrs = {a.name: list(helper.get_attribute_value(a)) for a in node.attribute}
    kernel = attrs["kernel_shape"]
    strides = attrs.get("strides", [1] * len(kernel))
    pads = attrs.get("pads", [0] * 2 * len(kernel))
    extra = [k - s - p - q for k, s, p, q in zip(kernel, strides, pads[:len(kernel)], pads[len(kernel):])]
    size = b.shape(x)
    spatial = b.op("Slice", size, b.ints([2]), b.ints([2 + len(kernel)]))
    return b.op("Concat", b.op("Slice", size, b.ints([0]), b.ints([2])),
                b.op("Add", b.op("Mul", spatial, b.ints(strides)), b.ints(extra)), axis=0)


def _info(value: onnx.ValueInfoProto) -> TensorInfo:
    tensor = value.type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]
    if not tensor.elem_type:
        return TensorInfo(value.name, shape, "tensor(undefined)")
    dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type)
    return TensorInfo(value.name, shape, _type_name(dtype), dtype)


def _type_name(dtype) -> str:
    """onnxruntime's type string for a numpy dtype, e.g. "tensor(float)"."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    return f"tensor({onnx.TensorProto.DataType.Name(elem).lower()})"
