"""The explainers added to saliency/Grad-CAM (Integrated Gradients, Grad-CAM's variants, occlusion,
Gradient×Input) and SmoothGrad's batch-independent noise: options baked in equal to the library's,
SmoothGrad equal for any N and independent of an image's batch, served over HTTP, written for Triton,
exported by the CLI. The per-method equality with per-image and default targets: tests/test_export.py."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator
from typer.testing import CliRunner

import onnxsight
from onnxsight.cli.app import app
from onnxsight.errors import InvalidArgument
from onnxsight.kernels.colors import normalize_each
from onnxsight.serving.explainer import EXPLAINER, export_explainer
from onnxsight.serving.triton import write_triton_entry

# Heatmaps are min-max scaled to [0, 1]: the graph stays in float32 where the library sums in float64
# (IG's quadrature, occlusion's averages), a few float32 ulps of 1; onnxruntime may also pick another
# convolution kernel for another batch size (seen: below 1e-6). So 1e-5 absolute.
TOLERANCE = 1e-5
SMOOTH = dict(samples=5, noise=0.2, seed=7)
NEW_METHODS = ("gradient-x-input", "ig", "gradcam++", "xgradcam", "layercam", "hirescam", "occlusion")


@pytest.fixture(scope="module")
def x(digits_data):
    return digits_data.x_test[10:13]


def run(proto: onnx.ModelProto, images: np.ndarray, target=None) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"image": images} if target is None else {"image": images, "target": np.asarray(target)})


def library_smoothgrad(model, images, target="predicted"):
    return onnxsight.saliency(model, images, target=target, normalize=True, smooth_samples=SMOOTH["samples"],
                              smooth_noise=SMOOTH["noise"], seed=SMOOTH["seed"])


# ---- SmoothGrad: one noise convention for the library and the graph ---------------------------
@pytest.mark.parametrize("count", [1, 3])
def test_smoothgrad_explainer_equals_the_library_for_one_and_several_images(model, x, count):
    proto = export_explainer(model, "smoothgrad", **SMOOTH)
    images, targets = x[:count], np.array([2, 7, 5])[:count]
    np.testing.assert_allclose(run(proto, images)[2], library_smoothgrad(model, images), atol=TOLERANCE)
    np.testing.assert_allclose(run(proto, images, targets)[2], library_smoothgrad(model, images, targets), atol=TOLERANCE)
    plain = onnxsight.saliency(model, images, normalize=True)
    assert np.abs(run(proto, images)[2] - plain).max() > 0.05, "the noise changes the map"


def test_an_images_smoothgrad_map_does_not_depend_on_its_batch(model, x, digits_data):
    """Alone, first, last, or next to other images: the same map, from the library and from the graph."""
    proto = export_explainer(model, "smoothgrad", **SMOOTH)
    image = x[1:2]
    others = digits_data.x_test[20:24]
    alone_graph, alone_library = run(proto, image)[2][0], library_smoothgrad(model, image)[0]
    for batch, row in ((np.concatenate([image, others]), 0), (np.concatenate([others, image]), 4),
                       (np.concatenate([others[:2], image, others[2:]]), 2)):
        np.testing.assert_allclose(run(proto, batch)[2][row], alone_graph, atol=TOLERANCE)
        np.testing.assert_allclose(library_smoothgrad(model, batch)[row], alone_library, atol=TOLERANCE)
    np.testing.assert_allclose(alone_graph, alone_library, atol=TOLERANCE)


def test_smoothgrad_noise_shares_its_unit_draws_and_keeps_each_images_scale(x):
    from onnxsight.kernels.attribution import smoothgrad_noise

    scaled = x * np.array([1.0, 2.0, 0.5], np.float32)[:, None, None, None]  # three value ranges
    noise = smoothgrad_noise(scaled, 6, 0.1, seed=4)
    spread = scaled.reshape(3, -1).max(axis=1) - scaled.reshape(3, -1).min(axis=1)
    unit = noise / (0.1 * spread)[None, :, None, None, None].astype(np.float32)
    np.testing.assert_allclose(unit[:, 1], unit[:, 0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(unit[:, 2], unit[:, 0], rtol=1e-6, atol=1e-6)
    assert abs(unit.std() - 1) < 0.05 and not np.allclose(unit[0], unit[1])  # standard normal, new per sample


# ---- options baked into the graph --------------------------------------------------------------
IG_OPTIONS = [dict(steps=6, baseline="grey", quadrature="gausslegendre"), dict(steps=5, baseline=0.25),
              dict(steps=4, quadrature="riemann_middle")]


@pytest.mark.parametrize("options", IG_OPTIONS, ids=["grey-gauss", "constant", "middle"])
def test_ig_options_are_baked_in_as_the_library_uses_them(model, x, options):
    proto = export_explainer(model, "ig", **options)
    library = dict(steps=options["steps"], baseline=options.get("baseline", "black"),
                   method=options.get("quadrature", "riemann_trapezoid"))
    targets = np.array([0, 4, 9])
    want = normalize_each(onnxsight.integrated_gradients(model, x, target=targets, reduce="sum", **library))
    np.testing.assert_allclose(run(proto, x, targets)[2], want, atol=TOLERANCE)
    description = json.loads({p.key: p.value for p in proto.metadata_props}[EXPLAINER])
    assert (description["steps"], description["baseline"], description["quadrature"]) == tuple(library.values())


@pytest.mark.parametrize("options", [dict(window=(5, 3), stride=(4, 2), fill="mean"), dict(window=9, fill=0.5)],
                         ids=["pairs-mean", "square-constant"])
def test_occlusion_options_are_baked_in_as_the_library_uses_them(model, x, options):
    proto = export_explainer(model, "occlusion", **options)
    want = normalize_each(onnxsight.occlusion(model, x, **options))
    np.testing.assert_allclose(run(proto, x)[2], want, atol=TOLERANCE)
    description = json.loads({p.key: p.value for p in proto.metadata_props}[EXPLAINER])
    window = options["window"] if isinstance(options["window"], tuple) else (options["window"],) * 2
    assert description["window"] == list(window) and description["fill"] == options["fill"]


def test_occlusion_runs_its_windows_in_steps_of_a_loop(model, x, monkeypatch):
    """Five windows per Loop step: 36 windows in 8 steps, the last padded with windows that cover nothing."""
    import math

    from onnxsight.serving import explainer

    row_bytes = sum(4 * math.prod(s[1:]) for s in model.shapes.values() if len(s) > 1 and s[0] is None and None not in s[1:])
    monkeypatch.setattr(explainer, "OCCLUSION_CHUNK_BYTES", 5 * row_bytes)
    proto = export_explainer(model, "occlusion", window=7, stride=4)
    assert json.loads({p.key: p.value for p in proto.metadata_props}[EXPLAINER])["windows_per_step"] == 5
    assert [n.op_type for n in proto.graph.node].count("Loop") == 1
    targets = np.array([6, 0, 2])
    want = normalize_each(onnxsight.occlusion(model, x, target=targets, window=7, stride=4))
    np.testing.assert_allclose(run(proto, x, targets)[2], want, atol=TOLERANCE)
    reference = ReferenceEvaluator(proto).run(["heatmap"], {"image": x[:2], "target": targets[:2]})[0]
    np.testing.assert_allclose(reference, want[:2], atol=TOLERANCE)  # the stock evaluator runs the Loop too


@pytest.mark.parametrize(("method", "options", "message"), [
    ("ig", {"baseline": "blur"}, "baseline must be 'black', 'grey' or a finite number; got 'blur'"),
    ("ig", {"baseline": np.zeros(3)}, "got a ndarray"),
    ("ig", {"steps": 1}, "steps must be at least 2"),
    ("ig", {"quadrature": "simpson"}, "method must be one of"),
    ("occlusion", {"fill": "blur"}, "fill must be a finite number or 'mean'"),
    ("occlusion", {"window": 40}, "larger than the image"),
    ("hirescam", {"layer": "dense_1"}, "has no spatial output"),
])
def test_bad_options_of_the_new_explainers_are_named(model, method, options, message):
    with pytest.raises(InvalidArgument, match=message):
        export_explainer(model, method, **options)


# ---- served, written for Triton, exported by the CLI -------------------------------------------
def test_named_explainers_are_served_and_equal_the_library(mnist_onnx, model, x, tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("tritonclient.http")
    import shutil

    from onnxsight.serving.repository import load_models
    from onnxsight.serving.server import Settings, create_app
    from tests.test_serve import Background, infer

    shutil.copy(mnist_onnx, tmp_path / "digits.onnx")
    models = load_models(tmp_path, ["ig", "occlusion", "gradcam++"], device="cpu")
    assert set(models) == {"digits", "digits.ig", "digits.occlusion", "digits.gradcam++"}
    assert models["digits.occlusion"].explainer["window"] == [4, 4]
    background = Background(create_app(models, Settings()))
    try:
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(f"127.0.0.1:{background.port}")
        chosen = np.array([3, 1, 4])
        library = {
            "ig": normalize_each(onnxsight.integrated_gradients(model, x, target=chosen, reduce="sum")),
            "occlusion": normalize_each(onnxsight.occlusion(model, x, target=chosen)),
            "gradcam++": onnxsight.gradcam(model, x, target=chosen, variant="gradcam++"),
        }
        for method, want in library.items():
            result = infer(client, f"digits.{method}", x, target=chosen, binary=method != "ig")
            np.testing.assert_array_equal(result.as_numpy("target_class"), chosen)
            np.testing.assert_allclose(result.as_numpy("heatmap"), want, atol=TOLERANCE, err_msg=method)
    finally:
        background.stop()
    with pytest.raises(InvalidArgument, match="unknown explainer method 'lime'"):
        load_models(tmp_path, ["lime"])


@pytest.mark.parametrize("method", NEW_METHODS)
def test_every_new_explainer_gets_a_triton_entry(model, method, tmp_path):
    proto = export_explainer(model, method, **({"steps": 4} if method == "ig" else {}))
    folder = write_triton_entry(proto, tmp_path, f"digits.{method.replace('+', 'p')}", optional=["target"])
    config = (folder / "config.pbtxt").read_text()
    for name, dims in (("image", "[ -1, 28, 28, 1 ]"), ("target", "[ -1 ]"), ("probabilities", "[ -1, 10 ]"),
                       ("target_class", "[ -1 ]"), ("heatmap", "[ -1, 28, 28 ]")):
        entry = config.split(f'name: "{name}"')[1].split("}")[0]
        assert f"dims: {dims}" in entry, (method, name, entry)
    assert config.count("optional: true") == 1
    assert onnx.load(str(folder / "1" / "model.onnx")) == proto


def test_export_command_bakes_the_new_options(mnist_onnx, model, x, tmp_path):
    runner = CliRunner()
    ig, occlusion = tmp_path / "ig.onnx", tmp_path / "occlusion.onnx"
    result = runner.invoke(app, ["export", str(mnist_onnx), "--method", "ig", "--steps", "6", "--baseline", "0.1",
                                 "--quadrature", "gausslegendre", "-o", str(ig), "--triton", str(tmp_path / "repository")])
    assert result.exit_code == 0, result.output
    want = normalize_each(onnxsight.integrated_gradients(model, x, steps=6, baseline=0.1, method="gausslegendre",
                                                         reduce="sum"))
    np.testing.assert_allclose(run(onnx.load(str(ig)), x)[2], want, atol=TOLERANCE)
    assert (tmp_path / "repository" / "ig" / "config.pbtxt").exists()
    result = runner.invoke(app, ["export", str(mnist_onnx), "--method", "occlusion", "--window", "7", "--stride", "3",
                                 "--fill", "mean", "-o", str(occlusion)])
    assert result.exit_code == 0, result.output
    want = normalize_each(onnxsight.occlusion(model, x, window=7, stride=3, fill="mean"))
    np.testing.assert_allclose(run(onnx.load(str(occlusion)), x)[2], want, atol=TOLERANCE)
    for flags, message in ((["--method", "ig", "--baseline", "white"], "--baseline must be black, grey, gray or a number"),
                           (["--method", "occlusion", "--fill", "blur"], "--fill must be mean or a number"),
                           (["--method", "ig", "--quadrature", "simpson"], "--quadrature must be one of")):
        bad = runner.invoke(app, ["export", str(mnist_onnx), "-o", str(tmp_path / "bad.onnx"), *flags])
        assert bad.exit_code == 1 and message in bad.output and "Traceback" not in bad.output, bad.output



@pytest.mark.parametrize("loop", [False, True], ids=["rows", "loop"])
def test_occlusion_of_a_model_with_several_inputs_holds_the_others_per_copy(loop, monkeypatch):
    """The other inputs are tiled to the copies of their image, as rows of the graph or in the Loop's
    body (one window per step); IG refuses such a model."""
    import tempfile
    from pathlib import Path

    from onnxsight.converters.keras import convert_keras_model
    from tests.test_multi_io import _multi_task_model

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "multi.onnx"
        convert_keras_model(_multi_task_model(), path)
        m = onnxsight.load(path, device="cpu").with_output("kind")
    rng = np.random.default_rng(0)
    batch = {"image": rng.random((3, 12, 12, 3), dtype=np.float32), "meta": rng.standard_normal((3, 4)).astype(np.float32)}
    if loop:
        from onnxsight.serving import explainer

        monkeypatch.setattr(explainer, "OCCLUSION_CHUNK_BYTES", 1)
    proto = export_explainer(m, "occlusion", window=4, stride=4)
    assert [n.op_type for n in proto.graph.node].count("Loop") == int(loop)
    assert [v.name for v in proto.graph.input] == ["image", "target", "meta"]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    heatmap = ort.InferenceSession(proto.SerializeToString(), options).run(["heatmap"], batch)[0]
    np.testing.assert_allclose(heatmap, normalize_each(onnxsight.occlusion(m, batch, window=4, stride=4)), atol=TOLERANCE)
    with pytest.raises(InvalidArgument, match="the ig explainer takes a model with one float input"):
        export_explainer(m, "ig")
