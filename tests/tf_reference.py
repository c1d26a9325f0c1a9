"""Independent gradients from TensorFlow autograd on the Keras model itself (test helper)."""

from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache

import numpy as np


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| relative to the largest |want| (elementwise ratios are noise near zero)."""
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


@contextmanager
def swapped_activations(model, modifier: str | None = None):
    """Temporarily: final softmax -> linear (keras-vis' logits), ReLUs -> guided/deconv backward."""
    import keras
    import tensorflow as tf

    @tf.custom_gradient
    def modified_relu(x):
        def grad(dy):
            if modifier == "guided":
                return dy * tf.cast(x > 0, dy.dtype) * tf.cast(dy > 0, dy.dtype)
            return tf.nn.relu(dy)

        return tf.nn.relu(x), grad

    saved = [(layer, layer.activation) for layer in model.layers if hasattr(layer, "activation")]
    last = model.layers[-1]
    try:
        if getattr(last, "activation", None) is keras.activations.softmax:
            last.activation = keras.activations.linear
        if modifier is not None:
            for layer, activation in saved:
                if activation is keras.activations.relu:
                    layer.activation = modified_relu
        yield
    finally:
        for layer, activation in saved:
            layer.activation = activation


@lru_cache(maxsize=4)
def float64_twin(model):
    """The Keras model rebuilt with float64 layers and inputs and the same weights (exact copies):
    a reference free of float32 rounding, so it does not depend on the CPU's kernels."""
    import keras

    if isinstance(model, keras.Sequential):  # from_config would rebuild after each layer it adds
        layers = [type(layer).from_config(_float64_config(layer.get_config())) for layer in model.layers]
        twin = keras.Sequential([keras.Input(batch_shape=model.input_shape, dtype="float64"), *layers])
    else:
        twin = type(model).from_config(_float64_config(model.get_config()))
    twin.set_weights([w.astype(np.float64) for w in model.get_weights()])
    return twin


def _float64_config(config):
    if isinstance(config, list):
        return [_float64_config(v) for v in config]
    if not isinstance(config, dict):
        return config
    if config.get("class_name") in ("DTypePolicy", "FloatDTypePolicy"):
        return {**config, "config": {**config["config"], "name": "float64"}}
    return {k: "float64" if k == "dtype" and v == "float32" else _float64_config(v) for k, v in config.items()}


def gradients(model, x: np.ndarray, target: np.ndarray, layer: str | None = None, modifier: str | None = None):
    """d(logit[target]) / d(input) and, if ``layer`` is given, / d(that layer's output), computed
    by TensorFlow in float64 on ``float64_twin(model)``."""
    import keras
    import tensorflow as tf

    model = float64_twin(model)
    x = np.asarray(x, np.float64)
    last = model.layers[-1]
    head = last.input if type(last).__name__ in ("Softmax", "Activation") else last.output
    outputs = [model.get_layer(layer).output, head] if layer else [head]
    probe = keras.Model(model.inputs, outputs)
    x = tf.constant(x)
    with swapped_activations(model, modifier), tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        values = probe(x, training=False)
        values = values if isinstance(values, (list, tuple)) else [values]
        score = tf.reduce_sum(tf.gather(values[-1], target, axis=1, batch_dims=1))
    result = {"input": tape.gradient(score, x).numpy()}
    if layer:
        result[layer] = tape.gradient(score, values[0]).numpy()
    return result
