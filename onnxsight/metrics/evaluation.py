"""Ranking attribution methods: every method's maps of the same images, scored by every metric.

Methods are named explainers ``(model, x, target, batch_size) -> maps``; metrics are rows of
``METRICS`` saying how to score maps and whether lower or higher is better.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from onnxsight.engine import targets
from onnxsight.engine.model import Model
from onnxsight.errors import InvalidArgument
from onnxsight.methods.cam import gradcam
from onnxsight.methods.deeplift import deeplift
from onnxsight.methods.integrated_gradients import integrated_gradients
from onnxsight.methods.occlusion import occlusion
from onnxsight.methods.relevance import lrp
from onnxsight.methods.rise import rise
from onnxsight.methods.saliency import saliency
from onnxsight.metrics.complexity import complexity, sparseness
from onnxsight.metrics import faithfulness as fa
from onnxsight.metrics import robustness as ro

Explainer = Callable[[Model, np.ndarray, targets.Resolved, int], np.ndarray]

METHODS: dict[str, Explainer] = {
    "saliency": lambda m, x, t, b: saliency(m, x, t, batch_size=b),
    "guided": lambda m, x, t, b: saliency(m, x, t, modifier="guided", batch_size=b),
    "smoothgrad": lambda m, x, t, b: saliency(m, x, t, smooth_samples=20, seed=0, batch_size=b),
    "gradient-x-input": lambda m, x, t, b: saliency(m, x, t, times_input=True, absolute=False, reduce="sum",
                                                    batch_size=b),
    "ig": lambda m, x, t, b: integrated_gradients(m, x, t, steps=32, batch_size=b),
    "gradcam": lambda m, x, t, b: gradcam(m, x, t, batch_size=b),
    "gradcam++": lambda m, x, t, b: gradcam(m, x, t, variant="gradcam++", batch_size=b),
    "fullgrad": lambda m, x, t, b: gradcam(m, x, t, variant="fullgrad", batch_size=b),
    "occlusion": lambda m, x, t, b: occlusion(m, x, t, batch_size=b),
    "lrp": lambda m, x, t, b: lrp(m, x, t, rule="epsilon-plus-flat", batch_size=b),
    "deeplift": lambda m, x, t, b: deeplift(m, x, t, batch_size=b),
    "rise": lambda m, x, t, b: rise(m, x, t, masks=1000, batch_size=max(b, 256)),
}


@dataclass(frozen=True)
class Metric:
    """``score(model, x, maps, explain, target, batch_size) -> (N,)``; ``better``: "lower" or "higher";
    ``curve``: the (N, steps+1) curve whose area the score is (deletion, insertion), else None."""

    score: Callable[..., np.ndarray]
    better: str
    curve: Callable[..., np.ndarray] | None = None


METRICS: dict[str, Metric] = {
    "deletion": Metric(lambda m, x, maps, e, t, b: fa.deletion(m, x, maps, t, batch_size=b), "lower",
                       lambda m, x, maps, t, b: fa.deletion_curve(m, x, maps, t, batch_size=b)),
    "insertion": Metric(lambda m, x, maps, e, t, b: fa.insertion(m, x, maps, t, batch_size=b), "higher",
                        lambda m, x, maps, t, b: fa.insertion_curve(m, x, maps, t, batch_size=b)),
    "road": Metric(lambda m, x, maps, e, t, b: fa.road(m, x, maps, t, batch_size=b), "lower"),
    "mufidelity": Metric(lambda m, x, maps, e, t, b: fa.mufidelity(m, x, maps, t, batch_size=b), "higher"),
    "confidence-change": Metric(lambda m, x, maps, e, t, b: fa.confidence_change(m, x, maps, t, batch_size=b),
                                "higher"),
    "infidelity": Metric(lambda m, x, maps, e, t, b: ro.infidelity(m, x, maps, t, batch_size=b), "lower"),
    "max-sensitivity": Metric(lambda m, x, maps, e, t, b: ro.max_sensitivity(m, x, e, t, batch_size=b), "lower"),
    "sparseness": Metric(lambda m, x, maps, e, t, b: sparseness(maps), "higher"),
    "complexity": Metric(lambda m, x, maps, e, t, b: complexity(maps), "lower"),
}
DEFAULT_METRICS = ("deletion", "insertion", "mufidelity", "max-sensitivity", "sparseness")


@dataclass(frozen=True)
class Evaluation:
    """``scores[method][metric]``: (N,) per image; ``curves[metric][method]``: (N, steps+1) curves of
    deletion/insertion; ``table``: one row per method × metric (mean, 95 % CI half-width, rank 1 = best)."""

    scores: dict[str, dict[str, np.ndarray]]
    curves: dict[str, dict[str, np.ndarray]]
    table: list[dict]


def evaluate(
    model: Model,
    x: np.ndarray,
    target: targets.Target = "predicted",
    *,
    methods: Sequence[str] = ("saliency", "gradcam", "ig"),
    metrics: Sequence[str] = DEFAULT_METRICS,
    batch_size: int = 64,
    report: Callable[[str], Callable[[int, int], None] | None] = lambda what: None,
) -> Evaluation:
    """Every method's maps of ``x`` (its targets resolved once on ``x``), scored by every metric.

    methods: names in ``METHODS``; metrics: names in ``METRICS``. ``report(what)`` may return a
    progress callback for each step ("saliency", "deletion of saliency", ...).
    """
    for name in methods:
        if name not in METHODS:
            raise InvalidArgument(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    for name in metrics:
        if name not in METRICS:
            raise InvalidArgument(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
    indices = model.resolve_target(x, target)
    scores: dict[str, dict[str, np.ndarray]] = {}
    curves: dict[str, dict[str, np.ndarray]] = {}
    for method in methods:
        explain = METHODS[method]
        maps = explain(model, x, indices, batch_size)
        scores[method] = {}
        for name in metrics:
            metric = METRICS[name]
            if metric.curve is not None:
                curve = metric.curve(model, x, maps, indices, batch_size)
                curves.setdefault(name, {})[method] = curve
                scores[method][name] = fa.auc(curve)
            else:
                scores[method][name] = np.asarray(
                    metric.score(model, x, maps, lambda m, xx, t: explain(m, xx, t, batch_size), indices, batch_size),
                    np.float64)
            report(f"{name} of {method}")
    return Evaluation(scores, curves, _table(scores, metrics))


def _table(scores: dict[str, dict[str, np.ndarray]], metrics: Sequence[str]) -> list[dict]:
    rows = []
    for name in metrics:
        better = METRICS[name].better
        stats = {method: _mean_ci(per_metric[name]) for method, per_metric in scores.items()}
        order = sorted(stats, key=lambda m: (np.isnan(stats[m][0]), stats[m][0] if better == "lower" else -stats[m][0]))
        for method in scores:
            mean, ci, count = stats[method]
            rows.append({"method": method, "metric": name, "mean": mean, "ci95": ci, "images": count,
                         "better": better, "rank": order.index(method) + 1})
    return rows


def _mean_ci(values: np.ndarray) -> tuple[float, float, int]:
    """Mean and 95 % confidence half-width (normal approximation, 1.96·s/√n) over the finite values."""
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        return float("nan"), float("nan"), 0
    spread = 1.96 * finite.std(ddof=1) / np.sqrt(len(finite)) if len(finite) > 1 else float("nan")
    return float(finite.mean()), float(spread), len(finite)
