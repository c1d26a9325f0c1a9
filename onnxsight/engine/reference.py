"""``onnx.reference`` as an independent float64 runtime, with its known op bugs fixed.

onnx 1.23's ReferenceEvaluator gets a few ops wrong; the replacements below follow the ONNX
spec (and agree with onnxruntime and TensorFlow). Each bug is visible by running the stock op.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun as ReferenceOp
from onnx.reference.ops.op_conv_transpose import ConvTranspose as StockConvTranspose
from onnx.reference.ops.op_max_pool import MaxPool as StockMaxPool


class Erf(ReferenceOp):
    """Stock Erf evaluates in float32 (``np.vectorize(erf, otypes=["f"])``), too coarse for float64."""

    op_domain = ""

    def _run(self, x):
        return (np.vectorize(math.erf, otypes=[x.dtype])(x),)


class LRN(ReferenceOp):
    """Stock LRN loops its channel window over the batch axis (``range(x.shape[0])``)."""

    op_domain = ""

    def _run(self, x, alpha=None, beta=None, bias=None, size=None):
        before, after = (size - 1) // 2, math.ceil((size - 1) / 2)
        channels = x.shape[1]
        square_sum = np.zeros_like(x)
        for c in range(channels):
            square_sum[:, c] = np.sum(x[:, max(0, c - before): min(channels, c + after + 1)] ** 2, axis=1)
        return ((x / (bias + alpha / size * square_sum) ** beta).astype(x.dtype),)


class ConvTranspose(StockConvTranspose):
    """Stock grouped ConvTranspose slices the weights by output instead of input channels."""

    op_domain = ""

    def _run(self, X, W, B=None, group=None, **attrs):  # noqa: N803
        if not group or group == 1:
            return super()._run(X, W, B, group=1, **attrs)
        xs, ws = np.split(X, group, axis=1), np.split(W, group, axis=0)
        y = np.concatenate([super(ConvTranspose, self)._run(x, w, None, group=1, **attrs)[0] for x, w in zip(xs, ws)], 1)
        if B is not None:
            y = y + B.reshape(1, -1, *[1] * (y.ndim - 2))
        return (y.astype(X.dtype),)


class Gelu(ReferenceOp):
    """Stock Gelu runs its function body, whose Erf is the float32 one above."""

    op_domain = ""

    def _run(self, x, approximate="none"):
        if approximate == "tanh":
            return ((0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))).astype(x.dtype),)
        erf = np.vectorize(math.erf, otypes=[x.dtype])
        return ((0.5 * x * (1 + erf(x / math.sqrt(2)))).astype(x.dtype),)


class MaxPool(StockMaxPool):
    """Stock MaxPool with unit strides and dilations takes a generic path whose Indices are wrong
    (no batch/channel offset, wrong element); the strided path is right, so always take it."""

    op_domain = ""

    def _run(self, x, auto_pad=None, ceil_mode=None, dilations=None, kernel_shape=None, pads=None,
             storage_order=None, strides=None):
        r = x.ndim - 2
        return self._max_pool(x, auto_pad=auto_pad, ceil_mode=ceil_mode, dilations=dilations or [1] * r,
                              kernel_shape=kernel_shape, pads=pads, storage_order=storage_order,
                              strides=strides or [1] * r)


class LpNormalization(ReferenceOp):
    """Stock LpNormalization sums xᵖ, not |x|ᵖ (wrong for p = 1)."""

    op_domain = ""

    def _run(self, x, axis=-1, p=2):
        norm = np.sum(np.abs(x) ** p, axis=axis, keepdims=True) ** (1.0 / p)
        return (np.where(norm == 0, 0, x / np.where(norm == 0, 1, norm)).astype(x.dtype),)


class GlobalLpPool(ReferenceOp):
    """Missing from stock: the p-norm over the spatial axes."""

    op_domain = ""

    def _run(self, x, p=2):
        axes = tuple(range(2, x.ndim))
        return ((np.sum(np.abs(x) ** p, axis=axes, keepdims=True) ** (1.0 / p)).astype(x.dtype),)


REFERENCE_FIXES = [Erf, Gelu, LRN, ConvTranspose, MaxPool, LpNormalization, GlobalLpPool]


def reference_evaluator(model: onnx.ModelProto) -> ReferenceEvaluator:
    """A ReferenceEvaluator for ``model`` with the fixed ops above."""
    return ReferenceEvaluator(model, new_ops=REFERENCE_FIXES)
