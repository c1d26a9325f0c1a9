"""Keras builders for the seed notebooks' models, with the layer names the seeds print.

Keras is imported inside each builder; every builder returns an uncompiled ``keras.Model``.
"""

from __future__ import annotations

from typing import Any

from onnxsight.converters.keras import import_keras


def _keras(*names: str) -> tuple:
    keras = import_keras()
    return tuple(getattr(keras, name) for name in names)


def mnist_cnn(num_classes: int = 10) -> Any:
    """Seed 000: the MNIST CNN whose class output is ``preds``; input 28×28×1."""
    Input, Sequential, layers = _keras("Input", "Sequential", "layers")

    return Sequential([
        Input((28, 28, 1)),
        layers.Conv2D(32, (3, 3), activation="relu", name="conv2d_1"),
        layers.MaxPooling2D((2, 2), strides=(2, 2), name="max_pooling2d_1"),
        layers.Conv2D(64, (5, 5), activation="relu", name="conv2d_2"),
        layers.Dropout(0.5, name="dropout_1"),
        layers.MaxPooling2D((2, 2), name="max_pooling2d_2"),
        layers.Flatten(name="flatten_1"),
        layers.Dense(1000, activation="relu", name="dense_1"),
        layers.Dense(num_classes, activation="softmax", name="preds"),
    ], name="mnist_cnn")


def mnist_cnn_keras_vis(num_classes: int = 10) -> Any:
    """Seed 002: the keras-vis MNIST example; input 28×28×1."""
    Input, Sequential, layers = _keras("Input", "Sequential", "layers")

    return Sequential([
        Input((28, 28, 1)),
        layers.Conv2D(32, (3, 3), activation="relu", name="conv2d_1"),
        layers.Conv2D(64, (3, 3), activation="relu", name="conv2d_2"),
        layers.MaxPooling2D((2, 2), name="max_pooling2d_1"),
        layers.Dropout(0.25, name="dropout_1"),
        layers.Flatten(name="flatten_1"),
        layers.Dense(128, activation="relu", name="dense_1"),
        layers.Dropout(0.5, name="dropout_2"),
        layers.Dense(num_classes, activation="softmax", name="preds"),
    ], name="mnist_cnn_keras_vis")


def cifar_cnn5(num_classes: int = 10) -> Any:
    """Seeds 001 and 004: the CIFAR-10 CNN5; input 32×32×3."""
    Input, Sequential, layers = _keras("Input", "Sequential", "layers")

    return Sequential([
        Input((32, 32, 3)),
        layers.Conv2D(32, (3, 3), activation="relu", name="conv_0"),
        layers.MaxPooling2D((2, 2), name="max_pooling2d"),
        layers.Conv2D(64, (3, 3), activation="relu", name="conv_1"),
        layers.MaxPooling2D((2, 2), name="max_pooling2d_1"),
        layers.Conv2D(64, (3, 3), activation="relu", name="conv_2"),
        layers.Flatten(name="flatten"),
        layers.Dropout(0.5, name="dropout"),
        layers.Dense(64, activation="relu", name="dense_0"),
        layers.Dense(num_classes, activation="softmax", name="dense_1"),
    ], name="cifar_cnn5")


def residual_cnn(num_classes: int = 10) -> Any:
    """A small functional CNN with batch norm and one residual block; input 32×32×3."""
    Input, Model, layers = _keras("Input", "Model", "layers")

    inputs = Input((32, 32, 3), name="image")
    x = layers.Conv2D(16, 3, padding="same", name="stem_conv")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    stem = layers.ReLU(name="stem_relu")(x)
    x = layers.Conv2D(16, 3, padding="same", name="block_conv_1")(stem)
    x = layers.BatchNormalization(name="block_bn_1")(x)
    x = layers.ReLU(name="block_relu_1")(x)
    x = layers.Conv2D(16, 3, padding="same", name="block_conv_2")(x)
    x = layers.BatchNormalization(name="block_bn_2")(x)
    x = layers.Add(name="block_add")([stem, x])
    x = layers.ReLU(name="block_relu_2")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="preds")(x)
    return Model(inputs, outputs, name="residual_cnn")
