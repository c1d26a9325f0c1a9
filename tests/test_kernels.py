"""Pure numerics: image preparation, normalisation, colormaps and grids."""

from __future__ import annotations

import numpy as np
import pytest

from onnxsight.errors import InvalidArgument
from onnxsight.kernels.colors import colorize, normalize
from onnxsight.kernels.grids import feature_grid, filter_grid, tile
from onnxsight.kernels.images import prepare, to_channels


def test_prepare_scales_integer_images_resizes_and_orders_channels_first():
    image = np.full((16, 20, 3), 255, np.uint8)
    image[..., 0] = 0
    x = prepare([image], (None, 3, 8, 10), "NCHW")
    assert x.shape == (1, 3, 8, 10) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], 0.0)
    np.testing.assert_allclose(x[0, 1:], 1.0)


def test_prepare_converts_rgb_to_grey_and_applies_mean_and_std():
    image = np.full((4, 4, 3), 0.5, np.float32)
    x = prepare([image], (None, 4, 4, 1), "NHWC", mean=[0.25], std=[0.5])
    assert x.shape == (1, 4, 4, 1)
    np.testing.assert_allclose(x, 0.5, atol=1e-6)


def test_prepare_rejects_a_mean_with_the_wrong_channel_count():
    with pytest.raises(InvalidArgument, match="mean needs 1 or 3 values"):
        prepare([np.zeros((4, 4, 3), np.float32)], (None, 4, 4, 3), "NHWC", mean=[0.1, 0.2])


def test_to_channels_grey_to_rgb_drops_alpha_and_refuses_odd_counts():
    assert to_channels(np.zeros((2, 2)), 3).shape == (2, 2, 3)
    assert to_channels(np.zeros((2, 2, 4)), 3).shape == (2, 2, 3)
    with pytest.raises(InvalidArgument, match="5-channel"):
        to_channels(np.zeros((2, 2, 5)), 3)


def test_normalize_minmax_and_symmetric():
    np.testing.assert_allclose(normalize(np.array([2.0, 4.0, 6.0])), [0, 0.5, 1])
    np.testing.assert_allclose(normalize(np.array([-2.0, 0.0, 1.0]), symmetric=True), [0, 0.5, 0.75])
    np.testing.assert_allclose(normalize(np.ones(3)), 0)


def test_bwr_colormap_runs_blue_white_red():
    rgb = colorize(np.array([[0.0, 0.5, 1.0]]), "bwr")
    np.testing.assert_array_equal(rgb[0], [[0, 0, 255], [255, 255, 255], [255, 0, 0]])
    with pytest.raises(InvalidArgument, match="unknown colormap"):
        colorize(np.zeros((1, 1)), "rainbow")


def test_tile_lays_out_rows_and_columns():
    tiles = [np.full((4, 4, 3), i * 40, np.uint8) for i in range(5)]
    grid = tile(tiles, columns=2, cell=8, gap=2)
    assert grid.shape == (3 * 10 + 2, 2 * 10 + 2, 3)
    assert (grid[2:10, 12:20] == 40).all()  # second tile, first row
    assert (grid[22:30, 2:10] == 160).all()  # fifth tile, third row


def test_feature_grid_shows_each_channel_and_dense_vectors():
    maps = np.random.default_rng(0).random((6, 5, 5))
    assert feature_grid(maps, columns=3).shape[1] > feature_grid(maps, columns=2).shape[1]
    assert feature_grid(np.arange(10.0)).ndim == 3


def test_filter_grid_draws_rgb_and_signed_kernels():
    rgb = filter_grid(np.random.default_rng(0).normal(size=(4, 3, 3, 3)))
    signed = filter_grid(np.random.default_rng(0).normal(size=(4, 8, 3, 3)))
    assert rgb.dtype == np.uint8 and signed.shape == rgb.shape


def test_softmax_rows_sum_to_one_without_overflow():
    from onnxsight.kernels.stats import softmax

    scores = np.array([[1.0, 2.0, 3.0], [1000.0, 1000.0, 990.0]], np.float32)
    p = softmax(scores)
    assert p.dtype == np.float64
    np.testing.assert_allclose(p[0], np.exp([1, 2, 3]) / np.exp([1, 2, 3]).sum(), rtol=1e-12)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
    assert p[1, 0] == p[1, 1] and np.isfinite(p).all()
