"""The Open Inference Protocol server on loopback, spoken to by Triton's own client (tritonclient.http):
metadata, inference, explainer outputs equal to the library's; bad requests get the right status and
a clear message while the server keeps serving; concurrent clients; request bodies bounded in bytes
and time (raw sockets); shutdown answering queued work 503; the ``serve`` command."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import onnxsight
from onnxsight.errors import InvalidArgument
from onnxsight.serving.explainer import export_explainer
from onnxsight.serving.protocol import HEADER_LENGTH, ProtocolError

pytest.importorskip("fastapi")
httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

import uvicorn  # noqa: E402

from onnxsight.serving.repository import load_models  # noqa: E402
from onnxsight.serving.server import Runner, Settings, create_app  # noqa: E402

TOKEN = "test-token-1234"
AUTH = {"Authorization": f"Bearer {TOKEN}"}  # for http.client; tritonclient gets auth(): it adds headers to the dict
MAX_BODY = 256 * 1024
MAX_BATCH = 16
TOLERANCE = 1e-5


def auth() -> dict:
    return dict(AUTH)


class Background:
    """uvicorn serving ``app`` on a free loopback port, in a thread; ``stop()`` shuts it down gracefully."""

    def __init__(self, app):
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="critical"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


@pytest.fixture(scope="module")
def folder(mnist_onnx, model, tmp_path_factory):
    """A model folder: the classifier, and an explainer file written by export (served as it is)."""
    path = tmp_path_factory.mktemp("models")
    shutil.copy(mnist_onnx, path / "digits.onnx")
    (path / "digits_cam2.onnx").write_bytes(export_explainer(model, "gradcam", layer="conv2d_2").SerializeToString())
    return path


@pytest.fixture(scope="module")
def server(folder):
    models = load_models(folder, samples=4, seed=3, device="cpu")
    background = Background(create_app(models, Settings(token=TOKEN, max_body_bytes=MAX_BODY, max_batch=MAX_BATCH)))
    yield background
    background.stop()


@pytest.fixture(scope="module")
def client(server):
    return httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")


@pytest.fixture(scope="module")
def x(digits_data):
    return digits_data.x_test[:4]


def infer(client, name, x, target=None, binary=True, outputs=None):
    image = httpclient.InferInput("image", list(x.shape), "FP32")
    image.set_data_from_numpy(x, binary_data=binary)
    inputs = [image]
    if target is not None:
        inputs.append(httpclient.InferInput("target", [len(target)], "INT64"))
        inputs[-1].set_data_from_numpy(np.asarray(target, np.int64), binary_data=binary)
    wanted = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in outputs] if outputs else None
    return client.infer(name, inputs, outputs=wanted, headers=auth())


EXPLAINERS = ["saliency", "guided", "gradcam", "guided-gradcam", "smoothgrad"]


def test_health_and_model_metadata(client):
    assert client.is_server_live() and client.is_server_ready()  # health probes need no token
    assert client.get_server_metadata(headers=auth())["extensions"] == ["binary_tensor_data"]
    for name in ["digits", "digits_cam2", *(f"digits.{m}" for m in EXPLAINERS)]:
        assert client.is_model_ready(name, headers=auth()), name
    plain = client.get_model_metadata("digits", headers=auth())
    assert plain["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 28, 28, 1]}]
    assert plain["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}]
    explainer = client.get_model_metadata("digits.gradcam", model_version="1", headers=auth())
    assert explainer["versions"] == ["1"] and explainer["platform"] == "onnxruntime_onnx"
    assert [(t["name"], t["datatype"], t["shape"]) for t in explainer["inputs"]] == [
        ("image", "FP32", [-1, 28, 28, 1]), ("target", "INT64", [-1])]
    assert [(t["name"], t["datatype"], t["shape"]) for t in explainer["outputs"]] == [
        ("probabilities", "FP32", [-1, 10]), ("target_class", "INT64", [-1]), ("heatmap", "FP32", [-1, 28, 28])]


def test_model_metadata_names_the_runtime_that_serves_it(mnist_onnx):
    """Triton's platform names: "onnxruntime_onnx" on onnxruntime, "openvino" on OpenVINO."""
    pytest.importorskip("openvino")
    platforms = {}
    for device in ("cpu", "openvino"):
        models = load_models(mnist_onnx, methods=("saliency",), device=device)
        background = Background(create_app(models, Settings(token=TOKEN)))
        try:
            client = httpclient.InferenceServerClient(f"127.0.0.1:{background.port}")
            platforms[device] = {name: client.get_model_metadata(name, headers=auth())["platform"] for name in models}
        finally:
            background.stop()
    assert platforms == {"cpu": dict.fromkeys(["mnist_cnn", "mnist_cnn.saliency"], "onnxruntime_onnx"),
                         "openvino": dict.fromkeys(["mnist_cnn", "mnist_cnn.saliency"], "openvino")}


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_the_model_is_served_with_its_own_tensors(client, model, x, binary):
    image = httpclient.InferInput("input", list(x.shape), "FP32")
    image.set_data_from_numpy(x, binary_data=binary)
    result = client.infer("digits", [image], outputs=[httpclient.InferRequestedOutput("output", binary_data=binary)],
                          headers=auth(), request_id="r-1")
    np.testing.assert_allclose(result.as_numpy("output"), model.predict(x), atol=1e-6)
    assert result.get_response()["id"] == "r-1" and result.get_response()["model_name"] == "digits"


LIBRARY = {
    "saliency": lambda m, x, t: onnxsight.saliency(m, x, target=t, normalize=True),
    "guided": lambda m, x, t: onnxsight.saliency(m, x, target=t, modifier="guided", normalize=True),
    "gradcam": lambda m, x, t: onnxsight.gradcam(m, x, target=t),
    "guided-gradcam": lambda m, x, t: onnxsight.gradcam(m, x, target=t, guided=True),
    "smoothgrad": lambda m, x, t: np.concatenate([
        onnxsight.saliency(m, x[i:i + 1], target=t[i:i + 1], smooth_samples=4, seed=3, normalize=True)
        for i in range(len(x))]),
}


@pytest.mark.parametrize("method", EXPLAINERS)
def test_explainer_outputs_equal_the_library(client, model, x, method):
    chosen = np.array([3, 1, 4, 1])
    result = infer(client, f"digits.{method}", x, target=chosen, binary=method != "gradcam")
    np.testing.assert_array_equal(result.as_numpy("target_class"), chosen)
    np.testing.assert_allclose(result.as_numpy("heatmap"), LIBRARY[method](model, x, chosen), atol=TOLERANCE)
    np.testing.assert_allclose(result.as_numpy("probabilities"), model.predict(x), atol=1e-6)


def test_target_defaults_to_the_predicted_class(client, model, x):
    result = infer(client, "digits.gradcam", x, binary=False, outputs=["target_class", "heatmap"])
    predicted = model.predict(x).argmax(axis=1)
    np.testing.assert_array_equal(result.as_numpy("target_class"), predicted)
    np.testing.assert_allclose(result.as_numpy("heatmap"), onnxsight.gradcam(model, x), atol=TOLERANCE)
    assert result.as_numpy("probabilities") is None  # only the requested outputs come back
    explainer_file = infer(client, "digits_cam2", x)
    np.testing.assert_allclose(explainer_file.as_numpy("heatmap"), onnxsight.gradcam(model, x, layer="conv2d_2"),
                               atol=TOLERANCE)


def _body(x, **changes) -> bytes:
    request = {"inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    request["inputs"][0].update(changes)
    return json.dumps(request).encode()


def _with(*tensors, **fields) -> bytes:
    return json.dumps({"inputs": list(tensors), **fields}).encode()


def _binary(size: int, name: str = "image", fill: float = 0.0, **fields) -> tuple[bytes, dict]:
    """A JSON header claiming ``size`` bytes for a 2x28x28x1 FP32 image, followed by those bytes (``fill`` values)."""
    header = _with({"name": name, "shape": [2, 28, 28, 1], "datatype": "FP32", "parameters": {"binary_data_size": size}},
                   **fields)
    return header + np.full(size // 4, fill, np.float32).tobytes(), {**AUTH, HEADER_LENGTH: str(len(header))}


X2 = np.zeros((2, 28, 28, 1), np.float32)
IMAGE = json.loads(_body(X2))["inputs"][0]
TARGET = {"name": "target", "shape": [1], "datatype": "INT64", "data": [10]}
HUGE = 3e38  # finite in FP32, but the network's sums overflow to Inf and its softmax to NaN
# (case, model, body, headers, status, message fragment)
BAD_REQUESTS = [
    ("wrong shape", "digits.gradcam", _body(X2, shape=[2, 28, 28, 3]), AUTH, 400, "the model expects [-1, 28, 28, 1]"),
    ("wrong dtype", "digits.gradcam", _body(X2, datatype="FP64"), AUTH, 400, "has datatype 'FP64'; the model expects FP32"),
    ("data count", "digits.gradcam", _body(X2, shape=[3, 28, 28, 1]), AUTH, 400, "'data' has 1568 values; its shape needs 2352"),
    ("text data", "digits.gradcam", _body(X2, data=["a"] * 1568), AUTH, 400, "'data' must hold numbers"),
    ("NaN pixel", "digits.gradcam", _body(X2, data=[float("nan")] * 1568), AUTH, 400, "contains NaN or Inf"),
    ("unknown input", "digits.gradcam", _body(X2, name="pixels"), AUTH, 400, "unknown input 'pixels'; the model's inputs are: image, target"),
    ("missing input", "digits.gradcam", _with({**TARGET, "data": [1]}), AUTH, 400, "missing input 'image'"),
    ("no inputs", "digits", _with(), AUTH, 400, "'inputs' must be a non-empty list"),
    ("duplicate input", "digits.gradcam", _with(IMAGE, IMAGE), AUTH, 400, "input 'image' is given twice"),
    ("unknown output", "digits.gradcam", _with(IMAGE, outputs=[{"name": "cam"}]), AUTH, 400, "unknown output 'cam'"),
    ("list as output name", "digits.gradcam", _with(IMAGE, outputs=[{"name": ["heatmap"]}]), AUTH, 400,
     "each requested output's 'name' must be a string, got ['heatmap']"),
    ("object as output name", "digits.gradcam", _with(IMAGE, outputs=[{"name": {"heatmap": 1}}]), AUTH, 400,
     "each requested output's 'name' must be a string"),
    ("list as input name", "digits.gradcam", _body(X2, name=["image"]), AUTH, 400, "each input's 'name' must be a string"),
    ("list as datatype", "digits.gradcam", _body(X2, datatype=["FP32"]), AUTH, 400, "input 'image': 'datatype' must be a string"),
    ("long name", "digits.gradcam", _body(X2, name="x" * 10_000), AUTH, 400, "unknown input 'xxxx"),
    ("target out of range", "digits.gradcam", _with(IMAGE, TARGET), AUTH, 400, "the model has 10 classes"),
    ("target count", "digits.gradcam", _with(IMAGE, {**TARGET, "shape": [3], "data": [1, 2, 3]}), AUTH, 400,
     "'target' has 3 values for 2 images"),
    ("fractional target", "digits.gradcam", _with(IMAGE, {**TARGET, "data": [1.5]}), AUTH, 400, "'data' must hold integers"),
    ("empty batch", "digits.gradcam", _body(np.zeros((0, 28, 28, 1), np.float32)), AUTH, 400, "input 'image' is empty"),
    ("batch too large", "digits.gradcam", _body(np.zeros((MAX_BATCH + 1, 28, 28, 1), np.float32)), AUTH, 400, f"at most {MAX_BATCH} per request"),
    ("malformed JSON", "digits.gradcam", b'{"inputs": [', AUTH, 400, "malformed JSON"),
    ("not an object", "digits.gradcam", b"[1, 2]", AUTH, 400, "must be a JSON object"),
    ("binary size", "digits.gradcam", *_binary(12), 400, "binary_data_size must be 6272 bytes"),
    ("header length", "digits.gradcam", _binary(6272)[0], {**AUTH, HEADER_LENGTH: "10000000"}, 400, "no larger than the body"),
    ("unicode digit header length", "digits.gradcam", _binary(6272)[0], {**AUTH, HEADER_LENGTH: "\u00b2"}, 400,
     f"{HEADER_LENGTH} must be an integer"),
    ("5000-digit header length", "digits.gradcam", _binary(6272)[0], {**AUTH, HEADER_LENGTH: "1" * 5000}, 400,
     f"{HEADER_LENGTH} must be an integer"),
    ("non-finite output, JSON", "digits", _body(X2, name="input", data=[HUGE] * 1568), AUTH, 422,
     "model 'digits' produced NaN or Inf in 'output'; this server never returns non-finite values"),
    ("non-finite output, binary", "digits", *_binary(6272, name="input", fill=HUGE, parameters={"binary_data_output": True}),
     422, "model 'digits' produced NaN or Inf in 'output'"),
    ("non-finite explainer output, JSON", "digits.gradcam", _body(X2, data=[HUGE] * 1568), AUTH, 422,
     "model 'digits.gradcam' produced NaN or Inf in 'probabilities'"),
    ("non-finite explainer output, binary", "digits.saliency", *_binary(6272, fill=HUGE, parameters={"binary_data_output": True}),
     422, "model 'digits.saliency' produced NaN or Inf in 'probabilities'"),
    ("unknown model", "mnist", _body(X2), AUTH, 404, "unknown model 'mnist'; this server has: digits"),
    ("unknown version", "digits.gradcam/versions/2", _body(X2), AUTH, 404, "has no version '2'"),
    ("oversized body", "digits.gradcam", _body(X2) + b" " * MAX_BODY, AUTH, 413, f"limit of {MAX_BODY} bytes"),
    ("missing token", "digits.gradcam", _body(X2), {}, 401, "missing bearer token"),
    ("wrong token", "digits.gradcam", _body(X2), {"Authorization": "Bearer nope"}, 401, "invalid bearer token"),
    ("compressed body", "digits.gradcam", _body(X2), {**AUTH, "Content-Encoding": "gzip"}, 415, "not supported"),
]


def post(port, path, body, headers):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": "application/json", **headers})
        response = connection.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        connection.close()


@pytest.mark.parametrize(("case", "name", "body", "headers", "status", "message"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_requests_get_a_status_and_a_clear_message(server, client, x, case, name, body, headers, status, message):
    got, content, response_headers = post(server.port, f"/v2/models/{name}/infer", body, headers)
    assert got == status, (case, content)
    assert b"\n" not in content and list(json.loads(content)) == ["error"], (case, content)  # one line: {"error": ...}
    error = json.loads(content)["error"]
    assert message in error and len(error) < 300, (case, error)
    assert "Traceback" not in error and "File " not in error
    if status == 401:
        assert response_headers.get("www-authenticate") == "Bearer"
    assert infer(client, "digits.saliency", x[:1]).as_numpy("heatmap").shape == (1, 28, 28)  # still serving


def test_the_official_client_reports_errors_clearly(client, x):
    image = httpclient.InferInput("image", [1, 28, 28, 1], "FP64")
    image.set_data_from_numpy(x[:1].astype(np.float64), binary_data=True)
    with pytest.raises(InferenceServerException, match="the model expects FP32") as error:
        client.infer("digits.gradcam", [image], headers=auth())
    assert error.value.status() == "400"
    with pytest.raises(InferenceServerException, match="unknown model") as error:
        client.get_model_metadata("nope", headers=auth())
    assert error.value.status() == "404"


def test_concurrent_clients_all_get_their_own_answers(server, model, x):
    expected = onnxsight.gradcam(model, x[:2], target=[5, 6])

    def client_loop(index):
        own = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
        try:
            for _ in range(10):
                result = infer(own, "digits.gradcam", x[:2], target=[5, 6], binary=index % 2 == 0)
                np.testing.assert_allclose(result.as_numpy("heatmap"), expected, atol=TOLERANCE)
        finally:
            own.close()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(client_loop, range(8)))  # re-raises the first failure


def test_a_full_queue_answers_503_and_recovers():
    runner, release = Runner(workers=1, queue=0), threading.Event()

    async def scenario():
        first = asyncio.ensure_future(runner.run(release.wait))
        await asyncio.sleep(0.05)
        with pytest.raises(ProtocolError, match="server busy") as busy:
            await runner.run(lambda: None)
        assert busy.value.status == 503
        release.set()
        assert await first is True
        assert await runner.run(lambda: 42) == 42

    asyncio.run(scenario())
    runner.shutdown()


def test_closing_the_runner_answers_queued_calls_503_and_lets_running_ones_finish():
    runner, release = Runner(workers=1, queue=2), threading.Event()

    async def scenario():
        running = asyncio.ensure_future(runner.run(release.wait))
        queued = [asyncio.ensure_future(runner.run(lambda: "started")) for _ in range(2)]
        await asyncio.sleep(0.05)
        runner.close()
        for call in [*queued, runner.run(lambda: "new")]:
            with pytest.raises(ProtocolError, match="server is shutting down") as refused:
                await call
            assert refused.value.status == 503
        assert not running.done()
        release.set()
        assert await running is True

    asyncio.run(scenario())
    runner.shutdown()


def test_settings_refuse_a_body_budget_smaller_than_one_body():
    with pytest.raises(InvalidArgument, match="max_pending_bytes .* must be at least max_body_bytes"):
        Settings(max_body_bytes=2**20, max_pending_bytes=2**19)
    with pytest.raises(InvalidArgument, match="body_timeout must be positive"):
        Settings(body_timeout=0)


def test_unexpected_errors_are_a_bare_500(folder):
    """A failure inside the server is logged there; the client sees no traceback or internal detail."""
    models = load_models(folder / "digits.onnx", methods=[], device="cpu")

    def broken(inputs):
        raise RuntimeError("secret internal detail")

    models["digits"].check = broken
    background = Background(create_app(models, Settings()))
    try:
        status, content, _ = post(background.port, "/v2/models/digits/infer", _body(X2, name="input"), {})
    finally:
        background.stop()
    assert status == 500 and json.loads(content) == {"error": "internal server error"}


def serve_process(*arguments: str, env: dict | None = None) -> tuple[subprocess.Popen, int]:
    """``onnxsight serve ARGUMENTS`` on a free loopback port, once it answers its readiness probe; and the port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-c", "from onnxsight.cli.app import main; main()", "serve", *arguments, "--port", str(port)]
    process = subprocess.Popen(command, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
    deadline = time.monotonic() + 60
    while True:
        try:
            if client.is_server_ready():
                break
        except (ConnectionError, OSError, InferenceServerException):
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the server did not start: {process.communicate()[1]}")
        time.sleep(0.2)
    client.close()
    return process, port


def test_serve_command_reads_the_token_from_the_environment_and_shuts_down_gracefully(folder):
    process, port = serve_process(str(folder / "digits.onnx"), "--method", "saliency", "--log-level", "info",
                                  env={"ONNXSIGHT_TOKEN": TOKEN})
    try:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        with pytest.raises(InferenceServerException, match="missing bearer token"):
            client.get_model_metadata("digits.saliency")
        assert client.get_model_metadata("digits.saliency", headers=auth())["name"] == "digits.saliency"
        assert post(port, "/v2/models/digits.gradcam/infer", b"{}", AUTH)[0] == 404  # only --method saliency
        client.close()
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode in (0, -signal.SIGTERM), stderr  # uvicorn re-raises the signal once it has shut down
    assert "Application shutdown complete" in stderr and "Traceback" not in stderr, stderr
    assert f"serving 2 models on http://127.0.0.1:{port}/v2: digits, digits.saliency" in stderr


def test_sigterm_answers_requests_not_yet_started_503_and_lets_the_running_one_finish(folder, digits_data):
    """One worker; six SmoothGrad requests of 64 images each; SIGTERM while the first one runs: it finishes
    (200), the queued ones get 503 at once instead of running through the grace period or dying with 500."""
    process, port = serve_process(str(folder / "digits.onnx"), "--method", "smoothgrad", "--samples", "20",
                                  "--workers", "1", "--log-level", "warning")
    images = digits_data.x_test[:64]
    header = _with({"name": "image", "shape": list(images.shape), "datatype": "FP32",
                    "parameters": {"binary_data_size": images.nbytes}}, outputs=[{"name": "target_class"}])
    request = ("/v2/models/digits.smoothgrad/infer", header + images.tobytes(), {HEADER_LENGTH: str(len(header))})
    pool = ThreadPoolExecutor(6)
    try:
        started = time.monotonic()
        assert post(port, *request)[0] == 200
        duration = time.monotonic() - started
        answers = [pool.submit(post, port, *request) for _ in range(6)]
        time.sleep(max(0.2, duration / 2))  # the first one is running, the other five are queued
    finally:
        process.send_signal(signal.SIGTERM)  # once: a second signal makes uvicorn quit without waiting
        _, stderr = process.communicate(timeout=30)
        pool.shutdown()
    answers = [answer.result() for answer in answers]
    statuses = [status for status, _, _ in answers]
    assert set(statuses) <= {200, 503} and 1 <= statuses.count(200) <= 2, (statuses, stderr)
    for status, content, _ in answers:
        if status == 503:
            assert json.loads(content) == {"error": "server is shutting down; retry on another instance"}
    assert "Traceback" not in stderr, stderr


# ---- request bodies, on raw sockets ------------------------------------------------------------
def upload(port: int, length: int | None, first: bytes = b"") -> socket.socket:
    """A loopback connection that has sent an inference POST's headers (``length``: its Content-Length; None:
    chunked) and the body's first bytes."""
    framing = b"Transfer-Encoding: chunked" if length is None else b"Content-Length: %d" % length
    connection = socket.create_connection(("127.0.0.1", port), timeout=10)
    connection.sendall(b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: test\r\n" + framing + b"\r\n\r\n" + first)
    return connection


def answer(connection: socket.socket) -> tuple[int, dict, http.client.HTTPResponse]:
    """The status and JSON body of the response on ``connection`` (10 s at most)."""
    response = http.client.HTTPResponse(connection)
    response.begin()
    return response.status, json.loads(response.read()), response


@pytest.fixture()
def plain_models(folder):
    return load_models(folder / "digits.onnx", methods=[], device="cpu")


def _answered(connection: socket.socket) -> bool:
    """Whether the server has already answered ``connection`` (then closed here)."""
    if not select.select([connection], [], [], 0)[0]:
        return False
    connection.close()
    return True


def _plain_request(x, size: int) -> bytes:
    """A valid inference request for the plain model, padded with spaces (valid JSON) to ``size`` bytes."""
    body = _body(x, name="input")
    assert len(body) <= size
    return body.ljust(size)


def test_a_stalled_upload_is_cut_off_with_408(plain_models, model, x):
    """A client trickling one byte every 0.1 s gets 408 when the 1 s body timeout runs out, and is disconnected."""
    background = Background(create_app(plain_models, Settings(body_timeout=1.0)))
    try:
        connection = upload(background.port, 1000)
        started = time.monotonic()
        for _ in range(60):  # 6 s at most
            if select.select([connection], [], [], 0.1)[0]:
                break
            connection.sendall(b" ")
        status, error, response = answer(connection)
        elapsed = time.monotonic() - started
        assert status == 408 and error == {"error": "the request body took longer than 1 s to arrive"}
        assert 0.9 < elapsed < 3.0, elapsed
        assert response.getheader("connection") == "close" and connection.recv(1) == b""
        connection.close()
        status, content, _ = post(background.port, "/v2/models/digits/infer", _plain_request(x[:1], 20_000), {})
        np.testing.assert_allclose(json.loads(content)["outputs"][0]["data"], model.predict(x[:1]).ravel(), atol=1e-6)
    finally:
        background.stop()


def test_bodies_in_flight_are_bounded_by_a_byte_budget(plain_models, model, x):
    """Four 64 KiB uploads in progress fill a 256 KiB budget: any other body, declared or chunked, is refused 503
    before it is read; the four then complete normally and give the budget back."""
    size = 64 * 1024
    background = Background(create_app(plain_models, Settings(max_body_bytes=size, max_pending_bytes=4 * size)))
    body, refused = _plain_request(x[:1], size), []
    try:
        uploads = [upload(background.port, size, body[:1000]) for _ in range(4)]
        for _ in range(50):  # until the server holds the four (a one-byte probe is refused)
            # a probe's byte taken just before an upload asks for its 64 KiB refuses that upload: send it again
            uploads = [upload(background.port, size, body[:1000]) if _answered(connection) else connection
                       for connection in uploads]
            probe = upload(background.port, 1, b" ")
            status, error, _ = answer(probe)
            probe.close()
            if status == 503:
                break
            time.sleep(0.1)
        assert status == 503 and "bytes of request bodies in progress (limit 262144)" in error["error"], error
        for probe in (upload(background.port, size), upload(background.port, None, b"%x\r\n%s\r\n" % (1000, b" " * 1000))):
            refused.append(answer(probe)[:2])
            probe.close()
        assert [status for status, _ in refused] == [503, 503], refused
        expected = model.predict(x[:1]).ravel()
        for connection in uploads:
            connection.sendall(body[1000:])
            status, result, _ = answer(connection)
            connection.close()
            assert status == 200, result
            np.testing.assert_allclose(result["outputs"][0]["data"], expected, atol=1e-6)
        assert post(background.port, "/v2/models/digits/infer", body, {})[0] == 200
    finally:
        background.stop()


def test_a_full_queue_refuses_a_body_before_reading_it(plain_models, x):
    """With the one worker busy and no queue, a request is answered 503 from its headers: its body never comes."""
    started, release = threading.Event(), threading.Event()

    def blocked(inputs):
        started.set()
        release.wait(10)

    plain_models["digits"].check = blocked
    background = Background(create_app(plain_models, Settings(workers=1, queue=0)))
    try:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(post, background.port, "/v2/models/digits/infer", _body(x[:1], name="input"), {})
            assert started.wait(10)
            connection = upload(background.port, 2**20)
            status, error, _ = answer(connection)
            connection.close()
            release.set()
            assert first.result()[0] == 200
        assert status == 503 and "server busy" in error["error"], error
    finally:
        release.set()
        background.stop()
