"""Per-image time of each attribution method: onnxsight (onnxruntime) vs the same computation in TensorFlow.

Both sides run on the seed-000 MNIST CNN, a batch of 64 digits, in one process, best of
``--repeats``. TensorFlow runs compiled ``tf.function`` graphs (the fast way to use it) on the
Keras model with the softmax swapped for linear. Run: .venv/bin/python benchmarks/methods_vs_tensorflow.py
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

import onnxsight
from onnxsight.converters.keras import import_keras
from onnxsight.data.datasets import digits
from onnxsight.demo.architectures import mnist_cnn
from timing import best_of  # benchmarks/ is the script's folder


def tensorflow_methods(keras_model, layer: str, window: int = 4, stride: int = 2, chunk: int = 64,
                       forward_chunk: int = 256):
    """The same computations written directly in TensorFlow (tf-keras-vis / Captum style), by method name.

    ``keras_model``: an image classifier with channels-last inputs whose last layer has an
    ``activation`` (set to linear here: the logits); ``layer``: the CAM layer (a 4-D feature map or
    (N, T, D) tokens whose last h·w form a square grid); ``window``, ``stride``: occlusion's.
    Gradients run ``chunk`` rows and forward passes ``forward_chunk`` rows per ``tf.function`` call
    (onnxsight's default rows per run of its gradient and its perturbation methods). Guided backprop swaps the model's ReLUs (``activation="relu"`` and ReLU layers)
    for ones with the guided gradient while its function is traced.
    """
    import cv2
    import tensorflow as tf

    keras = import_keras()
    keras_model.layers[-1].activation = keras.activations.linear
    probe = keras.Model(keras_model.inputs, [keras_model.get_layer(layer).output, keras_model.layers[-1].output])
    guiding = _guided_relus(keras_model)

    def input_gradient_of(guided: bool):
        @tf.function(reduce_retracing=True)
        def input_gradient(x, target):
            with guiding(guided), tf.GradientTape() as tape:
                tape.watch(x)
                score = tf.reduce_sum(tf.gather(keras_model(x, training=False), target, axis=1, batch_dims=1))
            return tape.gradient(score, x)
        return input_gradient

    vanilla, guided = input_gradient_of(False), input_gradient_of(True)

    @tf.function(reduce_retracing=True)
    def layer_gradient(x, target):
        with tf.GradientTape() as tape:
            acts, logits = probe(x, training=False)
            score = tf.reduce_sum(tf.gather(logits, target, axis=1, batch_dims=1))
        return acts, tape.gradient(score, acts)

    @tf.function(reduce_retracing=True)
    def logits_of(x):
        return keras_model(x, training=False)

    def batched_gradient(x, target, gradient=vanilla):
        return np.concatenate([gradient(tf.constant(x[i:i + chunk]), tf.constant(target[i:i + chunk])).numpy()
                               for i in range(0, len(x), chunk)])

    def batched_logits(x):
        return np.concatenate([logits_of(tf.constant(x[i:i + forward_chunk])).numpy()
                               for i in range(0, len(x), forward_chunk)])

    def saliency(x, target):
        return np.abs(batched_gradient(x, target)).max(axis=3)

    def gradient_x_input(x, target):
        return np.abs(batched_gradient(x, target) * x).max(axis=3)

    def guided_backprop(x, target):
        return np.abs(batched_gradient(x, target, guided)).max(axis=3)

    def smoothgrad(x, target, samples=20, noise=0.15):
        sigma = noise * (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3)))
        noisy = x[None] + np.random.default_rng(0).standard_normal((samples, *x.shape), dtype=np.float32) * sigma[None, :, None, None, None]
        grads = batched_gradient(noisy.reshape(-1, *x.shape[1:]), np.tile(target, samples))
        return np.abs(grads).reshape(samples, *x.shape).mean(axis=0).max(axis=3)

    def integrated_gradients(x, target, steps=50):
        alphas = np.linspace(0, 1, steps, dtype=np.float32)
        path = (alphas[:, None, None, None, None] * x[None]).reshape(-1, *x.shape[1:])
        grads = batched_gradient(path, np.tile(target, steps)).reshape(steps, *x.shape)
        weights = np.full(steps, 1.0 / (steps - 1), np.float32)
        weights[[0, -1]] /= 2
        return x * np.tensordot(weights, grads, axes=1)

    def upsample(maps, x):
        return np.stack([cv2.resize(c, (x.shape[2], x.shape[1]), interpolation=cv2.INTER_LINEAR) for c in maps])

    def layer_values(x, target):
        acts, grads = [], []
        for i in range(0, len(x), chunk):
            a, g = layer_gradient(tf.constant(x[i:i + chunk]), tf.constant(target[i:i + chunk]))
            acts.append(_grid(a.numpy()))
            grads.append(_grid(g.numpy()))
        return np.concatenate(acts), np.concatenate(grads)

    def gradcam(x, target):
        acts, grads = layer_values(x, target)
        return upsample(np.maximum((acts * grads.mean(axis=(1, 2), keepdims=True)).sum(axis=3), 0), x)

    def gradcam_plus_plus(x, target):
        acts, grads = layer_values(x, target)
        squared = grads ** 2
        denominator = 2 * squared + acts.sum(axis=(1, 2), keepdims=True) * grads ** 3
        alphas = np.divide(squared, denominator, out=np.zeros_like(squared), where=denominator != 0)
        weights = (alphas * np.maximum(grads, 0)).sum(axis=(1, 2), keepdims=True)
        return upsample(np.maximum((acts * weights).sum(axis=3), 0), x)

    def scorecam(x, target):
        acts = np.concatenate([_grid(probe(tf.constant(x[i:i + chunk]), training=False)[0].numpy())
                               for i in range(0, len(x), chunk)])
        channels = acts.shape[-1]
        masks = upsample(acts.transpose(0, 3, 1, 2).reshape(-1, *acts.shape[1:3]), x)
        low, high = masks.min(axis=(1, 2), keepdims=True), masks.max(axis=(1, 2), keepdims=True)
        masks = np.divide(masks - low, high - low, out=np.zeros_like(masks), where=high > low)
        masked = np.repeat(x, channels, axis=0) * masks[..., None]
        scores = batched_logits(masked)[np.arange(len(masked)), np.repeat(target, channels)].reshape(len(x), channels)
        weights = np.exp(scores - scores.max(axis=1, keepdims=True))
        weights /= weights.sum(axis=1, keepdims=True)
        return upsample(np.maximum((acts * weights[:, None, None]).sum(axis=3), 0), x)

    def occlusion(x, target):
        positions = [(r, c) for r in range(0, x.shape[1] - window + 1, stride) for c in range(0, x.shape[2] - window + 1, stride)]
        copies = np.repeat(x[:, None], len(positions), axis=1)
        for p, (r, c) in enumerate(positions):
            copies[:, p, r:r + window, c:c + window] = 0
        flat = copies.reshape(-1, *x.shape[1:])
        scores = batched_logits(flat).reshape(len(x), len(positions), -1)[np.arange(len(x)), :, target]
        clean = batched_logits(x)[np.arange(len(x)), target]
        drops, counts = np.zeros(x.shape[:3]), np.zeros(x.shape[1:3])
        for p, (r, c) in enumerate(positions):
            drops[:, r:r + window, c:c + window] += (clean - scores[:, p])[:, None, None]
            counts[r:r + window, c:c + window] += 1
        return drops / np.maximum(counts, 1)

    return {"forward": lambda x, target: batched_logits(x), "saliency": saliency,
            "gradient_x_input": gradient_x_input, "guided_backprop": guided_backprop, "smoothgrad_20": smoothgrad,
            "integrated_gradients_50": integrated_gradients, "gradcam": gradcam, "gradcam++": gradcam_plus_plus,
            "scorecam": scorecam, "occlusion": occlusion}


def _grid(values: np.ndarray) -> np.ndarray:
    """A CAM layer's values channels-last on a grid: 4-D as they are, tokens (N, T, D) as their last h·w on h×w."""
    if values.ndim == 4:
        return values
    side = int(np.sqrt(values.shape[1]))
    return values[:, values.shape[1] - side * side:].reshape(len(values), side, side, -1)


def _guided_relus(keras_model):
    """A context manager ``guiding(on)``: while on, the model's ReLUs (layers with ``activation=relu``
    and ReLU layers) compute relu with the guided gradient (zero where the input or the incoming
    gradient is negative). Meant to be entered while a ``tf.function`` is traced."""
    import contextlib

    import tensorflow as tf

    keras = import_keras()
    state = {"on": False}

    def guided(relu):
        @tf.custom_gradient
        def guided_relu(x):
            y = relu(x)

            def grad(dy):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    inner = relu(x)
                return tape.gradient(inner, x, dy) * tf.cast(dy > 0, dy.dtype)
            return y, grad

        return lambda x, *args, **kwargs: guided_relu(x) if state["on"] else relu(x, *args, **kwargs)

    for layer in keras_model.layers:
        if getattr(layer, "activation", None) is keras.activations.relu:
            layer.activation = guided(keras.activations.relu)
        elif isinstance(layer, keras.layers.ReLU):
            layer.call = guided(layer.call)

    @contextlib.contextmanager
    def guiding(on: bool):
        state["on"] = on
        try:
            yield
        finally:
            state["on"] = False

    return guiding


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    keras_model = mnist_cnn()
    with tempfile.TemporaryDirectory() as folder:
        model = onnxsight.load(onnxsight.convert_keras(keras_model, Path(folder) / "m.onnx"), device="cpu")
    x = digits().x_test[:args.batch]
    target = np.arange(args.batch) % 10
    ours = {
        "saliency": lambda: onnxsight.saliency(model, x, target=target),
        "gradcam": lambda: onnxsight.gradcam(model, x, target=target, layer="conv2d_2", normalize=False),
        "smoothgrad_20": lambda: onnxsight.saliency(model, x, target=target, smooth_samples=20),
        "integrated_gradients_50": lambda: onnxsight.integrated_gradients(model, x, target=target, steps=50),
        "occlusion": lambda: onnxsight.occlusion(model, x, target=target, window=4, stride=2),
    }
    theirs = tensorflow_methods(keras_model, "conv2d_2", window=4, stride=2)
    rows = {}
    for name, run in ours.items():
        t_ours = best_of(run, args.repeats) / args.batch
        t_tf = best_of(lambda: theirs[name](x, target), args.repeats) / args.batch
        rows[name] = {"onnxsight_ms_per_image": round(1e3 * t_ours, 3), "tensorflow_ms_per_image": round(1e3 * t_tf, 3),
                      "speedup_vs_tensorflow": round(t_tf / t_ours, 2)}
    print(json.dumps({"model": "seed-000 MNIST CNN", "batch": args.batch, "methods": rows}, indent=2))


if __name__ == "__main__":
    main()
