"""Shared fixtures: the seed-000 MNIST CNN trained on the bundled digits, in Keras and as ONNX."""

from __future__ import annotations

import pytest

from onnxsight.data.datasets import digits


@pytest.fixture(scope="session")
def digits_data():
    """scikit-learn's bundled digits at 28x28 (train 1,347 / test 450)."""
    return digits()


@pytest.fixture(scope="session")
def mnist_keras(digits_data):
    """Seed 000's CNN trained for 3 epochs (about 97 % test accuracy); a Keras model."""
    from onnxsight.demo.architectures import mnist_cnn
    from onnxsight.demo.train import train

    return train(mnist_cnn, digits_data, epochs=3, seed=0).model


@pytest.fixture(scope="session")
def mnist_onnx(mnist_keras, tmp_path_factory):
    """The trained CNN converted to ONNX; the path."""
    import onnxsight

    return onnxsight.convert_keras(mnist_keras, tmp_path_factory.mktemp("mnist") / "mnist_cnn.onnx")


@pytest.fixture(scope="session")
def model(mnist_onnx):
    """The trained CNN loaded on the CPU (test modules about other models override ``model``)."""
    import onnxsight

    return onnxsight.load(mnist_onnx, device="cpu")
