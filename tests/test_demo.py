"""`onnxsight demo`: trains a seed CNN on bundled data, converts it, and writes its HTML report."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from onnxsight.cli.app import app
from onnxsight.data.datasets import colour_digits, digits
from onnxsight.demo.run import run_demo
from onnxsight.errors import InvalidArgument
from onnxsight.report import SECTIONS, ReportOptions

QUICK_REPORT = ReportOptions(images=2, sections=("summary", "accuracy", "filters"))


def test_demo_trains_converts_and_writes_the_report_with_every_section(tmp_path):
    result = CliRunner().invoke(app, ["demo", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    accuracy = float(re.search(r"test accuracy ([0-9.]+)", result.stdout).group(1))
    assert accuracy >= 0.95
    folder = next(tmp_path.iterdir())
    assert f"report: {folder / 'report.html'}" in result.stdout.replace("\n", "")
    assert {"mnist_cnn.onnx", "mnist_cnn.keras", "report.html"} <= {p.name for p in folder.iterdir()}
    page = (folder / "report.html").read_text(encoding="utf-8")
    assert all(f'<section id="{name}">' in page for name in SECTIONS)
    for stage in ("data", "train", "convert", "report", "total"):
        assert re.search(rf"{stage}: +[0-9.]+ s", result.stderr), stage


def test_demo_takes_a_users_mnist_npz(tmp_path):
    data = digits()
    npz = tmp_path / "mnist.npz"
    np.savez(npz, x_train=(data.x_train[..., 0] * 255).astype(np.uint8), y_train=data.y_train,
             x_test=(data.x_test[..., 0] * 255).astype(np.uint8), y_test=data.y_test)
    result = run_demo(tmp_path / "out", data=npz, epochs=1, train_images=256, report_options=QUICK_REPORT)
    page = result.report_path.read_text(encoding="utf-8")
    assert "mnist.npz" in page and 'id="accuracy"' in page and 'id="saliency"' not in page


def test_demo_trains_cifar_cnn5_on_the_bundled_colour_digits(tmp_path):
    result = run_demo(tmp_path, arch="cifar-cnn5", epochs=1, train_images=128, report_options=QUICK_REPORT)
    assert result.model_path.name == "cifar_cnn5.onnx"
    page = result.report_path.read_text(encoding="utf-8")
    assert "colour-digits" in page and "(N, 32, 32, 3)" in page and "as RGB pictures" in page


def test_demo_refuses_data_of_the_wrong_shape_for_the_architecture(tmp_path):
    data = digits()
    npz = tmp_path / "mnist.npz"
    np.savez(npz, x_train=(data.x_train[:8, ..., 0] * 255).astype(np.uint8), y_train=data.y_train[:8],
             x_test=(data.x_test[:8, ..., 0] * 255).astype(np.uint8), y_test=data.y_test[:8])
    result = CliRunner().invoke(app, ["demo", "--arch", "cifar-cnn5", "--data", str(npz), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1 and "cifar-cnn5 takes (32, 32, 3) images; mnist.npz has (28, 28, 1)" in result.stderr
    with pytest.raises(InvalidArgument, match="unknown architecture 'vgg'; choose one of mnist-cnn, cifar-cnn5"):
        run_demo(tmp_path, arch="vgg")


def test_demo_rejects_a_malformed_npz(tmp_path):
    npz = tmp_path / "bad.npz"
    np.savez(npz, images=np.zeros((2, 28, 28)))
    result = CliRunner().invoke(app, ["demo", "--data", str(npz), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1 and "needs x_train, y_train, x_test, y_test" in result.stderr


def test_colour_digits_are_the_bundled_digits_drawn_in_colour_over_photos():
    plain, colour = digits(), colour_digits()
    assert colour.x_train.shape == (len(plain.x_train), 32, 32, 3) and colour.x_train.dtype == np.float32
    assert 0 <= colour.x_train.min() and colour.x_train.max() <= 1
    np.testing.assert_array_equal(colour.y_test, plain.y_test)
    assert colour.x_test[..., 0].std() > 0.1 and not np.allclose(colour.x_test[..., 0], colour.x_test[..., 1])
    np.testing.assert_array_equal(colour_digits().x_test[:5], colour.x_test[:5])  # the same seed, the same pictures


def test_importing_onnxsight_and_its_cli_loads_no_training_framework_and_no_matplotlib():
    code = ("import sys, onnxsight, onnxsight.cli.app, onnxsight.report; "
            "print(sorted({'tensorflow', 'tf2onnx', 'keras', 'torch', 'matplotlib'} & set(sys.modules)))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
