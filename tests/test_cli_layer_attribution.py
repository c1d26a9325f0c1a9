"""gradientshap, layer-ig, conductance and neuron through typer's runner: the library's numbers,
layer-shaped .npy files, pictures upsampled to the image, one-line errors."""

from __future__ import annotations

import json

import cv2
import numpy as np
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


@pytest.mark.parametrize("command", ["gradientshap", "layer-ig", "conductance", "neuron"])
def test_every_command_has_help(runner, command):
    result = invoke(runner, command, "--help")
    assert result.exit_code == 0 and "Usage" in result.stdout


@pytest.mark.parametrize(
    ("command", "options", "reference"),
    [
        ("gradientshap", ["--samples", "3", "--stdevs", "0.1", "--seed", "2"],
         lambda m, x, t: onnxsight.gradient_shap(m, x, t, samples=3, stdevs=0.1, seed=2).sum(axis=3)),
        ("layer-ig", ["--layer", "conv2d_2", "--steps", "8"],
         lambda m, x, t: onnxsight.layer_integrated_gradients(m, x, t, layer="conv2d_2", steps=8)),
        ("conductance", ["--layer", "conv2d_2", "--steps", "8", "--method", "gausslegendre"],
         lambda m, x, t: onnxsight.layer_conductance(m, x, t, layer="conv2d_2", steps=8, method="gausslegendre")),
        ("layer-ig", ["--layer", "dense_1", "--steps", "8", "--baseline", "0.5"],
         lambda m, x, t: onnxsight.layer_integrated_gradients(m, x, t, layer="dense_1", steps=8, baseline=0.5)),
    ],
)
def test_commands_write_the_librarys_maps(runner, tmp_path, mnist_onnx, model, x, command, options, reference):
    result = invoke(runner, command, mnist_onnx, "--data", "digits", "--count", "3", "--target", "3,1,4",
                    *options, "-o", tmp_path)
    assert result.exit_code == 0, result.output
    want = reference(model, x, [3, 1, 4])
    got = np.load(tmp_path / f"{command}.npy")
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    summary = json.loads((tmp_path / f"{command}.json").read_text())
    assert [row["target"] for row in summary["images"]] == [3, 1, 4]
    spatial = want.ndim == 3 or (want.ndim == 4 and command != "gradientshap")
    figures = sorted(tmp_path.glob(f"digits_0_*_{command}.png"))
    assert len(figures) == (1 if spatial else 0)
    if figures:
        figure = cv2.imread(str(figures[0]))
        assert figure is not None and figure.shape[1] > 3 * figure.shape[0] - 40  # input | map | overlay
    if command != "gradientshap":
        gaps = summary["options"]["completeness_gap"]
        assert len(gaps) == 3 and all(g >= 0 for g in gaps)


def test_layer_ig_picture_is_the_channel_sum_upsampled(mnist_onnx, model, x):
    from onnxsight.cli.layer_attribution import layer_pictures
    from onnxsight.kernels.cam import upsample

    maps = onnxsight.layer_integrated_gradients(model, x, layer="conv2d_2", steps=4)
    pictures = layer_pictures(model, x, "conv2d_2", maps)
    np.testing.assert_allclose(pictures, upsample(maps.sum(axis=3), (28, 28)))


@pytest.mark.parametrize(("options", "reference"), [
    (["--neuron", "2"], lambda m, x: onnxsight.neuron_gradient(m, x, layer="conv2d_2", neuron=2).sum(axis=3)),
    (["--neuron", "3,4,2", "--method", "ig", "--steps", "6"],
     lambda m, x: onnxsight.neuron_integrated_gradients(m, x, layer="conv2d_2", neuron=(3, 4, 2), steps=6).sum(axis=3)),
])
def test_neuron_writes_input_maps(runner, tmp_path, mnist_onnx, model, x, options, reference):
    result = invoke(runner, "neuron", mnist_onnx, "--layer", "conv2d_2", *options, "--data", "digits", "--count", "3",
                    "-o", tmp_path)
    assert result.exit_code == 0, result.output
    want = reference(model, x)
    np.testing.assert_allclose(np.load(tmp_path / "neuron.npy"), want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    assert len(list(tmp_path.glob("digits_*_neuron.png"))) == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["layer-ig", "{model}", "--data", "digits", "--layer", "conv9"], "unknown layer 'conv9'"),
        (["conductance", "{model}", "--data", "digits", "--layer", "conv2d_2", "--method", "simpson"], "method"),
        (["neuron", "{model}", "--data", "digits", "--layer", "conv2d_2", "--neuron", "99"], "neuron 99 out of range"),
        (["neuron", "{model}", "--data", "digits", "--layer", "conv2d_2", "--neuron", "1,2"],
         "index tuple into layer 'conv2d_2'"),
        (["neuron", "{model}", "--data", "digits", "--layer", "conv2d_2", "--neuron", "x"], "--neuron must be"),
        (["neuron", "{model}", "--data", "digits", "--layer", "conv2d_2", "--neuron", "1", "--method", "deeplift"],
         "--method must be one of"),
        (["gradientshap", "{model}", "--data", "digits", "--baselines", "purple"], "--baselines must be"),
    ],
)
def test_bad_options_are_one_line_errors(runner, tmp_path, mnist_onnx, args, message):
    result = invoke(runner, *(a.format(model=mnist_onnx) for a in args), "-o", tmp_path)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
