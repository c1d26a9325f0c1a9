"""The perturbation commands through typer's runner: the library's maps written, estimates, clear errors."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

import onnxsight
from onnxsight.cli.app import app

COMMANDS = ["ablation", "shapley", "kernelshap", "lime", "rise"]


@pytest.fixture(scope="module")
def runner():
    return CliRunner()


def invoke(runner, *args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def x(digits_data):
    return digits_data.x_test[:2]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_perturbation_command_has_help(runner, command):
    result = invoke(runner, command, "--help")
    assert result.exit_code == 0 and "Usage" in result.stdout


@pytest.mark.parametrize(
    ("command", "options", "reference"),
    [
        ("ablation", ["--segments", "16", "--baseline", "mean"],
         lambda m, x, t: onnxsight.feature_ablation(m, x, t, segments=16, baseline="mean")),
        ("shapley", ["--samples", "3", "--seed", "2", "--segments", "9"],
         lambda m, x, t: onnxsight.shapley_value_sampling(m, x, t, samples=3, seed=2, segments=9)),
        ("shapley", ["--exact", "--segments", "4"], lambda m, x, t: onnxsight.shapley_values(m, x, t, segments=4)),
        ("kernelshap", ["--samples", "40", "--seed", "1"],
         lambda m, x, t: onnxsight.kernel_shap(m, x, t, samples=40, seed=1)),
        ("kernelshap", ["--samples", "all", "--segments", "4"],
         lambda m, x, t: onnxsight.kernel_shap(m, x, t, samples="all", segments=4)),
        ("lime", ["--samples", "40", "--regression", "ridge", "--kernel-width", "0.5"],
         lambda m, x, t: onnxsight.lime(m, x, t, samples=40, regression="ridge", kernel_width=0.5)),
        ("rise", ["--masks", "64", "--cells", "4", "--p", "0.3", "--seed", "5"],
         lambda m, x, t: onnxsight.rise(m, x, t, masks=64, cells=4, p=0.3, seed=5)),
    ],
)
def test_perturbation_commands_write_the_librarys_maps(runner, tmp_path, mnist_onnx, model, x, command, options, reference):
    result = invoke(runner, command, mnist_onnx, "--data", "digits", "--count", "2", "--target", "3,1", *options,
                    "-o", tmp_path)
    assert result.exit_code == 0, result.output
    assert "forward passes" in result.output  # the estimate line on stderr
    np.testing.assert_allclose(np.load(tmp_path / f"{command}.npy"), reference(model, x, [3, 1]), rtol=1e-5, atol=1e-7)
    summary = json.loads((tmp_path / f"{command}.json").read_text())
    assert [row["target"] for row in summary["images"]] == [3, 1]
    figure = cv2.imread(str(next(tmp_path.glob(f"digits_0_*_{command}.png"))))
    assert figure is not None and figure.shape[1] > 3 * figure.shape[0] - 40


def test_a_mask_file_gives_the_features(runner, tmp_path, mnist_onnx, model, x):
    labels = np.repeat(np.arange(4), 196).reshape(28, 28)
    np.save(tmp_path / "labels.npy", labels)
    result = invoke(runner, "ablation", mnist_onnx, "--data", "digits", "--count", "2", "--mask", tmp_path / "labels.npy",
                    "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(np.load(tmp_path / "out" / "ablation.npy"),
                               onnxsight.feature_ablation(model, x, feature_mask=labels), rtol=1e-5, atol=1e-7)


def test_dry_run_prints_the_number_of_passes(runner, mnist_onnx):
    result = invoke(runner, "shapley", mnist_onnx, "--data", "digits", "--count", "2", "--samples", "5",
                    "--segments", "16", "--dry-run")
    assert result.exit_code == 0 and "162 forward passes" in result.stdout  # 2 images x (1 + 5 x 16)


@pytest.mark.parametrize(("args", "fragment"), [
    (["ablation", "{model}", "--data", "digits", "--mask", "hexagons"], "--mask must be"),
    (["shapley", "{model}", "--data", "digits", "--exact", "--segments", "49"], "at most 16 features"),
    (["kernelshap", "{model}", "--data", "digits", "--samples", "lots"], "--samples must be"),
    (["lime", "{model}", "--data", "digits", "--regression", "elastic"], "regression must be"),
    (["ablation", "{model}", "--data", "digits", "--baseline", "purple"], "--baseline must be"),
])
def test_bad_options_are_one_red_line(runner, mnist_onnx, args, fragment):
    result = invoke(runner, *[a.replace("{model}", str(mnist_onnx)) for a in args])
    assert result.exit_code == 1 and fragment in result.output and "Traceback" not in result.output


def test_slic_mask_gives_the_librarys_superpixels(runner, tmp_path, mnist_onnx, model, x):
    pytest.importorskip("skimage")
    result = invoke(runner, "lime", mnist_onnx, "--data", "digits", "--count", "2", "--mask", "slic", "--segments", "20",
                    "--samples", "50", "--regression", "linear", "-o", tmp_path)
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(np.load(tmp_path / "lime.npy"),
                               onnxsight.lime(model, x, feature_mask="slic", segments=20, samples=50, regression="linear"),
                               rtol=1e-5, atol=1e-6)
