"""pytorch-grad-cam's CAMs (EigenCAM, EigenGradCAM, GradCAMElementWise, AblationCAM, eigen_smooth)
against numpy references written here from its code's formulas, image by image in its NCHW layout.

On the NCHW ``nchw_cnn`` activations, gradients and the ablated forwards come from the numpy
forward of ``tests.foreign_models``; on the seed-000 CNN from Keras (TensorFlow's gradients, the
dense head's weights in numpy).
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper

import onnxsight
from onnxsight.methods.cam import gradcam
from tests.foreign_models import nchw_cnn, reference_forward
from tests.test_cam import finish, keras_logits, tf_layer
from tests.tf_reference import relative_error

TOLERANCE = 1e-4
NEW_VARIANTS = ["eigencam", "eigengradcam", "gradcamelementwise", "ablationcam", "kpcacam"]


# ---- references, from pytorch-grad-cam's formulas ---------------------------------------------
def projection_2d(acts: np.ndarray) -> np.ndarray:
    """get_2d_projection: per image, the (h·w, K) activations centred, projected on VT[0]."""
    maps = []
    for act in acts:  # K, h, w
        flat = act.reshape(act.shape[0], -1).T
        flat = flat - flat.mean(axis=0)
        vt = np.linalg.svd(flat, full_matrices=True)[2]
        maps.append((flat @ vt[0]).reshape(act.shape[1:]))
    return np.asarray(maps)


def kpca_2d(acts: np.ndarray) -> np.ndarray:
    """get_2d_projection_kernel: per image, scikit-learn's KernelPCA(1, sigmoid) of the centred (h·w, K) activations."""
    from sklearn.decomposition import KernelPCA

    maps = []
    for act in acts:
        flat = act.reshape(act.shape[0], -1).T
        maps.append(KernelPCA(n_components=1, kernel="sigmoid").fit_transform(flat - flat.mean(axis=0)).reshape(act.shape[1:]))
    return np.asarray(maps)


def ablation_weights(scores: np.ndarray, tail, acts: np.ndarray) -> np.ndarray:
    """(N, K): (y - y_k)/y, y_k the score of ``tail`` on one image's activations with channel k zeroed."""
    weights = np.zeros(acts.shape[:2])
    for i, act in enumerate(acts):
        for c in range(act.shape[0]):
            ablated = act.copy()
            ablated[c] = 0
            weights[i, c] = (scores[i] - tail(ablated[None], i)) / scores[i]
    return weights


def cam_image(variant: str, a: np.ndarray, g: np.ndarray | None, weights=None, eigen_smooth=False) -> np.ndarray:
    """pytorch-grad-cam's get_cam_image on NCHW activations a and gradients g."""
    if variant == "eigencam":
        return projection_2d(a)
    if variant == "eigengradcam":
        return projection_2d(g * a)
    if variant == "kpcacam":
        return kpca_2d(a)
    if variant == "gradcamelementwise":
        terms = np.maximum(g * a, 0)
    else:  # channel weights: Grad-CAM's spatial mean, or the ablation weights
        weights = g.mean(axis=(2, 3)) if weights is None else weights
        terms = weights[:, :, None, None] * a
    return projection_2d(terms) if eigen_smooth else terms.sum(axis=1)


# ---- the NCHW model, everything in numpy -------------------------------------------------------
def nchw_tail(proto, layer: str):
    """(activations at ``layer``, image) -> score of the image's target, the rest of the net in numpy."""
    w = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in proto.graph.initializer}

    def tail(act: np.ndarray, target: int) -> float:
        if layer == "conv1":
            act = np.maximum(act, 0).reshape(len(act), 4, 4, 2, 4, 2).max(axis=(3, 5))
        return float((act.reshape(len(act), -1) @ w["fc_w"].T + w["fc_b"])[0, target])
    return tail


def nchw_layer(proto, x: np.ndarray, target: np.ndarray, layer: str):
    """A and dA (NCHW) at pool1 or conv1 (the pool routes each window's gradient to its max)."""
    t = reference_forward(proto, x)
    fc_w = next(numpy_helper.to_array(i) for i in proto.graph.initializer if i.name == "fc_w")
    g_pool = fc_w[target].reshape(len(x), 4, 4, 4).astype(np.float64)
    if layer == "pool1":
        return t["pool1"], g_pool
    windows = t["relu1"].reshape(len(x), 4, 4, 2, 4, 2).transpose(0, 1, 2, 4, 3, 5).reshape(len(x), 4, 4, 4, 4)
    hit = np.eye(4)[windows.argmax(axis=-1)] * g_pool[..., None]
    g = hit.reshape(len(x), 4, 4, 4, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(len(x), 4, 8, 8)
    return t["conv1"], g * (t["conv1"] > 0)


def test_every_variant_has_a_reference_test():
    from onnxsight.methods.cam import VARIANTS
    from tests.test_cam import PAPER_VARIANTS

    missing = set(VARIANTS) - set(PAPER_VARIANTS) - set(NEW_VARIANTS)
    assert not missing, f"add a reference for: {', '.join(sorted(missing))}"


@pytest.fixture(scope="module")
def nchw():
    proto = nchw_cnn()
    xs = np.random.default_rng(5).uniform(-1, 1, (6, 3, 8, 8)).astype(np.float32)
    return proto, onnxsight.load(proto, device="cpu"), xs, np.array([0, 1, 2, 3, 4, 0])


@pytest.mark.parametrize("eigen_smooth", [False, True])
@pytest.mark.parametrize("layer", ["conv1", "pool1"])
@pytest.mark.parametrize("variant", NEW_VARIANTS + ["gradcam"])
def test_nchw_model_matches_numpy_references(nchw, variant, layer, eigen_smooth):
    proto, model, xs, target = nchw
    a, g = nchw_layer(proto, xs.astype(np.float64), target, layer)
    weights = None
    if variant == "ablationcam":
        tail = nchw_tail(proto, layer)
        scores = np.array([tail(act[None], t) for act, t in zip(a, target)])
        weights = ablation_weights(scores, lambda act, i: tail(act, target[i]), a)
    want = finish(cam_image(variant, a, g, weights, eigen_smooth), 8)
    got = gradcam(model, xs, target, layer=layer, variant=variant, eigen_smooth=eigen_smooth)
    assert got.shape == (6, 8, 8) and got.dtype == np.float32
    error = relative_error(got, want)
    assert error <= TOLERANCE, f"{variant} at {layer} (eigen_smooth={eigen_smooth}): relative error {error:.2e}"


def test_kpcacam_on_a_large_layer_matches_scikit_learns_arpack_path(model, x):
    """More than 200 positions (26×26): scikit-learn switches to ARPACK, whose sign it fixes the same way."""
    a = np.moveaxis(model.activations(x[:2], ["conv2d_1"])["conv2d_1"], -1, 1).astype(np.float64)
    error = relative_error(gradcam(model, x[:2], layer="conv2d_1", variant="kpcacam"), finish(kpca_2d(a), 28))
    assert error <= TOLERANCE, f"kpcacam at conv2d_1: relative error {error:.2e}"


def test_eigen_projection_is_not_the_channel_sum(nchw):
    _, model, xs, target = nchw
    plain, smooth = (gradcam(model, xs, target, layer="conv1", eigen_smooth=e) for e in (False, True))
    assert relative_error(smooth, plain) > 1e-2


def test_ablation_runs_in_batches_with_progress(nchw):
    _, model, xs, target = nchw
    calls = []
    whole = gradcam(model, xs, target, layer="conv1", variant="ablationcam")
    chunked = gradcam(model, xs, target, layer="conv1", variant="ablationcam", batch_size=5,
                      progress=lambda done, total: calls.append((done, total)))
    np.testing.assert_allclose(chunked, whole, atol=1e-6)
    assert calls[-1] == (24, 24) and len(calls) == 5  # 6 images x 4 channels, 5 rows per run


def test_ablation_on_a_fixed_batch_model_pads_its_last_run():
    fixed = onnxsight.load(nchw_cnn(batch=4), device="cpu")
    dynamic = onnxsight.load(nchw_cnn(), device="cpu")
    xs = np.random.default_rng(7).uniform(-1, 1, (4, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(gradcam(fixed, xs, 1, layer="conv1", variant="ablationcam"),
                               gradcam(dynamic, xs, 1, layer="conv1", variant="ablationcam"), atol=1e-6)


# ---- the seed-000 CNN (NHWC, Keras) -----------------------------------------------------------
@pytest.fixture(scope="module")
def x(digits_data):
    return digits_data.x_test[:32]


@pytest.mark.parametrize("variant", NEW_VARIANTS)
def test_seed_cnn_matches_references_on_keras(model, mnist_keras, x, variant):
    x = x[:8] if variant == "ablationcam" else x  # its reference runs the head once per image and channel
    target = keras_logits(mnist_keras, x).argmax(axis=1)
    a, g = tf_layer(mnist_keras, x, "max_pooling2d_2", target)
    a, g = np.moveaxis(a, -1, 1), np.moveaxis(g, -1, 1)  # NCHW, as pytorch-grad-cam holds them
    weights = None
    if variant == "ablationcam":
        (w1, b1), (w2, b2) = (mnist_keras.get_layer(n).get_weights() for n in ("dense_1", "preds"))

        def tail(act: np.ndarray, i: int) -> float:  # flatten (channel-last) -> dense_1 -> logits
            flat = np.moveaxis(act, 1, -1).reshape(len(act), -1)
            return float((np.maximum(flat @ w1 + b1, 0) @ w2 + b2)[0, target[i]])
        scores = np.array([tail(act[None], i) for i, act in enumerate(a)])
        weights = ablation_weights(scores, tail, a)
    want = finish(cam_image(variant, a, g, weights), 28)
    error = relative_error(gradcam(model, x, variant=variant), want)
    assert error <= TOLERANCE, f"{variant}: relative error {error:.2e}"


def test_run_from_a_layer_needs_no_input_where_the_exporter_took_a_shape_upstream(model, x):
    """tf2onnx's Flatten reshapes by the Shape of the pool's NCHW output: rebuilt from the fed batch."""
    acts = model.activations(x, ["max_pooling2d_2"])["max_pooling2d_2"]
    logits = model.run_from(model.tensor("max_pooling2d_2"), acts, [model.tensor("logits")])[0]
    np.testing.assert_allclose(logits, model.run(x, [model.tensor("logits")])[0], rtol=1e-5, atol=1e-5)


def test_ablation_feeds_the_other_inputs_of_each_ablated_copy(tmp_path):
    """A two-input model whose head also reads the metadata input: each copy gets its image's metadata."""
    import keras

    from tests.test_multi_io import _multi_task_model

    keras_model = _multi_task_model()
    model = onnxsight.load(onnxsight.convert_keras(keras_model, tmp_path / "multi.onnx"), device="cpu")
    rng = np.random.default_rng(0)
    batch = {"image": rng.random((3, 12, 12, 3), dtype=np.float32), "meta": rng.standard_normal((3, 4)).astype(np.float32)}
    target = np.array([1, 2, 0])
    a = np.asarray(keras.Model(keras_model.inputs, keras_model.get_layer("conv_2").output)(batch), np.float64)
    (wm, bm), (wk, bk) = (keras_model.get_layer(n).get_weights() for n in ("meta_dense", "kind_dense"))
    meta = np.tanh(batch["meta"] @ wm + bm)

    def tail(act: np.ndarray, i: int) -> float:  # GAP, joined with the metadata branch, class logits
        joined = np.concatenate([act.mean(axis=(2, 3)), meta[i][None]], axis=1)
        return float((joined @ wk + bk)[0, target[i]])
    a = np.moveaxis(a, -1, 1)
    scores = np.array([tail(act[None], i) for i, act in enumerate(a)])
    want = finish(cam_image("ablationcam", a, None, ablation_weights(scores, tail, a)), 12)
    got = gradcam(model, batch, target, layer="conv_2", variant="ablationcam", output="kind")
    assert relative_error(got, want) <= TOLERANCE


@pytest.mark.parametrize("batch", ["N", 4])
def test_fed_at_rebuilds_a_shape_taken_upstream_from_the_fed_tensor(batch):
    """Relu -> Neg (fed) -> Reshape by the Shape of the Relu's output: no input needed, dynamic or fixed batch."""
    from onnx import TensorProto, helper

    from onnxsight.engine.graph import fed_at, runtime_compatible

    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Neg", ["r"], ["t"]),
             helper.make_node("Shape", ["r"], ["s"]), helper.make_node("Reshape", ["t", "s"], ["out"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 2, 3])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, 2, 3])])
    model = onnxsight.load(runtime_compatible(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])),
                           device="cpu")
    tail = fed_at(model.proto, "t", "fed", ["out"], model.values)
    assert [i.name for i in tail.graph.input] == ["fed"]
    value = np.arange(24, dtype=np.float32).reshape(4, 2, 3)
    np.testing.assert_array_equal(model.run_from("t", value, ["out"])[0], value)


def test_mobilenetv2_runs_every_new_variant(tmp_path):
    import keras

    net = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), alpha=0.35, classes=10)
    model = onnxsight.load(onnxsight.convert_keras(net, tmp_path / "mobilenetv2.onnx"), device="cpu")
    xs = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    for variant in NEW_VARIANTS:
        maps = gradcam(model, xs, variant=variant, eigen_smooth=variant == "gradcamelementwise")
        assert maps.shape == (2, 32, 32) and np.isfinite(maps).all(), variant


# ---- the command line ----------------------------------------------------------------------------
@pytest.mark.parametrize(("options", "kwargs"), [
    (["--variant", "ablationcam", "--eigen-smooth"], {"variant": "ablationcam", "eigen_smooth": True}),
    (["--variant", "eigencam"], {"variant": "eigencam"}),
])
def test_gradcam_command_writes_the_librarys_maps(tmp_path, mnist_onnx, model, digits_data, options, kwargs):
    from typer.testing import CliRunner

    from onnxsight.cli.app import app

    result = CliRunner().invoke(app, ["gradcam", str(mnist_onnx), "--data", "digits", "--count", "3", "--target", "3,1,4",
                                      *options, "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    want = gradcam(model, digits_data.x_test[:3], [3, 1, 4], **kwargs)
    np.testing.assert_allclose(np.load(tmp_path / "gradcam.npy"), want, rtol=1e-5, atol=1e-6)


def test_gradcam_help_lists_the_new_variants_and_eigen_smooth():
    from typer.testing import CliRunner

    from onnxsight.cli.app import app

    text = " ".join(CliRunner().invoke(app, ["gradcam", "--help"], terminal_width=200).stdout.split())
    for name in [*NEW_VARIANTS, "--eigen-smooth"]:
        assert name in text, name
