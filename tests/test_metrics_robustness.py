"""Robustness, sanity and complexity metrics against numpy float64 references and known answers.

A linear ONNX model (NHWC image → Flatten → MatMul → Add) has the exact gradient W and Gradient×Input
W⊙x, so infidelity and sensitivity have closed forms; the seed-000 CNN checks the randomisation test.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxsight
from onnxsight.errors import InvalidArgument
from onnxsight.metrics import (
    avg_sensitivity, complexity, infidelity, max_sensitivity, model_randomization, pointing_game, randomized_models,
    sparseness, spearman, ssim,
)

SHAPE = (8, 8, 3)
CLASSES = 4
F32 = np.finfo(np.float32).eps


@pytest.fixture(scope="module")
def linear():
    """(model, W as x's shape per class, b): logits = Σ W[c]·x + b[c]."""
    rng = np.random.default_rng(7)
    w = rng.normal(0, 1, (int(np.prod(SHAPE)), CLASSES)).astype(np.float32)
    b = rng.normal(0, 1, CLASSES).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["x"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "w"], ["mm"], name="dense/MatMul"),
             helper.make_node("Add", ["mm", "b"], ["logits"], name="dense/BiasAdd")]
    graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *SHAPE])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto, full_check=True)
    weights = w.T.reshape(CLASSES, *SHAPE).astype(np.float64)
    return onnxsight.load(proto, device="cpu"), weights, b.astype(np.float64)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(3).uniform(0.1, 1.0, (5, *SHAPE)).astype(np.float32)


def predicted(weights, bias, x):
    return (np.einsum("chwk,nhwk->nc", weights, x.astype(np.float64)) + bias).argmax(axis=1)


def gradient(m, x, t):
    return onnxsight.saliency(m, x, t, absolute=False, reduce=None)


def gradient_x_input(m, x, t):
    return onnxsight.saliency(m, x, t, absolute=False, reduce=None, times_input=True)


# ---- infidelity -----------------------------------------------------------------------------

def reference_infidelity(weights, x, maps, changes, perturbed, classes):
    """Yeh et al.'s E[(Iᵀa − (f(x) − f(x − I)))²] in float64 for the linear model, from the same I."""
    samples = len(changes) // len(x)
    w = np.repeat(weights[classes], samples, axis=0)
    drops = (w * (np.repeat(x, samples, axis=0).astype(np.float64) - perturbed)).reshape(len(changes), -1).sum(axis=1)
    products = (changes * np.repeat(maps, samples, axis=0)).reshape(len(changes), -1).sum(axis=1)
    return ((products - drops) ** 2).reshape(len(x), samples).mean(axis=1)


def test_infidelity_is_zero_for_the_exact_maps_of_a_linear_model(linear, images):
    model, weights, bias = linear
    classes = predicted(weights, bias, images)
    w = weights[classes]
    logit_scale = np.abs(np.einsum("nhwk,nhwk->n", w, images.astype(np.float64))).max()
    # Gradient×Input with binary square masks (its global convention), maps in x's shape or per pixel
    for maps in (w * images, (w * images).sum(axis=-1)):
        scores = infidelity(model, images, maps, perturbation="square", square=3, samples=12)
        assert scores.shape == (5,) and scores.dtype == np.float64
        assert scores.max() <= (50 * F32 * logit_scale) ** 2, scores
    # the plain gradient with Gaussian noise (its local convention)
    scores = infidelity(model, images, w, perturbation="noise", noise=0.05, samples=12)
    assert scores.max() <= (50 * F32 * logit_scale) ** 2, scores
    # a wrong map is not faithful
    wrong = infidelity(model, images, w[:, ::-1] * images, perturbation="square", square=3, samples=12)
    assert wrong.min() > 1e-3


def test_infidelity_matches_the_numpy_reference_with_the_same_perturbations(linear, images):
    model, weights, bias = linear
    classes = predicted(weights, bias, images)
    maps = np.random.default_rng(11).normal(0, 1, images.shape)
    seen = []

    def perturb(stacked):
        seen.append(stacked.shape)
        change = np.random.default_rng(5).normal(0, 0.1, stacked.shape)
        return change, stacked - change

    scores = infidelity(model, images, maps, perturbation=perturb, samples=6)
    assert seen == [(30, *SHAPE)]  # one call, all perturbations of all images stacked
    stacked = np.repeat(images, 6, axis=0)
    change = np.random.default_rng(5).normal(0, 0.1, stacked.shape)
    expected = reference_infidelity(weights, images, maps, change, (stacked - change).astype(np.float32), classes)
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    # the built-in noise: I ~ N(0, noise²) from default_rng(seed), image-major
    scores = infidelity(model, images, maps, perturbation="noise", noise=0.1, samples=6, seed=4)
    change = np.random.default_rng(4).normal(0, 0.1, stacked.shape)
    expected = reference_infidelity(weights, images, maps, change, (stacked - change).astype(np.float32), classes)
    np.testing.assert_allclose(scores, expected, rtol=1e-5)


def test_infidelity_normalize_scales_the_maps_by_captums_beta(linear, images):
    model, weights, bias = linear
    w = weights[predicted(weights, bias, images)]
    doubled = 2 * w
    raw = infidelity(model, images, doubled, noise=0.05)
    scaled = infidelity(model, images, doubled, noise=0.05, normalize=True)
    assert raw.min() > 1e-4 and scaled.max() <= 1e-9  # β = 1/2 makes the doubled gradient exact again


# ---- sensitivity ----------------------------------------------------------------------------

def test_sensitivity_of_a_linear_models_gradient_is_zero(linear, images):
    model = linear[0]
    for metric in (max_sensitivity, avg_sensitivity):
        scores = metric(model, images, gradient, samples=4)
        assert scores.shape == (5,) and np.abs(scores).max() <= 10 * F32


@pytest.mark.parametrize("norm", ["fro", "inf"])
def test_sensitivity_of_gradient_x_input_matches_the_numpy_reference(linear, images, norm):
    model, weights, bias = linear
    w = weights[predicted(weights, bias, images)]
    calls = []

    def explain(m, x, t):
        calls.append(len(x))
        return gradient_x_input(m, x, t)

    radius, samples = 0.05, 7
    found_max = max_sensitivity(model, images, explain, radius=radius, samples=samples, norm=norm, seed=2)
    assert calls == [5, 35]  # the clean batch, then every perturbed copy of every image in one call
    found_avg = avg_sensitivity(model, images, gradient_x_input, radius=radius, samples=samples, norm=norm, seed=2)
    delta = np.random.default_rng(2).uniform(-radius, radius, (5, samples, *SHAPE))
    perturbed = (images[:, None] + delta).astype(np.float32).astype(np.float64)
    order = 2 if norm == "fro" else np.inf
    difference = (w[:, None] * (perturbed - images[:, None])).reshape(5, samples, -1)
    ratios = np.linalg.norm(difference, ord=order, axis=2) / np.linalg.norm(
        (w * images).reshape(5, -1), ord=order, axis=1)[:, None]
    np.testing.assert_allclose(found_max, ratios.max(axis=1), rtol=1e-4)
    np.testing.assert_allclose(found_avg, ratios.mean(axis=1), rtol=1e-4)
    assert found_max.min() > 0


# ---- complexity -----------------------------------------------------------------------------

def test_sparseness_and_complexity_hand_cases():
    n = 36
    one_hot = np.zeros((1, 6, 6))
    one_hot[0, 2, 3] = -5.0
    uniform = np.full((1, 6, 6), 0.3)
    maps = np.concatenate([one_hot, uniform, np.zeros((1, 6, 6))])
    np.testing.assert_allclose(sparseness(maps), [(n - 1) / n, 0.0, 0.0], atol=1e-15)
    np.testing.assert_allclose(complexity(maps), [0.0, np.log(n), np.log(n)], atol=1e-12)
    two = np.zeros((1, 4))
    two[0, :2] = [1.0, 3.0]  # p = (1/4, 3/4, 0, 0); sorted a = (0, 0, 1, 3): Σ(2i − 5)aᵢ = 1·1 + 3·3 = 10
    np.testing.assert_allclose(complexity(two), [-(0.25 * np.log(0.25) + 0.75 * np.log(0.75))], rtol=1e-14)
    np.testing.assert_allclose(sparseness(two), [10 / (4 * 4)], rtol=1e-14)


def test_pointing_game_hand_cases():
    maps = np.zeros((3, 10, 10))
    maps[:, 1, 1] = 1.0
    masks = np.zeros((3, 10, 10), bool)
    masks[0, 0:3, 0:3] = True  # contains the peak
    masks[1, 5:, 5:] = True  # far: distance from (1, 1) to (5, 5) is √32 ≈ 5.66
    masks[2, 1, 4] = True  # three pixels to the right
    np.testing.assert_array_equal(pointing_game(maps, masks), [1, 0, 0])
    np.testing.assert_array_equal(pointing_game(maps, masks, tolerance=3), [1, 0, 1])
    np.testing.assert_array_equal(pointing_game(maps, masks, tolerance=5.6), [1, 0, 1])
    np.testing.assert_array_equal(pointing_game(maps, masks, tolerance=5.7), [1, 1, 1])
    tied = maps.copy()
    tied[1, 9, 9] = 1.0  # a tie at the mask's corner hits
    np.testing.assert_array_equal(pointing_game(tied, masks.astype(int)), [1, 1, 0])


# ---- sanity: randomisation, Spearman, SSIM ---------------------------------------------------

def initializers(model):
    return {t.name: numpy_helper.to_array(t) for t in model.proto.graph.initializer}


def test_randomisation_changes_the_layers_top_down(model):
    original = initializers(model)
    cascading = list(randomized_models(model, cascading=True, seed=1))
    independent = list(randomized_models(model, cascading=False, seed=1))
    assert [name for name, _ in cascading] == [name for name, _ in independent] and len(cascading) >= 3
    from onnxsight.metrics.sanity import weighted_layers

    layers = weighted_layers(model)
    assert [name for name, _ in layers] == [name for name, _ in cascading] == ["preds", "dense_1", "conv2d_2", "conv2d_1"]
    for k, ((name, randomized), (_, alone)) in enumerate(zip(cascading, independent)):
        now, single = initializers(randomized), initializers(alone)
        for j, (_, weights) in enumerate(layers):
            for weight in weights:
                if original[weight].std() == 0:  # a zero bias stays zero
                    continue
                assert (not np.array_equal(now[weight], original[weight])) == (j <= k), (name, weight)
                assert (not np.array_equal(single[weight], original[weight])) == (j == k), (name, weight)
                if j == k:
                    np.testing.assert_array_equal(now[weight], single[weight])
                    assert abs(now[weight].std() / original[weight].std() - 1) < 0.35
    assert np.array_equal(initializers(model)[layers[0][1][0]], original[layers[0][1][0]])  # input model untouched


def test_saliency_decorrelates_as_layers_are_randomised(model, digits_data):
    x = digits_data.x_test[:16]
    explain = lambda m, x, t: onnxsight.saliency(m, x, t)  # noqa: E731
    maps = explain(model, x, "predicted")
    np.testing.assert_allclose(spearman(maps, maps), 1.0, rtol=1e-12)
    scores = model_randomization(model, x, explain, cascading=True, seed=0)
    layers = list(scores)
    assert layers == [name for name, _ in randomized_models(model)]
    last = scores[layers[-1]]
    assert last["spearman"].shape == (16,) and last["ssim"].shape == (16,)
    # measured on this CNN: mean Spearman 0.67 (top layer) → 0.61 (all), SSIM 0.29 → 0.18; the |gradient|
    # keeps rank structure from the zero background (ties through ReLU and max-pooling), as Adebayo et al. note
    assert np.mean(last["spearman"]) < 0.8 and np.mean(last["ssim"]) < 0.4, last
    assert np.mean(last["ssim"]) < np.mean(scores[layers[0]]["ssim"]) < 0.5
    independent = model_randomization(model, x, explain, cascading=False, layers=["conv2d_2"], seed=0)
    assert list(independent) == ["conv2d_2"] and np.mean(independent["conv2d_2"]["ssim"]) < 0.5
    picked = dict(randomized_models(model, layers=["conv2d_2"], seed=0))["conv2d_2"]
    everything = dict(randomized_models(model, seed=0))["conv2d_2"]
    for name, value in initializers(everything).items():  # the same cascade as when every model is yielded
        np.testing.assert_array_equal(initializers(picked)[name], value)


def test_spearman_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, (6, 40)).astype(float)
    b = rng.normal(size=(6, 40))
    expected = [stats.spearmanr(u, v)[0] for u, v in zip(a, b)]
    np.testing.assert_allclose(spearman(a, b), expected, rtol=1e-12)
    np.testing.assert_allclose(spearman(a, a), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(spearman(np.ones((1, 5)), b[:1, :5]), [0.0])


def test_ssim_matches_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 1, (4, 20, 17))
    b = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1)
    b[3] = rng.uniform(0, 1, (20, 17))
    expected = [metrics.structural_similarity(u, v, data_range=1.0) for u, v in zip(a, b)]
    np.testing.assert_allclose(ssim(a, b, data_range=1.0), expected, rtol=1e-10)
    np.testing.assert_allclose(ssim(a, a, data_range=1.0), 1.0, rtol=1e-12)


# ---- bad input --------------------------------------------------------------------------------

def one_line(call, *words):
    with pytest.raises(InvalidArgument) as error:
        call()
    message = str(error.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_bad_inputs_are_one_line_errors(linear, images):
    model, weights, _ = linear
    nan = np.full(images.shape, np.nan)
    one_line(lambda: infidelity(model, images, np.zeros((5, 3, 3))), "infidelity", "(5, 3, 3)")
    one_line(lambda: infidelity(model, images, nan), "infidelity", "NaN")
    one_line(lambda: infidelity(model, images, images, perturbation="blur"), "blur", "square")
    one_line(lambda: infidelity(model, images, images, perturbation="square", square=9), "square")
    one_line(lambda: infidelity(model, images, images, perturbation=lambda s: s), "perturbation function")
    one_line(lambda: max_sensitivity(model, images, gradient, norm="l1"), "norm", "fro")
    one_line(lambda: max_sensitivity(model, images, "saliency"), "explain")
    one_line(lambda: avg_sensitivity(model, images, lambda m, x, t: np.zeros(len(x))[:2]), "avg_sensitivity", "one map")
    one_line(lambda: max_sensitivity(model, images, gradient, samples=0), "samples")
    one_line(lambda: max_sensitivity(model, images, gradient, radius=-1), "radius")
    one_line(lambda: sparseness(np.array([[1.0, np.nan]])), "sparseness", "NaN")
    one_line(lambda: complexity(np.zeros(3)), "complexity", "(3,)")
    one_line(lambda: pointing_game(np.zeros((2, 4, 4)), np.zeros((2, 4, 4), bool)), "pointing_game", "empty")
    one_line(lambda: pointing_game(np.zeros((2, 4, 4)), np.ones((2, 4, 5), bool)), "pointing_game", "(2, 4, 5)")
    one_line(lambda: pointing_game(np.zeros((1, 4, 4)), np.ones((1, 4, 4)), tolerance=-1), "tolerance")
    one_line(lambda: ssim(np.zeros((1, 5, 5)), np.zeros((1, 5, 5)), data_range=1), "ssim")
    one_line(lambda: list(randomized_models(model, layers=["dense/MatMul", "nope"])), "'nope'", "dense")
    one_line(lambda: model_randomization(model, images, gradient, layers=[]), "weighted layer")
