"""Independent gradients from TensorFlow autograd on the Keras model itself (test helper)."""

from __future__ import annotations

from contextlib import contextmanager

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


def gradients(model, x: np.ndarray, target: np.ndarray, layer: str | None = None, modifier: str | None = None):
    """d(logit[target]) / d(input) and, if ``layer`` is given, / d(that layer's output)."""
    import keras
    import tensorflow as tf

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
