"""Layer-wise Relevance Propagation and Deep Taylor decomposition, through the VJP graph with a
relevance modifier (``onnxsight.engine.autodiff.relevance``)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from onnxsight.engine import targets
from onnxsight.engine.autodiff import Modifier
from onnxsight.engine.autodiff.relevance import COMPOSITES
from onnxsight.engine.model import Inputs, Model, take
from onnxsight.errors import InvalidArgument
from onnxsight.methods.common import Tally, attributed_inputs, gradient_batch_size, per_input, rows_of, rows_per_run

RULES = tuple(name.removeprefix("lrp-") for name in COMPOSITES)  # epsilon, zplus, ..., deeptaylor
STARTS = ("score", "one")


def relevance_modifier(
    rule: str = "epsilon", *, epsilon: float = 1e-6, gamma: float = 0.25, alpha: float = 2.0, beta: float = 1.0,
    low: float | None = None, high: float | None = None, stabilizer: float = 1e-6,
) -> Modifier:
    """The backprop modifier of an LRP rule or composite, with the options it reads (checked)."""
    if rule not in RULES:
        raise InvalidArgument(f"unknown LRP rule {rule!r}; choose one of {', '.join(RULES)}")
    numbers = {"epsilon": epsilon, "gamma": gamma, "alpha": alpha, "beta": beta, "stabilizer": stabilizer}
    for name, value in numbers.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
            raise InvalidArgument(f"{name} must be a finite number >= 0, got {value!r}")
    if not np.isclose(alpha - beta, 1.0):
        raise InvalidArgument(f"alpha - beta must be 1 (relevance is conserved), got alpha={alpha}, beta={beta}")
    for name, value in (("low", low), ("high", high)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value)):
            raise InvalidArgument(f"{name} must be a finite number or None (each image's own range), got {value!r}")
    if low is not None and high is not None and low > high:
        raise InvalidArgument(f"low ({low}) must not exceed high ({high})")
    name = rule if rule == "deeptaylor" else f"lrp-{rule}"
    options = {"epsilon": float(epsilon), "gamma": float(gamma), "alpha": float(alpha), "beta": float(beta),
               "stabilizer": float(stabilizer)}
    options.update({k: float(v) for k, v in (("low", low), ("high", high)) if v is not None})
    return Modifier(name, **options)


def lrp(
    model: Model,
    x: Inputs,
    target: targets.Target = "predicted",
    *,
    rule: str = "epsilon",
    epsilon: float = 1e-6,
    gamma: float = 0.25,
    alpha: float = 2.0,
    beta: float = 1.0,
    low: float | None = None,
    high: float | None = None,
    stabilizer: float = 1e-6,
    start: str = "score",
    of: str = "logits",
    output: str | None = None,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray | dict[str, np.ndarray]:
    """Relevance of each input element for the target's score, by Layer-wise Relevance Propagation.

    rule: one rule for every weighted layer — "epsilon" (LRP-ε, default), "zplus" (z⁺),
        "alphabeta" (αβ), "gamma" (γ), "flat", "wsquare" (w²), "zbox" (z^B) — or a composite
        (Zennit's): "epsilon-plus" (z⁺ on convolutions, ε on dense layers), "epsilon-plus-flat"
        (the same, flat on the first layer), "epsilon-alpha2-beta1", "epsilon-alpha2-beta1-flat",
        "epsilon-gamma-box" (z^B first, γ on convolutions, ε on dense layers) and "deeptaylor"
        (z^B first, z⁺ on every other layer). Activations pass relevance on, parameter-free linear
        ops share it in proportion (see ``onnxsight.engine.autodiff.relevance``); any other op on
        the path is UnsupportedOp naming it.
    epsilon (1e-6), gamma (0.25), alpha (2), beta (1; alpha − beta must be 1): the rules'
        parameters, Zennit's defaults; ``stabilizer`` (1e-6) is the ε of every other denominator.
    low, high: z^B's input bounds, in the units of the first layer's input; None (default) takes
        each image's own minimum / maximum.
    start: the relevance put on ``of``: "score" (default, iNNvestigate and the textbook: the
        target's score itself, so that the relevance sums to the logit where the rule conserves)
        or "one" (Zennit's one-hot ``attr_output``: the target's cotangent, 1 for a class).
    target, of, output: as :func:`onnxsight.saliency` (the cotangent of the score is the relevance
        "one" starts from; "score" multiplies it by ``of``'s values elementwise).
    batch_size, progress: rows per onnxruntime run (default :func:`gradient_batch_size`); called
        with (images done, images) after each run.

    Returns float32 relevance shaped like ``x`` (a dict per float input for a model with several).
    """
    modifier = relevance_modifier(rule, epsilon=epsilon, gamma=gamma, alpha=alpha, beta=beta, low=low, high=high,
                                  stabilizer=stabilizer)
    if start not in STARTS:
        raise InvalidArgument(f"start must be one of {', '.join(STARTS)}, got {start!r}")
    model = model.with_output(output)
    inputs = model.input_feeds(model.check_input(x))
    wrt = attributed_inputs(model)
    batch_size = batch_size or gradient_batch_size(model)
    indices = model.resolve_target(inputs, target, of, batch_size)
    tensor = model.tensor(of)
    count = len(inputs[model.input_name])
    tally = Tally(count, progress)
    runs = []
    for run in tally.runs(count, rows_per_run(model, batch_size)):
        batch = take(inputs, run)
        values = model.run(batch, [tensor], batch_size=batch_size)[0]
        relevance = targets.cotangent(values.shape, rows_of(indices, run), model.channel_axis(of), np.float64)
        if start == "score":
            relevance = relevance * values
        runs.append(model.vjp(batch, of, relevance, wrt, modifier, batch_size=batch_size).gradients)
    return per_input(model, {name: np.concatenate([r[name] for r in runs]).astype(np.float32) for name in wrt})
