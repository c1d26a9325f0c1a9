"""Models with several inputs and outputs: conversion, heads (``output=``), inputs as dicts, attributions
per input, and the CLI's ``--head`` and ``--input NAME=FILE.npy``; references from TensorFlow autograd
on a float64 twin of the Keras model and from hand-written loops."""

from __future__ import annotations

import json

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import onnxsight
from onnxsight.cli.app import app
from onnxsight.converters.keras import convert_keras_model
from onnxsight.errors import InvalidArgument, UnknownName
from onnxsight.kernels.colors import normalize_each
from onnxsight.methods.integrated_gradients import completeness_gap
from tests.tf_reference import float64_twin, relative_error

FLOAT64_TOLERANCE = 1e-5  # float32 onnxruntime against a float64 reference: rounding of short sums


def _multi_task_model():
    """An image and a metadata vector in; a softmax class head and a linear regression head out
    (smooth activations: no kinks between float32 and float64)."""
    import keras

    keras.utils.set_random_seed(3)
    image, meta = keras.Input((12, 12, 3), name="image"), keras.Input((4,), name="meta")
    h = keras.layers.Conv2D(6, 3, activation="tanh", name="conv")(image)
    h = keras.layers.Conv2D(5, 3, activation="tanh", name="conv_2")(h)
    pooled = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    joined = keras.layers.Concatenate(name="joined")([pooled, keras.layers.Dense(4, activation="tanh", name="meta_dense")(meta)])
    kind = keras.layers.Activation("softmax", name="kind")(keras.layers.Dense(3, name="kind_dense")(joined))
    age = keras.layers.Dense(1, name="age")(joined)
    return keras.Model([image, meta], [age, kind])


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    keras_model = _multi_task_model()
    path = tmp_path_factory.mktemp("multi") / "multi.onnx"
    conversion = convert_keras_model(keras_model, path)
    return keras_model, onnxsight.load(path, device="cpu"), path, conversion


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    return {"image": rng.random((3, 12, 12, 3), dtype=np.float32), "meta": rng.standard_normal((3, 4)).astype(np.float32)}


def _tf_gradients(keras_model, x, head: str, target, layer: str | None = None):
    """float64 TF autograd: d(score)/d(inputs) (and d/d(layer)), score = the head's logit ``target``
    per image (the class head read before its softmax)."""
    import keras
    import tensorflow as tf

    twin = float64_twin(keras_model)
    scored = twin.get_layer("kind_dense" if head == "kind" else head).output
    names = [layer] if layer else []
    probe = keras.Model(twin.inputs, [scored, *(twin.get_layer(n).output for n in names)])
    inputs = [tf.constant(x["image"], tf.float64), tf.constant(x["meta"], tf.float64)]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(inputs)
        values = probe(inputs)
        values = values if isinstance(values, list) else [values]
        score = tf.reduce_sum(tf.gather(values[0], target, axis=1, batch_dims=1))
    grads = tape.gradient(score, inputs)
    result = {"image": grads[0].numpy(), "meta": grads[1].numpy()}
    if layer:
        result[layer] = (values[1].numpy(), tape.gradient(score, values[1]).numpy())
    return result


def test_conversion_keeps_keras_names_and_records_each_heads_logits(multi):
    _, m, _, conversion = multi
    assert conversion.max_abs_diff < 1e-5
    assert m.input_names == ["image", "meta"] and m.input_name == "image"
    assert m.input_layouts == {"image": "NHWC", "meta": "NC"}
    assert m.output_names == ["age", "kind"]
    assert m.head == "kind" and m.logits == m.tensor("kind_dense")  # the first classification head, pre-softmax
    assert m.with_output("age").logits == "age" and m.with_output("age").tensor("output") == "age"
    assert m.logits_of("kind") == m.tensor("kind_dense")


def test_predict_per_head_matches_keras(multi, batch):
    keras_model, m, _, _ = multi
    age, kind = (v.numpy() for v in keras_model([batch["image"], batch["meta"]]))
    np.testing.assert_allclose(m.predict(batch), kind, atol=1e-6)
    np.testing.assert_allclose(m.with_output("age").predict(batch), age, atol=1e-5)


@pytest.mark.parametrize("head, target", [("kind", [2, 0, 1]), ("age", [0, 0, 0])])
def test_saliency_per_input_matches_tensorflow(multi, batch, head, target):
    keras_model, m, _, _ = multi
    want = _tf_gradients(keras_model, batch, head, np.array(target))
    got = onnxsight.saliency(m, batch, target=target, output=head, absolute=False, reduce=None)
    assert set(got) == {"image", "meta"}
    for name in ("image", "meta"):
        assert got[name].shape == batch[name].shape
        assert relative_error(got[name], want[name]) < FLOAT64_TOLERANCE, name


def test_gradcam_with_context_input_matches_tensorflow(multi, batch):
    keras_model, m, _, _ = multi
    target = np.array([1, 2, 0])
    activations, gradients = _tf_gradients(keras_model, batch, "kind", target, layer="conv_2")["conv_2"]
    cam = np.maximum((activations * gradients.mean(axis=(1, 2), keepdims=True)).sum(axis=-1), 0)
    want = normalize_each(np.stack([cv2.resize(c, (12, 12), interpolation=cv2.INTER_LINEAR) for c in cam]))
    got = onnxsight.gradcam(m, batch, target=target, layer="conv_2")
    assert got.shape == (3, 12, 12)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_integrated_gradients_attribute_to_every_input_and_are_complete(multi, batch):
    _, m, _, _ = multi
    baseline = {"meta": np.ones(4, np.float32)}  # image: black
    ig = onnxsight.integrated_gradients(m, batch, target=1, steps=64, method="gausslegendre", baseline=baseline)
    assert {k: v.shape for k, v in ig.items()} == {"image": (3, 12, 12, 3), "meta": (3, 4)}
    gap = completeness_gap(m, batch, ig, 1, baseline=baseline)
    scores = m.run(batch, [m.logits])[0][:, 1]
    assert gap.max() < 1e-4 * max(1.0, np.abs(scores).max())
    assert np.abs(ig["meta"]).max() > 1e-3  # the second input really takes part of the attribution


def test_smoothgrad_draws_noise_per_input(multi, batch):
    _, m, _, _ = multi
    plain = onnxsight.saliency(m, batch, target=0)
    quiet = onnxsight.saliency(m, batch, target=0, smooth_samples=3, smooth_noise=0.0)
    noisy = onnxsight.saliency(m, batch, target=0, smooth_samples=3, smooth_noise=0.2)
    for name in ("image", "meta"):
        np.testing.assert_allclose(quiet[name], plain[name], rtol=1e-5, atol=1e-7)
        assert not np.allclose(noisy[name], plain[name], atol=1e-4), name


def test_occlusion_holds_the_other_inputs_per_image(multi, batch):
    _, m, _, _ = multi
    got = onnxsight.occlusion(m, batch, target=2, window=6, stride=6)
    logits = m.tensor("logits")
    clean = m.run(batch, [logits])[0][:, 2]
    want = np.zeros((3, 12, 12))
    for top in (0, 6):
        for left in (0, 6):
            hidden = batch["image"].copy()
            hidden[:, top:top + 6, left:left + 6] = 0
            drop = clean - m.run({"image": hidden, "meta": batch["meta"]}, [logits])[0][:, 2]
            want[:, top:top + 6, left:left + 6] = drop[:, None, None]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_gradcheck_checks_every_input_of_each_head(multi, batch):
    _, m, _, _ = multi
    for head in ("kind", "age"):
        report = onnxsight.gradcheck(m, batch, wrt=["image", "meta", "conv"], output=head)
        assert report.passed and [row.status for row in report.rows] == ["ok"] * 3, report.rows
        assert max(row.relative_error for row in report.rows) < 1e-6


@pytest.mark.parametrize("method", ["saliency", "gradcam", "smoothgrad"])
def test_explainer_takes_the_other_inputs_and_explains_the_chosen_head(multi, batch, method):
    import onnxruntime as ort

    from onnxsight.serving.explainer import export_explainer

    _, m, _, _ = multi
    proto = export_explainer(m.with_output("kind"), method, samples=5)
    assert [v.name for v in proto.graph.input] == ["image", "target", "meta"]
    probabilities, explained, heatmap = ort.InferenceSession(proto.SerializeToString()).run(None, batch)
    np.testing.assert_allclose(probabilities, m.predict(batch), atol=1e-6)
    for i in range(3):  # the explainer's noise is the one the library draws for one image
        one = {name: value[i:i + 1] for name, value in batch.items()}
        if method == "gradcam":
            want = onnxsight.gradcam(m, one, target=int(explained[i]))
        else:
            smooth = {"smooth_samples": 5} if method == "smoothgrad" else {}
            want = onnxsight.saliency(m, one, target=int(explained[i]), normalize=True, **smooth)["image"]
        np.testing.assert_allclose(heatmap[i], want[0], atol=1e-5)


def test_bad_inputs_and_heads_are_one_line_errors(multi, batch):
    _, m, _, _ = multi
    with pytest.raises(InvalidArgument, match=r"has 2 inputs \(image, meta\): pass x as a dict"):
        m.predict(batch["image"])
    with pytest.raises(InvalidArgument, match=r"inputs image, meta; missing 'meta'"):
        onnxsight.saliency(m, {"image": batch["image"]})
    with pytest.raises(InvalidArgument, match=r"different batch sizes"):
        m.predict({"image": batch["image"], "meta": batch["meta"][:2]})
    with pytest.raises(InvalidArgument, match=r"input 'meta' has shape \(3, 5\) but .* expects \(N, 4\)"):
        m.predict({"image": batch["image"], "meta": np.zeros((3, 5), np.float32)})
    with pytest.raises(UnknownName, match=r"unknown output 'agee'; did you mean age"):
        onnxsight.gradcam(m, batch, output="agee")
    with pytest.raises(InvalidArgument, match=r"maximize optimises a model's only input; .* image, meta"):
        onnxsight.maximize(m, unit=0, steps=1)


def test_cli_feeds_named_inputs_and_picks_the_head(multi, batch, tmp_path):
    _, m, path, _ = multi
    np.save(tmp_path / "images.npy", batch["image"])
    np.save(tmp_path / "meta.npy", batch["meta"][0])  # one row: used for every image
    runner = CliRunner()
    result = runner.invoke(app, ["ig", str(path), str(tmp_path / "images.npy"), "--input", f"meta={tmp_path / 'meta.npy'}",
                                 "--head", "age", "--target", "0", "-o", str(tmp_path / "ig")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "ig" / "ig.json").read_text())
    assert summary["head"] == "age"
    meta = np.load(tmp_path / "ig" / "ig_meta.npy")
    x = {"image": batch["image"], "meta": np.repeat(batch["meta"][:1], 3, axis=0)}
    want = onnxsight.integrated_gradients(m, x, target=0, output="age")
    np.testing.assert_allclose(meta, want["meta"], rtol=1e-5, atol=1e-7)
    checked = runner.invoke(app, ["gradcheck", str(path), "--head", "age", "--all-layers", "--json"])
    assert checked.exit_code == 0, checked.output
    rows = {row["wrt"]: row["status"] for row in json.loads(checked.output)["rows"]}
    assert {"image", "meta", "conv", "meta_dense"} <= set(rows) and set(rows.values()) == {"ok"}
    missing = runner.invoke(app, ["saliency", str(path), str(tmp_path / "images.npy"), "-o", str(tmp_path / "s")])
    assert missing.exit_code != 0 and "also needs the inputs meta" in missing.output
    assert not (tmp_path / "s").exists()


def _token_and_image_model() -> onnx.ModelProto:
    """A foreign two-input model: an NCHW image and int64 token ids (an embedding lookup)."""
    rng = np.random.default_rng(1)
    weights = {
        "w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "table": rng.standard_normal((10, 4)).astype(np.float32),
        "dense": rng.standard_normal((4, 2)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["pixels", "w"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Tanh", ["conv"], ["act"], name="act"),
        helper.make_node("GlobalAveragePool", ["act"], ["pool"], name="pool"),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flat"),
        helper.make_node("Gather", ["table", "tokens"], ["embedded"], name="embed"),
        helper.make_node("ReduceMean", ["embedded"], ["text"], name="text", axes=[1], keepdims=0),
        helper.make_node("Add", ["flat", "text"], ["joined"], name="joined"),
        helper.make_node("MatMul", ["joined", "dense"], ["scores"], name="scores"),
        helper.make_node("Softmax", ["scores"], ["probabilities"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes, "tokens_and_image",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["N", 5]),
         helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_integer_inputs_are_fed_but_not_attributed():
    m = onnxsight.load(_token_and_image_model(), device="cpu")
    assert m.input_names == ["tokens", "pixels"] and m.input_name == "pixels" and m.logits == "scores"
    rng = np.random.default_rng(2)
    x = {"pixels": rng.random((2, 3, 8, 8), dtype=np.float32), "tokens": rng.integers(0, 10, (2, 5))}
    maps = onnxsight.saliency(m, x, target=1, absolute=False, reduce=None)
    assert set(maps) == {"pixels"}
    eps = 1e-3  # central differences of a smooth (tanh) model; float32 forward: error ~ 1e-7 / eps
    probe = x["pixels"].copy()
    probe[0, 1, 4, 5] += eps
    up = m.run({**x, "pixels": probe}, ["scores"])[0][0, 1]
    probe[0, 1, 4, 5] -= 2 * eps
    down = m.run({**x, "pixels": probe}, ["scores"])[0][0, 1]
    assert abs((up - down) / (2 * eps) - maps["pixels"][0, 1, 4, 5]) < 1e-3
    with pytest.raises(InvalidArgument, match=r"input 'tokens' must be an integer array"):
        m.predict({**x, "tokens": x["tokens"].astype(np.float32)})
