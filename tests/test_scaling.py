"""Defaults that scale from 28×28 digits to 224×224 photos, progress callbacks and memory-sized batches."""

from __future__ import annotations

import numpy as np
import pytest

import onnxsight
from onnxsight.methods import common
from onnxsight.methods.integrated_gradients import integrated_gradients
from onnxsight.methods.occlusion import default_window, occlusion
from onnxsight.methods.saliency import saliency
from tests.foreign_models import photo_cnn


@pytest.fixture(scope="module")
def photo():
    """A 224×224 random-weight CNN (5 classes)."""
    return onnxsight.load(photo_cnn(seed=1), device="cpu")


@pytest.fixture(scope="module")
def photo_x():
    return np.random.default_rng(0).uniform(0, 1, (1, 3, 224, 224)).astype(np.float32)


@pytest.fixture(scope="module")
def x(digits_data):
    return digits_data.x_test[:3]


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
    assert calls[-1] == (3 * positions, 3 * positions) and len(calls) == 3  # 108 copies, 50 rows per run
    assert [done for done, _ in calls] == [50, 100, 108]
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
