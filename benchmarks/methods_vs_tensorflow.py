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


def tensorflow_methods(keras_model, layer: str):
    """The same computations written directly in TensorFlow (tf-keras-vis / Captum style)."""
    import cv2
    import tensorflow as tf

    keras = import_keras()
    keras_model.layers[-1].activation = keras.activations.linear
    probe = keras.Model(keras_model.inputs, [keras_model.get_layer(layer).output, keras_model.layers[-1].output])

    @tf.function(reduce_retracing=True)
    def input_gradient(x, target):
        with tf.GradientTape() as tape:
            tape.watch(x)
            score = tf.reduce_sum(tf.gather(keras_model(x, training=False), target, axis=1, batch_dims=1))
        return tape.gradient(score, x)

    @tf.function(reduce_retracing=True)
    def layer_gradient(x, target):
        with tf.GradientTape() as tape:
            acts, logits = probe(x, training=False)
            score = tf.reduce_sum(tf.gather(logits, target, axis=1, batch_dims=1))
        return acts, tape.gradient(score, acts)

    def batched_gradient(x, target, chunk=256):
        return np.concatenate([input_gradient(tf.constant(x[i:i + chunk]), tf.constant(target[i:i + chunk])).numpy()
                               for i in range(0, len(x), chunk)])

    def saliency(x, target):
        return np.abs(batched_gradient(x, target)).max(axis=3)

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

    def gradcam(x, target):
        acts, grads = (t.numpy() for t in layer_gradient(tf.constant(x), tf.constant(target)))
        cam = np.maximum((acts * grads.mean(axis=(1, 2), keepdims=True)).sum(axis=3), 0)
        return np.stack([cv2.resize(c, (x.shape[2], x.shape[1]), interpolation=cv2.INTER_LINEAR) for c in cam])

    @tf.function(reduce_retracing=True)
    def logits_of(x):
        return keras_model(x, training=False)

    def occlusion(x, target, window=4, stride=2):
        positions = [(r, c) for r in range(0, x.shape[1] - window + 1, stride) for c in range(0, x.shape[2] - window + 1, stride)]
        copies = np.repeat(x[:, None], len(positions), axis=1)
        for p, (r, c) in enumerate(positions):
            copies[:, p, r:r + window, c:c + window] = 0
        flat = copies.reshape(-1, *x.shape[1:])
        scores = np.concatenate([logits_of(tf.constant(flat[i:i + 1024])).numpy() for i in range(0, len(flat), 1024)])
        scores = scores.reshape(len(x), len(positions), -1)[np.arange(len(x)), :, target]
        clean = logits_of(tf.constant(x)).numpy()[np.arange(len(x)), target]
        drops, counts = np.zeros(x.shape[:3]), np.zeros(x.shape[1:3])
        for p, (r, c) in enumerate(positions):
            drops[:, r:r + window, c:c + window] += (clean - scores[:, p])[:, None, None]
            counts[r:r + window, c:c + window] += 1
        return drops / np.maximum(counts, 1)

    return {"saliency": saliency, "gradcam": gradcam, "smoothgrad_20": smoothgrad,
            "integrated_gradients_50": integrated_gradients, "occlusion": occlusion}


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
    theirs = tensorflow_methods(keras_model, "conv2d_2")
    rows = {}
    for name, run in ours.items():
        t_ours = best_of(run, args.repeats) / args.batch
        t_tf = best_of(lambda: theirs[name](x, target), args.repeats) / args.batch
        rows[name] = {"onnxsight_ms_per_image": round(1e3 * t_ours, 3), "tensorflow_ms_per_image": round(1e3 * t_tf, 3),
                      "speedup_vs_tensorflow": round(t_tf / t_ours, 2)}
    print(json.dumps({"model": "seed-000 MNIST CNN", "batch": args.batch, "methods": rows}, indent=2))


if __name__ == "__main__":
    main()
