"""Verify gradient graphs by central finite differences along random directions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper

from onnxsight.engine import graph as g
from onnxsight.engine.dynamic_batch import with_dynamic_batch
from onnxsight.engine.model import with_outputs
from onnxsight.engine.precision import to_float64
from onnxsight.engine.reference import reference_evaluator
from onnxsight.engine.session import CPU, open_session
from onnxsight.errors import InvalidArgument, ModelFileError

if TYPE_CHECKING:
    from onnxsight.engine.model import Model

# Relative error accepted, and the finite-difference step (along a unit direction, times the
# tensor's scale) per precision.
TOLERANCE = {"float64": 1e-5, "float32": 5e-2}
STEP = {"float64": 1e-5, "float32": 1e-3}
# One-sided differences that disagree by more than this (relative) mean the step crossed a
# kink (a ReLU turning on, a max-pool tie): that direction says nothing about the gradient.
KINK = {"float64": 1e-3, "float32": 0.1}
_FEED = "onnxsight/gradcheck/"


@dataclass(frozen=True)
class GradcheckRow:
    """One ``wrt`` tensor: the worst relative error over the smooth random directions."""

    wrt: str
    tensor: str
    relative_error: float
    analytic: float  # <gradient, direction> of the worst direction
    numeric: float  # its central difference
    kinks: int  # directions skipped because the step crossed a non-differentiable point
    status: str  # "ok", "FAIL", or "kink": every direction crossed one, nothing to compare

    @property
    def passed(self) -> bool:
        return self.status != "FAIL"


@dataclass(frozen=True)
class GradcheckReport:
    """Finite-difference verification of ``d(of · cotangent)/d(wrt)``."""

    of: str
    precision: str
    runtime: str  # "onnxruntime", "openvino" or "onnx.reference" (float64 ops onnxruntime lacks)
    tolerance: float
    directions: int
    rows: tuple[GradcheckRow, ...]

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows)


def gradcheck(
    model: "Model",
    x,
    of: str = "logits",
    wrt: Sequence[str] = ("input",),
    directions: int = 3,
    tolerance: float | None = None,
    precision: str = "float64",
    seed: int = 0,
    output: str | None = None,
) -> GradcheckReport:
    """Compare the VJP of ``of`` with central differences for each ``wrt`` (input or layers).

    A random cotangent probes the whole Jacobian, along random unit directions. "float64"
    runs in double precision — in onnxruntime when it has every op in double, else in
    ``onnx.reference`` — with tolerance 1e-5; "float32" runs the model's runtime as deployed, with
    tolerance 5e-2. Directions whose step crosses a kink (one-sided differences disagree)
    are skipped and counted; a row fails when a smooth direction disagrees beyond the
    tolerance, and says "kink" when no direction was smooth. ``x`` and ``output`` as for the
    methods: a dict by input name for a model with several inputs, the head "logits" refers to.
    """
    if precision not in TOLERANCE:
        raise InvalidArgument(f"precision must be float64 or float32, got {precision!r}")
    wrt = [wrt] if isinstance(wrt, str) else list(wrt)
    model = model.with_output(output)
    x = model.input_feeds(model.check_input(x))
    if model.input_shape[0] not in (None, len(x[model.input_name])):  # a fixed batch of another size
        model = with_dynamic_batch(model)
    augmented = model.augmented(of, wrt)
    tensors = {name: model.tensor(name) for name in wrt}
    dtype = np.float64 if precision == "float64" else np.float32
    limit = TOLERANCE[precision] if tolerance is None else tolerance
    rng = np.random.default_rng(seed)
    data = {name: value.astype(dtype) if np.issubdtype(value.dtype, np.floating) else value for name, value in x.items()}

    backward_outputs = [augmented.of, *augmented.gradients.values(), *tensors.values()]
    backward, runtime = runner(augmented.model, backward_outputs, precision, model)
    of_value = _forward(model, augmented.of, data, precision)
    cotangent = rng.standard_normal(of_value.shape).astype(dtype)
    results = dict(zip(backward_outputs, backward({**data, augmented.cotangent: cotangent})))

    rows = []
    for name, tensor in tensors.items():
        gradient, point = results[augmented.gradients[name]].astype(np.float64), results[tensor]
        score = _score(model, tensor, augmented.of, cotangent, data, precision)

        step = STEP[precision] * max(1.0, float(np.abs(point).max()))
        centre, worst, kinks = score(point), (0.0, 0.0, 0.0), 0
        for _ in range(directions):
            direction = rng.standard_normal(point.shape)
            direction = (direction / np.linalg.norm(direction)).astype(dtype)
            right, left = score(point + step * direction), score(point - step * direction)
            if kinked(right, centre, left, step, precision):
                kinks += 1
                continue
            numeric = (right - left) / (2 * step)
            analytic = float(np.sum(gradient * direction))
            error = abs(numeric - analytic) / max(abs(numeric), abs(analytic), 1e-12)
            worst = max(worst, (error, analytic, numeric))
        status = "kink" if kinks == directions else "ok" if worst[0] <= limit else "FAIL"
        rows.append(GradcheckRow(name, tensor, worst[0], worst[1], worst[2], kinks, status))
    return GradcheckReport(of, precision, runtime, limit, directions, tuple(rows))


def _score(model: "Model", tensor: str, of: str, cotangent: np.ndarray, data: dict, precision: str):
    """value of ``tensor`` -> sum(of * cotangent), with everything upstream of ``tensor`` fixed."""
    if tensor == of:
        return lambda value: float(np.sum(value.astype(np.float64) * cotangent))
    name = tensor if tensor in model.input_names else _FEED + tensor
    fed = model.proto if tensor in model.input_names else g.fed_at(model.proto, tensor, name, [of], model.values)
    probe, _ = runner(fed, [of], precision, model)
    return lambda value: float(np.sum(probe({**data, name: value})[0].astype(np.float64) * cotangent))


def _forward(model: "Model", of: str, data: dict, precision: str) -> np.ndarray:
    run, _ = runner(model.proto, [of], precision, model)
    return run(data)[0]


def kinked(right, centre, left, step: float, precision: str = "float64", limit: float | None = None):
    """True where the one-sided differences ``(right - centre)/step`` and ``(centre - left)/step``
    disagree beyond ``limit`` (relative; default ``KINK[precision]``): the step crossed a
    non-differentiable point. Works on floats and elementwise on arrays."""
    forward, backward = (np.asarray(right) - centre) / step, (centre - np.asarray(left)) / step
    scale = np.maximum(np.maximum(np.abs(forward), np.abs(backward)), 1e-12)
    return np.abs(forward - backward) > (KINK[precision] if limit is None else limit) * scale


def runner(proto: onnx.ModelProto, outputs: Sequence[str], precision: str, model: "Model"):
    """A function feeds -> outputs in ``precision``, and the runtime that serves it: the model's, in
    float64 onnxruntime's CPU when the model's runtime computes float64 in float32 (OpenVINO), or for
    float64 ops onnxruntime lacks ``onnx.reference``. Feeds the model does not read are dropped."""
    elem = onnx.TensorProto.DOUBLE if precision == "float64" else onnx.TensorProto.FLOAT
    typed = {name: helper.make_tensor_value_info(name, elem, None) for name in outputs}
    proto = with_outputs(to_float64(proto) if precision == "float64" else proto, outputs, typed)
    try:
        runtime = model.runtime if precision == "float32" or model.runtime.float64 else CPU
        session = open_session(proto, runtime, model.source, model.threads)
        return (lambda feeds: session.run(list(outputs), _used(session, feeds))), runtime.name
    except ModelFileError:
        if precision != "float64":
            raise
    reference = reference_evaluator(proto)
    names = set(reference.input_names)
    return (lambda feeds: reference.run(list(outputs), {k: v for k, v in feeds.items() if k in names})), "onnx.reference"


def _used(session, feeds: dict) -> dict:
    names = {i.name for i in session.get_inputs()}
    return {k: v for k, v in feeds.items() if k in names}
