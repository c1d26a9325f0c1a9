"""Saliency, Gradient×Input, SmoothGrad, SmoothGrad² and VarGrad against TensorFlow's GradientTape."""

from __future__ import annotations

import numpy as np
import pytest

import onnxsight
from onnxsight.errors import InvalidArgument
from onnxsight.kernels import attribution as k
from onnxsight.methods import saliency as saliency_module
from onnxsight.methods.saliency import saliency
from tests.foreign_models import nchw_cnn, reference_forward
from tests.tf_reference import float64_twin, gradients, relative_error

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def images(digits_data):
    return digits_data.x_test[:6]


@pytest.fixture(scope="module")
def predicted(mnist_keras, images):
    """The Keras model's own argmax: the reference never asks onnxsight for the target."""
    return np.asarray(mnist_keras(images, training=False)).argmax(axis=1)


def reference(mnist_keras, x, target, modifier=None):
    return gradients(mnist_keras, x, target, modifier=modifier)["input"]


def assert_close(got, want, what):
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    error = relative_error(got, want)
    assert error <= TOLERANCE, f"{what}: relative error {error:.2e} > {TOLERANCE}"


@pytest.mark.parametrize("modifier", [None, "guided", "deconv"])
def test_default_map_is_max_over_channels_of_abs_gradient_like_tf(model, mnist_keras, images, predicted, modifier):
    want = np.abs(reference(mnist_keras, images, predicted, modifier)).max(axis=3)
    assert_close(saliency(model, images, modifier=modifier), want, f"modifier={modifier}")


@pytest.mark.parametrize("modifier", [None, "guided", "deconv"])
def test_signed_unreduced_map_is_the_raw_gradient(model, mnist_keras, images, modifier):
    target = np.arange(len(images)) % 10  # one explicit class per image, not the predicted one
    want = reference(mnist_keras, images, target, modifier)
    got = saliency(model, images, target, modifier=modifier, absolute=False, reduce=None)
    assert_close(got, want, f"modifier={modifier}")


def test_negate_flips_the_sign_before_post_processing(model, mnist_keras, images, predicted):
    g = reference(mnist_keras, images, predicted)
    assert_close(saliency(model, images, negate=True, absolute=False, reduce=None), -g, "negate, signed")
    # keras-vis grad_modifier='negate': max over channels of -g (no absolute value)
    assert_close(saliency(model, images, negate=True, absolute=False), (-g).max(axis=3), "negate, max")


def test_times_input_is_gradient_times_input(model, mnist_keras, images, predicted):
    g = reference(mnist_keras, images, predicted)
    assert_close(saliency(model, images, times_input=True, absolute=False, reduce=None), g * images, "signed")
    assert_close(saliency(model, images, times_input=True), np.abs(g * images).max(axis=3), "abs, max")


@pytest.mark.parametrize("reduce", ["mean", "sum", None])
def test_channel_reductions(model, mnist_keras, images, predicted, reduce):
    g = np.abs(reference(mnist_keras, images, predicted))
    want = {"mean": g.mean(axis=3), "sum": g.sum(axis=3), None: g}[reduce]
    assert_close(saliency(model, images, reduce=reduce), want, f"reduce={reduce}")


def test_normalize_scales_each_map_to_unit_range(model, mnist_keras, images, predicted):
    g = np.abs(reference(mnist_keras, images, predicted)).max(axis=3)
    low, high = g.min(axis=(1, 2), keepdims=True), g.max(axis=(1, 2), keepdims=True)
    got = saliency(model, images, normalize=True)
    assert_close(got, (g - low) / (high - low), "normalize")
    assert np.allclose(got.min(axis=(1, 2)), 0) and np.allclose(got.max(axis=(1, 2)), 1)


def test_a_channel_of_an_intermediate_layer_is_scored_by_its_mean(model, mnist_keras, images):
    import keras
    import tensorflow as tf

    twin = float64_twin(mnist_keras)
    probe = keras.Model(twin.inputs[0], twin.get_layer("conv2d_2").output)
    x = tf.constant(images, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(x)
        values = probe(x, training=False)
        means = tf.reduce_mean(values, axis=(1, 2))  # (N, 64) channel means
        strongest = tf.argmax(means, axis=1)
        score = tf.reduce_sum(tf.gather(means, strongest, axis=1, batch_dims=1))
    want = tape.gradient(score, x).numpy()
    assert_close(saliency(model, images, "predicted", of="conv2d_2", absolute=False, reduce=None), want,
                 "conv2d_2, strongest channel")


def test_non_image_inputs_ignore_the_channel_reduction():
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(size=(5, 4)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"])],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    m = onnxsight.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), device="cpu")
    x = rng.normal(size=(4, 5)).astype(np.float32)
    target = (np.maximum(x @ w1, 0) @ w2).argmax(axis=1)
    want = np.abs(((x @ w1 > 0)[:, None, :] * w1[None] * w2[:, target].T[:, None, :]).sum(axis=2))
    assert m.input_layout == "NC"
    np.testing.assert_allclose(saliency(m, x, reduce="max"), want, rtol=1e-5, atol=1e-6)


def test_noise_follows_its_documented_recipe(images):
    sigma = 0.2 * (images.max(axis=(1, 2, 3)) - images.min(axis=(1, 2, 3)))
    draw = np.random.default_rng(5).standard_normal((3, 1, *images.shape[1:]), dtype=np.float32)  # shared by the images
    np.testing.assert_array_equal(k.smoothgrad_noise(images, 3, 0.2, "relative", seed=5),
                                  draw * sigma[:, None, None, None].astype(np.float32))
    np.testing.assert_array_equal(k.smoothgrad_noise(images, 3, 0.2, "absolute", seed=5),
                                  np.broadcast_to(draw * np.float32(0.2), (3, *images.shape)))
    blocks = list(k.smoothgrad_noise_chunks(images, 7, 0.2, "relative", seed=5, chunk=3))
    assert [len(b) for b in blocks] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate(blocks), k.smoothgrad_noise(images, 7, 0.2, "relative", seed=5))


def near_ties(mnist_keras, noisy, gap=1e-6):
    """Rows in which a window of the last max-pool holds two maxima closer than ``gap``: there
    float32 rounding (onnxruntime's or TensorFlow's) decides which unit gets the gradient and
    with it a 5x5x32 receptive field, so no two implementations need agree (seen: 2e-2 relative
    at gaps of 2e-7). Ties in the first pool move one 3x3 patch and stay below 1e-5.
    Found on the Keras model alone."""
    import keras

    v = np.asarray(keras.Model(mnist_keras.inputs[0], mnist_keras.get_layer("max_pooling2d_2").input)(noisy))
    side = v.shape[1] // 2 * 2
    windows = v[:, :side, :side].reshape(len(v), side // 2, 2, side // 2, 2, -1).transpose(0, 1, 3, 5, 2, 4)
    top = np.sort(windows.reshape(len(v), -1, 4), axis=-1)
    return ((top[..., -1] > 0) & (top[..., -1] - top[..., -2] < gap)).any(axis=1)


def noisy_reference(mnist_keras, images, target, samples, sigma, noise, modifier=None):
    """TF gradients of onnxsight's documented noise, with the first seed whose noisy batch has no
    near-tied max-pool window (asserted to exist)."""
    for seed in range(10):
        draws = k.smoothgrad_noise(images, samples, sigma, noise, seed=seed)
        noisy = (images[None] + draws).reshape(-1, *images.shape[1:])
        if not near_ties(mnist_keras, noisy).any():
            g = reference(mnist_keras, noisy, np.tile(target, samples), modifier)
            return seed, images[None] + draws, g.reshape(draws.shape).astype(np.float64)
    raise AssertionError("every seed in 0..9 put a max-pool window of a noisy copy at a near-tie")


@pytest.mark.parametrize("aggregate,noise,sigma", [
    ("mean", "relative", 0.15), ("square", "relative", 0.15), ("variance", "relative", 0.15),
    ("mean", "absolute", 0.1), ("variance", "absolute", 0.1),
])
def test_smoothgrad_variants_match_tf_with_the_same_noise(model, mnist_keras, images, predicted, aggregate, noise,
                                                          sigma):
    samples = 6
    seed, _, g = noisy_reference(mnist_keras, images, predicted, samples, sigma, noise)
    g = np.abs(g)
    combined = {"mean": g.mean(axis=0), "square": np.square(g).mean(axis=0), "variance": g.var(axis=0)}[aggregate]
    got = saliency(model, images, smooth_samples=samples, smooth_noise=sigma, noise=noise,
                   smooth_aggregate=aggregate, seed=seed)
    assert_close(got, combined.max(axis=3), f"{aggregate}, {noise} noise, seed {seed}")


def test_smoothgrad_post_processes_each_sample_before_averaging(model, mnist_keras, images, predicted):
    seed, noisy, g = noisy_reference(mnist_keras, images, predicted, 4, 0.15, "relative", "guided")
    want = np.abs(-g * noisy).mean(axis=0).sum(axis=3)
    got = saliency(model, images, modifier="guided", negate=True, times_input=True, reduce="sum", smooth_samples=4,
                   seed=seed)
    assert_close(got, want, f"guided, negate, times_input, sum, seed {seed}")


def test_smoothgrad_keeps_the_clean_images_predicted_class_for_its_noisy_copies(model, images, predicted):
    options = dict(smooth_samples=5, smooth_noise=1.0, absolute=False, reduce=None)  # noise that flips classes
    np.testing.assert_array_equal(saliency(model, images, "predicted", **options),
                                  saliency(model, images, predicted, **options))


def test_smoothgrad_in_memory_bounded_blocks_equals_one_block(model, images, monkeypatch):
    whole = saliency(model, images, smooth_samples=5, smooth_aggregate="variance")
    monkeypatch.setattr(saliency_module, "MAX_CHUNK_BYTES", 2 * images.nbytes * 2)  # blocks of 2 samples
    np.testing.assert_allclose(saliency(model, images, smooth_samples=5, smooth_aggregate="variance"), whole,
                               rtol=1e-5, atol=1e-7 * np.abs(whole).max())


def test_a_batch_of_64_equals_runs_of_7_rows_and_per_chunk_calls(model, digits_data):
    x = digits_data.x_test[:64]
    plain = saliency(model, x)
    assert plain.shape == (64, 28, 28) and plain.dtype == np.float32
    tolerance = dict(rtol=1e-5, atol=1e-6 * plain.max())
    np.testing.assert_allclose(saliency(model, x, batch_size=7), plain, **tolerance)
    pieces = np.concatenate([saliency(model, x[i:i + 7]) for i in range(0, 64, 7)])
    np.testing.assert_allclose(pieces, plain, **tolerance)
    smooth = saliency(model, x, smooth_samples=2)  # 128 noisy rows, one gradient call
    assert smooth.shape == (64, 28, 28)
    np.testing.assert_allclose(saliency(model, x, smooth_samples=2, batch_size=7), smooth,
                               rtol=1e-5, atol=1e-6 * smooth.max())


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation with average ranks for ties (numpy only)."""
    def ranks(v):
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        _, inverse = np.unique(v, return_inverse=True)
        return (np.bincount(inverse, r) / np.bincount(inverse))[inverse]

    ra, rb = ranks(a.ravel()), ranks(b.ravel())
    return float(np.corrcoef(ra, rb)[0, 1])


def test_model_randomisation_changes_the_map(model, images, tmp_path):
    """Adebayo et al.: the map of the trained model must not survive re-initialised weights.

    As in their paper, the signed gradient decorrelates almost fully (rank correlation about
    0.05 here) while |gradient| keeps the digit's outline (about 0.6): both must drop.
    """
    from onnxsight.demo.architectures import mnist_cnn

    fresh = mnist_cnn()
    rng = np.random.default_rng(7)
    for layer in fresh.layers:
        weights = layer.get_weights()
        if weights:
            kernel, bias = weights
            fan_in, fan_out = np.prod(kernel.shape[:-1]), kernel.shape[-1]
            limit = np.sqrt(6 / (fan_in + fan_out))  # Glorot uniform and zero biases, Keras' defaults
            layer.set_weights([rng.uniform(-limit, limit, kernel.shape).astype(np.float32), np.zeros_like(bias)])
    random_model = onnxsight.load(onnxsight.convert_keras(fresh, tmp_path / "random.onnx"), device="cpu")
    for options, bound in ((dict(absolute=False, reduce=None), 0.5), (dict(), 0.8)):
        trained, randomised = saliency(model, images, **options), saliency(random_model, images, **options)
        assert np.allclose([spearman(t, t) for t in trained], 1.0)
        across = [spearman(t, r) for t, r in zip(trained, randomised)]
        assert np.mean(across) < bound, f"{options}: rank correlations trained vs random {np.round(across, 3)}"


def finite_difference_logit_gradient(proto, x, target, eps=1e-6):
    """Central differences of the foreign model's numpy forward (float64)."""
    x = x.astype(np.float64)
    size = x[0].size
    steps = (np.eye(size) * eps).reshape(size, *x.shape[1:])
    plus = (x[:, None] + steps[None]).reshape(-1, *x.shape[1:])
    minus = (x[:, None] - steps[None]).reshape(-1, *x.shape[1:])
    rows = np.repeat(target, size)
    up = reference_forward(proto, plus)["fc"][np.arange(len(rows)), rows]
    down = reference_forward(proto, minus)["fc"][np.arange(len(rows)), rows]
    return ((up - down) / (2 * eps)).reshape(x.shape)


def test_foreign_nchw_model_reduces_over_axis_1():
    proto = nchw_cnn()
    m = onnxsight.load(proto, device="cpu")
    x = np.random.default_rng(2).uniform(-1, 1, (5, 3, 8, 8)).astype(np.float32)
    target = reference_forward(m.proto, x.astype(np.float64))["fc"].argmax(axis=1)
    g = finite_difference_logit_gradient(m.proto, x, target)
    assert_close(saliency(m, x), np.abs(g).max(axis=1), "NCHW max")
    assert_close(saliency(m, x, reduce="mean", times_input=True), np.abs(g * x).mean(axis=1), "NCHW mean")
    smooth = saliency(m, x, smooth_samples=3, reduce=None)
    assert smooth.shape == x.shape


@pytest.mark.parametrize("options,message", [
    (dict(modifier="relu"), "modifier"),
    (dict(reduce="median"), "reduce"),
    (dict(noise="gaussian"), "noise"),
    (dict(smooth_aggregate="median"), "smooth_aggregate"),
    (dict(smooth_samples=-1), "smooth_samples"),
    (dict(smooth_samples=2.5), "smooth_samples"),
    (dict(smooth_samples=2, smooth_noise=-0.1), "smooth_noise"),
    (dict(target="largest"), "target"),
    (dict(target=10), "out of range"),
])
def test_bad_options_are_rejected_with_the_option_named(model, images, options, message):
    options = dict(options)
    target = options.pop("target", "predicted")
    with pytest.raises(InvalidArgument, match=message) as error:
        saliency(model, images, target, **options)
    bad = next(iter(options.values()), None)
    if isinstance(bad, str):
        assert repr(bad) in str(error.value)  # the message quotes the bad value
