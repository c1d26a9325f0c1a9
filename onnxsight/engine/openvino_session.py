"""OpenVINO sessions: an ONNX graph compiled once for OpenVINO's CPU plugin, run like an onnxruntime
session (``run(output_names, feeds)``, ``get_inputs()``, ``get_outputs()``). Only ``session.py`` imports this.

Compiled in full float32 (``INFERENCE_PRECISION_HINT=f32``, ``EXECUTION_MODE_HINT=ACCURACY``) for one
synchronous run per call (``PERFORMANCE_HINT=LATENCY``): on CPUs with AVX-512 BF16 or AMX the plugin's
default is bfloat16, which put relative errors of 3e-3 to 2e-1 in outputs and 1e-1 to 9e-1 in input
gradients of the seed CNN, a ResNet18 and a MobileNetV2. A graph input that also has an initializer (an
optional input with a default, e.g. an explainer's ``target``) stays an input that ``run`` fills with its
default when omitted.
OpenVINO has no MaxUnpool (which the MaxPool gradient rule emits): it becomes a ScatterElements into zeros.
Each MatMul and Gemm gets its constant weights from an initializer of its own (see ``with_own_weights``): OpenVINO
2026.4's CPU plugin computes a layer that shares a square weight matrix with another in the other orientation (a
Dense layer and its gradient) with the first one's weights.
"""

from __future__ import annotations

import functools
import queue
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxsight.engine import graph as g
from onnxsight.engine.autodiff.builder import GraphBuilder
from onnxsight.engine.reference import reference_evaluator
from onnxsight.errors import MissingDependency, ModelFileError

_CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "EXECUTION_MODE_HINT": "ACCURACY", "PERFORMANCE_HINT": "LATENCY"}
_LAYOUT_OPS = {"Constant", "Identity", "Cast", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten"}
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
        visible = with_own_weights(without_max_unpool(model))
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


def with_own_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` in which every MatMul and Gemm whose second operand is constant (an initializer, or
    one reshaped, transposed or cast) reads it from an initializer that no other node uses.

    OpenVINO 2026.4's CPU plugin (f32) gives two fully-connected layers fed by one square constant the same
    packed weights even when one of them uses it transposed: ``MatMul(a, W)`` beside ``MatMul(g, Transpose(W))``
    (a Dense layer and its gradient) computes ``g·W`` for ``g·Wᵀ``. Separate constants are computed right; a
    Gemm's ``transB`` weight is also stored transposed, so that equal values are only ever multiplied alike
    (a PyTorch ViT's ``Gemm(x, W, transB=1)`` layers beside their gradients ``Gemm(g, W)`` stayed 1.1 off with
    copies of W, maybe because OpenVINO merges equal constants again).
    """
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    inputs = {v.name for v in graph.input}
    constant = {t.name for t in graph.initializer if t.name not in inputs}
    initializers = set(constant)
    layout = []
    for node in graph.node:
        if node.op_type in _LAYOUT_OPS and all(i in constant for i in node.input if i):
            layout.append(node)
            constant.update(node.output)
    weighted = [n for n in graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in constant]
    flagged = {id(n) for n in weighted if n.op_type == "Gemm" and any(a.name == "transB" and a.i for a in n.attribute)}
    folded = [n for n in weighted if n.input[1] not in initializers or id(n) in flagged]
    if folded:
        computed = sorted({n.input[1] for n in folded} - initializers)
        values = _constant_values(result, layout, computed) if computed else {}
        for node in folded:
            value = values[node.input[1]] if node.input[1] in values else numpy_helper.to_array(_initializer(graph, node.input[1]))
            if id(node) in flagged:  # the weight as it multiplies: Gemm(a, W, transB=1) -> Gemm(a, Wᵀ)
                value = value.T
                next(a for a in node.attribute if a.name == "transB").i = 0
            node.input[1] = _add_initializer(graph, value, node)
        _drop_unused(graph, layout)
    uses = _uses(graph)
    seen = set()
    for node in weighted:
        weights = node.input[1]
        if weights in initializers and uses[weights] > 1:
            if weights in seen:
                node.input[1] = _add_initializer(graph, numpy_helper.to_array(_initializer(graph, weights)), node)
            seen.add(weights)
    return result


def _constant_values(model: onnx.ModelProto, layout: list[onnx.NodeProto], names: list[str]) -> dict[str, np.ndarray]:
    """The values of constant tensors ``names``, computed by the layout nodes from the initializers."""
    producer = {o: n for n in layout for o in n.output}
    needed, pending = set(), list(names)
    while pending:
        node = producer.get(pending.pop())
        if node is not None and tuple(node.output) not in needed:
            needed.add(tuple(node.output))
            pending.extend(i for i in node.input if i)
    nodes = [n for n in layout if tuple(n.output) in needed]
    sources = {i for n in nodes for i in n.input} | set(names)
    sub = helper.make_graph(nodes, "constants", [], [helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in names],
                            [t for t in model.graph.initializer if t.name in sources])
    proto = helper.make_model(sub, opset_imports=model.opset_import, ir_version=model.ir_version)
    return dict(zip(names, reference_evaluator(proto).run(names, {})))


def _add_initializer(graph: onnx.GraphProto, value: np.ndarray, node: onnx.NodeProto) -> str:
    name = g.free_name(g.tensor_names(graph), f"onnxsight/openvino/{node.name or node.output[0]}/weights")
    graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    return name


def _initializer(graph: onnx.GraphProto, name: str) -> onnx.TensorProto:
    return next(t for t in graph.initializer if t.name == name)


def _uses(graph: onnx.GraphProto) -> Counter:
    """How many node inputs (nested graphs included) and graph outputs name each tensor."""
    uses = Counter(o.name for o in graph.output)
    for node in graph.node:
        uses.update(i for i in node.input if i)
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                uses.update(_uses(sub))
    return uses


def _drop_unused(graph: onnx.GraphProto, layout: list[onnx.NodeProto]) -> None:
    """Removes the layout nodes and the initializers (not graph inputs) that nothing uses any more."""
    removable = {tuple(n.output) for n in layout}
    nodes = list(graph.node)
    while True:
        uses = _uses(helper.make_graph(nodes, "uses", [], list(graph.output)))
        kept = [n for n in nodes if tuple(n.output) not in removable or any(uses[o] for o in n.output)]
        if len(kept) == len(nodes):
            break
        nodes = kept
    del graph.node[:]
    graph.node.extend(nodes)
    uses, inputs = _uses(graph), {v.name for v in graph.input}
    kept = [t for t in graph.initializer if uses[t.name] or t.name in inputs]
    del graph.initializer[:]
    graph.initializer.extend(kept)


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
