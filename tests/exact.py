"""onnxsight's gradients computed in float64: the same augmented graph, without float32 rounding."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from onnxsight.engine import targets
from onnxsight.engine.gradcheck import runner


def float64_gradient(model, x: np.ndarray, target, wrt: Sequence[str], modifier: str | None = None,
                     of: str = "logits") -> dict[str, np.ndarray]:
    """``model.gradient`` with the augmented graph run in float64 (onnxruntime where it has every
    op in double, else onnx.reference), so that it can be compared with a float64 reference at a
    tolerance that does not depend on the CPU's float32 kernels."""
    augmented = model.augmented(of, wrt, modifier)
    names = [augmented.gradients[name] for name in wrt]
    run, _ = runner(augmented.model, [augmented.of, *names], "float64", model)
    x = np.asarray(x, np.float64)
    shape = model.run(x[:1].astype(np.float32), [augmented.of])[0].shape[1:]
    indices = targets.resolve(target, (len(x), *shape), model.channel_axis(of), None)
    cotangent = targets.cotangent((len(x), *shape), indices, model.channel_axis(of), np.float64)
    return dict(zip(wrt, run({model.input_name: x, augmented.cotangent: cotangent})[1:]))
