"""`onnxsight demo`: trains the seed-000 CNN to >= 95 % on the bundled digits and writes its pictures."""

from __future__ import annotations

import re
import subprocess
import sys

import cv2
import numpy as np
from typer.testing import CliRunner

from onnxsight.cli.app import app
from onnxsight.data.datasets import digits


def test_demo_trains_converts_and_writes_activations_and_filters(tmp_path):
    result = CliRunner().invoke(app, ["demo", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    accuracy = float(re.search(r"test accuracy ([0-9.]+)", result.stdout).group(1))
    assert accuracy >= 0.95
    folder = next(tmp_path.iterdir())
    assert f"results: {folder}" in result.stdout.replace("\n", "")
    names = {p.name for p in folder.iterdir()}
    assert {"mnist_cnn.onnx", "mnist_cnn.keras", "filters_conv2d_1.png", "activations_conv2d_2.npy"} <= names
    assert len([n for n in names if n.startswith("digit") and n.endswith("_conv2d_1.png")]) == 4
    assert np.load(folder / "activations_conv2d_1.npy").shape == (4, 26, 26, 32)
    assert cv2.imread(str(folder / "filters_conv2d_1.png")) is not None


def test_demo_takes_a_users_mnist_npz(tmp_path):
    data = digits()
    npz = tmp_path / "mnist.npz"
    np.savez(npz, x_train=(data.x_train[..., 0] * 255).astype(np.uint8), y_train=data.y_train,
             x_test=(data.x_test[..., 0] * 255).astype(np.uint8), y_test=data.y_test)
    result = CliRunner().invoke(app, ["demo", "--data", str(npz), "--epochs", "1", "--images", "2", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert len(list(next((tmp_path / "out").iterdir()).glob("*_conv2d_2.png"))) == 2


def test_demo_rejects_a_malformed_npz(tmp_path):
    npz = tmp_path / "bad.npz"
    np.savez(npz, images=np.zeros((2, 28, 28)))
    result = CliRunner().invoke(app, ["demo", "--data", str(npz), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1 and "needs x_train, y_train, x_test, y_test" in result.stderr


def test_importing_onnxsight_and_its_cli_loads_no_training_framework():
    code = "import sys, onnxsight, onnxsight.cli.app; print(sorted({'tensorflow', 'tf2onnx', 'keras', 'torch'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
