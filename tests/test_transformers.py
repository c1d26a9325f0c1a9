"""Vision transformers: gradients, saliency, IG and occlusion on a Keras ViT; Grad-CAM on token
layers laid on their patch grid (pytorch-grad-cam's reshape_transform); attention rollout against
an independent re-implementation on TensorFlow's own attention scores."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

import onnxsight
from onnxsight.cli.app import app
from onnxsight.errors import InvalidArgument
from onnxsight.methods.cam import default_cam_layer
from onnxsight.kernels.attribution import baseline
from onnxsight.methods.common import target_scores
from onnxsight.methods.rollout import attention_tensors
from tests.tf_reference import gradients, relative_error, swapped_activations
from tests.vit_models import vit

TOLERANCE = 1e-4  # onnxruntime float32 vs TensorFlow on a smooth model (GELU, softmax, LayerNorm)
GRID = 4  # 16x16 images, 4x4 patches


@pytest.fixture(scope="module", params=["class_token", "mean_pooled"])
def transformer(request, tmp_path_factory):
    keras_model = vit(class_token=request.param == "class_token")
    path = onnxsight.convert_keras(keras_model, tmp_path_factory.mktemp("vit") / f"{request.param}.onnx")
    return keras_model, onnxsight.load(path, device="cpu")


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(3).uniform(0, 1, (3, 16, 16, 3)).astype(np.float32)


def tf_layer(keras_model, x, layer, target):
    """TensorFlow: the layer's tokens and the gradient of the target logit there (softmax swapped)."""
    import keras
    import tensorflow as tf

    probe = keras.Model(keras_model.inputs, [keras_model.get_layer(layer).output, keras_model.layers[-1].output])
    with swapped_activations(keras_model), tf.GradientTape() as tape:
        tokens, logits = probe(tf.constant(x), training=False)
        score = tf.reduce_sum(tf.gather(logits, target, axis=1, batch_dims=1))
    return tokens.numpy(), tape.gradient(score, tokens).numpy()


def reference_gradcam(tokens, grads):
    """pytorch-grad-cam's ViT recipe in numpy: drop the extra tokens, reshape to the grid, Grad-CAM."""
    def grid(t):
        return t[:, t.shape[1] - GRID * GRID:].reshape(len(t), GRID, GRID, -1)

    a, g = grid(tokens), grid(grads)
    cam = np.maximum((a * g.mean(axis=(1, 2), keepdims=True)).sum(axis=-1), 0).astype(np.float32)
    return np.stack([cv2.resize(c, (16, 16), interpolation=cv2.INTER_LINEAR) for c in cam])


def tf_attentions(keras_model, x):
    """Each block's attention probabilities (N, heads, T, T) from Keras' own MultiHeadAttention."""
    import keras

    found = []
    for block in (layer for layer in keras_model.layers if type(layer).__name__ == "MultiHeadAttention"):
        norm = keras_model.get_layer(block.name.replace("attention", "norm1"))
        h = keras.Model(keras_model.inputs, norm.output)(x, training=False)
        _, scores = block(h, h, return_attention_scores=True, training=False)
        found.append(np.asarray(scores, np.float64))
    return found


def reference_rollout(attentions, class_token):
    """Abnar & Zuidema's rollout as vit-explain writes it: mean over heads, (A + I) / 2, rows
    renormalised, layers multiplied; the class token's row over the patches (else the mean row)."""
    result = np.eye(attentions[0].shape[-1])
    for attention in attentions:
        a = (attention.mean(axis=1) + np.eye(attention.shape[-1])) / 2
        a /= a.sum(axis=-1, keepdims=True)
        result = a @ result
    flow = result[:, 0, 1:] if class_token else result.mean(axis=1)
    maps = flow.reshape(-1, GRID, GRID).astype(np.float32)
    maps = np.stack([cv2.resize(m, (16, 16), interpolation=cv2.INTER_LINEAR) for m in maps])
    low, high = maps.min(axis=(1, 2), keepdims=True), maps.max(axis=(1, 2), keepdims=True)
    return (maps - low) / (high - low)


def test_the_default_cam_layer_is_the_token_stream_entering_the_last_attention_block(transformer):
    _, model = transformer
    assert default_cam_layer(model) == "block0_residual2"
    assert len(attention_tensors(model)) == 2


def test_gradcam_on_a_token_layer_lays_tokens_on_the_patch_grid(transformer, images):
    keras_model, model = transformer
    target = np.array([0, 2, 4])
    for layer in ("block1_norm1", "block0_residual2"):
        want = reference_gradcam(*tf_layer(keras_model, images, layer, target))
        got = onnxsight.gradcam(model, images, target, layer=layer, normalize=False)
        assert relative_error(got, want) <= TOLERANCE, layer
        given = onnxsight.gradcam(model, images, target, layer=layer, normalize=False, tokens_grid=(GRID, GRID))
        np.testing.assert_array_equal(given, got)
    with pytest.raises(InvalidArgument, match="a 5x5 grid needs 25 tokens"):
        onnxsight.gradcam(model, images, target, layer="block1_norm1", tokens_grid=(5, 5))


def test_attention_rollout_equals_an_independent_reimplementation(transformer, images):
    keras_model, model = transformer
    class_token = model.layer("block0_norm1").shape[1] == GRID * GRID + 1
    want = reference_rollout(tf_attentions(keras_model, images), class_token)
    got = onnxsight.attention_rollout(model, images)
    assert relative_error(got, want) <= TOLERANCE
    fused = onnxsight.attention_rollout(model, images, head_fusion="max", discard_ratio=0.5)
    assert relative_error(fused, want) > 1e-2  # the options change the map


def test_gradients_saliency_ig_and_occlusion_work_on_a_transformer(transformer, images):
    keras_model, model = transformer
    target = np.array([1, 3, 0])
    want = gradients(keras_model, images, target)["input"]  # TensorFlow in float64
    assert relative_error(model.gradient(images, target=target)["input"], want) <= TOLERANCE
    smooth = onnxsight.saliency(model, images, target, smooth_samples=3)
    assert smooth.shape == (3, 16, 16) and np.isfinite(smooth).all()
    # from grey: on a black image the patch tokens are all zero and LayerNorm jumps as they leave zero
    attributions = onnxsight.integrated_gradients(model, images, target, steps=64, baseline="grey")
    gap = onnxsight.completeness_gap(model, images, attributions, target, baseline="grey")
    change = np.abs(target_scores(model, images, target) - target_scores(model, baseline(images, "grey", 3), target))
    assert (gap <= 1e-3 * change).all(), f"completeness gaps {gap} for score changes {change}"
    maps = onnxsight.occlusion(model, images, target, window=4, stride=4)
    assert maps.shape == (3, 16, 16) and np.abs(maps).max() > 0


def test_rollout_is_refused_where_it_does_not_apply(model, digits_data, transformer, images):
    with pytest.raises(InvalidArgument, match="no attention softmax"):
        onnxsight.attention_rollout(model, digits_data.x_test[:2])
    with pytest.raises(InvalidArgument, match="class-agnostic"):
        onnxsight.attention_rollout(transformer[1], images, 3)


def test_the_cli_runs_rollout_and_a_token_gradcam(transformer, images, tmp_path):
    _, model = transformer
    np.save(tmp_path / "x.npy", images)
    runner = CliRunner()
    result = runner.invoke(app, ["rollout", str(model.source), str(tmp_path / "x.npy"), "-o", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(np.load(tmp_path / "r" / "rollout.npy"), onnxsight.attention_rollout(model, images),
                               rtol=1e-6, atol=1e-7)
    result = runner.invoke(app, ["gradcam", str(model.source), str(tmp_path / "x.npy"), "--tokens-grid", "4x4",
                                 "--target", "2", "-o", str(tmp_path / "g")])
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(np.load(tmp_path / "g" / "gradcam.npy"), onnxsight.gradcam(model, images, 2),
                               rtol=1e-6, atol=1e-7)
    result = runner.invoke(app, ["gradcam", str(model.source), str(tmp_path / "x.npy"), "--tokens-grid", "4by4"])
    assert result.exit_code == 1 and "--tokens-grid must be ROWSxCOLUMNS" in result.output


# ---- a ViT exported from PyTorch (torchvision's layout; tests/torch_models.py) -----------------
@pytest.fixture(scope="module", params=["torchscript", "dynamo"])
def torch_vit(request, tmp_path_factory):
    """(torch ViT in float64, a batch, the exported model loaded by onnxsight)."""
    torch = pytest.importorskip("torch")  # the dev extra installs it
    from tests import torch_models as tm

    model = tm.build("vit")
    x = np.random.default_rng(4).standard_normal((2, 3, 32, 32)).astype(np.float32)
    path = tmp_path_factory.mktemp(f"vit-{request.param}") / "vit.onnx"
    tm.export(model, torch.from_numpy(x), path, request.param)
    return tm.build_like(model), x, onnxsight.load(path, device="cpu")


def test_a_torch_vit_gets_token_gradcam_and_rollout_equal_to_torch(torch_vit):
    import torch

    reference, x, model = torch_vit
    assert default_cam_layer(model) == "layers.0"
    block, seen = reference.layers[1], {}
    block.register_forward_hook(lambda module, args, out: seen.update(stream=args[0]))
    attentions = []
    for layer in reference.layers:  # the attention probabilities per head, as the blocks compute them
        layer.ln_1.register_forward_hook(lambda module, args, out, att=layer.self_attention: attentions.append(
            att(out, out, out, need_weights=True, average_attn_weights=False)[1].detach().numpy()))
    logits = reference(torch.from_numpy(x).double())
    seen["stream"].retain_grad()
    logits[:, 3].sum().backward()
    a, g = seen["stream"].detach().numpy(), seen["stream"].grad.numpy()
    grid = (32 // 8, 32 // 8)
    cam = np.maximum((a[:, 1:] * g[:, 1:].mean(axis=1, keepdims=True)).sum(axis=-1), 0).reshape(2, *grid)
    want = np.stack([cv2.resize(c.astype(np.float32), (32, 32), interpolation=cv2.INTER_LINEAR) for c in cam])
    got = onnxsight.gradcam(model, x, 3, normalize=False)
    assert relative_error(got, want) <= TOLERANCE
    result = np.eye(17)
    for attention in attentions:
        mixed = (attention.mean(axis=1) + np.eye(17)) / 2
        result = mixed / mixed.sum(axis=-1, keepdims=True) @ result
    flow = result[:, 0, 1:].reshape(2, *grid).astype(np.float32)
    maps = np.stack([cv2.resize(m, (32, 32), interpolation=cv2.INTER_LINEAR) for m in flow])
    low, high = maps.min(axis=(1, 2), keepdims=True), maps.max(axis=(1, 2), keepdims=True)
    assert relative_error(onnxsight.attention_rollout(model, x), (maps - low) / (high - low)) <= TOLERANCE
