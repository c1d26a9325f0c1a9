"""Activation maximization: classes found from grey, gradients proven by finite differences on the
seed models and a keras.applications model, a broken gradient caught, the loop equal to a
TensorFlow re-implementation, the regulariser kernels exact, and the CLI command."""

from __future__ import annotations

import json
import time

import cv2
import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

import onnxsight
from onnxsight.cli.app import app
from onnxsight.engine.autodiff import RULES
from onnxsight.errors import GradientCheckFailed, InvalidArgument, UnknownName
from onnxsight.kernels import regularizers as k
from onnxsight.methods.common import target_scores
from onnxsight.methods.maximize import TOLERANCE, Maximization, maximize
from tests.foreign_models import nchw_cnn
from tests.tf_reference import float64_twin, relative_error, swapped_activations

CLASSES = list(range(10))


@pytest.fixture(scope="module")
def mnist(mnist_onnx):
    return onnxsight.load(mnist_onnx, device="cpu")


@pytest.fixture(scope="module")
def small():
    """A tiny NCHW CNN (3x8x8 input, 5 classes): the layout the Keras models do not have."""
    return onnxsight.load(nchw_cnn(), device="cpu")


def _assert_checked(result: Maximization, at_least: int = 1) -> None:
    errors = result.fd_errors
    assert errors.size >= at_least, f"only {errors.size} finite-difference comparisons ran"
    assert errors.max() <= TOLERANCE, f"largest finite-difference error {errors.max():.2e}"


# ---- acceptance: every class from grey, in one batch -------------------------------------
@pytest.mark.parametrize(
    ("objective", "options"),
    [
        ("logit", {}),  # seeds 000/002: the class logit, softmax swapped for linear
        ("cross_entropy", {"regularizers": {"l2": 1e-3}}),  # seed 004: CE + 1e-3·‖x‖, lr 0.05
    ],
)
def test_every_class_maximised_from_grey_is_classified_as_that_class(mnist, objective, options):
    result = maximize(mnist, "preds", CLASSES, objective, steps=200, lr=0.05, init="grey", check_every=100, **options)
    predicted = mnist.predict(result.images).argmax(axis=1)
    hits = int((predicted == np.arange(10)).sum())
    assert hits >= 9, f"{objective}: predicted {predicted.tolist()}"
    assert (result.final_activation > result.start_activation).all()
    _assert_checked(result, at_least=10)


# ---- the finite-difference check ------------------------------------------------------------
def _seed_model(build, tmp_path):
    return onnxsight.load(onnxsight.convert_keras(build(), tmp_path / "model.onnx"), device="cpu")


@pytest.mark.parametrize(
    ("architecture", "layer", "units", "objective"),
    [
        ("mnist_cnn_keras_vis", "preds", [0, 4], "logit"),  # seed 002
        ("cifar_cnn5", "conv_1", [0, 4], "norm"),  # seed 004: a unit's channel norm
        ("cifar_cnn5", "conv_2", None, "norm"),  # seed 004: a whole layer
    ],
)
def test_finite_difference_check_passes_on_every_step_of_the_seed_models(tmp_path, architecture, layer, units, objective):
    from onnxsight.demo import architectures

    model = _seed_model(getattr(architectures, architecture), tmp_path)
    result = maximize(model, layer, units, objective, steps=4, init="noise", check_every=1,
                      regularizers={"l2": 1e-3, "tv": 1e-2}, modifiers={"jitter": 2})
    _assert_checked(result, at_least=4)


def test_near_ties_from_grey_that_float64_breaks_differently_are_not_called_wrong(tmp_path):
    """From grey, CNN5's max pools stay nearly tied for a few steps, and the float32 run and float64
    differences can pick different maxima; comparing the VJP graph in float64 keeps the check exact
    (the float32 VJP against float64 differences gave errors up to 6e-2 here)."""
    from onnxsight.demo.architectures import cifar_cnn5

    model = _seed_model(cifar_cnn5, tmp_path)
    result = maximize(model, "logits", list(range(10)), steps=4, check_every=1, regularizers={"l2": 1e-3})
    _assert_checked(result, at_least=10)


def test_finite_difference_check_passes_on_a_keras_applications_model(tmp_path):
    import keras

    net = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), alpha=0.35, classes=10)
    model = onnxsight.load(onnxsight.convert_keras(net, tmp_path / "mobilenet.onnx"), device="cpu")
    for layer, units in (("logits", [1, 7]), ("block_6_expand_relu", [3])):
        result = maximize(model, layer, units, steps=3, init="noise", check_every=1,
                          regularizers={"l2": 1e-3, "tv": 1e-2}, modifiers={"jitter": 2})
        _assert_checked(result, at_least=3)


def test_the_check_is_retried_after_a_step_that_only_crossed_kinks(mnist):
    # A grey image ties every max-pool window: no direction is smooth at step 0.
    result = maximize(mnist, "preds", [3], steps=4, init="grey", check_every=100)
    checked = [i for i, row in enumerate(result.history) if row["fd_error"][0] is not None]
    assert checked and checked[0] > 0 and result.fd_errors.max() <= TOLERANCE


def _mlp() -> onnx.ModelProto:
    """A dense model (N, 6) -> 4 classes: every op has a float64 kernel in onnxruntime."""
    rng = np.random.default_rng(5)
    weights = {"w1": rng.standard_normal((6, 8)).astype(np.float32), "w2": rng.standard_normal((8, 4)).astype(np.float32)}
    nodes = [onnx.helper.make_node("MatMul", ["x", "w1"], ["h"], name="h"), onnx.helper.make_node("Tanh", ["h"], ["t"], name="t"),
             onnx.helper.make_node("MatMul", ["t", "w2"], ["logits"], name="logits")]
    graph = onnx.helper.make_graph(
        nodes, "mlp", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 6])],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 4])],
        [onnx.numpy_helper.from_array(v, k) for k, v in weights.items()])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])


@pytest.mark.parametrize(("slow", "checked_steps"), [(False, [0, 50, 100]), (True, [0])])
def test_auto_checks_every_50_steps_unless_one_check_outlasts_them(monkeypatch, slow, checked_steps):
    from onnxsight.methods import maximize as module

    if slow:  # a check as long as a photo-sized model's (float64 in onnx.reference) relative to its steps
        check = module._Loop.check
        monkeypatch.setattr(module._Loop, "check", lambda *args: (time.sleep(1.05), check(*args))[1])
    result = maximize(onnxsight.load(_mlp(), device="cpu"), "logits", [1], "unit", steps=101, init="noise", lr=0.01)
    assert [i for i, row in enumerate(result.history) if row["fd_error"][0] is not None] == checked_steps
    assert result.fd_errors.max() <= TOLERANCE


@pytest.mark.parametrize("init", ["noise", "grey"])
def test_a_wrong_gradient_rule_stops_the_ascent(mnist_onnx, monkeypatch, init):
    monkeypatch.setitem(RULES, "Relu", lambda g, n: [n.gy])  # forgets the mask: a plausible bug
    broken = onnxsight.load(mnist_onnx, device="cpu")
    with pytest.raises(GradientCheckFailed, match=r"gradient check failed at step \d+ .*relative error .* exceeds the tolerance 1e-03"):
        maximize(broken, "preds", [3, 5], steps=20, init=init, check_every=10)


def test_a_wrong_regulariser_or_jitter_gradient_is_caught_too(small, monkeypatch):
    options = {"steps": 2, "init": "noise", "check_every": 1, "regularizers": {"tv": 0.5}, "modifiers": {"jitter": 2}}
    maximize(small, "fc", [0, 1], "unit", **options)  # the real kernels pass
    with monkeypatch.context() as patch:
        real = k.total_variation
        patch.setattr(k, "total_variation", lambda x, axis: (real(x, axis)[0], np.zeros_like(x)))
        with pytest.raises(GradientCheckFailed, match="step 0"):
            maximize(small, "fc", [0, 1], "unit", **options)
    with monkeypatch.context() as patch:
        patch.setattr(k, "unroll", lambda gradient, shift, axis: gradient)  # forgets to undo the shift
        with pytest.raises(GradientCheckFailed):
            maximize(small, "fc", [0, 1], "unit", **{**options, "seed": 1})


def test_rotation_and_scale_check_the_model_gradient_at_the_warped_image(small):
    result = maximize(small, "fc", [0, 2], "unit", steps=3, init="noise", check_every=1,
                      modifiers={"jitter": 1, "rotate": 10.0, "scale": 0.1}, regularizers={"tv": 0.1})
    _assert_checked(result, at_least=3)


# ---- the loop equals TensorFlow ---------------------------------------------------------------
@pytest.fixture(scope="module")
def smooth(tmp_path_factory):
    """A random-weight digits CNN without kinks (tanh, softplus, average pooling), in Keras and as
    ONNX: with ReLUs and max pools a pre-activation within float32 rounding of a kink flips the
    subgradient in one runtime only, and which ones do depends on the CPU's kernels."""
    import keras

    keras.utils.set_random_seed(0)
    layers = keras.layers
    keras_model = keras.Sequential([
        keras.Input((28, 28, 1)), layers.Conv2D(8, 3, activation="tanh", name="conv_1"),
        layers.AveragePooling2D(2, name="pool_1"), layers.Conv2D(8, 3, activation="softplus", name="conv_2"),
        layers.AveragePooling2D(2, name="pool_2"), layers.Flatten(name="flatten"),
        layers.Dense(10, activation="softmax", name="preds"),
    ])
    path = onnxsight.convert_keras(keras_model, tmp_path_factory.mktemp("smooth") / "smooth.onnx")
    return keras_model, onnxsight.load(path, device="cpu")


@pytest.mark.parametrize("objective", ["logit", "cross_entropy"])
def test_ten_steps_equal_a_tensorflow_reimplementation(smooth, objective):
    import tensorflow as tf

    keras_model, model = smooth
    steps, lr, l2, tv, jitter, seed = 10, 0.05, 1e-3, 1e-2, 2, 7
    start = (0.5 + np.random.default_rng(1).uniform(-0.1, 0.1, (10, 28, 28, 1))).astype(np.float32)
    result = maximize(model, "preds", CLASSES, objective, steps=steps, lr=lr, init=start, seed=seed, check_every=0,
                      regularizers={"l2": l2, "tv": tv}, modifiers={"jitter": jitter})

    rng = np.random.default_rng(seed)  # the documented order: one (rows, columns) shift per step
    twin = float64_twin(keras_model)
    x = tf.constant(start, tf.float64)
    with swapped_activations(twin):
        for _ in range(steps):
            shift = [int(s) for s in rng.integers(-jitter, jitter + 1, size=2)]
            with tf.GradientTape() as tape:
                tape.watch(x)
                logits = twin(tf.roll(x, shift, axis=[1, 2]), training=False)
                scores = tf.nn.log_softmax(logits) if objective == "cross_entropy" else logits
                f = tf.gather(scores, CLASSES, axis=1, batch_dims=1)
                norm = tf.sqrt(tf.reduce_sum(tf.square(x), axis=[1, 2, 3]))
                total_variation = (tf.reduce_sum(tf.square(x[:, 1:] - x[:, :-1]), axis=[1, 2, 3])
                                   + tf.reduce_sum(tf.square(x[:, :, 1:] - x[:, :, :-1]), axis=[1, 2, 3]))
                objective_value = tf.reduce_sum(f - l2 * norm - tv * total_variation)
            x = x + lr * tape.gradient(objective_value, x)
    error = relative_error(result.images, x.numpy())
    # float32 against float64: ten steps each adding a float32-rounded gradient (relative ~1e-6)
    assert error <= 1e-5, f"{objective}: relative error {error:.2e} after {steps} steps"
    assert relative_error(start, x.numpy()) > 1e-3  # the steps moved the images


# ---- what a result holds -----------------------------------------------------------------------
def test_history_and_activations_describe_the_run(small):
    result = maximize(small, "relu1", [1, 3], "unit", steps=5, lr=0.5, init="noise", seed=3, check_every=2,
                      regularizers={"l2": 0.01, "tv": 0.05}, step="normalized")
    assert result.images.shape == (2, 3, 8, 8) and result.units == [1, 3] and result.objective == "unit"
    assert [row["step"] for row in result.history] == list(range(5))
    for key in ("objective", "l2", "tv", "total", "image_norm", "gradient_norm", "fd_error"):
        assert result.series(key).shape == (5, 2), key
    checked = np.isfinite(result.series("fd_error")).any(axis=1)
    assert checked[[0, 2, 4]].all() and not checked[[1, 3]].any()
    start = k.start_images("noise", 2, (3, 8, 8), (0, 1), np.random.default_rng(3))
    np.testing.assert_allclose(result.start_activation, target_scores(small, start, [1, 3], of="relu1"), rtol=1e-5)
    np.testing.assert_allclose(result.final_activation, target_scores(small, result.images, [1, 3], of="relu1"), rtol=1e-5)
    np.testing.assert_allclose(result.series("l2")[0], 0.01 * k.l2_norm(start), rtol=1e-6)
    assert result.final_activation.sum() > result.start_activation.sum()
    assert result.options["step"] == "normalized" and result.options["regularizers"]["tv"] == 0.05
    json.dumps(result.history)  # JSON-ready: no NaN, no numpy types
    images, history = result
    assert images is result.images and history is result.history


def test_clip_keeps_the_value_range_and_blur_smooths(small):
    clipped = maximize(small, "fc", [0], "unit", steps=20, lr=5.0, clip=True, value_range=(-1, 1), check_every=0)
    assert clipped.images.min() >= -1 and clipped.images.max() <= 1
    free = maximize(small, "fc", [0], "unit", steps=3, lr=1.0, init="noise", check_every=0)
    blurred = maximize(small, "fc", [0], "unit", steps=3, lr=1.0, init="noise", check_every=0,
                       regularizers={"blur_every": 3, "blur_sigma": 1.0})
    tv = [k.total_variation(r.images, 1)[0][0] for r in (free, blurred)]
    assert tv[1] < 0.5 * tv[0]


def test_a_given_start_image_is_used_for_every_unit(small):
    image = np.random.default_rng(0).uniform(0, 1, (3, 8, 8)).astype(np.float32)
    result = maximize(small, "fc", [0, 1, 2], "unit", steps=1, init=image, check_every=0)
    want = target_scores(small, np.stack([image] * 3), [0, 1, 2], of="fc")
    np.testing.assert_allclose(result.start_activation, want, rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"layer": "fc", "unit": None, "objective": "unit"}, InvalidArgument, "needs a unit"),
        ({"layer": "fc", "unit": 5}, InvalidArgument, r"unit 5 out of range: layer 'fc' has 5 units \(0..4\)"),
        ({"layer": "fcc", "unit": 1}, UnknownName, "unknown layer 'fcc'"),
        ({"layer": "fc", "unit": 1, "init": "sepia"}, InvalidArgument, "init must be 'grey', 'noise'"),
        ({"layer": "fc", "unit": 1, "regularizers": {"l3": 1.0}}, InvalidArgument, "unknown regularizers option 'l3'"),
        ({"layer": "fc", "unit": 1, "lr": -1.0}, InvalidArgument, "lr must be a positive number"),
        ({"layer": "fc", "unit": 1, "step": "adam"}, InvalidArgument, "step must be one of plain, normalized"),
        ({"layer": "fc", "unit": [1.5]}, InvalidArgument, "units must be integers"),
    ],
)
def test_bad_arguments_are_one_clear_error(small, kwargs, error, message):
    with pytest.raises(error, match=message):
        maximize(small, steps=1, check_every=0, **kwargs)


def test_default_objective_follows_the_layer(mnist):
    assert maximize(mnist, "preds", 1, steps=1, check_every=0).objective == "logit"
    assert maximize(mnist, "conv2d_2", 1, steps=1, check_every=0).objective == "unit"
    assert maximize(mnist, "conv2d_2", None, steps=1, check_every=0).objective == "norm"


def test_an_old_opset_model_is_maximised_and_checked():
    """Opset 9 (old model-zoo files): the objective head is built on the model upgraded to the VJP's opset."""
    proto = nchw_cnn()
    proto.opset_import[0].version = 9
    result = maximize(onnxsight.load(proto, device="cpu"), "logits", [1, 2], steps=3, check_every=1)
    assert (result.final_activation > result.start_activation).all()
    _assert_checked(result, at_least=2)


# ---- kernels ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("channel_axis", [1, 3])
def test_regulariser_gradients_equal_central_differences(channel_axis):
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (2, 3, 5, 6) if channel_axis == 1 else (2, 5, 6, 3))
    d = rng.normal(0, 1, x.shape)
    h = 1e-6
    for value, gradient in ((k.l2_norm, k.l2_norm_gradient),
                            (lambda a: k.total_variation(a, channel_axis)[0],
                             lambda a: k.total_variation(a, channel_axis)[1])):
        numeric = (value(x + h * d) - value(x - h * d)) / (2 * h)
        analytic = (gradient(x) * d).reshape(2, -1).sum(axis=1)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6)


def test_jitter_is_undone_exactly_and_warp_approximates_its_adjoint():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (2, 9, 10, 3))
    shift = k.draw_shift(np.random.default_rng(5), 3)
    assert all(-3 <= s <= 3 for s in shift)
    np.testing.assert_array_equal(k.unroll(k.roll(x, shift, 3), shift, 3), x)
    # <warp(a), b> ≈ <a, unwarp(b)> for smooth images away from the border (reflected there)
    window = np.zeros((64, 64))
    window[16:48, 16:48] = 1
    smooth = (cv2.GaussianBlur(rng.normal(0, 1, (64, 64)), (0, 0), 3) * cv2.GaussianBlur(window, (0, 0), 4))[None, None]
    other = cv2.GaussianBlur(rng.normal(0, 1, (64, 64)), (0, 0), 3)[None, None]
    for angle, zoom in ((8.0, 1.0), (0.0, 1.05), (-5.0, 0.95)):
        matrix = k.warp_matrix(64, 64, angle, zoom)
        forward = np.sum(k.warp(smooth, matrix, 1) * other)
        backward = np.sum(smooth * k.unwarp(other, matrix, 1))
        assert abs(forward - backward) <= 0.01 * abs(forward), (angle, zoom)


def test_start_images():
    rng = np.random.default_rng(0)
    assert (k.start_images("grey", 2, (4, 4, 1), (0, 1), rng) == 0.5).all()
    noise = k.start_images("noise", 2, (4, 4, 1), (-1, 1), rng)
    assert noise.shape == (2, 4, 4, 1) and np.abs(noise).max() <= 0.2 and noise.std() > 0
    assert (k.start_images(0.2, 1, (2, 2), (0, 1), rng) == np.float32(0.2)).all()
    with pytest.raises(InvalidArgument, match=r"init image has shape \(3, 3\); expected \(2, 2\) or \(1, 2, 2\)"):
        k.start_images(np.zeros((3, 3)), 1, (2, 2), (0, 1), rng)
    with pytest.raises(InvalidArgument, match="low < high"):
        k.start_images("grey", 1, (2, 2), (1, 0), rng)


# ---- the command ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runner():
    return CliRunner()


def invoke(runner, *args):
    return runner.invoke(app, [str(a) for a in args])


def test_maximize_command_writes_pictures_curves_and_history(runner, tmp_path, mnist_onnx, mnist):
    result = invoke(runner, "maximize", mnist_onnx, "--layer", "preds", "--unit", "3", "--unit", "4", "--steps", "12",
                    "--jitter", "1", "--l2", "1e-3", "--check-every", "5", "--init", "noise", "-o", tmp_path)
    assert result.exit_code == 0, result.output
    for name in ("preds_unit3.png", "preds_unit4.png", "curves.png", "history.json", "preds_images.npy"):
        assert (tmp_path / name).is_file(), name
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["units"] == [3, 4] and history["objective"] == "logit" and len(history["history"]) == 12
    assert history["fd_checks"] >= 2 and history["fd_max_error"] <= TOLERANCE
    library = maximize(mnist, "preds", [3, 4], steps=12, init="noise", check_every=0, regularizers={"l2": 1e-3},
                       modifiers={"jitter": 1})
    np.testing.assert_allclose(np.load(tmp_path / "preds_images.npy"), library.images, rtol=1e-6, atol=1e-7)
    again = invoke(runner, "maximize", mnist_onnx, "--layer", "preds", "--unit", "3", "--steps", "1", "-o", tmp_path)
    assert again.exit_code == 1 and "already exists" in again.output


def test_all_units_draws_a_grid(runner, tmp_path, mnist_onnx):
    result = invoke(runner, "maximize", mnist_onnx, "--layer", "conv2d_1", "--all-units", "--steps", "2",
                    "--check-every", "0", "-o", tmp_path)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "conv2d_1_grid.png").is_file() and (tmp_path / "conv2d_1_unit31.png").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layer", "nope", "--unit", "1"], "unknown layer 'nope'"),
        (["--layer", "preds", "--unit", "12"], "unit 12 out of range: layer 'preds' has 10 units"),
        (["--layer", "preds", "--unit", "1", "--init", "missing.png"], "--init must be grey, noise, a number or an image file"),
        (["--layer", "preds", "--unit", "1", "--objective", "fun"], "unknown objective 'fun'"),
    ],
)
def test_maximize_command_errors_are_one_line(runner, tmp_path, mnist_onnx, args, message):
    result = invoke(runner, "maximize", mnist_onnx, *args, "--steps", "1", "-o", tmp_path)
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
