"""The black-box perturbation methods against answers known by hand (a linear ONNX model), against
independent numpy references in float64 (enumerated permutations, weighted least squares, the RISE
formula), their axioms (efficiency, reproducibility, convergence), and on the seed-000 CNN."""

from __future__ import annotations

import itertools
import math
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxsight
from onnxsight.errors import InvalidArgument, MissingDependency
from onnxsight.methods.rise import rise_masks
from onnxsight.methods.superpixels import grid_labels

H, W, C, K = 6, 5, 3, 3
F32 = 1e-5  # float32 scores: a few ulps of the largest score term, relative to the attributions' scale


def relative(got, want) -> float:
    return float(np.abs(np.asarray(got, np.float64) - want).max() / max(np.abs(want).max(), 1e-30))


class Toy:
    """score = x·W + b (+ γ (x·u)(x·v), an interaction between two regions), in NHWC or NCHW, as ONNX
    built with onnx.helper and as a float64 numpy function."""

    def __init__(self, tmp_path, layout="NHWC", interaction=0.0, seed=0):
        rng = np.random.default_rng(seed)
        self.layout, self.gamma = layout, interaction
        shape = [H, W, C] if layout == "NHWC" else [C, H, W]
        self.w = rng.normal(size=(H * W * C, K)).astype(np.float32)
        self.b = rng.normal(size=K).astype(np.float32)
        self.u = (rng.random((H * W * C, 1)) < 0.3).astype(np.float32)
        self.v = (rng.random((H * W * C, 1)) < 0.3).astype(np.float32)
        nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["m"]),
                 helper.make_node("Add", ["m", "b"], ["lin"]), helper.make_node("MatMul", ["f", "u"], ["p"]),
                 helper.make_node("MatMul", ["f", "v"], ["q"]), helper.make_node("Mul", ["p", "q"], ["pq"]),
                 helper.make_node("Mul", ["pq", "gamma"], ["inter"]), helper.make_node("Add", ["lin", "inter"], ["y"])]
        inits = [numpy_helper.from_array(a, n) for a, n in
                 [(self.w, "w"), (self.b, "b"), (self.u, "u"), (self.v, "v"), (np.float32([interaction]), "gamma")]]
        graph = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, *shape])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, K])], inits)
        path = tmp_path / f"toy_{layout}_{interaction}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
        self.model = onnxsight.load(path, device="cpu")
        self.axis = 3 if layout == "NHWC" else 1
        self.shape = shape

    def score(self, x: np.ndarray, target: int) -> np.ndarray:
        f = x.reshape(len(x), -1).astype(np.float64)
        inter = self.gamma * (f @ self.u[:, 0]) * (f @ self.v[:, 0])
        return f @ self.w[:, target] + self.b[target] + inter

    def compose(self, x, baseline, keep_pixels):
        """x where keep_pixels (H, W) is True (all channels), else the baseline."""
        keep = np.expand_dims(keep_pixels, self.axis - 1)
        return np.where(keep, x, baseline)


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("perturb")


@pytest.fixture(scope="module", params=["NHWC", "NCHW"])
def linear(tmp, request):
    return Toy(tmp, request.param)


@pytest.fixture(scope="module")
def interacting(tmp):
    return Toy(tmp, "NHWC", interaction=0.7, seed=1)


def images(toy, n=2, seed=5):
    return np.random.default_rng(seed).normal(size=(n, *toy.shape)).astype(np.float32)


def random_labels(m, seed=3):
    """(H, W) labels of m features, each present, in a random arrangement (not a grid)."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.arange(m), rng.integers(0, m, H * W - m)])
    return (rng.permutation(labels).reshape(H, W) * 7 + 2)  # any integers: renumbered in order


def feature_of(labels):
    return np.unique(labels, return_inverse=True)[1].reshape(labels.shape)


def per_feature(maps, labels):
    """The value of each feature from a map (every pixel of a feature holds it); checks they agree."""
    ids = feature_of(labels)
    values = np.array([[m[ids == j][0] for j in range(ids.max() + 1)] for m in maps])
    for j in range(ids.max() + 1):
        np.testing.assert_array_equal(maps[:, ids == j], np.repeat(values[:, j:j + 1], (ids == j).sum(), axis=1))
    return values


def exact_by_permutations(toy, x, baseline, labels, target):
    """Shapley values from the definition: the mean marginal contribution over all M! orders (float64)."""
    ids = feature_of(labels)
    m = ids.max() + 1
    out = np.zeros((len(x), m))
    for i in range(len(x)):
        for order in itertools.permutations(range(m)):
            shown = np.zeros((H, W), bool)
            before = toy.score(toy.compose(x[i], baseline, shown)[None], target)[0]
            for j in order:
                shown = shown | (ids == j)
                after = toy.score(toy.compose(x[i], baseline, shown)[None], target)[0]
                out[i, j] += after - before
                before = after
    return out / math.factorial(m)


# ---- feature ablation -------------------------------------------------------------------------

@pytest.mark.parametrize("baseline", [0.0, 0.25, "mean"])
def test_ablation_of_a_linear_model_is_w_times_x_minus_baseline_per_feature(linear, baseline):
    x, labels = images(linear), random_labels(5)
    got = onnxsight.feature_ablation(linear.model, x, target=1, feature_mask=labels, baseline=baseline)
    assert got.shape == (2, H, W) and got.dtype == np.float32
    spatial = (1, 2) if linear.axis == 3 else (2, 3)
    b = np.broadcast_to(x.mean(axis=spatial, keepdims=True), x.shape) if baseline == "mean" else np.full_like(x, baseline)
    terms = ((x - b).astype(np.float64).reshape(2, -1) * linear.w[:, 1]).reshape(x.shape)
    pixel_terms = terms.sum(axis=linear.axis)  # (N, H, W)
    ids = feature_of(labels)
    want = np.stack([[pixel_terms[i][ids == j].sum() for j in range(5)] for i in range(2)])
    assert relative(per_feature(got, labels), want) < F32


def test_ablation_with_one_label_map_per_image_and_pixels(linear):
    x = images(linear, 2)
    masks = np.stack([random_labels(4, seed=1), random_labels(6, seed=2)])
    both = onnxsight.feature_ablation(linear.model, x, target=0, feature_mask=masks)
    for i in range(2):
        alone = onnxsight.feature_ablation(linear.model, x[i:i + 1], target=0, feature_mask=masks[i])
        np.testing.assert_allclose(both[i], alone[0], rtol=1e-6, atol=1e-6)
    pixels = onnxsight.feature_ablation(linear.model, x[:1], target=0, feature_mask=None)
    want = (x[:1].astype(np.float64).reshape(1, -1) * linear.w[:, 0]).reshape(x[:1].shape).sum(axis=linear.axis)
    assert relative(pixels, want) < F32


# ---- Shapley values ---------------------------------------------------------------------------

def test_exact_shapley_values_of_a_linear_model_equal_the_ablation(linear):
    x, labels = images(linear), random_labels(5)
    exact = onnxsight.shapley_values(linear.model, x, target=2, feature_mask=labels, baseline=0.1)
    ablation = onnxsight.feature_ablation(linear.model, x, target=2, feature_mask=labels, baseline=0.1)
    assert relative(exact, ablation.astype(np.float64)) < F32


def test_exact_shapley_values_with_an_interaction_are_the_enumerated_ones(interacting):
    toy, x, labels = interacting, images(interacting), random_labels(5, seed=8)
    got = per_feature(onnxsight.shapley_values(toy.model, x, target=0, feature_mask=labels), labels)
    want = exact_by_permutations(toy, x, 0.0, labels, 0)
    assert relative(got, want) < F32
    ablation = per_feature(onnxsight.feature_ablation(toy.model, x, target=0, feature_mask=labels), labels)
    assert relative(ablation, want) > 0.05  # the interaction is shared, not counted twice or lost
    efficiency = toy.score(x, 0) - toy.score(np.zeros_like(x), 0)
    np.testing.assert_allclose(got.sum(axis=1), efficiency, rtol=F32, atol=F32 * np.abs(want).max())


def test_shapley_sampling_is_reproducible_efficient_and_converges(interacting):
    toy, x, labels = interacting, images(interacting, 1), random_labels(4, seed=9)
    options = dict(target=0, feature_mask=labels)
    first = onnxsight.shapley_value_sampling(toy.model, x, samples=20, seed=4, **options)
    np.testing.assert_array_equal(first, onnxsight.shapley_value_sampling(toy.model, x, samples=20, seed=4, **options))
    assert not np.array_equal(first, onnxsight.shapley_value_sampling(toy.model, x, samples=20, seed=5, **options))
    efficiency = toy.score(x, 0) - toy.score(np.zeros_like(x), 0)
    scale = np.abs(exact_by_permutations(toy, x, 0.0, labels, 0)).max()
    np.testing.assert_allclose(per_feature(first, labels).sum(axis=1), efficiency, atol=F32 * scale)
    # the estimate is a mean of per-order contributions: its error is below 5 standard errors of that mean
    ids = feature_of(labels)
    contributions = []
    for order in itertools.permutations(range(4)):
        shown, row = np.zeros((H, W), bool), np.zeros(4)
        before = toy.score(toy.compose(x[0], 0.0, shown)[None], 0)[0]
        for j in order:
            shown = shown | (ids == j)
            after = toy.score(toy.compose(x[0], 0.0, shown)[None], 0)[0]
            row[j], before = after - before, after
        contributions.append(row)
    contributions = np.array(contributions)
    samples = 2000
    got = per_feature(onnxsight.shapley_value_sampling(toy.model, x, samples=samples, seed=0, **options), labels)[0]
    assert np.all(np.abs(got - contributions.mean(axis=0)) <= 5 * contributions.std(axis=0) / np.sqrt(samples) + F32 * scale)


# ---- Kernel SHAP and LIME ---------------------------------------------------------------------

def test_kernel_shap_over_all_coalitions_is_exact_shapley(interacting):
    toy, x, labels = interacting, images(interacting), random_labels(6, seed=4)
    got = per_feature(onnxsight.kernel_shap(toy.model, x, target=1, feature_mask=labels, samples="all"), labels)
    assert relative(got, exact_by_permutations(toy, x, 0.0, labels, 1)) < 1e-4


def test_sampled_kernel_shap_is_efficient_and_exact_for_a_linear_model(linear, interacting):
    x, labels = images(linear), random_labels(7)
    ablation = onnxsight.feature_ablation(linear.model, x, target=0, feature_mask=labels)
    shap = onnxsight.kernel_shap(linear.model, x, target=0, feature_mask=labels, samples=40, seed=2)
    assert relative(shap, ablation.astype(np.float64)) < 1e-4
    toy, x = interacting, images(interacting)
    shap = per_feature(onnxsight.kernel_shap(toy.model, x, target=0, feature_mask=labels, samples=30, seed=1), labels)
    efficiency = toy.score(x, 0) - toy.score(np.zeros_like(x), 0)
    np.testing.assert_allclose(shap.sum(axis=1), efficiency, rtol=1e-4, atol=1e-4 * np.abs(efficiency).max())


def lime_reference(toy, x, labels, baseline, samples, seed, target, width, alpha):
    """LIME as Captum defines it, in float64: Bernoulli(½) coalitions (the same draws: default_rng(seed)),
    cosine-exponential weights on the built images, a weighted least squares with intercept (ridge
    penalty alpha on the coefficients only), solved on the augmented normal equations."""
    ids = feature_of(labels)
    m = ids.max() + 1
    z = np.random.default_rng(seed).random((samples, m)) < 0.5  # every image: its own generator, same draws
    out = np.zeros((len(x), m))
    for i in range(len(x)):
        built = np.stack([toy.compose(x[i], baseline, zs[ids]) for zs in z]).astype(np.float64)
        y = toy.score(built, target)
        flat, original = built.reshape(samples, -1), x[i].astype(np.float64).ravel()
        cosine = flat @ original / np.maximum(np.linalg.norm(flat, axis=1) * np.linalg.norm(original), 1e-8)
        weights = np.exp(-(1 - cosine) ** 2 / (2 * width ** 2))
        design = np.c_[np.ones(samples), z.astype(np.float64)]
        penalty = alpha * np.diag(np.r_[0.0, np.ones(m)])
        gram = design.T @ (weights[:, None] * design) + penalty
        out[i] = np.linalg.solve(gram, design.T @ (weights * y))[1:]
    return out


@pytest.mark.parametrize(("regression", "alpha"), [("linear", 0.0), ("ridge", 1.0), ("ridge", 0.3)])
def test_lime_equals_weighted_least_squares_on_the_same_samples(interacting, regression, alpha):
    toy, x, labels = interacting, images(interacting), random_labels(6, seed=6)
    got = per_feature(onnxsight.lime(toy.model, x, target=2, feature_mask=labels, samples=60, seed=3, baseline=0.2,
                                     regression=regression, alpha=alpha, kernel_width=0.5), labels)
    want = lime_reference(toy, x, labels, 0.2, 60, 3, 2, 0.5, alpha)
    assert relative(got, want) < 1e-4


def test_lime_lasso_satisfies_the_lasso_optimality_conditions(interacting):
    """scikit-learn's Lasso (Captum's default surrogate) minimises Σ s (y − b − z·c)² / (2n) + α‖c‖₁ with the
    weights s rescaled to sum to n: at the optimum the weighted correlation of each feature with the residual
    is α·sign(c) where c ≠ 0 and at most α where c = 0 (to the solver's tolerance)."""
    pytest.importorskip("sklearn")
    toy, x, labels = interacting, images(interacting, 1), random_labels(6, seed=6)
    alpha = 0.05
    got = per_feature(onnxsight.lime(toy.model, x, target=2, feature_mask=labels, samples=80, seed=3,
                                     alpha=alpha), labels)[0]
    ids, m = feature_of(labels), 6
    z = np.random.default_rng(3).random((80, m)) < 0.5
    built = np.stack([toy.compose(x[0], 0.0, zs[ids]) for zs in z]).astype(np.float64)
    y = toy.score(built, 2)
    flat, original = built.reshape(80, -1), x[0].astype(np.float64).ravel()
    cosine = flat @ original / np.maximum(np.linalg.norm(flat, axis=1) * np.linalg.norm(original), 1e-8)
    s = np.exp(-(1 - cosine) ** 2 / 2)
    s = s * len(s) / s.sum()
    zf = z.astype(np.float64)
    intercept = (s @ (y - zf @ got)) / s.sum()
    correlation = zf.T @ (s * (y - intercept - zf @ got)) / len(s)
    scale = np.abs(y).max()
    active = np.abs(got) > 0
    assert np.all(np.abs(correlation[~active]) <= alpha + 1e-3 * scale)
    np.testing.assert_allclose(correlation[active], alpha * np.sign(got[active]), atol=1e-3 * scale)


# ---- RISE -------------------------------------------------------------------------------------

def test_rise_is_the_papers_sum_over_the_same_masks(linear):
    x = images(linear, 3)
    got = onnxsight.rise(linear.model, x, target=[0, 1, 2], masks=300, cells=3, p=0.4, seed=7, of="logits")
    masks = rise_masks(H, W, 300, 3, 0.4, seed=7).take(np.arange(300)).astype(np.float64)
    want = np.zeros((3, H, W))
    for i, target in enumerate([0, 1, 2]):
        shown = x[i][None] * np.expand_dims(masks, linear.axis)  # x ⊙ M_i, every channel
        want[i] = np.tensordot(linear.score(shown, target), masks, axes=1) / (300 * 0.4)
    assert relative(got, want) < F32


def test_rise_masks_are_smooth_shifted_grids_shown_with_probability_p():
    made = rise_masks(28, 28, 2000, 7, 0.3, seed=1)
    masks = made.take(np.arange(2000))
    assert masks.shape == (2000, 28, 28) and masks.min() >= 0 and masks.max() <= 1
    assert abs(masks.mean() - 0.3) < 0.02
    ones = rise_masks(28, 28, 1, 7, 1.0).take(np.array([0]))
    np.testing.assert_array_equal(ones, 1.0)
    assert len(np.unique(masks[0])) > 2  # bilinear, not nearest
    np.testing.assert_array_equal(made.take(np.arange(5)), rise_masks(28, 28, 2000, 7, 0.3, seed=1).take(np.arange(5)))


# ---- features ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("height", "width", "segments"), [(28, 28, 49), (28, 28, 9), (96, 64, 24), (7, 30, 10)])
def test_grid_labels_are_a_partition_into_near_square_patches(height, width, segments):
    labels = grid_labels(height, width, segments)
    values = np.unique(labels)
    np.testing.assert_array_equal(values, np.arange(len(values)))
    assert 0.6 * segments <= len(values) <= 1.5 * segments
    spans = np.array([(np.ptp(np.nonzero(labels == v)[0]) + 1, np.ptp(np.nonzero(labels == v)[1]) + 1) for v in values])
    assert np.ptp(spans[:, 0]) <= 1 and np.ptp(spans[:, 1]) <= 1  # equal cells to a pixel


def test_slic_superpixels_partition_each_image(digits_data):
    pytest.importorskip("skimage")
    x = digits_data.x_test[:3]
    labels = onnxsight.superpixels(x, 30, method="slic", channel_axis=3)
    assert labels.shape == (3, 28, 28)
    for image in labels:
        values = np.unique(image)
        np.testing.assert_array_equal(values, np.arange(len(values)))
        assert 10 <= len(values) <= 60
    colour = np.random.default_rng(0).random((2, 3, 32, 32)).astype(np.float32)
    assert onnxsight.superpixels(colour, 16, method="slic", channel_axis=1).shape == (2, 32, 32)


def test_slic_without_scikit_image_names_the_extra(monkeypatch, linear):
    monkeypatch.setitem(sys.modules, "skimage.segmentation", None)
    with pytest.raises(MissingDependency, match=r"onnxsight\[superpixels\]"):
        onnxsight.feature_ablation(linear.model, images(linear), feature_mask="slic")


@pytest.mark.parametrize(("call", "message"), [
    (lambda m, x: onnxsight.feature_ablation(m, x, feature_mask=np.zeros((3, 3), int)), "feature_mask of shape"),
    (lambda m, x: onnxsight.feature_ablation(m, x, feature_mask=np.zeros((H, W))), "feature_mask must be"),
    (lambda m, x: onnxsight.feature_ablation(m, x, feature_mask="quickshift"), "method must be one of"),
    (lambda m, x: onnxsight.shapley_values(m, x, feature_mask=None), "at most 16 features"),
    (lambda m, x: onnxsight.kernel_shap(m, x, samples=2), "samples must be an integer >= 3"),
    (lambda m, x: onnxsight.kernel_shap(m, x, samples="many"), "samples must be"),
    (lambda m, x: onnxsight.lime(m, x, regression="elastic"), "regression must be one of"),
    (lambda m, x: onnxsight.rise(m, x, p=0.0), r"p must be in \(0, 1\]"),
    (lambda m, x: onnxsight.rise(m, x, cells=40), "cells=40"),
    (lambda m, x: onnxsight.feature_ablation(m, x, baseline="purple"), "baseline must be"),
])
def test_bad_options_are_one_line_errors(linear, call, message):
    with pytest.raises(InvalidArgument, match=message) as error:
        call(linear.model, images(linear))
    assert "\n" not in str(error.value)


# ---- the seed-000 CNN -------------------------------------------------------------------------

METHODS = {
    "feature_ablation": lambda m, x, t, **o: onnxsight.feature_ablation(m, x, t, **o),
    "shapley_value_sampling": lambda m, x, t, **o: onnxsight.shapley_value_sampling(m, x, t, samples=3, **o),
    "shapley_values": lambda m, x, t, **o: onnxsight.shapley_values(m, x, t, **o),
    "kernel_shap": lambda m, x, t, **o: onnxsight.kernel_shap(m, x, t, samples=60, **o),
    "lime": lambda m, x, t, **o: onnxsight.lime(m, x, t, samples=60, **o),
    "rise": lambda m, x, t, **o: onnxsight.rise(m, x, t, masks=200, **o),
}


@pytest.mark.parametrize("name", METHODS)
def test_each_method_runs_batched_on_the_cnn_as_image_by_image(model, digits_data, name):
    x = digits_data.x_test[:3]
    seen = []
    batched = METHODS[name](model, x, [3, 1, 4], batch_size=64, progress=lambda done, total: seen.append((done, total)))
    assert batched.shape == (3, 28, 28) and np.isfinite(batched).all() and np.abs(batched).max() > 0
    assert seen and seen[-1][0] == seen[-1][1] and len(seen) > 1
    for i, t in enumerate([3, 1, 4]):
        alone = METHODS[name](model, x[i:i + 1], t, batch_size=7)
        np.testing.assert_allclose(batched[i], alone[0], rtol=1e-4, atol=1e-4 * np.abs(batched[i]).max())


def test_cnn_ablation_equals_the_keras_models_score_drops(model, mnist_keras, digits_data):
    """Feature ablation of the probabilities against Keras itself, one feature hidden at a time."""
    x = digits_data.x_test[:2]
    got = onnxsight.feature_ablation(model, x, [7, 2], of="output", segments=16)
    labels = grid_labels(28, 28, 16)
    clean = mnist_keras.predict(x, verbose=0).astype(np.float64)
    hidden = np.stack([np.where((labels == j)[None, :, :, None], 0.0, x) for j in range(labels.max() + 1)])
    scores = mnist_keras.predict(hidden.reshape(-1, 28, 28, 1), verbose=0).reshape(len(hidden), 2, -1).astype(np.float64)
    want = np.stack([clean[i, t] - scores[:, i, t] for i, t in enumerate([7, 2])])[:, labels]
    assert relative(got, want) < 1e-4


def test_a_second_input_is_held_at_each_images_value(tmp):
    """score = x·w + (x·u)(aux·a): ablating x's features must score each copy with its own image's aux."""
    rng = np.random.default_rng(11)
    w, u, a = (rng.normal(size=(H * W * C, 1)).astype(np.float32) for _ in range(3))
    a = a[:4]
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["lin"]),
             helper.make_node("MatMul", ["f", "u"], ["p"]), helper.make_node("MatMul", ["aux", "a"], ["q"]),
             helper.make_node("Mul", ["p", "q"], ["pq"]), helper.make_node("Add", ["lin", "pq"], ["y"])]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, H, W, C]),
                                             helper.make_tensor_value_info("aux", TensorProto.FLOAT, [None, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
                              [numpy_helper.from_array(v, n) for v, n in [(w, "w"), (u, "u"), (a, "a")]])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp / "two.onnx")
    model = onnxsight.load(tmp / "two.onnx", device="cpu")
    x = rng.normal(size=(3, H, W, C)).astype(np.float32)
    aux = rng.normal(size=(3, 4)).astype(np.float32)
    labels = random_labels(4)
    got = per_feature(onnxsight.feature_ablation(model, {"x": x, "aux": aux}, target=0, feature_mask=labels), labels)
    ids = feature_of(labels)
    f = x.astype(np.float64).reshape(3, H, W, C)
    per_pixel = lambda v: (f * v[:, 0].reshape(H, W, C)).sum(axis=-1)  # noqa: E731
    lin, inner = per_pixel(w), per_pixel(u)
    gain = aux.astype(np.float64) @ a[:, 0]
    want = np.stack([[lin[i][ids == j].sum() + inner[i][ids == j].sum() * gain[i] for j in range(4)] for i in range(3)])
    assert relative(got, want) < F32
    maps = onnxsight.rise(model, {"x": x, "aux": aux}, target=0, masks=50, cells=3, of="output")
    assert maps.shape == (3, H, W)
