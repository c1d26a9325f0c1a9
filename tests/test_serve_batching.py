"""Dynamic batching in ``onnxsight serve``, on a real uvicorn on loopback: concurrent requests of mixed sizes get
the answers of their own unstacked runs (plain model, saliency and Grad-CAM with per-row targets); the server's
statistics show the stacking (SmoothGrad's too); oversized, failing and differently shaped requests are not
stacked with the others; the queue delay is honoured; per-model settings come from batching.json."""

from __future__ import annotations

import http.client
import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

pytest.importorskip("fastapi")

from onnxsight.errors import ModelFileError  # noqa: E402
from onnxsight.serving.batching import BatchPolicy  # noqa: E402
from onnxsight.serving.repository import load_models  # noqa: E402
from onnxsight.serving.server import Settings, create_app  # noqa: E402
from tests.test_serve import Background, post  # noqa: E402

# A row computed inside a stack and alone differs only by float32 rounding (onnxruntime may block its GEMMs
# differently for other batch sizes): ~1e-6 relative on logits; heat maps are min-max scaled into [0, 1].
TOLERANCE = 1e-5
LONG_DELAY_US = 1_000_000  # long enough that requests sent together on a loaded machine share a run


def request_body(inputs: dict[str, np.ndarray], outputs: list[str] | None = None) -> bytes:
    datatype = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}
    tensors = [{"name": name, "shape": list(a.shape), "datatype": datatype[a.dtype], "data": a.ravel().tolist()}
               for name, a in inputs.items()]
    body = {"inputs": tensors}
    if outputs is not None:
        body["outputs"] = [{"name": name} for name in outputs]
    return json.dumps(body).encode()


def infer(port: int, name: str, inputs: dict[str, np.ndarray], outputs: list[str] | None = None):
    """(status, {output: array}) for a 200, (status, error message) otherwise."""
    status, content, _ = post(port, f"/v2/models/{name}/infer", request_body(inputs, outputs), {})
    answer = json.loads(content)
    if status != 200:
        return status, answer["error"]
    return status, {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in answer["outputs"]}


def stats(port: int, name: str) -> dict:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", f"/v2/models/{name}/stats")
        (entry,) = json.loads(connection.getresponse().read())["model_stats"]
    finally:
        connection.close()
    return entry


def together(calls):
    """Runs the ``calls`` (functions of no argument) on threads released at once; their results in order."""
    barrier = threading.Barrier(len(calls))

    def released(call):
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(released, calls))


@pytest.fixture(scope="module")
def folder(mnist_onnx, tmp_path_factory):
    path = tmp_path_factory.mktemp("batching")
    shutil.copy(mnist_onnx, path / "digits.onnx")
    return path


@pytest.fixture(scope="module")
def models(folder):
    return load_models(folder, methods=["saliency", "gradcam", "smoothgrad"], samples=3, device="cpu",
                       batching=BatchPolicy(max_batch=8, max_delay_us=LONG_DELAY_US))


@pytest.fixture()
def served(models):
    """A fresh server (fresh statistics) on the module's models."""
    background = Background(create_app(models, Settings(workers=2)))
    yield background
    background.stop()


@pytest.fixture(scope="module")
def images(digits_data):
    return digits_data.x_test[:16]


def unstacked(model, inputs, outputs=None):
    return model.run(inputs, outputs or [spec.name for spec in model.outputs])


def assert_equal_answers(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=TOLERANCE, atol=TOLERANCE, err_msg=name)


def test_concurrent_requests_of_mixed_sizes_get_their_unstacked_answers(served, models, images):
    """Batch-1 and larger requests, one-value and per-row targets, sent together to the plain model, saliency
    and Grad-CAM: each answer equals its own run alone, and the statistics show runs of several requests."""
    sizes = [1, 1, 2, 1, 3, 1]
    cases = []
    for name in ["digits", "digits.saliency", "digits.gradcam"]:
        start = 0
        for k, size in enumerate(sizes):
            inputs = {models[name].inputs[0].name: images[start:start + size]}
            if name != "digits" and k % 3 == 1:
                inputs["target"] = np.array([k % 10], np.int64)  # one class for all its images
            elif name != "digits" and k % 3 == 2:
                inputs["target"] = (np.arange(size, dtype=np.int64) + k) % 10  # one per image
            cases.append((name, inputs))
            start += size
    answers = together([lambda n=n, i=i: infer(served.port, n, i) for n, i in cases])
    for (name, inputs), (status, answer) in zip(cases, answers):
        assert status == 200, answer
        assert_equal_answers(answer, unstacked(models[name], inputs))
        if "target" in inputs:  # the per-row target was honoured, not the first request's
            wanted = np.broadcast_to(inputs["target"], answer["target_class"].shape)
            np.testing.assert_array_equal(answer["target_class"], wanted)
    for name in ["digits", "digits.saliency", "digits.gradcam"]:
        report = stats(served.port, name)
        assert report["request_count"] == len(sizes) and report["inference_count"] == sum(sizes), report
        assert report["execution_count"] < len(sizes), f"{name}: no requests were stacked: {report}"
        assert max(b["batch_size"] for b in report["batch_stats"]) > max(sizes), report


def test_smoothgrad_requests_are_stacked_without_changing_their_noise(served, models, images):
    """SmoothGrad gives every image the same unit noise wherever it sits in a batch, so its requests are stacked
    and each still gets the map of its own run alone."""
    assert models["digits.smoothgrad"].stackable
    answers = together([lambda k=k: infer(served.port, "digits.smoothgrad", {"image": images[k:k + 1]}) for k in range(4)])
    for k, (status, answer) in enumerate(answers):
        assert status == 200, answer
        assert_equal_answers(answer, unstacked(models["digits.smoothgrad"], {"image": images[k:k + 1]}))
    report = stats(served.port, "digits.smoothgrad")
    assert report["execution_count"] < 4 and max(b["batch_size"] for b in report["batch_stats"]) > 1, report


def test_a_request_larger_than_the_batch_runs_alone(served, models, images):
    cases = [images[:1], images[1:2], images[2:12], images[12:13]]  # 10 rows > max_batch 8
    answers = together([lambda x=x: infer(served.port, "digits", {"input": x}) for x in cases])
    for x, (status, answer) in zip(cases, answers):
        assert status == 200, answer
        assert_equal_answers(answer, unstacked(models["digits"], {"input": x}))
    report = stats(served.port, "digits")
    sizes = {b["batch_size"]: b["compute_infer"]["count"] for b in report["batch_stats"]}
    assert sizes[10] == 1 and max(sizes) == 10 and report["execution_count"] <= 3, report  # 10 alone; 1+1+1 stacked


class Poisoned:
    """A session that fails on any batch holding an image whose first pixel is -1, as onnxruntime would on bad data."""

    def __init__(self, session):
        self.session = session

    def run(self, outputs, inputs):
        if (inputs["input"][:, 0, 0, 0] == -1).any():
            raise RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : poisoned image\nsecond line")
        return self.session.run(outputs, inputs)


def test_one_failing_request_does_not_fail_the_others_stacked_with_it(models, images):
    plain = models["digits"]
    poisoned = {"digits": type(plain)(plain.name, Poisoned(plain.session), plain.inputs, plain.outputs,
                                      batching=BatchPolicy(max_batch=8, max_delay_us=LONG_DELAY_US))}
    bad = images[:1].copy()
    bad[0, 0, 0, 0] = -1
    cases = [images[:1], images[1:3], bad, images[3:4]]
    background = Background(create_app(poisoned, Settings(workers=2)))
    try:
        answers = together([lambda x=x: infer(background.port, "digits", {"input": x}) for x in cases])
        malformed = infer(background.port, "digits", {"input": images[:1, :27]})  # refused before it is queued
        report = stats(background.port, "digits")
    finally:
        background.stop()
    for x, (status, answer) in zip(cases, answers):
        if x is bad:
            assert status == 400 and answer == "inference failed on model 'digits': 2 : INVALID_ARGUMENT : poisoned image"
        else:
            assert status == 200, answer
            assert_equal_answers(answer, unstacked(plain, {"input": x}))
    assert malformed[0] == 400 and "has shape" in malformed[1]
    assert report["failed_stacks"] == 1 and report["inference_count"] == 4, report  # reruns count, failures do not


def doubler(path, shape) -> None:
    """A model ``y = 2 x`` with input shape ``shape`` (None: dynamic)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["y"])], "double", [x], [y], [two])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_requests_of_other_shapes_or_outputs_are_not_stacked_together(tmp_path):
    doubler(tmp_path / "double.onnx", ["N", "H"])
    models = load_models(tmp_path, methods=[], batching=BatchPolicy(max_batch=8, max_delay_us=LONG_DELAY_US))
    rng = np.random.default_rng(0)
    cases = [rng.normal(size=(1, width)).astype(np.float32) for width in (3, 5, 3, 5, 3, 5)]
    background = Background(create_app(models, Settings(workers=2)))
    try:
        answers = together([lambda x=x: infer(background.port, "double", {"x": x}) for x in cases])
        report = stats(background.port, "double")
    finally:
        background.stop()
    for x, (status, answer) in zip(cases, answers):
        assert status == 200, answer  # a stack of widths 3 and 5 cannot be formed: it would have failed
        np.testing.assert_array_equal(answer["y"], 2 * x)
    assert report["execution_count"] < len(cases) and max(b["batch_size"] for b in report["batch_stats"]) <= 3, report


def test_a_model_without_a_dynamic_batch_axis_is_never_stacked(tmp_path):
    doubler(tmp_path / "fixed.onnx", [1, 4])
    assert not load_models(tmp_path, methods=[])["fixed"].stackable


def test_a_lone_request_waits_the_delay_and_a_preferred_batch_does_not(tmp_path, mnist_onnx, images):
    """Loose bounds: a lone request runs once the 2 s delay is over (not before, nor much later); a request that
    fills the preferred batch by itself runs at once."""
    shutil.copy(mnist_onnx, tmp_path / "digits.onnx")
    models = load_models(tmp_path, methods=[], batching=BatchPolicy(max_batch=8, max_delay_us=2_000_000, preferred_batch=(2,)))
    background = Background(create_app(models, Settings()))
    try:
        start = time.monotonic()
        assert infer(background.port, "digits", {"input": images[:2]})[0] == 200
        preferred = time.monotonic() - start
        start = time.monotonic()
        assert infer(background.port, "digits", {"input": images[:1]})[0] == 200
        lone = time.monotonic() - start
    finally:
        background.stop()
    assert preferred < 1.9, preferred
    assert 1.99 <= lone < 12, lone


def test_batching_json_sets_policies_per_model(folder, tmp_path):
    shutil.copy(folder / "digits.onnx", tmp_path / "digits.onnx")
    (tmp_path / "batching.json").write_text(json.dumps({"digits.saliency": {"max_batch": 0},
                                                        "digits": {"preferred_batch": [4, 2]}}))
    models = load_models(tmp_path, methods=["saliency", "gradcam"], batching=BatchPolicy(max_batch=16, max_delay_us=100))
    assert models["digits.saliency"].batching == BatchPolicy(0, 100)
    assert models["digits"].batching == BatchPolicy(16, 100, (2, 4))
    assert models["digits.gradcam"].batching == BatchPolicy(16, 100)
    (tmp_path / "batching.json").write_text(json.dumps({"digits.occlusion": {"max_batch": 4}}))
    with pytest.raises(ModelFileError, match=r"names models this server does not have: digits.occlusion; it has: digits, "):
        load_models(tmp_path, methods=["saliency"])
    (tmp_path / "batching.json").write_text(json.dumps({"digits": {"max_batch": 4, "preferred_batch": [8]}}))
    with pytest.raises(ModelFileError, match=r"'digits': batching preferred_batch sizes must be integers from 1 to "
                                             r"max_batch \(4\), got \[8\]"):
        load_models(tmp_path, methods=[])


def test_serve_refuses_a_preferred_batch_above_the_dynamic_batch_in_one_line(folder):
    from typer.testing import CliRunner

    from onnxsight.cli.app import app

    result = CliRunner().invoke(app, ["serve", str(folder / "digits.onnx"), "--dynamic-batch", "4", "--preferred-batch", "8"])
    assert result.exit_code == 1
    assert "preferred_batch sizes must be integers from 1 to max_batch (4), got [8]" in result.output
