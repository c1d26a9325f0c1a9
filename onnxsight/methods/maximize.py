"""Activation maximization (seeds 000, 002, 004): inputs that maximise a unit, a layer or a class,
by gradient ascent whose gradients are checked by finite differences while it runs.

Per image ``n`` the loop maximises the total objective

    J_n(x) = f_n(M(x_n)) − l2 · ‖x_n‖₂ − tv · TV²(x_n)

where ``f`` is an objective head appended to the model graph (``onnxsight.engine.objectives``:
a unit's mean, a layer's norm, a class logit, or −cross-entropy), ``M`` the step's input
modifiers (jitter, optional rotation/scale) and the regularisers act on the image itself
(``onnxsight.kernels.regularizers``). One onnxruntime run per step gives f and its gradient
(forward and VJP in one graph, cotangent ones(N)); the regularisers' gradients are numpy.

Randomness: ``rng = np.random.default_rng(seed)`` draws, in this order, the "noise" start
images (one ``uniform`` of the batch), then per step: the jitter shift (``integers(-j, j+1,
size=2)``, rows then columns, one shift for the whole batch) when ``jitter`` > 0, the angle
(``uniform(-rotate, rotate)``) when ``rotate`` > 0, the zoom (``uniform(1-scale, 1+scale)``)
when ``scale`` > 0. The finite-difference directions come from a separate
``np.random.default_rng([seed, 1])``, so checking never changes the pictures.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from onnxsight.engine import gradcheck
from onnxsight.engine.autodiff import build_vjp
from onnxsight.engine.dynamic_batch import with_dynamic_batch
from onnxsight.engine.graph import with_batch
from onnxsight.engine.model import Model
from onnxsight.engine.objectives import OBJECTIVES, ObjectiveHead, objective_head, pre_softmax
from onnxsight.engine.session import first_line, open_session
from onnxsight.errors import GradientCheckFailed, InvalidArgument, OnnxsightError
from onnxsight.kernels import regularizers as k
from onnxsight.kernels.images import gaussian_blur
from onnxsight.methods.common import image_channel_axis

# Relative error accepted between the VJP and a central difference of the total objective along a
# random unit direction, both in float64: the float32 run that steers the ascent can break a
# max-pool near-tie the other way than float64 does, which is a different function, not a wrong rule.
TOLERANCE = 1e-3
FD_DIRECTIONS = 3  # random directions tried per image before a check gives up on a kink
CHECK_EVERY = 50  # steps between finite-difference checks for check_every="auto"
MIN_CHECK_SECONDS = 1.0  # "auto" keeps checking while one check takes less than this (or CHECK_EVERY steps)
FD_STEP = 1e-6  # central-difference step along a unit direction, times max(1, max |x|), in float64
# One-sided differences disagreeing by more than tolerance × this mean the step crossed a kink;
# a kink too small to see then moves the central difference by well under the tolerance.
KINK_FRACTION = 0.1
STEPS = ("plain", "normalized")
FIRST_STEP = 0.005  # lr=None: the first move's RMS per pixel, as a fraction of value_range (lr ≈ 0.05 on the digits CNN)


@dataclass(frozen=True)
class Regularizers:
    """Penalties subtracted from the objective, and the optional blur between steps.

    l2: weight of ‖x‖₂ per image (seed 004: 1e-3). tv: weight of the squared total variation
    TV² (sum of squared neighbour differences). blur_every: every this many steps the image is
    blurred with a Gaussian of ``blur_sigma`` pixels (0: never).
    """

    l2: float = 0.0
    tv: float = 0.0
    blur_every: int = 0
    blur_sigma: float = 1.0


@dataclass(frozen=True)
class Modifiers:
    """Random input transformations per step (tf-keras-vis' input modifiers).

    jitter: the largest shift in pixels (a circular ``np.roll``: exact, its gradient is rolled
    back). rotate: the largest rotation in degrees; scale: the largest relative zoom (factor in
    [1 − scale, 1 + scale]). Rotation and scale resample bilinearly (cv2.warpAffine); their
    gradient is mapped back by the inverse warp, an approximation of the exact adjoint — then
    the finite-difference check verifies the model's gradient at the warped image and the
    regularisers' at the image.
    """

    jitter: int = 0
    rotate: float = 0.0
    scale: float = 0.0


@dataclass(frozen=True)
class Maximization:
    """The result of ``maximize``.

    images: (N, ...) in the model's input layout, one per unit/class (N = 1 for the norm of a
    whole layer). history: one dict per step with per-image lists — "objective" (f at the
    modified input), "l2" and "tv" (the weighted penalties), "total" (objective − penalties),
    "image_norm", "gradient_norm" (of the total gradient) and "fd_error" (the relative error
    of the finite-difference check, None where no check ran or only kinks were found).
    start_activation / final_activation: f (the target's score, no penalties, no modifiers)
    on the start images and on the results (seed 004's "activation on saliency").
    """

    images: np.ndarray
    history: list[dict] = field(repr=False)
    start_activation: np.ndarray
    final_activation: np.ndarray
    units: list[int] | None
    layer: str
    objective: str
    options: dict = field(default_factory=dict)

    def __iter__(self):
        """``images, history = maximize(...)``, the call form of the design's public API."""
        return iter((self.images, self.history))

    def series(self, key: str) -> np.ndarray:
        """(steps, N) float64 array of a history entry; NaN where it is None."""
        return np.array([[np.nan if v is None else v for v in row[key]] for row in self.history], np.float64)

    @property
    def fd_errors(self) -> np.ndarray:
        """Every finite-difference relative error measured (flat, float64)."""
        errors = self.series("fd_error")
        return errors[np.isfinite(errors)]


def maximize(
    model: Model,
    layer: str = "logits",
    unit: int | Sequence[int] | None = None,
    objective: str | None = None,
    *,
    output: str | None = None,
    steps: int = 200,
    lr: float | None = None,
    init: str | float | np.ndarray = "grey",
    regularizers: Regularizers | Mapping | None = None,
    modifiers: Modifiers | Mapping | None = None,
    step: str = "plain",
    clip: bool = False,
    value_range: Sequence[float] = (0.0, 1.0),
    check_every: int | str | None = "auto",
    tolerance: float = TOLERANCE,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> Maximization:
    """Generate inputs that maximise ``objective`` of ``layer`` by gradient ascent.

    layer: a layer name, "logits" (default: the class scores, softmax swapped for linear),
        "output" or a tensor name.
    unit: a unit (channel of a conv layer, unit of a dense one, class of the logits) or a list
        of them — one image each, optimised together along the batch; None only for "norm"
        (the whole layer).
    objective: "unit" (the unit's mean), "norm" (L2 norm of the layer or the unit's channel,
        seed 004), "logit" (a class score; a softmax layer is read before its softmax, as
        keras-vis does) or "cross_entropy" (seed 004's targeted descent: maximises
        −CE = log softmax(logits)[class], i.e. minimises CE). Default None: "logit" when
        ``layer`` is the model output or the logits, else "unit" with a unit and "norm" without.
    output: the head "logits" and "output" refer to in a model with several outputs (default:
        the first classification head). Models with several inputs are not optimised.
    steps (200), lr: x ← x + lr·∇J ("plain", seed 004's step, default) or
        x ← x + lr·∇J/‖∇J‖₂ per image ("normalized", keras-vis' normalised gradients). lr None
        (default) is chosen per image from its first non-zero step so that step moves the pixels
        by ``FIRST_STEP`` (0.5 %) of ``value_range`` (root mean square), then kept: about seed
        004's 0.05 on 28×28 digits, and as large as a 224×224 photo model's small input gradients
        need (a fixed 0.05 barely moves those). A number is used as given (seed 004: 0.05).
    init: "grey" (middle of ``value_range``, default), "noise" (grey ± 10 % uniform), a number,
        or an image (one input, or one per unit) — seed 004 starts from a test image.
    regularizers: :class:`Regularizers` or a mapping of its fields (default: none).
    modifiers: :class:`Modifiers` or a mapping of its fields (default: none).
    clip: clamp the image to ``value_range`` after every step (default False).
    value_range: (low, high) of the model's input (default (0, 1)): grey is its middle, "noise"
        spreads ±10 % of it, ``clip`` clamps to it.
    check_every: the finite-difference check runs at step 0 and every ``check_every`` steps
        (None or 0: never). "auto" (default): every ``CHECK_EVERY`` (50) steps, unless the first
        check took longer than those steps do (and over a second): then at step 0 only, so that
        checks at most double the run (a float64 check of a 224×224 ResNet50 runs in onnx.reference,
        onnxruntime having no float64 convolution, and takes minutes). It compares, per image, the directional derivative of
        J along a random unit direction from the VJP graph (the one that steers the ascent, run
        in float64 here) with a float64 central difference (step 1e-6, float64 via onnxruntime or onnx.reference); the relative error
        is |numeric − analytic| / max(|numeric|, |analytic|, ‖∇J‖/√D) (D = pixels per image:
        the typical size of a random directional derivative). Directions whose one-sided
        differences disagree (a ReLU or max-pool kink, e.g. ties on a grey image) are retried
        up to 3 times; when every image only found kinks the check runs again on the next step.
        An error above ``tolerance`` (default 1e-3) raises GradientCheckFailed naming the step.
    seed: see the module docstring for what it draws and in which order.
    progress: called with the number of steps done after each step.
    """
    regs = _options(Regularizers, regularizers, "regularizers")
    mods = _options(Modifiers, modifiers, "modifiers")
    _check_options(steps, lr, step, regs, mods, check_every, tolerance)
    model = model.with_output(output)
    if model.input_shape[0] is not None and (check_every or model.input_shape[0] != np.size(unit)):
        model = with_dynamic_batch(model)  # the check scores 3 points per image at once
    objective, units, head = _target(model, layer, unit, objective)
    count = 1 if units is None else len(units)
    axis = _image_axis(model, regs, mods)
    size = None if axis is None else tuple(model.input_shape[a] for a in k.spatial_axes(4, axis))
    rng = np.random.default_rng(seed)
    x = k.start_images(init, count, model.input_shape[1:], value_range, rng, model.input_dtype)
    loop = _Loop(model, head, units, regs, mods, axis, tolerance)
    fd_rng = np.random.default_rng([seed, 1])
    start = x.copy()
    history, pending = [], False
    every = CHECK_EVERY if check_every == "auto" else check_every
    rates = np.full(count, np.nan)  # lr=None: each image's rate, set at its first non-zero step
    for index in range(int(steps)):
        draw = _draw(rng, mods, size)
        began = time.perf_counter()
        value, gradient, parts = loop.evaluate(x, draw)
        step_seconds = time.perf_counter() - began
        fd = [None] * count
        if every and (index % every == 0 or pending):
            began = time.perf_counter()
            fd = loop.check(x, draw, parts, fd_rng, index)
            pending = all(e is None for e in fd)
            if check_every == "auto" and not pending and \
                    time.perf_counter() - began > max(MIN_CHECK_SECONDS, CHECK_EVERY * step_seconds):
                every = None
        history.append(_record(index, value, parts, x, gradient, fd))
        if step == "normalized":
            norms = np.maximum(k.l2_norm(gradient), 1e-12).astype(x.dtype)
            gradient = gradient / norms.reshape(-1, *[1] * (x.ndim - 1))
        if lr is None:
            rates = _first_rates(rates, gradient, value_range)
        x = (x + (lr or np.nan_to_num(rates).astype(x.dtype).reshape(-1, *[1] * (x.ndim - 1))) * gradient).astype(x.dtype)
        if clip:
            x = k.clip(x, value_range)
        if regs.blur_every and (index + 1) % regs.blur_every == 0:
            x = gaussian_blur(x, regs.blur_sigma, axis)
        if progress is not None:
            progress(index + 1)
    options = {"steps": steps, "lr": lr or np.nan_to_num(rates).tolist(), "init": init if isinstance(init, (str, int, float)) else "image",
               "regularizers": asdict(regs), "modifiers": asdict(mods), "step": step, "clip": clip,
               "value_range": list(k.check_range(value_range)), "check_every": check_every,
               "tolerance": tolerance, "seed": seed}
    return Maximization(x, history, loop.score(start), loop.score(x), units, layer, objective, options)


class _Loop:
    """One objective head and its gradient session; evaluation and checking of one step."""

    def __init__(self, model: Model, head: ObjectiveHead, units, regs: Regularizers, mods: Modifiers, axis, tolerance):
        self.model, self.head, self.regs, self.mods, self.axis, self.tolerance = model, head, regs, mods, axis, tolerance
        self.units = None if units is None else np.asarray(units, np.int64)
        count = 1 if units is None else len(units)  # a fixed batch: onnxruntime folds the shape arithmetic
        vjp = build_vjp(with_batch(head.model, count), head.value, [model.input_name])
        self.gradient_name = vjp.gradients[model.input_name]
        self.cotangent = vjp.cotangent
        self.vjp_model = vjp.model
        self.session = open_session(vjp.model, model.runtime, model.source, model.threads)
        self._precise = None  # float64 runners of the head and of its VJP graph, built at the first check

    def _feeds(self, z: np.ndarray, extra: dict | None = None) -> dict:
        feeds = {self.model.input_name: z, **(extra or {})}
        if self.units is not None:
            feeds[self.head.unit_input] = self.units
        return feeds

    def run(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """f and df/dz at the model input ``z`` (float32), one onnxruntime run."""
        ones = np.ones(len(z), z.dtype)
        try:
            value, gradient = self.session.run([self.head.value, self.gradient_name],
                                               self._feeds(np.ascontiguousarray(z), {self.cotangent: ones}))
        except Exception as error:  # noqa: BLE001 - onnxruntime raises several unrelated types
            raise OnnxsightError(f"{self.model.runtime.name} failed on {self.model.source}: {first_line(error)}") from error
        if not (np.isfinite(value).all() and np.isfinite(gradient).all()):
            raise InvalidArgument("the objective or its gradient is not finite; lower lr or add regularizers")
        return value, gradient

    def score(self, x: np.ndarray) -> np.ndarray:
        """f per image without modifiers (float64)."""
        return self.run(x)[0].astype(np.float64)

    def modify(self, x: np.ndarray, draw) -> np.ndarray:
        shift, matrix = draw
        z = k.roll(x, shift, self.axis) if self.axis is not None else x
        return k.warp(z, matrix, self.axis) if matrix is not None else z

    def restore(self, gradient: np.ndarray, draw) -> np.ndarray:
        shift, matrix = draw
        if matrix is not None:
            gradient = k.unwarp(gradient, matrix, self.axis)
        return k.unroll(gradient, shift, self.axis) if self.axis is not None else gradient

    def penalties(self, x: np.ndarray) -> tuple[dict, np.ndarray]:
        """The weighted regulariser terms per image (float64, with the image norm under "norm")
        and the gradient of their sum (x's dtype)."""
        norm = k.l2_norm(x)
        terms, gradient = {"l2": np.zeros(len(x)), "tv": np.zeros(len(x)), "norm": norm}, np.zeros_like(x)
        if self.regs.l2:
            terms["l2"] = self.regs.l2 * norm
            gradient += self.regs.l2 * k.l2_norm_gradient(x, norm)
        if self.regs.tv:
            value, tv_gradient = k.total_variation(x, self.axis)
            terms["tv"] = self.regs.tv * value
            gradient += self.regs.tv * tv_gradient
        return terms, gradient

    def evaluate(self, x: np.ndarray, draw):
        """f at the modified image, the total gradient dJ/dx, and the parts the check needs."""
        z = self.modify(x, draw)
        value, model_gradient = self.run(z)
        terms, penalty_gradient = self.penalties(x)
        gradient = (self.restore(model_gradient, draw) - penalty_gradient).astype(x.dtype)
        parts = {"z": z, "value": value, "terms": terms, "penalty_gradient": penalty_gradient, "gradient": gradient}
        return value, gradient, parts

    def check(self, x: np.ndarray, draw, parts: dict, rng: np.random.Generator, index: int) -> list[float | None]:
        """Per image: the finite-difference relative error of dJ/dx (None: only kinks found)."""
        if self._precise is None:
            self._precise = (gradcheck.runner(self.head.model, [self.head.value], "float64", self.model)[0],
                             gradcheck.runner(self.vjp_model, [self.gradient_name], "float64", self.model)[0])
        objective, vjp = self._precise
        exact = draw[1] is None  # jitter alone is an exact permutation: check J w.r.t. x itself
        count, size = len(x), int(np.prod(x.shape[1:]))
        x64, z64 = x.astype(np.float64), parts["z"].astype(np.float64)
        model_gradient = vjp(self._feeds(z64, {self.cotangent: np.ones(count)}))[0]
        gradient = self.restore(model_gradient, draw) - parts["penalty_gradient"] if exact else None
        h = FD_STEP * max(1.0, float(np.abs(x64).max()), float(np.abs(z64).max()))
        errors: list[float | None] = [None] * count
        todo = np.arange(count)
        for _ in range(FD_DIRECTIONS):
            d = rng.standard_normal((len(todo), *x.shape[1:]))
            d /= np.sqrt(np.square(d).reshape(len(todo), -1).sum(axis=1)).reshape(-1, *[1] * (x.ndim - 1))
            dz = self.modify(d, (draw[0], None)) if exact else d
            points = np.concatenate([z64[todo], z64[todo] + h * dz, z64[todo] - h * dz])
            feeds = {self.model.input_name: points}
            if self.units is not None:
                feeds[self.head.unit_input] = np.tile(self.units[todo], 3)
            f = objective(feeds)[0].astype(np.float64)
            r = [self.penalties(p)[0] for p in (x64[todo], x64[todo] + h * d, x64[todo] - h * d)]
            centre, right, left = (f[i * len(todo):(i + 1) * len(todo)] - r[i]["l2"] - r[i]["tv"] for i in range(3))
            kinks = gradcheck.kinked(right, centre, left, h, limit=KINK_FRACTION * self.tolerance)
            numeric = (right - left) / (2 * h)
            if exact:  # the assembled gradient: model VJP rolled back, minus the penalties'
                analytic = _dot(gradient[todo], d)
            else:  # the model's VJP at the warped image, and the penalties' gradient at the image
                analytic = _dot(model_gradient[todo], dz) - _dot(parts["penalty_gradient"][todo], d)
            floor = k.l2_norm(parts["gradient"][todo]) / math.sqrt(size)
            error = np.abs(numeric - analytic) / np.maximum(np.maximum(np.abs(numeric), np.abs(analytic)),
                                                           np.maximum(floor, 1e-12))
            for i, image in enumerate(todo):
                if not kinks[i]:
                    errors[image] = float(error[i])
                    if error[i] > self.tolerance:
                        raise GradientCheckFailed(
                            f"gradient check failed at step {index} (image {image}): relative error "
                            f"{error[i]:.2e} exceeds the tolerance {self.tolerance:.0e} (VJP {analytic[i]:.6g}, "
                            f"central difference {numeric[i]:.6g}); the gradient of {self.head.objective} of "
                            f"{self.head.layer!r} is wrong — no picture is made from it")
            todo = todo[kinks]
            if not len(todo):
                break
        return errors


def _first_rates(rates: np.ndarray, step: np.ndarray, value_range) -> np.ndarray:
    """``rates`` with each image still without one (NaN) whose ``step`` is non-zero given the rate
    that makes the step's RMS per pixel ``FIRST_STEP`` of the value range; the others stay."""
    low, high = k.check_range(value_range)
    rms = k.l2_norm(step) / math.sqrt(step[0].size)
    new = np.isnan(rates) & (rms > 0)
    return np.where(new, FIRST_STEP * (high - low) / np.where(new, rms, 1.0), rates)


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a.astype(np.float64) * b).reshape(len(a), -1).sum(axis=1)


def _draw(rng: np.random.Generator, mods: Modifiers, size: tuple[int, int] | None):
    """This step's jitter shift and warp matrix (None without rotation/scale), in the documented order."""
    shift = k.draw_shift(rng, mods.jitter)
    angle = float(rng.uniform(-mods.rotate, mods.rotate)) if mods.rotate else 0.0
    zoom = float(rng.uniform(1 - mods.scale, 1 + mods.scale)) if mods.scale else 1.0
    return shift, (k.warp_matrix(*size, angle, zoom) if mods.rotate or mods.scale else None)


def _record(index, value, parts, x, gradient, fd) -> dict:
    terms = parts["terms"]
    return {
        "step": index,
        "objective": value.astype(float).tolist(),
        "l2": terms["l2"].tolist(),
        "tv": terms["tv"].tolist(),
        "total": (value - terms["l2"] - terms["tv"]).tolist(),
        "image_norm": terms["norm"].tolist(),
        "gradient_norm": k.l2_norm(gradient).tolist(),
        "fd_error": fd,
    }


def _target(model: Model, layer: str, unit, objective: str | None) -> tuple[str, list[int] | None, ObjectiveHead]:
    """The objective (default resolved), the units, and the objective head for them."""
    if objective is not None and objective not in OBJECTIVES:
        raise InvalidArgument(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    objective = objective or _default_objective(model, layer, unit)
    units = _units(unit, objective)
    head = objective_head(model, layer, objective, with_unit=units is not None)
    bad = [u for u in units or () if not 0 <= u < head.channels]
    if bad:
        raise InvalidArgument(f"unit {bad[0]} out of range: layer {layer!r} has {head.channels} units (0..{head.channels - 1})")
    return objective, units, head


def require_one_input(model: Model) -> None:
    """InvalidArgument for a model with several inputs: maximization optimises one."""
    if len(model.input_names) > 1:
        raise InvalidArgument(f"maximize optimises a model's only input; {model.source} has the inputs "
                              f"{', '.join(model.input_names)}")


def _image_axis(model: Model, regs: Regularizers, mods: Modifiers) -> int | None:
    """The input's channel axis (None for non-images), after checking the model suits the options."""
    require_one_input(model)
    if None in model.input_shape[1:]:
        raise InvalidArgument(f"{model.source} has a dynamic input shape {model.input_shape}; maximize needs fixed sizes")
    axis = image_channel_axis(model)
    if axis is None and (regs.tv or regs.blur_every or mods.jitter or mods.rotate or mods.scale):
        raise InvalidArgument(f"tv, blur, jitter, rotate and scale need an image model (NHWC or NCHW); "
                              f"{model.source} has input layout {model.input_layout}")
    return axis


def _default_objective(model: Model, layer: str, unit) -> str:
    tensor = model.tensor(layer)
    if tensor in (model.logits, model.head) or pre_softmax(model, tensor) != tensor:
        return "logit"
    return "norm" if unit is None else "unit"


def _units(unit, objective: str) -> list[int] | None:
    if unit is None:
        if objective != "norm":
            raise InvalidArgument(f"objective {objective!r} needs a unit (or a list of units); "
                                  "only 'norm' works on a whole layer")
        return None
    values = [unit] if np.ndim(unit) == 0 else list(np.asarray(unit).ravel())
    if not values:
        raise InvalidArgument("unit is an empty list; give at least one unit")
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        raise InvalidArgument(f"units must be integers, got {unit!r}")
    return [int(v) for v in values]


def _options(kind, value, name: str):
    if value is None:
        return kind()
    if isinstance(value, kind):
        return value
    if isinstance(value, Mapping):
        known = {f.name for f in fields(kind)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise InvalidArgument(f"unknown {name} option {unknown[0]!r}; known: {', '.join(sorted(known))}")
        return kind(**value)
    raise InvalidArgument(f"{name} must be a {kind.__name__} or a mapping of its fields, got {type(value).__name__}")


def _check_options(steps, lr, step, regs: Regularizers, mods: Modifiers, check_every, tolerance) -> None:
    if int(steps) < 1:
        raise InvalidArgument(f"steps must be at least 1, got {steps}")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise InvalidArgument(f"lr must be a positive number (or None: chosen at the first step), got {lr}")
    if step not in STEPS:
        raise InvalidArgument(f"step must be one of {', '.join(STEPS)}, got {step!r}")
    for label, value in (("l2", regs.l2), ("tv", regs.tv), ("blur_sigma", regs.blur_sigma),
                         ("rotate", mods.rotate), ("scale", mods.scale), ("jitter", mods.jitter),
                         ("blur_every", regs.blur_every)):
        if not (math.isfinite(value) and value >= 0):
            raise InvalidArgument(f"{label} must be a non-negative number, got {value}")
    if mods.scale >= 1:
        raise InvalidArgument(f"scale must be below 1 (zoom factors 1 ± scale), got {mods.scale}")
    if check_every != "auto" and check_every is not None and (
            isinstance(check_every, (bool, str)) or not isinstance(check_every, (int, np.integer)) or check_every < 0):
        raise InvalidArgument(f"check_every must be 'auto', a positive integer or 0/None (never), got {check_every!r}")
    if not tolerance > 0:
        raise InvalidArgument(f"tolerance must be positive, got {tolerance}")


__all__ = ["OBJECTIVES", "Maximization", "Modifiers", "Regularizers", "TOLERANCE", "maximize"]
