"""Building tiny ONNX models from a case row, and running them in two runtimes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from onnxsight.engine.graph import runtime_compatible
from onnxsight.engine.reference import REFERENCE_FIXES

DTYPES = {np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE}


@dataclass(frozen=True)
class Arg:
    """One input of the op: a differentiated graph input (``data``) or an initializer."""

    shape: tuple[int, ...] | None = ()  # None: an absent optional input
    data: bool = True
    value: object = None  # fixed value (int64 indices, axes, shapes, or a float constant)
    low: float | None = None  # uniform in (low, low + 1) instead of standard normal

    def draw(self, rng: np.random.Generator, dtype) -> np.ndarray:
        if self.value is not None:
            v = np.asarray(self.value)
            return v.astype(dtype) if v.dtype == np.float64 else v  # float32 constants (scales) stay
        if self.low is not None:
            return (self.low + rng.random(self.shape)).astype(dtype)
        return rng.standard_normal(self.shape).astype(dtype)


ABSENT = Arg(None, data=False)


def C(value) -> Arg:  # noqa: N802  (a constant input, reads well in the table)
    return Arg(np.shape(value), data=False, value=value)


def W(*shape: int) -> Arg:  # noqa: N802  (a random float weight: a constant input)
    return Arg(shape, data=False)


def X(*shape: int, low: float | None = None) -> Arg:  # noqa: N802  (a differentiated data input)
    return Arg(shape, data=True, low=low)


@dataclass(frozen=True)
class Case:
    op: str
    args: tuple[Arg, ...]
    attrs: dict = field(default_factory=dict)
    tf: Callable | None = None  # tf function of the inputs in ONNX layout -> output 0
    opset: int = 18
    outputs: int = 1  # how many outputs feed the model output (flattened and concatenated)
    node_outputs: int | None = None  # outputs of the node itself, when more than are used
    dynamic: bool = True  # data inputs get a symbolic first dim
    note: str = ""

    @property
    def id(self) -> str:
        shapes = "x".join(",".join(map(str, a.shape)) for a in self.args if a.data)
        attrs = ",".join(f"{k}={v}" for k, v in self.attrs.items())
        return f"{self.op}[{shapes}]{attrs}{'-' + self.note if self.note else ''}".replace(" ", "")

    def values(self, dtype, seed: int = 0) -> list[np.ndarray | None]:
        rng = np.random.default_rng(seed)
        return [None if a.value is None and a.shape is None else a.draw(rng, dtype) for a in self.args]

    def model(self, dtype, values: list[np.ndarray]) -> onnx.ModelProto:
        """One node (plus a Concat of flattened outputs for multi-output cases)."""
        inputs, inits, names = [], [], []
        for i, (arg, v) in enumerate(zip(self.args, values)):
            if v is None:
                names.append("")
                continue
            name = f"in{i}"
            names.append(name)
            if arg.data:
                dims = [f"n{i}" if (self.dynamic and k == 0) else d for k, d in enumerate(v.shape)]
                inputs.append(helper.make_tensor_value_info(name, DTYPES[dtype], dims))
            else:
                inits.append(numpy_helper.from_array(v, name))
        outs = [f"out{k}" for k in range(self.outputs)]
        node_outs = [f"out{k}" for k in range(self.node_outputs or self.outputs)]
        nodes = [helper.make_node(self.op, names, node_outs, name=self.op.lower(), **self.attrs)]
        if self.outputs > 1:
            flat = []
            for o in outs:
                nodes.append(helper.make_node("Reshape", [o, "minus_one"], [o + "_flat"], name=o + "_flat"))
                flat.append(o + "_flat")
            nodes.append(helper.make_node("Concat", flat, ["y"], axis=0, name="concat"))
            inits.append(numpy_helper.from_array(np.array([-1], np.int64), "minus_one"))
        else:
            nodes.append(helper.make_node("Identity", [outs[0]], ["y"], name="output"))
        graph = helper.make_graph(nodes, self.op, inputs, [helper.make_empty_tensor_value_info("y")], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        inferred = onnx.shape_inference.infer_shapes(model)
        del model.graph.output[:]
        model.graph.output.extend(inferred.graph.output)
        return runtime_compatible(model)

    def feeds(self, values: list[np.ndarray]) -> dict[str, np.ndarray]:
        return {f"in{i}": v for i, (a, v) in enumerate(zip(self.args, values)) if a.data}


def ort_run(model: onnx.ModelProto, feeds: dict, outputs=None) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(outputs, feeds)


def ref_run(model: onnx.ModelProto, feeds: dict, outputs=None, stock: bool = False) -> list[np.ndarray]:
    """ReferenceEvaluator, with onnxsight.engine.reference's fixed ops unless ``stock``."""
    return ReferenceEvaluator(model, new_ops=None if stock else REFERENCE_FIXES).run(outputs, feeds)


def relative_error(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = max(np.linalg.norm(expected), np.linalg.norm(actual), 1e-12)
    return float(np.linalg.norm(actual - expected) / scale)


def tf_gradient(tf, fn, x: np.ndarray, cot: np.ndarray) -> np.ndarray:
    """TensorFlow's float64 gradient of ``sum(fn(x) · cot)`` with respect to ``x``."""
    t = tf.constant(x.astype(np.float64))
    with tf.GradientTape() as tape:
        tape.watch(t)
        loss = tf.reduce_sum(fn(t) * cot.astype(np.float64))
    return tape.gradient(loss, t).numpy()
