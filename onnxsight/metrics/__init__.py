"""Which map to trust: faithfulness, robustness, sanity and complexity metrics of attribution maps.

A metric is ``metric(model, x, maps, target, **options) -> (N,) float64 scores``; it takes maps and
never computes them itself (metrics that re-explain perturbed inputs or randomised models take an
``explain(model, x, target) -> maps`` callable instead).
"""

from onnxsight.metrics.faithfulness import (  # noqa: F401  (the faithfulness metrics)
    auc, confidence_change, deletion, deletion_curve, insertion, insertion_curve, mufidelity, pixel_flipping, road,
    road_curve,
)
