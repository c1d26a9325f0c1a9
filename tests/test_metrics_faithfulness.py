"""Faithfulness metrics against answers computed by hand in float64 numpy: a linear ONNX model whose
deletion/insertion curves are sums of known pixel contributions, ROAD's imputation against a dense
solve of the same linear system, MuFidelity's ±1 for exact maps, their errors, and the seed-000 CNN."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxsight
from onnxsight.errors import InvalidArgument
from onnxsight.metrics import (
    auc, confidence_change, deletion, deletion_curve, insertion, insertion_curve, mufidelity, pixel_flipping, road,
    road_curve,
)
from onnxsight.metrics.imputation import noisy_linear_impute

H, W, C, K = 6, 5, 3, 3
F32 = 1e-5  # float32 scores: a few ulps of the largest score term, relative to the curve's scale


def relative(got, want) -> float:
    return float(np.abs(np.asarray(got, np.float64) - want).max() / max(np.abs(want).max(), 1e-30))


class Linear:
    """score = x·w + b as ONNX (onnx.helper, output y is the logits), in NHWC or NCHW, and in float64 numpy."""

    def __init__(self, tmp_path, layout="NHWC", seed=0):
        rng = np.random.default_rng(seed)
        self.layout, self.axis = layout, 3 if layout == "NHWC" else 1
        self.shape = [H, W, C] if layout == "NHWC" else [C, H, W]
        self.w = rng.normal(size=(H * W * C, K)).astype(np.float32)
        self.b = rng.normal(size=K).astype(np.float32)
        nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["m"]),
                 helper.make_node("Add", ["m", "b"], ["y"])]
        graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, *self.shape])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, K])],
                                  [numpy_helper.from_array(self.w, "w"), numpy_helper.from_array(self.b, "b")])
        path = tmp_path / f"linear_{layout}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
        self.model = onnxsight.load(path, device="cpu")

    def images(self, n=3, seed=5):
        return np.random.default_rng(seed).normal(size=(n, *self.shape)).astype(np.float32)

    def score(self, x, target):
        return x.reshape(len(x), -1).astype(np.float64) @ self.w[:, target] + self.b[target]

    def contributions(self, x, target):
        """(N, H, W) each pixel's share of the score: gradient × input summed over channels (exact for a linear model)."""
        wx = x.astype(np.float64) * self.w[:, target].reshape(self.shape)
        return wx.sum(axis=self.axis)

    def at_pixels(self, x, other, pixels):
        """x where ``pixels`` (N, H, W) is False, ``other`` where it is True (all channels)."""
        return np.where(np.expand_dims(pixels, self.axis), other, x)


@pytest.fixture(scope="module", params=["NHWC", "NCHW"])
def linear(tmp_path_factory, request):
    return Linear(tmp_path_factory.mktemp("faith"), request.param)


@pytest.fixture(scope="module")
def nhwc(tmp_path_factory):
    return Linear(tmp_path_factory.mktemp("faith_nhwc"), "NHWC", seed=1)


def reference_curve(toy, x, maps, target, steps, order, fill, inserting=False):
    """The deletion (insertion) curve from its definition: a stable sort of the map, ⌊k·P/steps⌋ pixels switched."""
    n, pixels = len(x), H * W
    key = -maps.reshape(n, -1) if order == "morf" else maps.reshape(n, -1)
    by = np.argsort(key, axis=1, kind="stable")
    curve = np.empty((n, steps + 1))
    for k in range(steps + 1):
        switched = np.zeros((n, pixels), bool)
        for i in range(n):
            switched[i, by[i, :k * pixels // steps]] = True
        switched = switched.reshape(n, H, W)
        image = toy.at_pixels(fill, x, switched) if inserting else toy.at_pixels(x, fill, switched)
        curve[:, k] = toy.score(image, target)
    return curve


@pytest.mark.parametrize("order", ["morf", "lerf"])
@pytest.mark.parametrize("fill", [0.0, 0.7, "mean"])
def test_deletion_and_insertion_curves_match_the_definition(linear, order, fill):
    x = linear.images()
    maps = np.random.default_rng(2).normal(size=(len(x), H, W))
    maps[:, 0, :2] = maps[:, 1, 3, None]  # ties, broken in row-major order
    if fill == "mean":
        spatial = tuple(a for a in (1, 2, 3) if a != linear.axis)
        filled = np.broadcast_to(x.astype(np.float64).mean(axis=spatial, keepdims=True), x.shape)
    else:
        filled = np.full(x.shape, fill)
    for inserting, curve_of, area_of in [(False, deletion_curve, deletion), (True, insertion_curve, insertion)]:
        want = reference_curve(linear, x, maps, 1, 12, order, filled, inserting)
        got = curve_of(linear.model, x, maps, 1, steps=12, order=order, fill=fill)
        assert got.shape == (3, 13) and got.dtype == np.float64
        assert relative(got, want) < F32, (inserting, order, fill)
        area = np.array([np.trapezoid(c, np.linspace(0, 1, 13)) for c in want])
        assert relative(area_of(linear.model, x, maps, 1, steps=12, order=order, fill=fill), area) < F32


def test_morf_deletes_the_largest_contributions_first_and_lerf_reverses(linear):
    """With the exact contribution map every step removes the next contribution in sorted order."""
    x = linear.images()
    target = np.array([0, 2, 1])
    c = np.stack([linear.contributions(x[i:i + 1], t)[0] for i, t in enumerate(target)])
    morf = deletion_curve(linear.model, x, c, target, steps=H * W, order="morf")
    lerf = deletion_curve(linear.model, x, c, target, steps=H * W, order="lerf")
    descending = -np.sort(-c.reshape(3, -1), axis=1)
    scale = np.abs(morf).max()
    assert np.abs(-np.diff(morf, axis=1) - descending).max() < F32 * scale
    assert np.abs(-np.diff(lerf, axis=1) - descending[:, ::-1]).max() < F32 * scale
    assert np.allclose(morf[:, -1], lerf[:, -1], rtol=0, atol=F32 * scale)  # both end at score(0) = b
    shuffled = np.random.default_rng(0).permuted(c.reshape(3, -1), axis=1).reshape(c.shape)
    assert (auc(morf) <= deletion(linear.model, x, shuffled, target, steps=H * W) + F32 * scale).all()
    assert (deletion(linear.model, x, shuffled, target, steps=H * W) <= auc(lerf) + F32 * scale).all()
    assert relative(pixel_flipping(linear.model, x, c, target), auc(morf)) < F32


def test_insertion_ends_at_the_score_and_mirrors_deletion(linear):
    """Linear model, fill 0: deletion(k) + insertion(k) = score(x) + b at every step."""
    x = linear.images()
    c = linear.contributions(x, 2)
    kept = insertion_curve(linear.model, x, c, 2, steps=10, fill=0.0)
    removed = deletion_curve(linear.model, x, c, 2, steps=10, fill=0.0)
    clean = linear.score(x, 2)
    assert relative(kept[:, -1], clean) < F32 and relative(removed[:, 0], clean) < F32
    assert relative(kept[:, 0], np.full(3, linear.b[2])) < F32
    assert relative(kept + removed, np.broadcast_to((clean + linear.b[2])[:, None], kept.shape)) < F32
    blurred = insertion_curve(linear.model, x, c, 2, steps=4)  # the default fill: the blurred image
    assert relative(blurred[:, -1], clean) < F32


def dense_imputation(image, removed):
    """ROAD's system written densely from its definition: Σ_q w_q (v_p − v_q) = 0 over p's in-image neighbours q."""
    height, width, channels = image.shape
    unknown = [(y, x) for y in range(height) for x in range(width) if removed[y, x]]
    index = {p: i for i, p in enumerate(unknown)}
    a = np.zeros((len(unknown), len(unknown)))
    b = np.zeros((len(unknown), channels))
    for i, (y, x) in enumerate(unknown):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                qy, qx = y + dy, x + dx
                if (dy, dx) == (0, 0) or not (0 <= qy < height and 0 <= qx < width):
                    continue
                weight = 1 / 12 if dy and dx else 1 / 6
                a[i, i] += weight
                if removed[qy, qx]:
                    a[i, index[(qy, qx)]] -= weight
                else:
                    b[i] += weight * image[qy, qx]
    out = image.astype(np.float64).copy()
    out[removed] = np.linalg.solve(a, b)
    return out


def test_road_imputation_solves_the_neighbour_system():
    rng = np.random.default_rng(4)
    images = rng.normal(size=(3, 7, 6, 2))
    removed = rng.random((3, 7, 6)) < np.array([0.2, 0.5, 0.85])[:, None, None]
    removed[2, 0, :] = True  # a border row removed whole
    got = noisy_linear_impute(images, removed, noise=0.0)
    want = np.stack([dense_imputation(i, r) for i, r in zip(images, removed)])
    assert np.abs(got - want).max() < 1e-12 * np.abs(want).max()
    assert np.array_equal(got[~removed], images[~removed])
    noisy = noisy_linear_impute(np.zeros((4, 40, 40, 3)), np.ones((4, 40, 40), bool) & (np.arange(40) > 0), 0.01,
                                np.random.default_rng(1))
    assert abs(noisy[:, :, 1:].std() - 0.01) < 0.0005  # the noise of a removed region next to zeros is N(0, 0.01²)


def test_road_scores_the_imputed_images(linear):
    x = linear.images()
    maps = np.random.default_rng(3).normal(size=(3, H, W))
    fractions = (0.2, 0.5, 0.8)
    for order in ("morf", "lerf"):
        got = road_curve(linear.model, x, maps, 1, percentages=fractions, order=order, noise=0.0)
        by = np.argsort(-maps.reshape(3, -1) if order == "morf" else maps.reshape(3, -1), axis=1, kind="stable")
        want = np.empty((3, len(fractions)))
        for j, p in enumerate(fractions):
            for i in range(3):
                removed = np.zeros(H * W, bool)
                removed[by[i, :round(p * H * W)]] = True
                image = np.moveaxis(x[i].astype(np.float64), linear.axis - 1, -1)
                filled = np.moveaxis(dense_imputation(image, removed.reshape(H, W)), -1, linear.axis - 1)
                want[i, j] = linear.score(filled[None], 1)[0]
        assert relative(got, want) < F32
        assert relative(road(linear.model, x, maps, 1, percentages=fractions, order=order, noise=0.0),
                        want.mean(axis=1)) < F32
    noisy = road(linear.model, x, maps, 1, seed=3)
    assert np.array_equal(noisy, road(linear.model, x, maps, 1, seed=3))
    assert not np.array_equal(noisy, road(linear.model, x, maps, 1, seed=4))


def test_mufidelity_is_one_for_the_exact_map_of_a_linear_model(linear):
    x = linear.images()
    c = linear.contributions(x, 0)
    for fraction in (0.1, 0.5):
        got = mufidelity(linear.model, x, c, 0, subsets=40, subset_fraction=fraction, seed=1)
        assert np.abs(got - 1).max() < 1e-5
    # an affine map with a positive scale ranks subsets of one size alike; a negated map is anti-correlated
    assert np.abs(mufidelity(linear.model, x, 2 * c + 3, 0, subsets=40, seed=1) - 1).max() < 1e-5
    assert np.abs(mufidelity(linear.model, x, -c, 0, subsets=40, seed=1) + 1).max() < 1e-5
    noisy = c + np.random.default_rng(0).normal(size=c.shape) * np.abs(c).mean()
    partial = mufidelity(linear.model, x, noisy, 0, subsets=40, seed=1)
    assert (partial < 0.999).all() and (partial > 0).all()
    assert np.isnan(mufidelity(linear.model, x, c, 0, subsets=5, subset_fraction=1.0)).all()  # every S the same


def test_mufidelity_with_a_fill_is_the_correlation_of_the_drops(nhwc):
    """Fill f: score(x) − score(x with S at f) = Σ_S Σ_c w (x − f), so the map w·(x − f) has correlation 1."""
    x = nhwc.images()
    exact = ((x.astype(np.float64) - 0.4) * nhwc.w[:, 1].reshape(H, W, C)).sum(axis=-1)
    assert np.abs(mufidelity(nhwc.model, x, exact, 1, subsets=30, fill=0.4) - 1).max() < 1e-5


def test_confidence_change_multiplies_by_the_map(linear):
    x = linear.images()
    maps = np.random.default_rng(6).normal(size=(3, H, W))
    clean = linear.score(x, 2)
    low, high = maps.min(axis=(1, 2), keepdims=True), maps.max(axis=(1, 2), keepdims=True)
    scaled = np.expand_dims((maps - low) / (high - low + 1e-7), linear.axis)
    want = linear.score(x * scaled, 2) - clean
    assert relative(confidence_change(linear.model, x, maps, 2), want) < F32
    top = np.argsort(-maps.reshape(3, -1), axis=1, kind="stable")[:, :round(0.3 * H * W)]
    keep = np.zeros((3, H * W))
    np.put_along_axis(keep, top, 1.0, axis=1)
    want = linear.score(x * np.expand_dims(keep.reshape(3, H, W), linear.axis), 2) - clean
    assert relative(confidence_change(linear.model, x, maps, 2, percentile=70), want) < F32


def test_a_second_input_is_held_at_each_images_value(tmp_path):
    """score = x·w + aux·a: the deletion curve of each image keeps its own aux term."""
    rng = np.random.default_rng(11)
    w, a = rng.normal(size=(H * W * C, 1)).astype(np.float32), rng.normal(size=(4, 1)).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["p"]),
             helper.make_node("MatMul", ["aux", "a"], ["q"]), helper.make_node("Add", ["p", "q"], ["y"])]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, H, W, C]),
                                             helper.make_tensor_value_info("aux", TensorProto.FLOAT, [None, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(a, "a")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "two.onnx")
    model = onnxsight.load(tmp_path / "two.onnx", device="cpu")
    x = rng.normal(size=(3, H, W, C)).astype(np.float32)
    aux = rng.normal(size=(3, 4)).astype(np.float32)
    c = (x.astype(np.float64) * w[:, 0].reshape(H, W, C)).sum(axis=-1)
    got = deletion_curve(model, {"x": x, "aux": aux}, c, 0, steps=H * W)
    bias = aux.astype(np.float64) @ a[:, 0]
    want = (c.reshape(3, -1).sum(1) + bias)[:, None] - np.concatenate(
        [np.zeros((3, 1)), np.cumsum(-np.sort(-c.reshape(3, -1), axis=1), axis=1)], axis=1)
    assert relative(got, want) < F32


@pytest.mark.parametrize("metric", [deletion, insertion, road, mufidelity, confidence_change, pixel_flipping])
def test_bad_maps_are_one_line_errors_naming_the_metric(nhwc, metric):
    x = nhwc.images()
    name = metric.__name__
    with pytest.raises(InvalidArgument, match=f"^{name}: maps of shape \\(3, 5, 6\\)") as error:
        metric(nhwc.model, x, np.zeros((3, W, H)), 0)
    assert "\n" not in str(error.value)
    maps = np.zeros((3, H, W))
    maps[1, 2, 2] = np.nan
    with pytest.raises(InvalidArgument, match=f"^{name}: the maps hold NaN"):
        metric(nhwc.model, x, maps, 0)


def test_bad_options_are_one_line_errors(nhwc):
    x, maps = nhwc.images(), np.zeros((3, H, W))
    for call, message in [
        (lambda: deletion(nhwc.model, x, maps, order="best"), "deletion: order must be one of morf, lerf"),
        (lambda: deletion(nhwc.model, x, maps, steps=0), "deletion: steps must be an integer >= 1"),
        (lambda: insertion(nhwc.model, x, maps, fill="noise"), "insertion: fill must be"),
        (lambda: road(nhwc.model, x, maps, percentages=(0.5, 1.0)), "road: percentages must be fractions in"),
        (lambda: mufidelity(nhwc.model, x, maps, subsets=1), "mufidelity: subsets must be an integer >= 2"),
        (lambda: confidence_change(nhwc.model, x, maps, percentile=100), "confidence_change: percentile must be"),
        (lambda: pixel_flipping(nhwc.model, x, maps, steps=3), "pixel_flipping: steps and order are fixed"),
    ]:
        with pytest.raises(InvalidArgument) as error:
            call()
        assert str(error.value).startswith(message) and "\n" not in str(error.value), str(error.value)


def test_seed_cnn_runs_batched(model, digits_data):
    """Eight digits with their Gradient×Input maps: probabilities, the same result in any batch size,
    and the map's most relevant pixels hurt the prediction more than its least relevant ones."""
    x = digits_data.x_test[:8]
    maps = onnxsight.saliency(model, x, times_input=True, absolute=False, reduce="sum")
    seen = []
    curve = deletion_curve(model, x, maps, steps=20, progress=lambda done, total: seen.append((done, total)))
    assert curve.shape == (8, 21) and ((curve >= 0) & (curve <= 1)).all()
    assert seen[-1] == (8 * 21, 8 * 21)
    probabilities = model.run(x, [model.tensor("output")])[0].astype(np.float64)
    assert np.abs(curve[:, 0] - probabilities.max(axis=1)).max() < 1e-6
    assert np.abs(deletion_curve(model, x, maps, steps=20, batch_size=7) - curve).max() < 1e-6
    lerf = deletion(model, x, maps, steps=20, order="lerf")
    assert auc(curve).mean() < lerf.mean()
    for metric in (insertion, road, mufidelity, confidence_change):
        scores = metric(model, x, maps, batch_size=64)
        assert scores.shape == (8,) and np.isfinite(scores).all(), metric.__name__
