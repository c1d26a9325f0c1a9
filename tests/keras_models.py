"""Helpers for converter tests: non-trivial weights, Keras references, ONNX runs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort


def batch(shape, n=4, seed=1):
    """A float32 batch uniform in [0, 1), seeded (not the converter's own parity batch)."""
    return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


def randomize(model, seed=0):
    """Give biases, BN statistics and scales non-trivial values so no term folds away."""
    rng = np.random.default_rng(seed)
    values = []
    for variable in model.weights:
        name = getattr(variable, "path", variable.name)
        shape = tuple(variable.shape)
        if "moving_variance" in name or "gamma" in name:
            values.append(rng.uniform(0.5, 1.5, shape))
        elif "moving_mean" in name or "beta" in name or "bias" in name:
            values.append(rng.normal(0.0, 0.1, shape))
        else:
            values.append(np.asarray(variable))
    model.set_weights([v.astype(np.float32) for v in values])
    return model


def keras_outputs(model, names, x):
    """Outputs of the named top-level layers of a Keras 3 or tf_keras model."""
    api = _api(model)
    probe = api.Model(model.inputs, [model.get_layer(name).output for name in names])
    outputs = probe(x, training=False)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return {name: np.asarray(out) for name, out in zip(names, outputs)}


def keras_logits(model, x):
    """The input of the final softmax: the last layer's pre-activation or its input."""
    api = _api(model)
    last = model.layers[-1]
    if isinstance(last, api.layers.Dense):
        features = api.Model(model.inputs, last.input)(x, training=False)
        return np.asarray(features) @ np.asarray(last.kernel) + np.asarray(last.bias)
    return np.asarray(api.Model(model.inputs, last.input)(x, training=False))


def run_onnx(path, x, tensors=()):
    """Run the model on CPU with extra tensors as outputs; returns {name: array}."""
    model = onnx.load(path)
    for name in tensors:
        if name not in {o.name for o in model.graph.output}:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = ["output", *tensors]
    return dict(zip(names, session.run(names, {"input": x})))


def _api(model):
    import keras

    if isinstance(model, keras.Model):
        return keras
    import tf_keras

    return tf_keras


def legacy_cnn(num_classes=10):
    """A tf_keras (Keras 2) CNN like the seeds' notebooks built, 16×16×1 input."""
    import tf_keras
    from tf_keras import layers

    return tf_keras.Sequential([
        layers.Conv2D(8, 3, activation="relu", input_shape=(16, 16, 1), name="conv2d_1"),
        layers.MaxPooling2D(2, name="max_pooling2d_1"),
        layers.Dropout(0.5, name="dropout_1"),
        layers.Flatten(name="flatten_1"),
        layers.Dense(num_classes, activation="softmax", name="preds"),
    ])


def gelu_model():
    """Exact GELU (TensorFlow's Erfc) between two dense layers."""
    from keras import Input, Sequential, layers

    return Sequential([
        Input((12,)), layers.Dense(16, name="dense"), layers.Activation("gelu", name="gelu"),
        layers.Dense(3, name="scores"), layers.Softmax(name="softmax"),
    ])


def lgamma_model():
    """A Lambda layer calling tf.math.lgamma, a TensorFlow op with no ONNX conversion."""
    import tensorflow as tf
    from keras import Input, Sequential, layers

    return Sequential([
        Input((6,)), layers.Dense(4, name="dense"),
        layers.Lambda(lambda t: tf.math.lgamma(tf.abs(t) + 1.0), name="log_gamma"),
        layers.Dense(2, activation="softmax", name="preds"),
    ])
