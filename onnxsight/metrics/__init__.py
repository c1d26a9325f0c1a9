"""Which map to trust: faithfulness, robustness, sanity and complexity metrics of attribution maps.

A metric is ``metric(model, x, maps, target, **options) -> (N,) float64 scores``; it takes maps and
never computes them itself (metrics that re-explain perturbed inputs or randomised models take an
``explain(model, x, target) -> maps`` callable instead).
"""

from onnxsight.metrics.complexity import complexity, pointing_game, sparseness
from onnxsight.metrics.faithfulness import (
    auc, confidence_change, deletion, deletion_curve, insertion, insertion_curve, mufidelity, pixel_flipping, road,
    road_curve,
)
from onnxsight.metrics.robustness import avg_sensitivity, infidelity, max_sensitivity
from onnxsight.metrics.sanity import model_randomization, randomized_models, spearman, ssim

__all__ = [
    "auc", "avg_sensitivity", "complexity", "confidence_change", "deletion", "deletion_curve", "infidelity",
    "insertion", "insertion_curve", "max_sensitivity", "model_randomization", "mufidelity", "pixel_flipping",
    "pointing_game", "randomized_models", "road", "road_curve", "sparseness", "spearman", "ssim",
]
