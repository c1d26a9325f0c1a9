"""Defaults that scale from 28×28 digits to 224×224 photos, progress callbacks, memory-sized batches,
and the CLI's estimate line, --dry-run and progress kept off stdout."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
from rich.progress import TimeRemainingColumn
from typer.testing import CliRunner

import onnxsight
from onnxsight.cli.app import app
from onnxsight.cli.progress import Rate, bar, duration
from onnxsight.methods import common
from onnxsight.methods.cam import gradcam
from onnxsight.methods.integrated_gradients import integrated_gradients
from onnxsight.methods.maximize import maximize
from onnxsight.methods.occlusion import default_window, occlusion
from onnxsight.methods.saliency import saliency
from tests.foreign_models import photo_cnn

DIGITS = list(range(10))


@pytest.fixture(scope="module")
def photo():
    """A 224×224 random-weight CNN (5 classes) on which every class can be reached from grey."""
    return onnxsight.load(photo_cnn(seed=1), device="cpu")


@pytest.fixture(scope="module")
def photo_x():
    return np.random.default_rng(0).uniform(0, 1, (1, 3, 224, 224)).astype(np.float32)


@pytest.fixture(scope="module")
def x(digits_data):
    return digits_data.x_test[:3]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


# ---- occlusion window -------------------------------------------------------------------------
@pytest.mark.parametrize(("size", "window", "stride"), [
    (8, 4, 2), (28, 4, 2), (32, 4, 2), (63, 4, 2), (112, 8, 4), (224, 16, 8), (3, 3, 1),
])
def test_default_occlusion_window_is_a_fourteenth_of_the_shorter_side(size, window, stride):
    assert default_window(size, size) == ((window, window), (stride, stride))
    assert default_window(size, 2 * size) == ((window, window), (stride, stride))


def test_a_given_window_without_a_stride_strides_by_half_of_it():
    assert default_window(28, 28, window=11) == ((11, 11), (5, 5))
    assert default_window(28, 28, window=(5, 1), stride=3) == ((5, 1), (3, 3))


def test_occlusion_uses_the_scaled_window_by_default(model, x, photo, photo_x):
    np.testing.assert_array_equal(occlusion(model, x), occlusion(model, x, window=4, stride=2))
    np.testing.assert_array_equal(occlusion(photo, photo_x), occlusion(photo, photo_x, window=16, stride=8))


# ---- progress callbacks -----------------------------------------------------------------------
def test_occlusion_reports_every_occluded_copy(model, x):
    calls = []
    maps = occlusion(model, x, window=11, stride=4, batch_size=50, progress=lambda done, total: calls.append((done, total)))
    positions = 6 * 6  # starts 0, 4, 8, 12, 16 and the flush 17, on each axis
    rows = 3 * (positions + 1)  # each image's occluded copies and its clean copy, scored in the same runs
    assert calls[-1] == (rows, rows) and len(calls) == 3  # 111 rows, 50 per run
    assert [done for done, _ in calls] == [50, 100, 111]
    np.testing.assert_array_equal(maps, occlusion(model, x, window=11, stride=4, batch_size=50))


def test_integrated_gradients_reports_every_path_point(model, x):
    calls = []
    got = integrated_gradients(model, x, steps=25, batch_size=20, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(20 * i, 75) for i in (1, 2, 3)] + [(75, 75)]
    np.testing.assert_array_equal(got, integrated_gradients(model, x, steps=25, batch_size=20))


def test_smoothgrad_and_saliency_report_every_gradient(model, x):
    calls = []
    saliency(model, x, smooth_samples=10, batch_size=16, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (30, 30) and [d for d, _ in calls] == [16, 30]
    calls.clear()
    saliency(model, x, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(3, 3)]


@pytest.mark.parametrize(("variant", "total"), [("gradcam", 3), ("scorecam", 3 * 64)])
def test_gradcam_reports_its_images_or_score_cams_masked_copies(model, x, variant, total):
    calls = []
    got = gradcam(model, x, variant=variant, batch_size=2, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (total, total) and len(calls) == -(-total // 2)
    np.testing.assert_array_equal(got, gradcam(model, x, variant=variant, batch_size=2))


# ---- memory-sized gradient batches ------------------------------------------------------------
def test_gradient_batch_size_is_64_unless_memory_is_short(model, monkeypatch):
    assert common.gradient_batch_size(model) == 64
    per_row = 2 * sum(4 * int(np.prod(s[1:])) for s in model.shapes.values()
                      if len(s) > 1 and s[0] is None and None not in s[1:])
    monkeypatch.setattr(common, "available_memory", lambda: 4 * 10 * per_row)
    assert common.gradient_batch_size(model) == 10
    monkeypatch.setattr(common, "available_memory", lambda: 0)
    assert common.gradient_batch_size(model) == 1
    monkeypatch.setattr(common, "available_memory", lambda: None)
    assert common.gradient_batch_size(model) == 64


def test_default_gradient_batches_give_the_results_of_64_rows(model, x, monkeypatch):
    np.testing.assert_array_equal(integrated_gradients(model, x), integrated_gradients(model, x, batch_size=64))
    smooth = saliency(model, x, smooth_samples=8)
    np.testing.assert_array_equal(smooth, saliency(model, x, smooth_samples=8, batch_size=64))
    monkeypatch.setattr(common, "available_memory", lambda: 0)  # one row per run: the same maps
    np.testing.assert_allclose(saliency(model, x, smooth_samples=8), smooth, rtol=1e-5, atol=1e-7)


def test_available_memory_is_read():
    available = common.available_memory()
    assert available is None or available > 2**20


# ---- maximization defaults --------------------------------------------------------------------
def test_maximizing_with_defaults_reaches_every_digit(model):
    result = maximize(model, "preds", DIGITS, check_every=0)
    assert (model.predict(result.images).argmax(axis=1) == DIGITS).sum() >= 9
    assert np.allclose(result.options["lr"], 0.05, rtol=0.5), result.options["lr"]  # seed 004's step size, about


def test_maximizing_with_defaults_reaches_every_class_of_a_224_photo_model(photo):
    """Default steps and lr; no float64 checks (onnx.reference takes ~15 s per check at 224×224)."""
    grey = photo.predict(np.full((1, 3, 224, 224), 0.5, np.float32)).argmax()
    result = maximize(photo, "logits", list(range(5)), check_every=0)
    assert photo.predict(result.images).argmax(axis=1).tolist() == [0, 1, 2, 3, 4], f"grey is class {grey}"
    assert min(result.options["lr"]) > 10  # its input gradients are ~1000× smaller than the digits CNN's


def test_the_first_step_moves_half_a_percent_of_the_range(photo):
    result = maximize(photo, "logits", [0, 3], steps=1, value_range=(0, 4), check_every=0)
    rms = np.sqrt(np.square(result.images - 2.0).reshape(2, -1).mean(axis=1))
    np.testing.assert_allclose(rms, 0.005 * 4, rtol=1e-4)


# ---- CLI: estimates, dry runs, progress off stdout ----------------------------------------------
def test_dry_run_prints_the_passes_and_writes_nothing(mnist_onnx, tmp_path):
    occ = invoke("occlusion", mnist_onnx, "--data", "digits", "--count", "3", "--dry-run", "-o", tmp_path / "occ")
    assert occ.exit_code == 0, occ.output
    assert re.fullmatch(r"occlusion: 510 forward passes; about .* per pass, timed on 8\)\n", occ.stdout), occ.stdout
    ig = invoke("ig", mnist_onnx, "--data", "digits", "--count", "3", "--steps", "20", "--dry-run", "-o", tmp_path / "ig")
    assert ig.exit_code == 0 and ig.stdout.startswith("ig: 60 gradient passes; about "), ig.output
    smooth = invoke("smoothgrad", mnist_onnx, "--data", "digits", "--count", "2", "--dry-run", "-o", tmp_path / "sg")
    assert smooth.exit_code == 0 and smooth.stdout.startswith("smoothgrad: 40 gradient passes; about "), smooth.output
    cams = invoke("gradcam", mnist_onnx, "--data", "digits", "--count", "2", "--variant", "scorecam", "--dry-run",
                  "-o", tmp_path / "gc")
    assert cams.exit_code == 0 and cams.stdout.startswith("gradcam: 128 forward passes; about "), cams.output
    most = invoke("maximize", mnist_onnx, "--layer", "preds", "--unit", "3", "--unit", "4", "--dry-run", "-o", tmp_path)
    assert most.exit_code == 0 and most.stdout.startswith(
        "maximize: 400 gradient passes, plus up to 4 float64 finite-difference checks (not timed); about "), most.output
    assert not list(tmp_path.iterdir())


def test_the_estimate_goes_to_stderr_and_the_options_record_the_window(mnist_onnx, tmp_path):
    result = invoke("occlusion", mnist_onnx, "--data", "digits", "--count", "2", "-o", tmp_path)
    assert result.exit_code == 0, result.output
    assert "occlusion: 340 forward passes" in result.stderr and "passes" not in result.stdout
    options = json.loads((tmp_path / "occlusion.json").read_text())["options"]
    assert (options["window"], options["stride"]) == (4, 2)


@pytest.mark.parametrize(("seconds", "text"), [(0.04, "0.0 s"), (3.25, "3.2 s"), (42, "42 s"), (185, "3 min 5 s"),
                                               (7800, "2 h 10 min")])
def test_durations_read_naturally(seconds, text):
    assert duration(seconds) == text


def test_bars_show_the_rate_and_the_time_left():
    columns = bar("images").columns
    assert any(isinstance(c, TimeRemainingColumn) for c in columns)
    rate = next(c for c in columns if isinstance(c, Rate))
    assert rate.render(SimpleNamespace(speed=2.54)).plain == "2.5 images/s"
