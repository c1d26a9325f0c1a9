"""The table of gradient cases: one row per (op, shapes, attributes); adding an op adds a row.

``tf`` is the same computation in TensorFlow on ONNX-layout tensors (None where TF has no
faithful equivalent; finite differences still check the rule).
"""

from __future__ import annotations

import numpy as np

from .helpers import ABSENT, Arg, C, Case, W, X

I64 = np.int64


def _nhwc(tf, t):
    return tf.transpose(t, [0, 2, 3, 1])


def _nchw(tf, t):
    return tf.transpose(t, [0, 3, 1, 2])


def _dilated(tf, w, dilations):
    """(k, k, C, F) kernel with d - 1 zeros between its taps: a dilated convolution as a plain one
    (TensorFlow's CPU kernels without oneDNN have no dilated Conv2DBackpropInput)."""
    for axis, d in enumerate(dilations):
        if d > 1:
            taps = w.shape[axis]
            spread = tf.stack([w] + [tf.zeros_like(w)] * (d - 1), axis=axis + 1)
            shape = [*w.shape[:axis], taps * d, *w.shape[axis + 1:]]
            w = tf.gather(tf.reshape(spread, shape), tf.range((taps - 1) * d + 1), axis=axis)
    return w


def _tf_conv(strides=(1, 1), padding="VALID", dilations=(1, 1)):
    def fn(tf, x, w, b=None):
        pad = padding if isinstance(padding, str) else [[0, 0], [padding[0], padding[2]], [padding[1], padding[3]], [0, 0]]
        kernel = _dilated(tf, tf.transpose(w, [2, 3, 1, 0]), dilations)
        y = tf.nn.conv2d(_nhwc(tf, x), kernel, list(strides), pad)
        y = _nchw(tf, y)
        return y if b is None else y + tf.reshape(b, [1, -1, 1, 1])
    return fn


def _tf_depthwise(strides=(1, 1), padding="SAME"):
    def fn(tf, x, w):
        filt = tf.transpose(w, [2, 3, 0, 1])  # (C, 1, k, k) -> (k, k, C, 1)
        return _nchw(tf, tf.nn.depthwise_conv2d(_nhwc(tf, x), filt, [1, *strides, 1], padding))
    return fn


def _tf_conv_transpose(strides, out_hw):
    def fn(tf, x, w):
        n = tf.shape(x)[0]
        y = tf.nn.conv2d_transpose(_nhwc(tf, x), tf.transpose(w, [2, 3, 1, 0]),
                                   tf.stack([n, out_hw[0], out_hw[1], w.shape[1]]), [1, *strides, 1], "VALID")
        return _nchw(tf, y)
    return fn


def _tf_pool(kind, k, s, padding="VALID", pads=None, value=0.0):
    def fn(tf, x):
        t = _nhwc(tf, x)
        if pads is not None:
            t = tf.pad(t, [[0, 0], [pads[0], pads[2]], [pads[1], pads[3]], [0, 0]], constant_values=value)
        pool = tf.nn.max_pool2d if kind == "max" else tf.nn.avg_pool2d
        return _nchw(tf, pool(t, k, s, padding))
    return fn


def _gelu_tanh(tf, x):
    return tf.nn.gelu(x, approximate=True)


def _batch_norm(tf, x, s, b, m, v):
    r = lambda t: tf.reshape(t, [1, -1, 1, 1])  # noqa: E731
    return (x - r(m)) / tf.sqrt(r(v) + 1e-3) * r(s) + r(b)


def _layer_norm(axes):
    def fn(tf, x, s, b):
        mean, var = tf.nn.moments(x, axes, keepdims=True)
        return (x - mean) / tf.sqrt(var + 1e-5) * s + b
    return fn


def _instance_norm(tf, x, s, b):
    mean, var = tf.nn.moments(x, [2, 3], keepdims=True)
    return (x - mean) / tf.sqrt(var + 1e-5) * tf.reshape(s, [1, -1, 1, 1]) + tf.reshape(b, [1, -1, 1, 1])


def _lrn(tf, x):
    """tf.nn.local_response_normalization written out (its kernel has no float64): size 3, bias 2,
    alpha 0.3, beta 0.75 over the channel axis."""
    squares = tf.pad(x * x, [[0, 0], [1, 1], [0, 0], [0, 0]])
    window = squares[:, :-2] + squares[:, 1:-1] + squares[:, 2:]
    return x / (2.0 + 0.3 / 3 * window) ** 0.75


def _resize(method):
    def fn(tf, x, *_):
        h, w = x.shape[2] * 2, x.shape[3] * 2
        return _nchw(tf, tf.image.resize(_nhwc(tf, x), [h, w], method=method))
    return fn


N4 = (2, 3, 6, 6)

CASES: list[Case] = [
    # arithmetic and broadcasting
    Case("Add", (X(2, 3, 4), X(3, 4)), tf=lambda tf, a, b: a + b, note="broadcast"),
    Case("Add", (X(2, 3, 4), W(1, 4)), tf=lambda tf, a, b: a + b, dynamic=False, note="static-const"),
    Case("Add", (X(2, 1, 4), X(1, 3, 1)), tf=lambda tf, a, b: a + b, note="both-broadcast"),
    Case("Sub", (X(2, 3), X(2, 1)), tf=lambda tf, a, b: a - b),
    Case("Mul", (X(2, 3, 4), X(4)), tf=lambda tf, a, b: a * b),
    Case("Div", (X(2, 3), X(3, low=0.5)), tf=lambda tf, a, b: a / b),
    Case("Sum", (X(2, 3), X(3), X(2, 1)), tf=lambda tf, a, b, c: a + b + c),
    Case("Max", (X(2, 3), X(3), X(2, 3)), tf=None, note="variadic"),
    Case("Max", (X(2, 3), X(2, 3)), tf=lambda tf, a, b: tf.maximum(a, b)),
    Case("Min", (X(2, 3), X(2, 1)), tf=lambda tf, a, b: tf.minimum(a, b)),
    Case("Pow", (X(2, 3, low=0.5), C(np.array(2.5))), tf=lambda tf, x, e: tf.pow(x, e), note="const-exponent"),
    Case("Pow", (X(2, 3, low=0.5), X(3)), tf=lambda tf, x, e: tf.pow(x, e), note="data-exponent"),
    Case("Where", (C(np.array([[True, False, True]])), X(2, 3), X(3)), tf=lambda tf, c, a, b: tf.where(c, a, b)),
    # activations
    Case("Relu", (X(2, 5),), tf=lambda tf, x: tf.nn.relu(x)),
    Case("LeakyRelu", (X(2, 5),), {"alpha": 0.2}, tf=lambda tf, x: tf.nn.leaky_relu(x, 0.2)),
    Case("PRelu", (X(2, 3, 4), W(3, 1)), tf=lambda tf, x, s: tf.where(x < 0, s * x, x)),
    Case("PRelu", (X(2, 3), X(3)), tf=lambda tf, x, s: tf.where(x < 0, s * x, x), note="data-slope"),
    Case("Elu", (X(2, 5),), {"alpha": 0.7}, tf=lambda tf, x: tf.where(x > 0, x, 0.7 * (tf.exp(x) - 1))),
    Case("Selu", (X(2, 5),), tf=lambda tf, x: tf.nn.selu(x)),
    Case("Sigmoid", (X(2, 5),), tf=lambda tf, x: tf.sigmoid(x)),
    Case("HardSigmoid", (X(2, 5),), {"alpha": 0.3, "beta": 0.4},
         tf=lambda tf, x: tf.clip_by_value(0.3 * x + 0.4, 0.0, 1.0)),
    Case("HardSwish", (X(2, 8),), tf=lambda tf, x: x * tf.nn.relu6(x + 3) / 6, note="scaled"),
    Case("Tanh", (X(2, 5),), tf=lambda tf, x: tf.tanh(x)),
    Case("Softplus", (X(2, 5),), tf=lambda tf, x: tf.nn.softplus(x)),
    Case("Erf", (X(2, 5),), tf=lambda tf, x: tf.math.erf(x)),
    Case("Gelu", (X(2, 5),), opset=20, tf=lambda tf, x: tf.nn.gelu(x, approximate=False)),
    Case("Gelu", (X(2, 5),), {"approximate": "tanh"}, opset=20, tf=_gelu_tanh),
    Case("Exp", (X(2, 5),), tf=lambda tf, x: tf.exp(x)),
    Case("Log", (X(2, 5, low=0.5),), tf=lambda tf, x: tf.math.log(x)),
    Case("Sqrt", (X(2, 5, low=0.5),), tf=lambda tf, x: tf.sqrt(x)),
    Case("Reciprocal", (X(2, 5, low=0.5),), tf=lambda tf, x: 1 / x),
    Case("Neg", (X(2, 5),), tf=lambda tf, x: -x),
    Case("Abs", (X(2, 5),), tf=lambda tf, x: tf.abs(x)),
    Case("Clip", (X(3, 5), C(np.array(-0.5)), C(np.array(0.7))), tf=lambda tf, x, a, b: tf.clip_by_value(x, a, b)),
    Case("Clip", (X(3, 5), ABSENT, C(np.array(0.3))), tf=lambda tf, x, b: tf.minimum(x, b), note="max-only"),
    Case("Clip", (X(3, 5), C(np.array(-0.2))), tf=lambda tf, x, a: tf.maximum(x, a), note="min-only"),
    Case("Identity", (X(2, 3),), tf=lambda tf, x: tf.identity(x)),
    Case("Dropout", (X(2, 3),), tf=lambda tf, x: tf.identity(x)),
    Case("Cast", (X(2, 3),), {"to": 11}, tf=lambda tf, x: tf.cast(tf.cast(x, tf.float64), x.dtype), note="to-double"),
    # linear algebra
    Case("MatMul", (X(2, 3, 4), W(4, 5)), tf=lambda tf, a, b: a @ b),
    Case("MatMul", (X(2, 3, 4), X(2, 4, 5)), tf=lambda tf, a, b: a @ b, note="both-batched"),
    Case("MatMul", (X(2, 1, 3, 4), X(3, 4, 2)), tf=lambda tf, a, b: a @ b, note="broadcast-batch"),
    Case("MatMul", (X(4), X(2, 4, 3)), tf=lambda tf, a, b: tf.einsum("k,bkn->bn", a, b), note="1d-left"),
    Case("MatMul", (X(2, 4), X(4)), tf=lambda tf, a, b: tf.linalg.matvec(a, b), note="1d-right"),
    Case("Gemm", (X(2, 3), W(3, 4), W(4)), tf=lambda tf, a, b, c: a @ b + c),
    Case("Gemm", (X(3, 2), W(4, 3), W(1, 4)), {"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0},
         tf=lambda tf, a, b, c: 0.5 * tf.transpose(a) @ tf.transpose(b) + 2.0 * c),
    Case("Gemm", (X(2, 3), X(3, 4)), {"transB": 0}, tf=lambda tf, a, b: a @ b, note="both-data"),
    Case("Gemm", (X(3, 2), X(3, 4)), {"transA": 1, "alpha": 1.5}, tf=lambda tf, a, b: 1.5 * tf.transpose(a) @ b,
         note="both-data-transA"),
    Case("Gemm", (X(3, 2), X(4, 3)), {"transA": 1, "transB": 1, "alpha": -2.0},
         tf=lambda tf, a, b: -2.0 * tf.transpose(a) @ tf.transpose(b), note="both-data-transA-transB"),
    Case("Gemm", (X(2, 3), X(4, 3), X(4)), {"transB": 1, "beta": 0.5}, tf=lambda tf, a, b, c: a @ tf.transpose(b) + 0.5 * c,
         note="both-data-transB"),
    Case("Einsum", (X(2, 3, 4), X(4, 5)), {"equation": "bij,jk->bik"}, tf=lambda tf, a, b: tf.einsum("bij,jk->bik", a, b)),
    Case("Einsum", (X(2, 3), X(2, 3)), {"equation": "ij,ij->i"}, tf=lambda tf, a, b: tf.einsum("ij,ij->i", a, b)),
    Case("Einsum", (X(2, 3, 4),), {"equation": "...ij->...ji"}, tf=lambda tf, a: tf.einsum("...ij->...ji", a)),
    # convolution and pooling
    Case("Conv", (X(*N4), W(4, 3, 3, 3), W(4)), {"pads": [1, 1, 1, 1]}, tf=_tf_conv(padding=(1, 1, 1, 1))),
    Case("Conv", (X(2, 3, 7, 7), W(4, 3, 3, 3)), {"strides": [2, 2], "pads": [1, 0, 0, 1]},
         tf=_tf_conv((2, 2), (1, 0, 0, 1)), note="stride-asym-pads"),
    Case("Conv", (X(2, 3, 8, 8), W(4, 3, 3, 2)), {"strides": [3, 2]}, tf=_tf_conv((3, 2)), note="remainder"),
    Case("Conv", (X(*N4), W(4, 3, 2, 2)), {"dilations": [2, 2]}, tf=_tf_conv(dilations=(2, 2))),
    Case("Conv", (X(2, 3, 7, 7), W(4, 3, 3, 3)), {"strides": [2, 2], "auto_pad": "SAME_UPPER"},
         tf=_tf_conv((2, 2), "SAME")),
    Case("Conv", (X(2, 3, 6, 6), W(4, 3, 2, 2)), {"strides": [2, 2], "auto_pad": "SAME_LOWER"}),
    Case("Conv", (X(2, 3, 9, 8), W(4, 3, 2, 3)), {"strides": [2, 3], "dilations": [3, 2], "pads": [2, 0, 1, 1]},
         note="dilated-strided"),
    Case("Conv", (X(2, 3, 7, 7), W(4, 3, 3, 3)), {"auto_pad": "VALID", "strides": [2, 2]}, tf=_tf_conv((2, 2))),
    Case("Conv", (X(*N4), W(3, 1, 3, 3)), {"group": 3, "auto_pad": "SAME_UPPER"}, tf=_tf_depthwise(), note="depthwise"),
    Case("Conv", (X(2, 4, 5, 5), W(6, 2, 3, 3)), {"group": 2, "pads": [1, 1, 1, 1]}, note="groups"),
    Case("Conv", (X(2, 3, 9), W(2, 3, 3)), {"strides": [2]}, note="1d"),
    # stride 1 and >= 16 input channels: the input gradient is a Conv with the flipped kernel
    Case("Conv", (X(2, 16, 7, 6), W(4, 16, 3, 2), W(4)), {"pads": [1, 0, 2, 1], "dilations": [2, 1]},
         tf=lambda tf, x, w, b: _tf_conv(dilations=(2, 1))(tf, tf.pad(x, [[0, 0], [0, 0], [1, 2], [0, 1]]), w, b),
         note="wide-asym-pads-dilated"),
    Case("Conv", (X(2, 32, 5, 5), W(8, 16, 3, 3)), {"group": 2, "pads": [1, 1, 1, 1]}, note="wide-groups"),
    Case("Conv", (X(2, 16, 6, 6), W(32, 1, 3, 3)), {"group": 16, "auto_pad": "SAME_LOWER"}, note="wide-depthwise-x2"),
    Case("Conv", (X(2, 16, 6, 6), W(16, 1, 3, 3)), {"group": 16, "auto_pad": "SAME_UPPER"}, tf=_tf_depthwise(),
         note="wide-depthwise"),
    Case("Conv", (X(2, 16, 9), W(4, 16, 3)), {"pads": [3, 1], "dilations": [2]}, note="wide-1d"),
    Case("Conv", (X(2, 16, 5, 5), W(4, 16, 2, 2)), {"pads": [2, 0, 0, 1]}, note="wide-pads-beyond-kernel"),
    Case("ConvTranspose", (X(2, 3, 4, 4), W(3, 2, 3, 3)), {"strides": [2, 2]}, tf=_tf_conv_transpose((2, 2), (9, 9))),
    Case("ConvTranspose", (X(2, 4, 4, 4), W(4, 1, 3, 3), W(2)),
         {"strides": [2, 2], "pads": [1, 1, 0, 0], "output_padding": [1, 1], "group": 2, "dilations": [1, 2]},
         note="pads-groups-dilations"),
    Case("MaxPool", (X(*N4),), {"kernel_shape": [2, 2], "strides": [2, 2]}, tf=_tf_pool("max", 2, 2)),
    Case("MaxPool", (X(2, 3, 7, 5),), {"kernel_shape": [2, 2], "strides": [2, 2]}, tf=_tf_pool("max", 2, 2),
         note="tiled-floor-drops"),
    Case("MaxPool", (X(2, 2, 6, 7),), {"kernel_shape": [3, 2], "strides": [3, 2], "ceil_mode": 1},
         tf=_tf_pool("max", (3, 2), (3, 2), "SAME"), note="ceil-partial-window"),
    Case("MaxPool", (X(2, 3, 7),), {"kernel_shape": [3], "strides": [3]}, note="tiled-1d"),
    Case("MaxPool", (X(1, 2, 4, 6, 5),), {"kernel_shape": [2, 3, 2], "strides": [2, 3, 2]}, note="tiled-3d"),
    # ties (here after a Relu) go to the first maximum, as TensorFlow's
    Case("MaxPool", (Arg((2, 3, 6, 6), value=np.maximum(np.random.default_rng(3).standard_normal((2, 3, 6, 6)), 0)),),
         {"kernel_shape": [2, 2], "strides": [2, 2]}, tf=_tf_pool("max", 2, 2), note="tiled-ties"),
    Case("MaxPool", (X(2, 2, 5, 5),), {"kernel_shape": [2, 3]}, tf=_tf_pool("max", (2, 3), 1), note="unit-stride"),
    Case("MaxPool", (X(2, 3, 7, 7),), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
         tf=_tf_pool("max", 3, 2, pads=(1, 1, 1, 1), value=-np.inf), note="overlap-padded"),
    Case("MaxPool", (X(2, 3, 7, 7),), {"kernel_shape": [3, 3], "auto_pad": "SAME_UPPER", "strides": [2, 2]},
         tf=_tf_pool("max", 3, 2, "SAME")),
    Case("MaxPool", (X(2, 2, 7, 7),), {"kernel_shape": [2, 2], "dilations": [2, 2], "ceil_mode": 1, "strides": [2, 2]},
         note="dilated-ceil"),
    Case("AveragePool", (X(*N4),), {"kernel_shape": [2, 2], "strides": [2, 2]}, tf=_tf_pool("avg", 2, 2)),
    Case("AveragePool", (X(2, 3, 7, 7),), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1],
                                          "count_include_pad": 1},
         tf=_tf_pool("avg", 3, 2, pads=(1, 1, 1, 1)), note="include-pad"),
    Case("AveragePool", (X(2, 3, 7, 7),), {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"},
         tf=_tf_pool("avg", 3, 2, "SAME"), note="exclude-pad"),
    Case("AveragePool", (X(2, 2, 6, 6),), {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1,
                                          "pads": [0, 1, 0, 1]}, note="ceil-mode"),
    Case("GlobalAveragePool", (X(*N4),), tf=lambda tf, x: tf.reduce_mean(x, [2, 3], keepdims=True)),
    Case("GlobalMaxPool", (X(*N4),), tf=lambda tf, x: tf.reduce_max(x, [2, 3], keepdims=True)),
    # reductions (axes as input from opset 18 / 13 for ReduceSum; as attribute before)
    Case("ReduceSum", (X(2, 3, 4), C(np.array([1], I64))), {"keepdims": 0}, tf=lambda tf, x, a: tf.reduce_sum(x, 1)),
    Case("ReduceSum", (X(2, 3, 4),), {"keepdims": 1}, tf=lambda tf, x: tf.reduce_sum(x, keepdims=True), note="all-axes"),
    Case("ReduceMean", (X(2, 3, 4), C(np.array([-1, 1], I64))), {"keepdims": 0},
         tf=lambda tf, x, a: tf.reduce_mean(x, [2, 1])),
    Case("ReduceMean", (X(2, 3, 4),), {"axes": [2], "keepdims": 0}, opset=13,
         tf=lambda tf, x: tf.reduce_mean(x, 2), note="axes-attribute"),
    Case("ReduceMax", (X(2, 3, 4), C(np.array([1], I64))), {"keepdims": 1},
         tf=lambda tf, x, a: tf.reduce_max(x, 1, keepdims=True)),
    Case("ReduceMax", (X(2, 3, 4),), {"axes": [0, 2], "keepdims": 0}, opset=17,
         tf=lambda tf, x: tf.reduce_max(x, [0, 2]), note="axes-attribute"),
    Case("ReduceMin", (X(2, 3, 4), C(np.array([2], I64))), {"keepdims": 0}, tf=lambda tf, x, a: tf.reduce_min(x, 2)),
    # normalisation
    Case("BatchNormalization", (X(*N4), W(3), W(3), W(3), Arg((3,), data=False, low=0.5)), {"epsilon": 1e-3},
         tf=_batch_norm),
    Case("LayerNormalization", (X(2, 3, 4), W(4), W(4)), tf=_layer_norm([2])),
    Case("LayerNormalization", (X(2, 3, 4), W(3, 4), W(3, 4)), {"axis": 1}, tf=_layer_norm([1, 2]), note="axis1"),
    Case("InstanceNormalization", (X(*N4), W(3), W(3)), tf=_instance_norm),
    Case("LRN", (X(2, 5, 3, 3),), {"size": 3, "alpha": 0.3, "beta": 0.75, "bias": 2.0}, tf=_lrn),
    Case("Softmax", (X(2, 5),), tf=lambda tf, x: tf.nn.softmax(x)),
    Case("Softmax", (X(2, 3, 4),), {"axis": 1}, tf=lambda tf, x: tf.nn.softmax(x, axis=1), note="axis1"),
    Case("LogSoftmax", (X(2, 5),), tf=lambda tf, x: tf.nn.log_softmax(x)),
    # shapes and data movement
    Case("Reshape", (X(2, 3, 4), C(np.array([0, -1], I64))), tf=lambda tf, x, s: tf.reshape(x, [tf.shape(x)[0], -1])),
    Case("Flatten", (X(2, 3, 4),), {"axis": 1}, tf=lambda tf, x: tf.reshape(x, [tf.shape(x)[0], -1])),
    Case("Transpose", (X(2, 3, 4),), {"perm": [1, 2, 0]}, tf=lambda tf, x: tf.transpose(x, [1, 2, 0])),
    Case("Transpose", (X(2, 3, 4),), tf=lambda tf, x: tf.transpose(x), note="reverse"),
    Case("Squeeze", (X(2, 1, 3), C(np.array([1], I64))), tf=lambda tf, x, a: tf.squeeze(x, 1)),
    Case("Unsqueeze", (X(2, 3), C(np.array([0, 3], I64))), tf=lambda tf, x, a: x[None, :, :, None]),
    Case("Expand", (X(3, 1), C(np.array([2, 3, 4], I64))), tf=lambda tf, x, s: tf.broadcast_to(x, [2, 3, 4])),
    Case("Concat", (X(2, 3), W(2, 2), X(2, 1)), {"axis": 1}, tf=lambda tf, a, b, c: tf.concat([a, b, c], 1)),
    Case("Concat", (X(2, 3), X(1, 3)), {"axis": -2}, tf=lambda tf, a, b: tf.concat([a, b], 0), note="negative-axis"),
    Case("Split", (X(2, 5), C(np.array([2, 3], I64))), {"axis": 1}, outputs=2,
         tf=lambda tf, x, s: tf.concat([tf.reshape(t, [-1]) for t in tf.split(x, [2, 3], 1)], 0)),
    Case("Split", (X(2, 6),), {"axis": 1, "num_outputs": 3}, outputs=1, node_outputs=3,
         tf=lambda tf, x: tf.split(x, 3, 1)[0], note="unused-outputs"),
    Case("Slice", (X(4, 6), C(np.array([1, -1], I64)), C(np.array([4, -6], I64)), C(np.array([0, 1], I64)),
                   C(np.array([2, -2], I64))), tf=lambda tf, x, *_: x[1:4:2, -1:-6:-2]),
    Case("Slice", (X(2, 5, 6), C(np.array([-4, 1], I64)), C(np.array([99, -1], I64)), C(np.array([2, 1], I64))),
         tf=lambda tf, x, *_: x[:, 1:-1, -4:], note="unit-steps"),
    Case("Slice", (X(4, 6), C(np.array([1, 0], I64)), C(np.array([3, 4], I64)), ABSENT, C(np.array([1, 1], I64))),
         tf=lambda tf, x, *_: x[1:3, 0:4], note="steps-one"),
    Case("Slice", (X(4, 3), C(np.array([1], I64)), C(np.array([99], I64)), C(np.array([0], I64))),
         tf=lambda tf, x, *_: x[1:], note="dynamic-axis"),
    Case("Pad", (X(2, 3, 3), C(np.array([0, 1, 2, 0, 2, 1], I64))), {"mode": "constant"},
         tf=lambda tf, x, p: tf.pad(x, [[0, 0], [1, 2], [2, 1]])),
    Case("Pad", (X(2, 3, 4), C(np.array([2, 1, 0, 3], I64)), ABSENT, C(np.array([-1, 1], I64))),
         tf=lambda tf, x, *_: tf.pad(x, [[0, 0], [1, 3], [2, 0]]), note="axes"),
    Case("Pad", (X(2, 3, 4), C(np.array([0, 2, 1, 0, 1, 2], I64))), {"mode": "reflect"},
         tf=lambda tf, x, p: tf.pad(x, [[0, 0], [2, 1], [1, 2]], mode="REFLECT")),
    Case("Pad", (X(2, 3), C(np.array([1, 2, 0, 1], I64))), {"mode": "edge"}, note="edge"),
    Case("Gather", (X(5, 3), C(np.array([[0, 2], [2, 4]], I64))), {"axis": 0},
         tf=lambda tf, x, i: tf.gather(x, i, axis=0), note="repeated-indices"),
    Case("Gather", (X(2, 5), C(np.array(-1, I64))), {"axis": 1}, tf=lambda tf, x, i: x[:, -1], note="scalar-index"),
    Case("Resize", (X(2, 3, 3, 4), ABSENT, C(np.array([1, 1, 2, 2], np.float32))), {"mode": "nearest"},
         tf=_resize("nearest"), note="nearest-scales"),
    Case("Resize", (X(2, 3, 3, 4), ABSENT, C(np.array([1, 1, 2, 2], np.float32))),
         {"mode": "linear", "coordinate_transformation_mode": "half_pixel"}, tf=_resize("bilinear"), note="linear"),
    Case("Resize", (X(2, 2, 4, 3), ABSENT, ABSENT, C(np.array([2, 2, 3, 5], I64))),
         {"mode": "linear", "coordinate_transformation_mode": "align_corners"}, dynamic=False,
         note="linear-sizes-down"),
    Case("Resize", (X(2, 2, 3, 3), ABSENT, C(np.array([1, 1, 1.5, 2], np.float32))),
         {"mode": "cubic"}, note="cubic"),
]
