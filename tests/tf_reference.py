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
    by TensorFlow in float64 on ``float64_twin(model)``. ``layer`` may be the path of a layer of a
    nested model (``base/conv``, ``base@1/conv`` for a base's second call), as onnxsight names it."""
    if layer and ("/" in layer or "@" in layer):
        _, grads = nested_layer_values(model, x, target, layer, modifier)
        return grads
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


def nested_layer(model, path: str):
    """The Keras layer a path names, and which of its calls runs it: ``base/conv`` -> (conv, 0);
    ``base@1/conv`` -> (conv, i) where i is the position, in Keras' execution order, of the
    base's call made second when the model was built (one ``@`` per path)."""
    layer, call = model, 0
    for part in path.split("/"):
        name, _, index = part.partition("@")
        parent, layer = layer, layer.get_layer(name)
        if index:
            nodes = [node for depth in sorted(parent._nodes_by_depth, reverse=True)
                     for node in parent._nodes_by_depth[depth] if node.operation is layer]
            built = sorted(nodes, key=layer._inbound_nodes.index)
            call = nodes.index(built[int(index)])
    return layer, call


def nested_layer_values(model, x: np.ndarray, target: np.ndarray, path: str, modifier: str | None = None):
    """The activation A of a nested layer and the gradients of the summed logits[target] with
    respect to the input and to A, in float64 on ``float64_twin(model)``. The layer's ``call`` is
    wrapped for the run to return ``A + D`` with ``D`` zeros watched by the tape: dA = d/dD,
    independent of how onnxsight walks nested models."""
    import keras
    import tensorflow as tf

    model = float64_twin(model)
    layer, call = nested_layer(model, path)
    last = model.layers[-1]
    head = last.input if type(last).__name__ in ("Softmax", "Activation") else last.output
    probe = keras.Model(model.inputs, head)
    x = tf.constant(np.asarray(x, np.float64))
    seen = []
    original = layer.call

    def watched(*args, **kwargs):
        value = original(*args, **kwargs)
        offset = tf.zeros_like(value)
        tape.watch(offset)
        seen.append((value, offset))
        return value + offset

    object.__setattr__(layer, "call", watched)
    try:
        with swapped_activations(model, modifier), tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            logits = probe(x, training=False)
            score = tf.reduce_sum(tf.gather(logits, target, axis=1, batch_dims=1))
    finally:
        object.__delattr__(layer, "call")
    value, offset = seen[call]
    return value.numpy(), {"input": tape.gradient(score, x).numpy(), path: tape.gradient(score, offset).numpy()}
