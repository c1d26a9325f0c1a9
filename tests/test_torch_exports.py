"""Models exported by ``torch.onnx.export`` (TorchScript exporter, opset 17 and 18; dynamo exporter,
opset 18; dynamic batch) load and explain: layers carry the user's module names, the default CAM
layer is the last spatial layer of the trunk, and gradients match torch's autograd in float64.

The architectures are torchvision's, small and written out in ``tests/torch_models.py`` with random
weights. torch is a test-only dependency (the ``dev`` extra); without it only the tests on files
written with onnx.helper to mimic both exporters' naming run.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest

import onnxsight
from onnxsight.engine import shapes
from onnxsight.engine.graph import value_shapes
from onnxsight.methods.cam import default_cam_layer
from tests.foreign_models import torch_style_resnet

try:
    import torch

    from tests import torch_models as tm
except ImportError:  # torch is in the dev extra only
    torch = tm = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed (pip install -e '.[dev]')")
ARCHITECTURES = ("resnet", "mobilenet_v3", "efficientnet", "convnext", "vit", "shufflenet_v2")
EXPORTERS = ("torchscript", "dynamo")
# names a user would write (module names), per architecture; some exporter-specific (dynamo fuses
# batch norm into the convolution and keeps the norm's name; TorchScript keeps the conv's)
NAMES = {
    "resnet": ["layer1.0.relu", "layer4.1.relu_1", "layer4.1", "layer4", "avgpool", "fc"],
    "mobilenet_v3": ["features.1.block.2.fc1", "features.1.block.2", "features.2", "features", "classifier.1"],
    "efficientnet": ["features.1.0.block.2.fc2", "features.1.0.block.2", "features.1.0", "features"],
    "convnext": ["features.1.0.block.0", "features.1.0.block.4", "features.1.0", "features.2.1", "features"],
    "vit": ["conv_proj", "layers.0.self_attention", "layers.0.mlp.1", "layers.1", "ln", "heads.0"],
    "shufflenet_v2": ["stage2.0.branch1", "stage2.1.branch2", "stage2.1", "stage3", "conv5"],
}
# (a vision transformer's default, a token layer laid on its patch grid, is the token-map work's: tests/test_transformers.py)
DEFAULT_CAM = {"resnet": "layer4", "mobilenet_v3": "features", "efficientnet": "features",
               "convnext": "features", "shufflenet_v2": "conv5"}
# an inner module whose output gradient is compared with torch's (each called once in forward)
INNER = {"resnet": "layer3.0", "mobilenet_v3": "features.1.block.2", "efficientnet": "features.1.0",
         "convnext": "features.1.0", "vit": "layers.0", "shufflenet_v2": "stage2.1"}
# an inner spatial layer for Grad-CAM
CAM_AT = {"resnet": "layer4.0", "mobilenet_v3": "features.2", "efficientnet": "features.1.0",
          "convnext": "features.1.0", "vit": "conv_proj", "shufflenet_v2": "stage3.1"}
# onnxsight's float32 gradient vs torch's float64 one (max error / max |reference|): ReLU and
# max-pool nets may meet a flipped kink between CPU kernels; smooth nets agree to rounding
# (measured here: 1e-7 to 6e-7 for every model and both exporters)
TOLERANCE = {"resnet": 2e-3, "mobilenet_v3": 2e-3, "efficientnet": 1e-5, "convnext": 1e-5, "vit": 1e-5,
             "shufflenet_v2": 2e-3}
TARGETS = np.array([1, 3])
CASES = [(a, e) for a in ARCHITECTURES for e in EXPORTERS]
IDS = [f"{a}-{e}" for a, e in CASES]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(architecture, exporter) -> (torch model, input batch, path of the exported file), made once."""
    cache = {}

    def get(arch: str, exporter: str, opset: int | None = None):
        if (arch, exporter, opset) not in cache:
            model = tm.build(arch)
            size = tm.IMAGE_SIZE.get(arch, 64)
            x = np.random.default_rng(1).standard_normal((2, 3, size, size)).astype(np.float32)
            path = tmp_path_factory.mktemp(f"{arch}-{exporter}") / "model.onnx"
            tm.export(model, torch.from_numpy(x), path, exporter, opset)
            cache[arch, exporter, opset] = (model, x, path)
        return cache[arch, exporter, opset]

    return get


def _relative(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def _torch_gradients(model, x: np.ndarray, inner: str) -> tuple[np.ndarray, np.ndarray]:
    """d(sum of each image's target logit)/d(input) and /d(output of module ``inner``), float64."""
    twin = tm.build_like(model)
    captured = {}
    module = dict(twin.named_modules())[inner]
    handle = module.register_forward_hook(lambda m, i, out: captured.setdefault("y", out[0] if isinstance(out, tuple) else out))
    xd = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    logits = twin(xd)
    handle.remove()
    score = logits[torch.arange(len(x)), torch.from_numpy(TARGETS)].sum()
    dx, dy = torch.autograd.grad(score, [xd, captured["y"]])
    return dx.numpy(), dy.numpy()


@needs_torch
@pytest.mark.parametrize("arch,exporter", CASES, ids=IDS)
def test_layers_named_after_modules(exported, arch, exporter):
    _, _, path = exported(arch, exporter)
    names = [layer.name for layer in onnxsight.load(path, device="cpu").layers]
    missing = [n for n in NAMES[arch] if n not in names]
    assert not missing, f"{arch} ({exporter}): no layers {missing}; layers: {names}"


@needs_torch
@pytest.mark.parametrize("arch,exporter", [c for c in CASES if c[0] in DEFAULT_CAM],
                         ids=[i for c, i in zip(CASES, IDS) if c[0] in DEFAULT_CAM])
def test_default_cam_layer_is_the_last_spatial_trunk_layer(exported, arch, exporter):
    _, _, path = exported(arch, exporter)
    assert default_cam_layer(onnxsight.load(path, device="cpu")) == DEFAULT_CAM[arch]


@needs_torch
@pytest.mark.parametrize("arch,exporter", CASES, ids=IDS)
def test_gradients_match_torch_autograd(exported, arch, exporter):
    model, x, path = exported(arch, exporter)
    m = onnxsight.load(path, device="cpu")
    got = m.gradient(x, of="logits", target=TARGETS, wrt=["input", INNER[arch]])
    want_x, want_inner = _torch_gradients(model, x, INNER[arch])
    errors = {"input": _relative(got["input"], want_x), INNER[arch]: _relative(got[INNER[arch]], want_inner)}
    assert max(errors.values()) < TOLERANCE[arch], f"{arch} ({exporter}): relative errors {errors}"


@needs_torch
@pytest.mark.parametrize("arch,exporter", CASES, ids=IDS)
def test_gradcam_at_named_layer_and_saliency_run(exported, arch, exporter):
    _, x, path = exported(arch, exporter)
    m = onnxsight.load(path, device="cpu")
    cam = onnxsight.gradcam(m, x, target=TARGETS, layer=CAM_AT[arch])
    saliency = onnxsight.saliency(m, x, target=TARGETS)
    assert cam.shape == (2, *x.shape[2:]) and np.isfinite(cam).all() and cam.max() > 0
    assert saliency.shape[0] == 2 and np.isfinite(saliency).all() and saliency.max() > 0


@needs_torch
def test_module_names_mean_the_same_tensor_for_both_exporters(exported):
    """The dynamo exporter names nodes node_Conv_12 and records scopes in metadata; a ReLU module
    called twice is one scope there, split into calls as TorchScript names them (relu, relu_1); a
    convolution fused with its batch norm is named after its weight (layer1.0.conv1) too."""
    _, x, script_path = exported("resnet", "torchscript")
    _, _, dynamo_path = exported("resnet", "dynamo")
    names = ["conv1", "maxpool", "layer1.0.conv1", "layer1.0.relu", "layer1.0.relu_1", "layer2.0", "layer4.1.conv2",
             "layer4.1.relu", "layer4"]
    script = onnxsight.load(script_path, device="cpu").activations(x, names)
    dynamo = onnxsight.load(dynamo_path, device="cpu").activations(x, names)
    for name in names:
        np.testing.assert_allclose(script[name], dynamo[name], rtol=1e-4, atol=1e-5, err_msg=name)


@needs_torch
def test_shufflenet_shapes_come_from_a_measured_run_without_symbolic_inference(exported, monkeypatch):
    """channel_shuffle's view and chunk's Slice take their sizes from Shape at run time; ONNX
    shape inference loses every later dim. With symbolic inference unavailable (no sympy), the
    shapes come from running the model on two batch sizes, the batch kept symbolic."""
    _, x, path = exported("shufflenet_v2", "torchscript")
    proto = onnx.load(str(path))
    monkeypatch.setattr(shapes, "_symbolic", lambda model, infos, names: {})
    conv5_input = next(n.input[0] for n in proto.graph.node if n.name == "/conv5/conv5.0/Conv")
    assert value_shapes(proto)[conv5_input] == (None, 32, 4, 4)
    m = onnxsight.load(proto, device="cpu")
    assert np.isfinite(m.gradient(x, target=TARGETS)["input"]).all()


def test_import_onnxsight_does_not_import_torch():
    code = "import sys, onnxsight; print(sorted({'torch', 'sympy', 'onnxscript'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@needs_torch
@pytest.mark.parametrize("arch", ["shufflenet_v2", "convnext"])
def test_torchscript_opset_18_exports_differentiate(exported, arch):
    model, x, path = exported(arch, "torchscript", 18)
    m = onnxsight.load(path, device="cpu")
    assert default_cam_layer(m) == DEFAULT_CAM[arch]
    want, _ = _torch_gradients(model, x, INNER[arch])
    assert _relative(m.gradient(x, target=TARGETS)["input"], want) < TOLERANCE[arch]


MIMIC_NAMES = ["conv1", "relu", "layer1.0.conv1", "layer1.0.relu", "layer1.0.conv2", "layer1.0.relu_1", "layer1.0",
               "layer1", "avgpool", "fc"]


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_names_from_files_written_like_each_exporter(exporter):
    """Without torch: files written with onnx.helper the way each exporter names nodes. The dynamo
    file's two calls of layer1.0.relu share one scope; they become relu and relu_1 by data flow."""
    m = onnxsight.load(torch_style_resnet(exporter), device="cpu")
    names = [layer.name for layer in m.layers]
    assert [n for n in names if n in MIMIC_NAMES] == MIMIC_NAMES, names
    assert default_cam_layer(m) == "layer1"
    if exporter == "dynamo":
        kinds = {layer.name: layer.kind for layer in m.layers}
        assert (kinds["layer1.0.relu_1"], kinds["layer1.0"], kinds["fc"]) == ("ReLU", "BasicBlock", "Linear")


def test_mimicked_exporters_name_the_same_tensors():
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    script = onnxsight.load(torch_style_resnet("torchscript"), device="cpu").activations(x, MIMIC_NAMES)
    dynamo = onnxsight.load(torch_style_resnet("dynamo"), device="cpu").activations(x, MIMIC_NAMES)
    for name in MIMIC_NAMES:
        np.testing.assert_array_equal(script[name], dynamo[name], err_msg=name)
