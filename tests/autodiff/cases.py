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


# -- unary math, rearrangements and norms (autodiff/unary.py, rearrange.py, norms.py) ----------------
def _depth_to_space_crd(tf, x, b=2):
    n, c, h, w = x.shape
    blocks = tf.reshape(x, [-1, c // (b * b), b, b, h, w])
    return tf.reshape(tf.transpose(blocks, [0, 1, 4, 2, 5, 3]), [-1, c // (b * b), h * b, w * b])


def _coords(indices, axis):
    """ScatterElements/GatherElements indices along ``axis`` of a 2-D tensor as full (row, col) coordinates."""
    rows, cols = np.indices(indices.shape)
    return np.stack([indices, cols] if axis == 0 else [rows, indices], axis=-1)


def _group_norm(groups):
    def fn(tf, x, s, b):
        shape = tf.shape(x)
        grouped = tf.reshape(x, [shape[0], groups, -1])
        mean, var = tf.nn.moments(grouped, [2], keepdims=True)
        xhat = tf.reshape((grouped - mean) / tf.sqrt(var + 1e-5), shape)
        along = [1, -1] + [1] * (len(x.shape) - 2)
        return xhat * tf.reshape(s, along) + tf.reshape(b, along)
    return fn


def _rms_norm(axes):
    def fn(tf, x, s):
        return x / tf.sqrt(tf.reduce_mean(x * x, axes, keepdims=True) + 1e-5) * s
    return fn


def _lp_pool2(tf, x):
    return _nchw(tf, tf.sqrt(tf.nn.avg_pool2d(_nhwc(tf, x * x), 2, 2, "VALID") * 4))


ELEMENTS = np.array([[1, 3], [0, 2], [3, 0]], I64)  # no repeats within a row: ScatterElements without reduction
PROD = np.array([[[1.5, -0.5, 2.0, 0.7], [0.0, 1.2, -0.8, 0.9], [0.0, 0.0, 1.1, -1.3]],
                 [[0.6, 0.0, -1.4, 0.8], [1.1, 0.9, -0.7, 1.3], [0.0, 2.0, 0.0, 0.5]]])  # rows with 0, 1, 2 zeros

CASES += [
    # unary math (unary.py)
    Case("Mish", (X(2, 5),), tf=lambda tf, x: x * tf.tanh(tf.nn.softplus(x))),
    Case("Mish", (X(2, 3, 4),), opset=22, tf=lambda tf, x: x * tf.tanh(tf.nn.softplus(x)), note="opset22"),
    Case("Swish", (X(2, 5),), opset=24, tf=lambda tf, x: x * tf.sigmoid(x)),
    Case("Swish", (X(2, 5),), {"alpha": 1.702}, opset=24, tf=lambda tf, x: x * tf.sigmoid(1.702 * x), note="alpha"),
    Case("Softsign", (X(2, 5),), tf=lambda tf, x: tf.nn.softsign(x)),
    Case("Celu", (X(2, 5),), {"alpha": 0.7}, tf=lambda tf, x: tf.where(x > 0, x, 0.7 * (tf.exp(x / 0.7) - 1))),
    Case("Celu", (X(2, 5),), tf=lambda tf, x: tf.where(x > 0, x, tf.exp(x) - 1), note="default-alpha"),
    Case("ThresholdedRelu", (X(2, 6),), {"alpha": 0.3}, tf=lambda tf, x: tf.where(x > 0.3, x, tf.zeros_like(x))),
    Case("Shrink", (X(2, 6),), {"lambd": 0.4, "bias": 0.1},
         tf=lambda tf, x: tf.where(x > 0.4, x - 0.1, tf.where(x < -0.4, x + 0.1, tf.zeros_like(x)))),
    Case("Shrink", (X(2, 6),), tf=lambda tf, x: tf.where(tf.abs(x) > 0.5, x, tf.zeros_like(x)), note="defaults"),
    Case("Sin", (X(2, 5),), tf=lambda tf, x: tf.sin(x)),
    Case("Cos", (X(2, 5),), tf=lambda tf, x: tf.cos(x)),
    Case("Tan", (X(2, 5, low=-0.5),), tf=lambda tf, x: tf.tan(x)),
    Case("Sinh", (X(2, 5),), tf=lambda tf, x: tf.sinh(x)),
    Case("Cosh", (X(2, 5),), tf=lambda tf, x: tf.cosh(x)),
    Case("Asin", (X(2, 5, low=-0.5),), tf=lambda tf, x: tf.asin(x)),
    Case("Acos", (X(2, 5, low=-0.5),), tf=lambda tf, x: tf.acos(x)),
    Case("Atan", (X(2, 5),), tf=lambda tf, x: tf.atan(x)),
    Case("Asinh", (X(2, 5),), tf=lambda tf, x: tf.asinh(x)),
    Case("Acosh", (X(2, 5, low=1.5),), tf=lambda tf, x: tf.acosh(x)),
    Case("Atanh", (X(2, 5, low=-0.5),), tf=lambda tf, x: tf.atanh(x)),
    Case("Sign", (X(2, 5),), tf=lambda tf, x: tf.sign(x)),
    # TensorFlow has no gradient for round, floor and ceil (None): the rule's zero is checked by finite differences
    Case("Round", (X(2, 5),)),
    Case("Floor", (X(2, 5),)),
    Case("Ceil", (X(2, 5),)),
    # rearrangements (rearrange.py)
    Case("DepthToSpace", (X(2, 8, 3, 3),), {"blocksize": 2},
         tf=lambda tf, x: _nchw(tf, tf.nn.depth_to_space(_nhwc(tf, x), 2)), note="DCR"),
    Case("DepthToSpace", (X(2, 9, 2, 3),), {"blocksize": 3, "mode": "DCR"},
         tf=lambda tf, x: _nchw(tf, tf.nn.depth_to_space(_nhwc(tf, x), 3)), note="DCR-3"),
    Case("DepthToSpace", (X(2, 8, 3, 2),), {"blocksize": 2, "mode": "CRD"}, tf=_depth_to_space_crd, note="CRD"),
    Case("SpaceToDepth", (X(2, 3, 4, 6),), {"blocksize": 2},
         tf=lambda tf, x: _nchw(tf, tf.nn.space_to_depth(_nhwc(tf, x), 2))),
    Case("Tile", (X(2, 3, 4), C(np.array([1, 2, 3], I64))), tf=lambda tf, x, r: tf.tile(x, [1, 2, 3])),
    Case("Tile", (X(2, 3), C(np.array([3, 1], I64))), tf=lambda tf, x, r: tf.tile(x, [3, 1]), note="batch"),
    Case("CumSum", (X(2, 5), C(np.array(1, I64))), tf=lambda tf, x, a: tf.math.cumsum(x, 1)),
    Case("CumSum", (X(2, 5), C(np.array(1, np.int32))), {"exclusive": 1},
         tf=lambda tf, x, a: tf.math.cumsum(x, 1, exclusive=True), note="exclusive-int32-axis"),
    Case("CumSum", (X(2, 3, 4), C(np.array(-1, I64))), {"reverse": 1},
         tf=lambda tf, x, a: tf.math.cumsum(x, -1, reverse=True), note="reverse-negative-axis"),
    Case("CumSum", (X(3, 4), C(np.array(0, I64))), {"exclusive": 1, "reverse": 1},
         tf=lambda tf, x, a: tf.math.cumsum(x, 0, exclusive=True, reverse=True), note="exclusive-reverse"),
    Case("Trilu", (X(2, 4, 5),), tf=lambda tf, x: tf.linalg.band_part(x, 0, -1), note="upper"),
    Case("Trilu", (X(2, 4, 5), C(np.array(1, I64))), {"upper": 0},
         tf=lambda tf, x, k: tf.linalg.band_part(x, -1, 1), note="lower-k1"),
    Case("Trilu", (X(2, 4, 5), C(np.array(-1, I64))), {"upper": 1},
         tf=lambda tf, x, k: tf.linalg.band_part(x, 1, -1), note="upper-k-1"),
    Case("ReverseSequence", (X(4, 2, 3), C(np.array([4, 2], I64))), {"batch_axis": 1, "time_axis": 0},
         tf=lambda tf, x, s: tf.reverse_sequence(x, s, seq_axis=0, batch_axis=1), dynamic=False),
    Case("ReverseSequence", (X(2, 4, 3), C(np.array([1, 3], I64))), {"batch_axis": 0, "time_axis": 1},
         tf=lambda tf, x, s: tf.reverse_sequence(x, s, seq_axis=1, batch_axis=0), note="batch-first"),
    Case("Mean", (X(2, 3), X(3), X(2, 1)), tf=lambda tf, a, b, c: (a + b + c) / 3, note="broadcast"),
    Case("Mean", (X(2, 3),), tf=lambda tf, a: a, note="one-input"),
    Case("GatherElements", (X(3, 4), C(np.array([[0, 3], [2, 2], [1, 0]], I64))), {"axis": 1},
         tf=lambda tf, x, i: tf.gather(x, i, axis=1, batch_dims=1), note="repeated"),
    Case("GatherElements", (X(3, 4), C(np.array([[2, -1, 0, 1]], I64))), {"axis": 0}, note="negative-axis0"),
    Case("GatherND", (X(3, 4, 2), C(np.array([[0, 1], [2, 3], [0, 1]], I64))),
         tf=lambda tf, x, i: tf.gather_nd(x, i), note="slices-repeated"),
    Case("GatherND", (X(3, 4, 2), C(np.array([[1], [3], [-1]], I64))), {"batch_dims": 1},
         tf=lambda tf, x, i: tf.gather_nd(x, [[1], [3], [3]], batch_dims=1), note="batch-dims-negative"),
    Case("ScatterElements", (X(3, 4), C(ELEMENTS), X(3, 2)), {"axis": 1},
         tf=lambda tf, x, i, u: tf.tensor_scatter_nd_update(x, _coords(ELEMENTS, 1), u)),
    Case("ScatterElements", (X(3, 4), C(np.array([[1, 0, 2, -1], [-1, 0, 1, 0]], I64)), X(2, 4)),
         {"axis": 0, "reduction": "add"},
         tf=lambda tf, x, i, u: tf.tensor_scatter_nd_add(x, _coords(np.array([[1, 0, 2, 2], [2, 0, 1, 0]]), 0), u),
         note="add-repeated-negative"),
    Case("ScatterND", (X(4, 3), C(np.array([[1], [3]], I64)), X(2, 3)),
         tf=lambda tf, x, i, u: tf.tensor_scatter_nd_update(x, i, u), note="rows"),
    Case("ScatterND", (X(4, 3), C(np.array([[1, 2], [1, 2], [0, 0]], I64)), X(3)), {"reduction": "add"},
         tf=lambda tf, x, i, u: tf.tensor_scatter_nd_add(x, i, u), note="add-repeated"),
    Case("Compress", (X(3, 4), C(np.array([True, False, True, True]))), {"axis": 1},
         tf=lambda tf, x, c: tf.boolean_mask(x, c, axis=1)),
    Case("Compress", (X(2, 3), C(np.array([False, True, True, False, True]))),
         tf=lambda tf, x, c: tf.boolean_mask(tf.reshape(x, [-1])[:5], c), note="flattened-short"),
    # norms (norms.py)
    Case("ReduceSumSquare", (X(2, 3, 4), C(np.array([1], I64))), {"keepdims": 0},
         tf=lambda tf, x, a: tf.reduce_sum(x * x, 1)),
    Case("ReduceSumSquare", (X(2, 3, 4),), {"axes": [0, -1], "keepdims": 1}, opset=17,
         tf=lambda tf, x: tf.reduce_sum(x * x, [0, 2], keepdims=True), note="axes-attribute"),
    Case("ReduceL1", (X(2, 3, 4), C(np.array([-1], I64))), {"keepdims": 0},
         tf=lambda tf, x, a: tf.reduce_sum(tf.abs(x), -1)),
    Case("ReduceL1", (X(2, 3, 4),), tf=lambda tf, x: tf.reduce_sum(tf.abs(x), keepdims=True), note="all-axes"),
    Case("ReduceL2", (X(2, 3, 4), C(np.array([1, 2], I64))), {"keepdims": 0},
         tf=lambda tf, x, a: tf.math.reduce_euclidean_norm(x, [1, 2])),
    Case("ReduceL2", (X(2, 3, 4),), {"axes": [2], "keepdims": 1}, opset=16,
         tf=lambda tf, x: tf.math.reduce_euclidean_norm(x, 2, keepdims=True), note="axes-attribute"),
    Case("ReduceLogSum", (X(2, 3, 4, low=0.5), C(np.array([2], I64))), {"keepdims": 0},
         tf=lambda tf, x, a: tf.math.log(tf.reduce_sum(x, 2))),
    Case("ReduceLogSum", (X(2, 3, low=0.5),), tf=lambda tf, x: tf.math.log(tf.reduce_sum(x, keepdims=True)),
         note="all-axes"),
    Case("ReduceLogSumExp", (X(2, 3, 4), C(np.array([1], I64))), {"keepdims": 1},
         tf=lambda tf, x, a: tf.reduce_logsumexp(x, 1, keepdims=True)),
    Case("ReduceLogSumExp", (X(2, 3, 4),), {"axes": [0, 2], "keepdims": 0}, opset=17,
         tf=lambda tf, x: tf.reduce_logsumexp(x, [0, 2]), note="axes-attribute"),
    Case("ReduceProd", (X(2, 3, 4), C(np.array([1], I64))), {"keepdims": 0}, tf=lambda tf, x, a: tf.reduce_prod(x, 1)),
    Case("ReduceProd", (Arg((2, 3, 4), value=PROD), C(np.array([-1], I64))), {"keepdims": 1},
         tf=lambda tf, x, a: tf.reduce_prod(x, -1, keepdims=True), note="zeros"),
    Case("LpNormalization", (X(2, 3, 5),), {"p": 2, "axis": -1},
         tf=lambda tf, x: x / tf.norm(x, axis=-1, keepdims=True), note="l2"),
    Case("ReduceProd", (X(2, 3, 4),), {"axes": [0, 2], "keepdims": 0}, opset=17,
         tf=lambda tf, x: tf.reduce_prod(x, [0, 2]), note="axes-attribute"),
    Case("LpNormalization", (X(2, 3, 5),), {"p": 2, "axis": 0}, opset=17,
         tf=lambda tf, x: x / tf.norm(x, axis=0, keepdims=True), note="l2-axis0-opset17"),
    Case("LpNormalization", (X(2, 3, 5),), {"p": 1, "axis": 1},
         tf=lambda tf, x: x / tf.reduce_sum(tf.abs(x), 1, keepdims=True), note="l1-axis1"),
    Case("GlobalLpPool", (X(2, 3, 4, 4),), tf=lambda tf, x: tf.sqrt(tf.reduce_sum(x * x, [2, 3], keepdims=True))),
    Case("GlobalLpPool", (X(2, 3, 5),), {"p": 3},
         tf=lambda tf, x: tf.reduce_sum(tf.abs(x) ** 3, [2], keepdims=True) ** (1 / 3), note="p3-1d"),
    Case("LpPool", (X(2, 3, 4, 4),), {"kernel_shape": [2, 2], "strides": [2, 2]}, tf=_lp_pool2),
    Case("LpPool", (X(2, 2, 5, 5),), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "p": 3},
         note="p3-padded"),
    Case("LpPool", (X(2, 2, 5, 6),), {"kernel_shape": [2, 3], "auto_pad": "SAME_UPPER", "p": 1}, note="p1-same"),
    # stash_type 11: statistics in float64, so that the float64 reference is exact (default: in float32)
    Case("GroupNormalization", (X(2, 6, 3, 3), W(6), W(6)), {"num_groups": 3, "stash_type": 11}, opset=21,
         tf=_group_norm(3)),
    Case("GroupNormalization", (X(2, 4, 5), X(4), X(4)), {"num_groups": 2, "stash_type": 11}, opset=21,
         dynamic=False, tf=_group_norm(2), note="1d-data-scale"),
    Case("GroupNormalization", (X(2, 6, 2, 2), W(6), W(6)), {"num_groups": 1, "stash_type": 11}, opset=21,
         tf=_group_norm(1), note="one-group"),
    Case("RMSNormalization", (X(2, 3, 4), W(4)), opset=23, tf=_rms_norm([2])),
    Case("RMSNormalization", (X(2, 3, 4), X(3, 4)), {"axis": 1}, opset=23, dynamic=False, tf=_rms_norm([1, 2]),
         note="axis1-data-scale"),
]
