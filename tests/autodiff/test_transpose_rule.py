"""Transpose gradients with size-1 axes dropped and neighbouring axes merged (tf2onnx's attention
heads: (N, 4, 1, 16, 145) and the like), which onnxruntime runs ~10× faster than the 5-D Transpose.

A transpose is linear and exact: its gradient must equal the cotangent transposed back by numpy,
bit for bit, for a dynamic batch of any size.
"""

from __future__ import annotations

import numpy as np
import pytest

from onnxsight.engine.autodiff import build_vjp

from .test_backward import gradients, make_model

CASES = {
    # declared input shape, perm, the rank of the Transpose left in the gradient
    "attention-values": (["N", 145, 1, 4, 16], [0, 3, 2, 4, 1], 3),
    "attention-queries": (["N", 145, 4, 1, 16], [0, 2, 1, 3, 4], 4),
    "heads-to-tokens": (["N", 4, 145, 16], [0, 2, 1, 3], 4),  # no size-1 axis: left as it is
    "only-size-1-axes-move": (["N", 1, 6, 1], [0, 3, 2, 1], None),  # a reshape: no Transpose at all
    "reversed": ([2, 1, "N"], None, 2),
    "two-unknown-dims-as-they-are": (["N", "T", 1, 5], [1, 0, 3, 2], 4),
}


@pytest.mark.parametrize("name", CASES)
def test_transpose_gradient_is_the_cotangent_transposed_back(name):
    declared, perm, rank = CASES[name]
    attrs = {} if perm is None else {"perm": perm}
    model = make_model([("t", "Transpose", ["x"], ["y"], attrs)], {"x": declared}, {"y": None})
    vjp = build_vjp(model, "y", ["x"])
    backward = [n for n in vjp.model.graph.node if n.name.startswith("onnxsight/vjp/t/") and n.op_type == "Transpose"]
    ranks = {n.name: len(next(a.ints for a in n.attribute if a.name == "perm")) for n in backward}
    assert list(ranks.values()) == ([] if rank is None else [rank]), f"{name}: backward transposes {ranks}"
    rng = np.random.default_rng(0)
    for batch in (1, 3):
        x = rng.standard_normal([batch if isinstance(d, str) else d for d in declared]).astype(np.float32)
        y = np.transpose(x, perm)
        cot = rng.standard_normal(y.shape).astype(np.float32)
        got = gradients(vjp, {"x": x}, cot)["x"]
        np.testing.assert_array_equal(got, np.transpose(cot, np.argsort(perm) if perm is not None else None),
                                      err_msg=f"{name}, batch {batch}")
