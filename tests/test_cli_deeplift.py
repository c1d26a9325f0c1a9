"""The deeplift and deepliftshap commands and the deeplift explainer: the library's numbers, clear errors."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

import onnxsight
from onnxsight.cli.app import app
from onnxsight.kernels.colors import normalize_each
from onnxsight.serving.explainer import export_explainer


@pytest.fixture(scope="module")
def runner():
    return CliRunner()


def invoke(runner, *args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def x(digits_data):
    return digits_data.x_test[:3]


def test_deeplift_command_writes_the_librarys_map_and_the_gap(runner, tmp_path, mnist_onnx, model, x):
    np.save(tmp_path / "x.npy", x)
    result = invoke(runner, "deeplift", mnist_onnx, tmp_path / "x.npy", "--target", "3,1,4", "--baseline", "0.1",
                    "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    expected = onnxsight.deeplift(model, x, [3, 1, 4], baseline=0.1, reduce="sum")
    np.testing.assert_allclose(np.load(tmp_path / "out" / "deeplift.npy"), expected, rtol=1e-5, atol=1e-7)
    summary = json.loads((tmp_path / "out" / "deeplift.json").read_text())
    assert [row["target"] for row in summary["images"]] == [3, 1, 4]
    gap = summary["options"]["summation_gap"]
    assert len(gap) == 3 and max(gap) < 1e-5 * np.abs(expected).sum(axis=(1, 2)).max()
    assert len(list((tmp_path / "out").glob("*_deeplift.png"))) == 3


def test_deepliftshap_command_averages_the_baselines_file(runner, tmp_path, mnist_onnx, model, x):
    references = np.stack([np.zeros_like(x[0]), x[0] * 0.5])
    np.save(tmp_path / "refs.npy", references)
    result = invoke(runner, "deepliftshap", mnist_onnx, "--data", "digits", "--count", "2", "--baselines",
                    tmp_path / "refs.npy", "--batch-size", "3", "-o", tmp_path)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "deepliftshap.json").read_text())
    assert summary["options"]["references"] == 2 and len(summary["options"]["summation_gap"]) == 2
    assert np.load(tmp_path / "deepliftshap.npy").shape == (2, 28, 28)


@pytest.mark.parametrize("args, message", [
    (["deeplift", "--data", "digits", "--count", "1", "--baseline", "purple"], "--baseline must be"),
    (["deeplift", "--data", "digits", "--count", "1", "--batch-size", "1"], "batch_size must be an integer >= 2"),
    (["deeplift", "--data", "digits", "--count", "1", "--reduce", "median"], "--reduce"),
])
def test_bad_options_are_one_line_errors(runner, tmp_path, mnist_onnx, args, message):
    result = invoke(runner, args[0], mnist_onnx, *args[1:], "-o", tmp_path)
    assert result.exit_code == 1
    assert message in result.output


def test_deeplift_explainer_equals_the_library(model, x):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    explainer = export_explainer(model, "deeplift")
    run = ort.InferenceSession(explainer.SerializeToString(), options, providers=["CPUExecutionProvider"]).run
    for target, given in (("predicted", np.array([-1])), ([2, 7, 0], np.array([2, 7, 0]))):
        probabilities, classes, heatmap = run(None, {"image": x, "target": given})
        expected = normalize_each(onnxsight.deeplift(model, x, target, reduce="sum"))
        np.testing.assert_allclose(heatmap, expected, rtol=0, atol=1e-5)
        resolved = model.resolve_target(x, target)
        np.testing.assert_array_equal(classes, resolved)
        np.testing.assert_allclose(probabilities, model.predict(x).reshape(3, -1), rtol=1e-5, atol=1e-7)
