"""Grad-CAM and its variants against references written from the papers on TensorFlow's own gradients.

The reference takes the layer's activations A and gradients dA from a GradientTape on the Keras
model (softmax swapped for linear), then applies each paper's formula in numpy written here,
independently of onnxsight.kernels.cam; Score-CAM's masked forwards run through Keras.
"""

from __future__ import annotations

import re

import cv2
import numpy as np
import pytest

import onnxsight
from onnxsight.errors import InvalidArgument, UnknownName
from onnxsight.methods.cam import VARIANTS, default_cam_layer, gradcam
from tests.foreign_models import nchw_cnn, reference_forward
from tests.tf_reference import float64_twin, gradients, relative_error, swapped_activations

GRADIENT_VARIANTS = ["gradcam", "gradcam++", "xgradcam", "hirescam", "layercam"]
PAPER_VARIANTS = [*GRADIENT_VARIANTS, "scorecam"]  # pytorch-grad-cam's others: tests/test_cam_pytorch_grad_cam.py
TOLERANCE = 1e-4


# ---- references, from the papers ---------------------------------------------------------
def paper_weights(a: np.ndarray, g: np.ndarray, variant: str) -> np.ndarray:
    """(N, h, w, K) per-pixel channel weights of a channel-last layer, one formula per paper."""
    a, g = a.astype(np.float64), g.astype(np.float64)
    area_sum = lambda t: t.sum(axis=(1, 2), keepdims=True)  # noqa: E731
    if variant == "gradcam":  # Selvaraju et al.: alpha_k = 1/Z sum_ij dy/dA_ij
        return np.broadcast_to(g.mean(axis=(1, 2), keepdims=True), a.shape)
    if variant == "gradcam++":  # Chattopadhyay et al. eq. 19 with exp-free scores
        with np.errstate(divide="ignore", invalid="ignore"):
            alpha = g**2 / (2 * g**2 + area_sum(a) * g**3)
        alpha = np.where(np.isfinite(alpha), alpha, 0.0)
        return np.broadcast_to(area_sum(alpha * np.maximum(g, 0)), a.shape)
    if variant == "xgradcam":  # Fu et al.: sum_ij (A_ij / sum A) dy/dA_ij
        return np.broadcast_to(area_sum(a * g) / (area_sum(a) + 1e-7), a.shape)
    if variant == "hirescam":  # Draelos & Carin: elementwise gradient
        return g
    if variant == "layercam":  # Jiang et al.: relu(gradient), elementwise
        return np.maximum(g, 0)
    raise AssertionError(variant)


def finish(cam: np.ndarray, size: int, relu: bool = True, mode=cv2.INTER_LINEAR) -> np.ndarray:
    """ReLU, resize each map with cv2, then min-max each map to [0, 1]."""
    cam = np.maximum(cam, 0) if relu else cam
    up = np.stack([cv2.resize(c.astype(np.float32), (size, size), interpolation=mode) for c in cam]).astype(np.float64)
    out = np.zeros_like(up)
    for i, c in enumerate(up):
        if c.max() > c.min():
            out[i] = (c - c.min()) / (c.max() - c.min())
    return out


def minmax(maps: np.ndarray) -> np.ndarray:
    out = np.zeros_like(maps, dtype=np.float64)
    for i, c in enumerate(maps):
        if c.max() > c.min():
            out[i] = (c - c.min()) / (c.max() - c.min())
    return out


def keras_head(keras_model):
    last = keras_model.layers[-1]
    return last.input if type(last).__name__ in ("Softmax", "Activation") else last.output


def tf_layer(keras_model, x, layer, target, of=None, modifier=None):
    """A and dA at ``layer`` for the summed target scores: logits[target] or mean of ``of``[..., target];
    ``modifier`` overrides the ReLUs' gradient (guided / deconv). In float64 (see float64_twin)."""
    import keras
    import tensorflow as tf

    keras_model = float64_twin(keras_model)
    scored = keras_model.get_layer(of).output if of else keras_head(keras_model)
    probe = keras.Model(keras_model.inputs, [keras_model.get_layer(layer).output, scored])
    with swapped_activations(keras_model, modifier), tf.GradientTape() as tape:
        a, out = probe([tf.constant(x, tf.float64)], training=False)
        if of:
            picked = tf.gather(out, target, axis=3, batch_dims=1)  # N, h, w
            score = tf.reduce_sum(tf.reduce_mean(picked, axis=(1, 2)))
        else:
            score = tf.reduce_sum(tf.gather(out, target, axis=1, batch_dims=1))
    return a.numpy(), tape.gradient(score, a).numpy()


def keras_logits(keras_model, x):
    import keras

    with swapped_activations(keras_model):
        return np.asarray(keras.Model(keras_model.inputs, keras_head(keras_model))([x], training=False), np.float64)


def reference_scorecam(keras_model, x, layer, target):
    import keras

    a = np.asarray(keras.Model(keras_model.inputs, keras_model.get_layer(layer).output)([x], training=False))
    n, size, channels = len(x), x.shape[1], a.shape[-1]
    masked = []
    for i in range(n):
        for c in range(channels):
            m = cv2.resize(a[i, :, :, c], (size, size), interpolation=cv2.INTER_LINEAR).astype(np.float64)
            m = (m - m.min()) / (m.max() - m.min()) if m.max() > m.min() else np.zeros_like(m)
            masked.append(x[i] * m[:, :, None])
    logits = keras_logits(keras_model, np.asarray(masked, np.float32))
    scores = logits[np.arange(n * channels), np.repeat(target, channels)].reshape(n, channels)
    weights = np.exp(scores - scores.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    return finish(np.einsum("nhwk,nk->nhw", a.astype(np.float64), weights), size)


# ---- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def x(digits_data):
    return digits_data.x_test[:64]


@pytest.fixture(scope="module")
def predicted(mnist_keras, x):
    return keras_logits(mnist_keras, x).argmax(axis=1)


# ---- agreement with the papers -------------------------------------------------------------
def test_default_layer_is_the_last_spatial_layer_before_flatten(model):
    assert default_cam_layer(model) == "max_pooling2d_2"
    assert default_cam_layer(onnxsight.load(nchw_cnn(), device="cpu")) == "pool1"


# At conv2d_2 the gradient passes a MaxPool whose all-zero windows tie: Grad-CAM, XGradCAM, HiResCAM
# and LayerCAM do not depend on how a tie's gradient is shared (sums, or products with A = 0 there),
# Grad-CAM++ (nonlinear in dA) does; TensorFlow gives a tie's gradient to its first element.
@pytest.mark.parametrize("layer", ["max_pooling2d_2", "conv2d_2"])
@pytest.mark.parametrize("variant", GRADIENT_VARIANTS)
def test_gradient_variants_match_the_papers_on_tf_gradients(model, mnist_keras, x, predicted, variant, layer):
    a, g = tf_layer(mnist_keras, x, layer, predicted)
    want = finish((paper_weights(a, g, variant) * a).sum(axis=-1), 28)
    got = gradcam(model, x, layer=layer, variant=variant)
    assert got.shape == (64, 28, 28) and got.dtype == np.float32
    error = relative_error(got, want)
    assert error <= TOLERANCE, f"{variant} at {layer}: relative error {error:.2e}"


@pytest.mark.parametrize("modifier", ["guided", "deconv"])
def test_guided_and_rectified_gradcam_match_tf_with_overridden_relu_gradients(model, mnist_keras, x, predicted, modifier):
    """Seed 002's visualize_cam(backprop_modifier=...): the gradient to the layer passes modified ReLUs."""
    a, g = tf_layer(mnist_keras, x, "conv2d_2", predicted, modifier=modifier)
    want = finish((g.mean(axis=(1, 2), keepdims=True) * a).sum(axis=-1), 28)
    got = gradcam(model, x, layer="conv2d_2", modifier=modifier)
    error = relative_error(got, want)
    assert error <= TOLERANCE, f"{modifier} Grad-CAM: relative error {error:.2e}"
    assert relative_error(got, gradcam(model, x, layer="conv2d_2")) > 1e-2  # the modifier changes the map


def test_scorecam_refuses_a_backprop_modifier(model, x):
    with pytest.raises(InvalidArgument, match="uses none"):
        gradcam(model, x[:2], variant="scorecam", modifier="guided")


def test_without_relu_normalisation_and_with_nearest_upsampling(model, mnist_keras, x):
    target = np.arange(64) % 10
    a, g = tf_layer(mnist_keras, x, "max_pooling2d_2", target)
    cam = (g.mean(axis=(1, 2), keepdims=True) * a).sum(axis=-1)
    want = np.stack([cv2.resize(c, (28, 28), interpolation=cv2.INTER_NEAREST) for c in cam])
    got = gradcam(model, x, target, relu=False, normalize=False, upsample="nearest")
    assert relative_error(got, want) <= TOLERANCE
    assert got.min() < 0  # no ReLU: negative evidence is kept


def test_scorecam_matches_masked_keras_forwards(model, mnist_keras, x, predicted):
    want = reference_scorecam(mnist_keras, x[:16], "max_pooling2d_2", predicted[:16])
    got = gradcam(model, x[:16], variant="scorecam", batch_size=128)
    error = relative_error(got, want)
    assert error <= TOLERANCE, f"scorecam: relative error {error:.2e}"


def test_guided_gradcam_is_guided_backprop_times_the_cam_normalised_once(model, mnist_keras, x, predicted):
    a, g = tf_layer(mnist_keras, x, "max_pooling2d_2", predicted)
    raw = np.maximum((paper_weights(a, g, "gradcam") * a).sum(axis=-1), 0)
    cam = np.stack([cv2.resize(c.astype(np.float32), (28, 28)) for c in raw]).astype(np.float64)
    guided = gradients(mnist_keras, x, predicted, modifier="guided")["input"]
    want = minmax(np.abs(guided * cam[..., None]).max(axis=-1))
    error = relative_error(gradcam(model, x, guided=True), want)
    assert error <= TOLERANCE, f"guided Grad-CAM: relative error {error:.2e}"


def test_intermediate_layer_target_is_a_channel_mean(model, mnist_keras, x):
    a, g = tf_layer(mnist_keras, x[:8], "conv2d_1", np.full(8, 5), of="conv2d_2")
    want = finish((paper_weights(a, g, "gradcam") * a).sum(axis=-1), 28)
    got = gradcam(model, x[:8], 5, layer="conv2d_1", of="conv2d_2")
    assert relative_error(got, want) <= TOLERANCE


# ---- batches, foreign models, sanity -------------------------------------------------------
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_batch_of_64_in_small_chunks_matches_one_call(model, x, variant):
    whole = gradcam(model, x, variant=variant)
    assert whole.shape == (64, 28, 28) and np.isfinite(whole).all()
    assert whole.min() >= 0 and whole.max() <= 1
    np.testing.assert_allclose(gradcam(model, x, variant=variant, batch_size=7), whole, atol=1e-5)


def nchw_reference(proto, x, target, layer, variant):
    """A and dA of the NCHW model in numpy: fc is linear in pool1, and MaxPool routes to each window's max."""
    t = reference_forward(proto, x)
    fc_w = next(onnx_array(i) for i in proto.graph.initializer if i.name == "fc_w")
    g_pool = fc_w[target].reshape(len(x), 4, 4, 4)
    if layer == "pool1":
        a, g = t["pool1"], g_pool
    else:  # conv1: the pool gradient to each window's argmax, times Relu's derivative
        windows = t["relu1"].reshape(len(x), 4, 4, 2, 4, 2).transpose(0, 1, 2, 4, 3, 5).reshape(len(x), 4, 4, 4, 4)
        hit = np.eye(4)[windows.argmax(axis=-1)] * g_pool[..., None]
        g = hit.reshape(len(x), 4, 4, 4, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(len(x), 4, 8, 8)
        a, g = t["conv1"], g * (t["conv1"] > 0)
    a, g = np.moveaxis(a, 1, -1), np.moveaxis(g, 1, -1)
    if variant != "scorecam":
        return finish((paper_weights(a, g, variant) * a).sum(axis=-1), 8)
    masks = [cv2.resize(a[i, :, :, c].astype(np.float32), (8, 8)) for i in range(len(x)) for c in range(4)]
    masks = np.asarray([(m - m.min()) / (m.max() - m.min()) if m.max() > m.min() else 0 * m for m in masks])
    scores = reference_forward(proto, np.repeat(x, 4, axis=0) * masks[:, None])["fc"]
    scores = scores[np.arange(4 * len(x)), np.repeat(target, 4)].reshape(len(x), 4)
    w = np.exp(scores - scores.max(axis=1, keepdims=True))
    return finish(np.einsum("nhwk,nk->nhw", a, w / w.sum(axis=1, keepdims=True)), 8)


def onnx_array(tensor):
    from onnx import numpy_helper

    return numpy_helper.to_array(tensor)


@pytest.mark.parametrize("layer", ["conv1", "pool1"])
@pytest.mark.parametrize("variant", PAPER_VARIANTS)
def test_foreign_nchw_model_matches_a_numpy_reference(variant, layer):
    proto = nchw_cnn()
    foreign = onnxsight.load(proto, device="cpu")
    xs = np.random.default_rng(5).uniform(-1, 1, (6, 3, 8, 8)).astype(np.float32)
    target = np.array([0, 1, 2, 3, 4, 0])
    got = gradcam(foreign, xs, target, layer=layer, variant=variant)
    assert got.shape == (6, 8, 8)
    error = relative_error(got, nchw_reference(proto, xs.astype(np.float64), target, layer, variant))
    assert error <= TOLERANCE, f"{variant} at {layer}: relative error {error:.2e}"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_foreign_nchw_model_relu_layer_and_guided(variant):
    foreign = onnxsight.load(nchw_cnn(), device="cpu")
    xs = np.random.default_rng(6).uniform(-1, 1, (64, 3, 8, 8)).astype(np.float32)
    for guided in (False, True):
        maps = gradcam(foreign, xs, layer="relu1", variant=variant, guided=guided)
        assert maps.shape == (64, 8, 8) and np.isfinite(maps).all() and maps.max() <= 1


def test_model_randomisation_changes_the_maps(model, x, predicted, tmp_path):
    """Adebayo et al.'s sanity check: a re-initialised copy of the network gives unrelated maps."""
    from scipy.stats import spearmanr

    from onnxsight.converters.keras import import_keras
    from onnxsight.demo.architectures import mnist_cnn

    import_keras().utils.set_random_seed(123)
    random = onnxsight.load(onnxsight.convert_keras(mnist_cnn(), tmp_path / "random.onnx"), device="cpu")
    trained_maps = gradcam(model, x, predicted, relu=False, normalize=False)
    random_maps = gradcam(random, x, predicted, relu=False, normalize=False)
    rho = np.array([spearmanr(t.ravel(), r.ravel())[0] for t, r in zip(trained_maps, random_maps)])
    assert np.nanmean(np.abs(rho)) < 0.5, f"mean |rank correlation| {np.nanmean(np.abs(rho)):.2f}"


# ---- clear errors ----------------------------------------------------------------------------
def test_bad_options_are_rejected_clearly(model, x):
    with pytest.raises(UnknownName, match="conv2d_3.*known: conv2d_1"):
        gradcam(model, x[:2], layer="conv2d_3")
    non_spatial = r"'dense_1' has no spatial output \(shape \(N, 1000\)\).*max_pooling2d_2"
    with pytest.raises(InvalidArgument, match=non_spatial):
        gradcam(model, x[:2], layer="dense_1")
    unknown = re.escape("unknown CAM variant 'gradcam+'; choose one of gradcam, gradcam++")
    with pytest.raises(InvalidArgument, match=unknown):
        gradcam(model, x[:2], variant="gradcam+")
    with pytest.raises(InvalidArgument, match="upsample must be one of bilinear, nearest, align_corners; got 'cubic'"):
        gradcam(model, x[:2], upsample="cubic")
    with pytest.raises(InvalidArgument, match="out of range"):
        gradcam(model, x[:2], target=10)
