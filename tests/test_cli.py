"""Every command through typer's runner on a foreign ONNX model: outputs, files and one-line errors."""

from __future__ import annotations

import json

import cv2
import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from onnxsight import __version__, load
from onnxsight.cli.app import app
from tests.foreign_models import nchw_cnn

COMMANDS = ["convert", "inspect", "predict", "activations", "filters", "augment", "gradcheck", "maximize", "demo"]


@pytest.fixture()
def runner():
    return CliRunner()


@pytest.fixture()
def files(tmp_path):
    model = tmp_path / "zoo.onnx"
    onnx.save(nchw_cnn(weights_as_inputs=True), model)
    batch = np.random.default_rng(0).random((3, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "batch.npy", batch)
    picture = (np.random.default_rng(1).random((24, 16, 3)) * 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "photo.png"), picture)
    return {"model": model, "batch": tmp_path / "batch.npy", "png": tmp_path / "photo.png", "dir": tmp_path}


def invoke(runner, *args):
    return runner.invoke(app, [str(a) for a in args])


def test_version_and_help(runner):
    assert invoke(runner, "--version").stdout.strip() == f"onnxsight {__version__}"
    for command in COMMANDS:
        result = invoke(runner, command, "--help")
        assert result.exit_code == 0 and "Usage" in result.stdout, command


def test_inspect_prints_the_layer_table_and_json(runner, files):
    table = invoke(runner, "inspect", files["model"])
    assert table.exit_code == 0
    assert "conv1" in table.stdout and "Gemm" in table.stdout and "Total params: 437" in table.stdout
    summary = json.loads(invoke(runner, "inspect", files["model"], "--json").stdout)
    assert summary["logits"] == "fc" and summary["layout"] == "NCHW"
    assert [row["name"] for row in summary["layers"]][:2] == ["conv1", "relu1"]


def test_predict_reports_top_classes_for_npy_rows_and_images(runner, files):
    result = invoke(runner, "predict", files["model"], files["batch"], files["png"], "--top", "2", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["image"] for r in rows] == ["batch_0", "batch_1", "batch_2", "photo"]
    expected = load(files["model"], device="cpu").predict(np.load(files["batch"]))
    assert rows[1]["top"][0]["class"] == int(expected[1].argmax())
    assert rows[1]["top"][0]["score"] == pytest.approx(float(expected[1].max()), rel=1e-5)


def test_activations_writes_grids_and_the_raw_batch(runner, files):
    out = files["dir"] / "acts"
    result = invoke(runner, "activations", files["model"], files["batch"], files["png"], "-l", "conv1", "-l", "fc", "-o", out)
    assert result.exit_code == 0, result.output
    expected = load(files["model"], device="cpu").activations(np.load(files["batch"]), ["conv1"])["conv1"]
    np.testing.assert_allclose(np.load(out / "conv1.npy")[:3], expected, rtol=1e-6)
    grid = cv2.imread(str(out / "photo_conv1.png"))
    assert grid is not None and grid.shape[1] > grid.shape[0]
    assert (out / "batch_2_fc.png").is_file()


def test_existing_results_are_kept_unless_forced(runner, files):
    out = files["dir"] / "acts"
    invoke(runner, "activations", files["model"], files["batch"], "-l", "conv1", "-o", out)
    before = (out / "conv1.npy").read_bytes()
    again = invoke(runner, "activations", files["model"], files["png"], "-l", "conv1", "-o", out)
    assert again.exit_code == 1 and "already exists; pass --force" in again.stderr
    assert (out / "conv1.npy").read_bytes() == before
    forced = invoke(runner, "activations", files["model"], files["png"], "-l", "conv1", "-o", out, "--force")
    assert forced.exit_code == 0 and np.load(out / "conv1.npy").shape[0] == 1


def test_filters_draws_conv_weights(runner, files):
    out = files["dir"] / "filters"
    result = invoke(runner, "filters", files["model"], "--layer", "conv1", "-o", out)
    assert result.exit_code == 0, result.output
    assert np.load(out / "conv1_filters.npy").shape == (4, 3, 3, 3)
    assert cv2.imread(str(out / "conv1_filters.png")) is not None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["inspect", "{dir}/absent.onnx"], "model file not found"),
        (["predict", "{model}", "{dir}/absent.png"], "image file not found"),
        (["predict", "{model}", "{dir}/notes.txt"], "unsupported image type"),
        (["activations", "{model}", "{batch}", "-l", "conv9", "-o", "{dir}/o"], "unknown layer 'conv9'"),
        (["filters", "{model}", "-l", "pool1", "-o", "{dir}/o"], "not a convolution"),
        (["predict", "{model}", "{batch}", "--device", "tpu"], "unknown device 'tpu'"),
        (["predict", "{model}", "{png}", "--mean", "0.1", "--mean", "0.2"], "mean needs 1 or 3 values"),
        (["augment", "{model}", "-o", "{dir}/a.onnx", "--modifier", "smooth"], "unknown modifier 'smooth'"),
        (["gradcheck", "{model}", "--wrt", "conv7"], "unknown layer 'conv7'"),
        (["gradcheck", "{model}", "--input-shape", "3,x"], "--input-shape must be comma-separated"),
    ],
)
def test_bad_input_is_one_red_line_and_exit_code_1(runner, files, args, message):
    (files["dir"] / "notes.txt").write_text("hello")
    result = invoke(runner, *(a.format(**files) for a in args))
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_augment_writes_a_servable_gradient_model(runner, files):
    target = files["dir"] / "explain.onnx"
    result = invoke(runner, "augment", files["model"], "--wrt", "input", "--wrt", "conv1", "--modifier", "guided",
                    "--activation", "pool1", "-o", target)
    assert result.exit_code == 0, result.output
    augmented = onnx.load(str(target))
    onnx.checker.check_model(augmented, full_check=True)
    info = json.loads({p.key: p.value for p in augmented.metadata_props}["onnxsight.augmented"])
    assert info["modifier"] == "guided" and info["activations"] == {"pool1": "pool1"}
    again = invoke(runner, "augment", files["model"], "-o", target)
    assert again.exit_code == 1 and "already exists" in again.stderr


def test_gradcheck_reports_every_layer_and_passes(runner, files):
    result = invoke(runner, "gradcheck", files["model"], "--all-layers", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] and report["precision"] == "float64"
    assert [row["wrt"] for row in report["rows"]] == ["input", "conv1", "relu1", "pool1", "flatten", "fc"]


def test_gradcheck_exits_1_when_the_error_exceeds_the_tolerance(runner, files):
    result = invoke(runner, "gradcheck", files["model"], "--precision", "float32", "--tolerance", "1e-12")
    assert result.exit_code == 1
    assert "FAIL" in result.stdout and "gradient check failed: input" in result.stderr


def test_convert_writes_onnx_from_a_keras_file_and_reports_parity(runner, tmp_path):
    from onnxsight.demo.architectures import cifar_cnn5

    source = tmp_path / "cnn5.keras"
    keras_model = cifar_cnn5()
    keras_model.save(source)
    target = tmp_path / "cnn5.onnx"
    result = invoke(runner, "convert", source, target)
    assert result.exit_code == 0, result.output
    assert "max |keras - onnx|" in result.stdout and "logits 'logits'" in result.stdout
    layers = load(target, device="cpu").layers
    assert [layer.name for layer in layers] == [layer.name for layer in keras_model.layers]
    assert [layer.params for layer in layers] == [layer.count_params() for layer in keras_model.layers]  # as summary()
    table = invoke(runner, "inspect", target)
    assert "Total params: 122,570" in table.stdout  # seed 001's summary
    again = invoke(runner, "convert", source, target)
    assert again.exit_code == 1 and "already exists" in again.stderr
    missing = invoke(runner, "convert", tmp_path / "absent.h5", tmp_path / "x.onnx")
    assert missing.exit_code == 1 and "absent.h5" in missing.stderr and "Traceback" not in missing.output
