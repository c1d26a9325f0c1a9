"""Which map to trust: faithfulness, robustness, sanity and complexity metrics of attribution maps.

A metric is ``metric(model, x, maps, target, **options) -> (N,) float64 scores``; it takes maps and
never computes them itself (metrics that re-explain perturbed inputs or randomised models take an
``explain(model, x, target) -> maps`` callable instead).
"""

from onnxsight.metrics.complexity import complexity, pointing_game, sparseness  # noqa: F401
from onnxsight.metrics.robustness import avg_sensitivity, infidelity, max_sensitivity  # noqa: F401
from onnxsight.metrics.sanity import model_randomization, randomized_models, spearman, ssim  # noqa: F401
