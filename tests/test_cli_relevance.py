"""The ``lrp`` command and ``export --method lrp-*``: files written, numbers equal to the library's, clear errors."""

from __future__ import annotations

import json

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

import onnxsight
from onnxsight.cli.app import app


@pytest.fixture(scope="module")
def runner():
    return CliRunner()


def invoke(runner, *args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def x(digits_data):
    return digits_data.x_test[:3]


def test_lrp_has_help(runner):
    result = invoke(runner, "lrp", "--help")
    assert result.exit_code == 0 and "--rule" in result.stdout


@pytest.mark.parametrize(("options", "kwargs"), [
    (["--rule", "epsilon-gamma-box", "--low", "0", "--high", "1"], {"rule": "epsilon-gamma-box", "low": 0.0, "high": 1.0}),
    (["--rule", "epsilon", "--epsilon", "0.25", "--start", "one"], {"rule": "epsilon", "epsilon": 0.25, "start": "one"}),
])
def test_lrp_command_writes_the_librarys_relevance(runner, tmp_path, mnist_onnx, model, x, options, kwargs):
    result = invoke(runner, "lrp", mnist_onnx, "--data", "digits", "--count", "3", "--target", "3,1,4", *options,
                    "-o", tmp_path)
    assert result.exit_code == 0, result.output
    want = onnxsight.lrp(model, x, [3, 1, 4], **kwargs)
    np.testing.assert_allclose(np.load(tmp_path / "lrp.npy"), want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    summary = json.loads((tmp_path / "lrp.json").read_text())
    assert [row["target"] for row in summary["images"]] == [3, 1, 4]
    np.testing.assert_allclose([row["relevance_sum"] for row in summary["images"]], want.reshape(3, -1).sum(axis=1),
                               rtol=1e-4)
    figure = cv2.imread(str(next(tmp_path.glob("digits_0_*_lrp.png"))))
    assert figure is not None and figure.shape[1] > 3 * figure.shape[0] - 40  # input | map | overlay


@pytest.mark.parametrize(("args", "message"), [
    (["--rule", "lrp-9"], "unknown LRP rule"),
    (["--rule", "alphabeta", "--alpha", "3"], "alpha - beta must be 1"),
    (["--start", "zero"], "--start must be one of"),
])
def test_bad_lrp_options_are_one_line_errors(runner, tmp_path, mnist_onnx, args, message):
    result = invoke(runner, "lrp", mnist_onnx, "--data", "digits", *args, "-o", tmp_path)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


@pytest.mark.parametrize("method", ["lrp-epsilon-plus-flat", "deeptaylor"])
def test_export_writes_an_lrp_explainer_equal_to_the_library(runner, tmp_path, mnist_onnx, model, x, method):
    path = tmp_path / "explainer.onnx"
    result = invoke(runner, "export", mnist_onnx, "-o", path, "--method", method)
    assert result.exit_code == 0, result.output
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    heatmap, classes = session.run(["heatmap", "target_class"], {"image": x})
    want = onnxsight.lrp(model, x, rule=method.removeprefix("lrp-")).sum(axis=3)
    np.testing.assert_array_equal(classes, model.predict(x).argmax(axis=1))
    assert np.abs(heatmap - want).max() <= 1e-5 * np.abs(want).max()
