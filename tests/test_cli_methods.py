"""The attribution commands through typer's runner: files written, numbers equal to the library's, clear errors."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

import onnxsight
from onnxsight.cli.app import app

COMMANDS = ["saliency", "smoothgrad", "ig", "gradcam", "occlusion", "class-saliency", "top-k", "embed"]


@pytest.fixture(scope="module")
def runner():
    return CliRunner()


def invoke(runner, *args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def x(digits_data):
    return digits_data.x_test[:3]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_method_command_has_help(runner, command):
    result = invoke(runner, command, "--help")
    assert result.exit_code == 0 and "Usage" in result.stdout


@pytest.mark.parametrize(
    ("command", "options", "reference"),
    [
        ("saliency", ["--modifier", "guided"], lambda m, x, t: onnxsight.saliency(m, x, target=t, modifier="guided")),
        ("smoothgrad", ["--samples", "4", "--seed", "3"],
         lambda m, x, t: onnxsight.saliency(m, x, target=t, smooth_samples=4, seed=3)),
        ("gradcam", ["--variant", "gradcam++", "--layer", "conv2d_2"],
         lambda m, x, t: onnxsight.gradcam(m, x, target=t, variant="gradcam++", layer="conv2d_2")),
        ("gradcam", ["--modifier", "deconv"], lambda m, x, t: onnxsight.gradcam(m, x, target=t, modifier="deconv")),
        ("occlusion", ["--window", "11", "--stride", "4"],
         lambda m, x, t: onnxsight.occlusion(m, x, target=t, window=11, stride=4)),
        ("gradcam", ["--variant", "gradcam++", "--convention", "tf-keras-vis"],
         lambda m, x, t: onnxsight.gradcam(m, x, target=t, variant="gradcam++", convention="tf-keras-vis")),
        ("gradcam", ["--guided", "--upsample", "align_corners"],
         lambda m, x, t: onnxsight.gradcam(m, x, target=t, guided=True, upsample="align_corners")),
        ("gradcam", ["--variant", "fullgrad", "--aug-smooth"],
         lambda m, x, t: onnxsight.gradcam(m, x, target=t, variant="fullgrad", aug_smooth=True)),
        ("occlusion", ["--window", "8", "--stride", "6", "--last-window", "cropped"],
         lambda m, x, t: onnxsight.occlusion(m, x, target=t, window=8, stride=6, last_window="cropped")),
    ],
)
def test_method_commands_write_the_librarys_maps(runner, tmp_path, mnist_onnx, model, x, command, options, reference):
    result = invoke(runner, command, mnist_onnx, "--data", "digits", "--count", "3", "--target", "3,1,4",
                    *options, "-o", tmp_path)
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(np.load(tmp_path / f"{command}.npy"), reference(model, x, [3, 1, 4]), rtol=1e-5, atol=1e-7)
    summary = json.loads((tmp_path / f"{command}.json").read_text())
    assert [row["target"] for row in summary["images"]] == [3, 1, 4]
    assert all("label" in row and "predicted" in row for row in summary["images"])
    figure = cv2.imread(str(next(tmp_path.glob(f"digits_0_*_{command}.png"))))
    assert figure is not None and figure.shape[1] > 3 * figure.shape[0] - 40  # input | map | overlay


def test_ig_reports_the_completeness_gap_per_image(runner, tmp_path, mnist_onnx):
    result = invoke(runner, "ig", mnist_onnx, "--data", "digits", "--count", "2", "--steps", "64", "-o", tmp_path)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "ig.json").read_text())
    assert len(summary["options"]["completeness_gap"]) == 2


def test_class_saliency_top_k_and_embed_write_their_views(runner, tmp_path, mnist_onnx, model, digits_data):
    assert invoke(runner, "class-saliency", mnist_onnx, "--class", "3", "--count", "20", "-o", tmp_path / "cs").exit_code == 0
    mean = np.load(tmp_path / "cs" / "class3_mean.npy")
    chosen = np.flatnonzero(digits_data.y_test == 3)[:20]
    expected = onnxsight.saliency(model, digits_data.x_test[chosen], target=3, modifier="guided").mean(axis=0)
    np.testing.assert_allclose(mean, expected, rtol=1e-5, atol=1e-8)
    top = invoke(runner, "top-k", mnist_onnx, "-l", "dense_1", "--k", "4", "--unit", "2", "--occlusion", "-o", tmp_path / "tk")
    assert top.exit_code == 0, top.output
    listing = json.loads((tmp_path / "tk" / "dense_1_top4.json").read_text())
    activations = model.activations(digits_data.x_test, ["dense_1"])["dense_1"][:, 2]
    assert listing["images"][0] == np.argsort(-activations, kind="stable")[:4].tolist()
    embed = invoke(runner, "embed", mnist_onnx, "-l", "dense_1", "--count", "60", "--method", "pca", "-o", tmp_path / "em")
    assert embed.exit_code == 0 and np.load(tmp_path / "em" / "dense_1_pca.npy").shape == (60, 2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["gradcam", "{model}", "--data", "digits", "--layer", "conv9"], "unknown layer 'conv9'"),
        (["gradcam", "{model}", "--data", "digits", "--layer", "dense_1"], "dense_1"),
        (["gradcam", "{model}", "--data", "digits", "--variant", "fullgrad", "--layer", "conv2d_2"], "takes no layer"),
        (["gradcam", "{model}", "--data", "digits", "--variant", "magic"], "magic"),
        (["occlusion", "{model}", "--data", "digits", "--window", "40"], "window"),
        (["saliency", "{model}", "--data", "digits", "--target", "three"], "--target must be"),
        (["saliency", "{model}", "--data", "digits", "--target", "12"], "out of range"),
        (["ig", "{model}", "--data", "digits", "--baseline", "purple"], "--baseline must be"),
        (["ig", "{model}", "--data", "digits", "--reduce", "median"], "--reduce must be one of"),
        (["saliency", "{model}", "--data", "digits", "--reduce", "median"], "reduce must be one of"),  # before the estimate
        (["smoothgrad", "{model}", "--data", "digits", "--aggregate", "median"], "smooth_aggregate must be one of"),
        (["saliency", "{model}"], "give images as arguments or a dataset with --data"),
        (["embed", "{model}", "-l", "dense_1", "--method", "umap"], "unknown embedding method"),
        (["class-saliency", "{model}", "--class", "42"], "class 42 has 0 images"),
    ],
)
def test_bad_options_are_one_line_errors(runner, tmp_path, mnist_onnx, args, message):
    result = invoke(runner, *(a.format(model=mnist_onnx) for a in args), "-o", tmp_path)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
