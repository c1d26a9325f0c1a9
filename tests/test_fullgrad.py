"""FullGrad and aug_smooth against references written from pytorch-grad-cam's definitions: the
gradients by PyTorch autograd in float64 on the module an ONNX file was exported from."""

from __future__ import annotations

import numpy as np
import pytest

import onnxsight
from onnxsight.errors import InvalidArgument
from onnxsight.methods.fullgrad import bias_terms

torch = pytest.importorskip("torch")
nn = torch.nn

from .torch_models import export  # noqa: E402


def _torch_cnn() -> nn.Module:
    """Conv with a bias, a bias-free Conv and its BatchNorm (folded or not by the exporter), a max
    pool, another biased Conv: every kind of FullGrad bias term."""
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 5, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3),
    )
    with torch.no_grad():
        bn = module[3]
        bn.running_mean.uniform_(-0.2, 0.2), bn.running_var.uniform_(0.5, 1.5)
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.3, 0.3)
    return module.eval()


def _scaled(maps: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's scale_cam_image on each map of (..., h, w)."""
    shifted = maps - maps.min(axis=(-2, -1), keepdims=True)
    return shifted / (1e-7 + shifted.max(axis=(-2, -1), keepdims=True))


def _resize(maps: np.ndarray, size: int) -> np.ndarray:
    import cv2
    return np.stack([cv2.resize(m.astype(np.float32), (size, size)) for m in maps]).astype(np.float64)


def _fullgrad_reference(module: nn.Module, x: np.ndarray, target: np.ndarray) -> np.ndarray:
    """FullGrad as pytorch-grad-cam defines it, gradients by float64 autograd: |∇x ⊙ x| and, per
    biased Conv2d/BatchNorm2d, |∇z ⊙ b| (BatchNorm's b = β − μγ/√(σ²+ε)), each (image, channel)
    map scaled, resized, summed; the sum min-max scaled."""
    double = _double(module)
    inputs = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    biased, outputs = [], []
    for layer in double:
        if isinstance(layer, nn.Conv2d) and layer.bias is not None:
            biased.append(layer.bias.detach().numpy())
        elif isinstance(layer, nn.BatchNorm2d):
            biased.append((layer.bias - layer.running_mean * layer.weight / torch.sqrt(layer.running_var + layer.eps))
                          .detach().numpy())
        else:
            continue
        layer.register_forward_hook(lambda mod, args, out: _keep(out, outputs))
    logits = double(inputs)
    logits[torch.arange(len(x)), torch.as_tensor(target)].sum().backward()
    size = x.shape[-1]
    total = _resize(_scaled(np.abs(inputs.grad.numpy() * x)).reshape(-1, size, size), size).reshape(x.shape).sum(1)
    for bias, out in zip(biased, outputs):
        term = _scaled(np.abs(out.grad.numpy() * bias[None, :, None, None]))
        total += _resize(term.reshape(-1, *term.shape[2:]), size).reshape(*term.shape[:2], size, size).sum(1)
    return _scaled(total)


def _keep(out, outputs: list) -> None:
    out.retain_grad()
    outputs.append(out)


def _double(module: nn.Module) -> nn.Module:
    import copy
    return copy.deepcopy(module).double()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    module = _torch_cnn()
    path = tmp_path_factory.mktemp("fullgrad") / "cnn.onnx"
    export(module, torch.zeros(1, 3, 16, 16), path, "torchscript")
    return module, onnxsight.load(path, device="cpu")


def test_fullgrad_equals_pytorch_grad_cams_definition(exported):
    module, model = exported
    x = np.random.default_rng(0).standard_normal((5, 3, 16, 16)).astype(np.float32)
    target = np.array([0, 1, 2, 0, 1])
    maps = onnxsight.gradcam(model, x, target, variant="fullgrad")
    assert len(bias_terms(model)) == 3  # the two biased convs and the batch norm (folded into its conv or not)
    # float32 gradients (relative error ~1e-6 through 4 layers) scaled per channel: ~1e-5 on maps in [0, 1]
    np.testing.assert_allclose(maps, _fullgrad_reference(module, x, target), atol=2e-5)


def test_fullgrad_terms_are_not_the_input_gradient_alone(exported):
    """The bias terms matter: the map differs from the input term's alone (a test that could fail)."""
    _, model = exported
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    maps = onnxsight.gradcam(model, x, 0, variant="fullgrad")
    grads = model.gradient(x, target=np.zeros(2, int))["input"]
    alone = _scaled(np.abs(grads * x)).sum(1)
    assert np.abs(maps - _scaled(alone)).max() > 0.05


def test_fullgrad_runs_on_the_keras_seed_cnn_and_refuses_a_layer(model, digits_data):
    x = digits_data.x_test[:4]
    maps = onnxsight.gradcam(model, x, variant="fullgrad", batch_size=3)
    assert maps.shape == (4, 28, 28) and np.isfinite(maps).all() and np.allclose(maps.max(axis=(1, 2)), 1)
    with pytest.raises(InvalidArgument, match="fullgrad variant .* takes no layer"):
        onnxsight.gradcam(model, x, variant="fullgrad", layer="conv2d_2")


def test_aug_smooth_is_the_mean_of_the_scaled_maps_of_flipped_and_brightened_copies(model, digits_data):
    """Each of the 6 copies (flip or not × brightness 0.9, 1, 1.1) computed on its own, flipped back
    and averaged: pytorch-grad-cam's aug_smooth, the target of the clean image kept."""
    x = digits_data.x_test[:3]
    target = model.predict(x).argmax(axis=1)
    smoothed = onnxsight.gradcam(model, x, target, aug_smooth=True, normalize=False)
    copies = []
    for flip in (False, True):
        for factor in (0.9, 1.0, 1.1):
            image = (x[:, :, ::-1] if flip else x) * np.float32(factor)
            cam = onnxsight.gradcam(model, np.ascontiguousarray(image), target)
            copies.append(cam[:, :, ::-1] if flip else cam)
    np.testing.assert_allclose(smoothed, np.mean(copies, axis=0), atol=1e-6)
    assert np.abs(smoothed - onnxsight.gradcam(model, x, target, normalize=False)).max() > 1e-3
    both = onnxsight.gradcam(model, x, target, variant="fullgrad", aug_smooth=True)
    assert both.shape == (3, 28, 28) and np.isfinite(both).all()
