"""The KServe v2 gRPC front end on loopback, spoken to by Triton's own client (tritonclient.grpc) and by raw
messages: health, metadata and config equal to the HTTP server's and to a Triton repository entry; inference
equal to the library and to the HTTP answer, with raw or typed contents; test_serve.py's bad requests ported
to messages, each refused with its status code and a one-line message while the server keeps serving; the
queue and the body budget shared with HTTP; graceful shutdown; ``onnxsight serve --grpc-port``."""

from __future__ import annotations

import asyncio
import math
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import onnxsight

pytest.importorskip("fastapi")
grpcclient = pytest.importorskip("tritonclient.grpc")
httpclient = pytest.importorskip("tritonclient.http")

import grpc  # noqa: E402
import uvicorn  # noqa: E402
from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2, service_pb2  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from onnxsight.cli.app import app as cli  # noqa: E402
from onnxsight.errors import InvalidArgument  # noqa: E402

from onnxsight.serving.explainer import TARGET, export_explainer  # noqa: E402
from onnxsight.serving.grpc_server import GrpcServer  # noqa: E402
from onnxsight.serving.protocol import DATATYPES, NO_CLASSIFICATION  # noqa: E402
from onnxsight.serving.repository import load_models  # noqa: E402
from onnxsight.serving.server import Settings, _Server, create_app  # noqa: E402
from onnxsight.serving.triton import config_pbtxt  # noqa: E402
from tests.test_serve import (  # noqa: E402, F401 (folder: the model folder fixture)
    AUTH, LIBRARY, MAX_BATCH, MAX_BODY, TOKEN, TOLERANCE, _answered, folder, serve_process, upload,
)
from tests.test_serve_fuzz import mostly  # noqa: E402

METADATA = [("authorization", f"Bearer {TOKEN}")]
HEADERS = {"authorization": f"Bearer {TOKEN}"}  # tritonclient.grpc sends headers as metadata
EXPLAINERS = ["saliency", "gradcam", "smoothgrad"]
INFER = "/inference.GRPCInferenceService/ModelInfer"
Code = grpc.StatusCode


class Servers:
    """HTTP and gRPC on one event loop in a thread, sharing models, runner and budget, as ``onnxsight serve
    --grpc-port`` runs them; ``stop()`` shuts both down gracefully (as SIGTERM does)."""

    def __init__(self, models, settings: Settings):
        app = create_app(models, settings)
        self.runner = app.state.runner
        self.grpc = GrpcServer(models, settings, app.state, port=0)
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        self.http_port = listener.getsockname()[1]
        config = uvicorn.Config(app, log_level="critical", timeout_graceful_shutdown=10)
        self.server = _Server(config, self.runner, self.grpc)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [listener]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the servers did not start"
            time.sleep(0.02)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc.port}")
        self.infer = self.channel.unary_unary(INFER, response_deserializer=service_pb2.ModelInferResponse.FromString)

    def client(self):
        return grpcclient.InferenceServerClient(f"127.0.0.1:{self.grpc.port}")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.channel.close()
        assert not self.thread.is_alive(), "the servers did not stop"


@pytest.fixture(scope="module")
def servers(folder):
    models = load_models(folder, methods=EXPLAINERS, samples=4, seed=3, device="cpu")
    running = Servers(models, Settings(token=TOKEN, max_body_bytes=MAX_BODY, max_batch=MAX_BATCH))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(servers):
    return servers.client()


@pytest.fixture(scope="module")
def http(servers):
    return httpclient.InferenceServerClient(f"127.0.0.1:{servers.http_port}")


@pytest.fixture(scope="module")
def x(digits_data):
    return digits_data.x_test[:4]


def infer(client, name, x, target=None, outputs=None, module=grpcclient):
    """Inference with Triton's client (``module``: tritonclient.grpc or .http); raw bytes either way."""
    inputs = [module.InferInput("image", list(x.shape), "FP32")]
    inputs[0].set_data_from_numpy(x)
    if target is not None:
        inputs.append(module.InferInput("target", [len(target)], "INT64"))
        inputs[-1].set_data_from_numpy(np.asarray(target, np.int64))
    wanted = [module.InferRequestedOutput(n) for n in outputs] if outputs else None
    return client.infer(name, inputs, outputs=wanted, headers=dict(HEADERS))


def test_health_metadata_and_config_equal_the_http_server_and_a_triton_entry(client, http, model):
    assert client.is_server_live() and client.is_server_ready()  # health probes need no token
    server = client.get_server_metadata(headers=HEADERS)
    assert server.name == "onnxsight" and server.version == onnxsight.__version__
    assert list(server.extensions) == ["model_configuration"]
    for name in ["digits", "digits_cam2", *(f"digits.{m}" for m in EXPLAINERS)]:
        assert client.is_model_ready(name, headers=HEADERS), name
        got = client.get_model_metadata(name, model_version="1", headers=HEADERS)
        tensors = lambda values: [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in values]  # noqa: E731
        assert {"name": got.name, "versions": list(got.versions), "platform": got.platform, "inputs": tensors(got.inputs),
                "outputs": tensors(got.outputs)} == http.get_model_metadata(name, headers=dict(AUTH)), name
    assert not client.is_model_ready("nope", headers=HEADERS)
    assert not client.is_model_ready("digits", model_version="2", headers=HEADERS)
    # the configuration `onnxsight export --triton` writes for the same explainer, parsed by protobuf itself
    expected = text_format.Parse(config_pbtxt(export_explainer(model, "gradcam"), "digits.gradcam", optional=[TARGET]),
                                 model_config_pb2.ModelConfig())
    assert client.get_model_config("digits.gradcam", headers=HEADERS).config == expected


def test_the_model_is_served_with_its_own_tensors(client, http, model, x):
    image = grpcclient.InferInput("input", list(x.shape), "FP32")
    image.set_data_from_numpy(x)
    result = client.infer("digits", [image], headers=dict(HEADERS), request_id="r-1")
    np.testing.assert_allclose(result.as_numpy("output"), model.predict(x), atol=1e-6)
    response = result.get_response()
    assert (response.id, response.model_name, response.model_version) == ("r-1", "digits", "1")
    over_http = httpclient.InferInput("input", list(x.shape), "FP32")
    over_http.set_data_from_numpy(x)
    # the same session on the same inputs: float32 run-to-run equality, at most a rounding apart
    np.testing.assert_allclose(result.as_numpy("output"), http.infer("digits", [over_http], headers=dict(AUTH)).as_numpy("output"),
                               rtol=0, atol=1e-7)


@pytest.mark.parametrize("method", EXPLAINERS)
def test_explainer_outputs_equal_the_library_and_the_http_answer(client, http, model, x, method):
    chosen = np.array([3, 1, 4, 1])
    result = infer(client, f"digits.{method}", x, target=chosen)
    np.testing.assert_array_equal(result.as_numpy("target_class"), chosen)
    np.testing.assert_allclose(result.as_numpy("heatmap"), LIBRARY[method](model, x, chosen), atol=TOLERANCE)
    np.testing.assert_allclose(result.as_numpy("probabilities"), model.predict(x), atol=1e-6)
    over_http = infer(http, f"digits.{method}", x, target=chosen, module=httpclient)
    for name in ("probabilities", "target_class", "heatmap"):
        np.testing.assert_allclose(result.as_numpy(name), over_http.as_numpy(name), rtol=0, atol=1e-7, err_msg=name)


def test_typed_contents_give_the_raw_answer_and_only_the_requested_outputs(servers, model, x):
    """Values in ``contents.fp32_contents`` / ``int64_contents`` instead of raw bytes; outputs named, one twice."""
    request = _request([_tensor(shape=list(x.shape), fp32_contents=x.ravel().tolist()),
                        _tensor("target", "INT64", [1], int64_contents=[2])],
                       outputs=["heatmap", "target_class", "heatmap"])
    response = servers.infer(request, metadata=METADATA)
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("heatmap", "FP32", [4, 28, 28]), ("target_class", "INT64", [4])]
    heatmap = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(4, 28, 28)
    np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[1], np.int64), [2, 2, 2, 2])
    np.testing.assert_allclose(heatmap, onnxsight.gradcam(model, x, target=2), atol=TOLERANCE)


# ---- test_serve.py's bad requests, as messages ---------------------------------------------------
def _tensor(name="image", datatype="FP32", shape=(2, 28, 28, 1), parameters=(), **contents):
    tensor = service_pb2.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=list(shape))
    for field, values in contents.items():
        getattr(tensor.contents, field).extend(values)
    for key in parameters:
        tensor.parameters[key].string_param = "region"
    return tensor


def _request(inputs, raw=(), model="digits.gradcam", version="", outputs=(), output_parameters=(), **fields):
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version, inputs=inputs,
                                            raw_input_contents=list(raw), **fields)
    for name in outputs:
        output = request.outputs.add(name=name)
        for key in output_parameters:
            output.parameters[key].int64_param = 3
    return request.SerializeToString()


X2 = np.zeros((2, 28, 28, 1), np.float32)
RAW = X2.tobytes()
ZEROS = [0.0] * X2.size
IMAGE = _tensor()
ONE_TARGET = _tensor("target", "INT64", [1], int64_contents=[1])
HUGE = 3e38  # finite in FP32, but the network's sums overflow to Inf and its softmax to NaN
INVALID = Code.INVALID_ARGUMENT
# (case, serialized request, metadata, status code, message fragment)
BAD_REQUESTS = [
    ("wrong shape", _request([_tensor(shape=[2, 28, 28, 3])], [RAW * 3]), METADATA, INVALID, "the model expects [-1, 28, 28, 1]"),
    ("wrong dtype", _request([_tensor(datatype="FP64")], [X2.astype(np.float64).tobytes()]), METADATA, INVALID,
     "has datatype 'FP64'; the model expects FP32"),
    ("string dtype", _request([_tensor(datatype="BYTES")], [RAW]), METADATA, INVALID, "has datatype 'BYTES'; the model expects FP32"),
    ("too few raw bytes", _request([IMAGE], [RAW[:12]]), METADATA, INVALID,
     "raw_input_contents must be 6272 bytes for shape [2, 28, 28, 1] of FP32, got 12"),
    ("too many raw bytes", _request([IMAGE], [RAW + bytes(4)]), METADATA, INVALID, "must be 6272 bytes for shape [2, 28, 28, 1] of FP32, got 6276"),
    ("raw for some inputs", _request([IMAGE, ONE_TARGET], [RAW]), METADATA, INVALID, "raw_input_contents has 1 entries for 2 inputs"),
    ("raw and contents", _request([_tensor(fp32_contents=ZEROS)], [RAW]), METADATA, INVALID, "has both raw_input_contents and contents"),
    ("contents count", _request([_tensor(shape=[3, 28, 28, 1], fp32_contents=ZEROS)]), METADATA, INVALID,
     "contents.fp32_contents has 1568 values; its shape needs 2352"),
    ("no contents", _request([IMAGE]), METADATA, INVALID, "contents.fp32_contents has 0 values; its shape needs 1568"),
    ("contents of another type", _request([_tensor(int64_contents=[0] * X2.size)]), METADATA, INVALID,
     "FP32 values go in contents.fp32_contents, not contents.int64_contents"),
    ("negative dimension", _request([_tensor(shape=[-1, 28, 28, 1])], [RAW]), METADATA, INVALID,
     "'shape' must be a list of non-negative integers"),
    ("NaN pixel, raw", _request([IMAGE], [np.full_like(X2, np.nan).tobytes()]), METADATA, INVALID, "contains NaN or Inf"),
    ("NaN pixel, contents", _request([_tensor(fp32_contents=[np.nan] * X2.size)]), METADATA, INVALID, "contains NaN or Inf"),
    ("unknown input", _request([_tensor("pixels")], [RAW]), METADATA, INVALID, "unknown input 'pixels'; the model's inputs are: image, target"),
    ("long name", _request([_tensor("x" * 10_000)], [RAW]), METADATA, INVALID, "unknown input 'xxxx"),
    ("missing input", _request([ONE_TARGET]), METADATA, INVALID, "missing input 'image'"),
    ("no inputs", _request([], model="digits"), METADATA, INVALID, "missing input 'input'"),
    ("duplicate input", _request([IMAGE, IMAGE], [RAW, RAW]), METADATA, INVALID, "input 'image' is given twice"),
    ("unknown output", _request([IMAGE], [RAW], outputs=["cam"]), METADATA, INVALID, "unknown output 'cam'"),
    ("classification", _request([IMAGE], [RAW], outputs=["heatmap"], output_parameters=["classification"]), METADATA,
     INVALID, NO_CLASSIFICATION),
    ("shared memory input", _request([_tensor(parameters=["shared_memory_region"])]), METADATA, INVALID,
     "shared memory is not supported"),
    ("target out of range", _request([_tensor(fp32_contents=ZEROS), _tensor("target", "INT64", [1], int64_contents=[10])]),
     METADATA, INVALID, "the model has 10 classes"),
    ("target count", _request([_tensor(fp32_contents=ZEROS), _tensor("target", "INT64", [3], int64_contents=[1, 2, 3])]),
     METADATA, INVALID, "'target' has 3 values for 2 images"),
    ("fractional target", _request([_tensor(fp32_contents=ZEROS), _tensor("target", "INT64", [1], fp64_contents=[1.5])]),
     METADATA, INVALID, "INT64 values go in contents.int64_contents, not contents.fp64_contents"),
    ("empty batch", _request([_tensor(shape=[0, 28, 28, 1])], [b""]), METADATA, INVALID, "input 'image' is empty"),
    ("batch too large", _request([_tensor(shape=[MAX_BATCH + 1, 28, 28, 1])], [bytes(3136 * (MAX_BATCH + 1))]), METADATA,
     INVALID, f"at most {MAX_BATCH} per request"),
    ("malformed message", b"\xff\xff\xff\x07not protobuf", METADATA, INVALID, "malformed ModelInferRequest"),
    ("non-finite output", _request([_tensor("input")], [np.full_like(X2, HUGE).tobytes()], model="digits"), METADATA, INVALID,
     "model 'digits' produced NaN or Inf in 'output'; this server never returns non-finite values"),
    ("non-finite explainer output", _request([IMAGE], [np.full_like(X2, HUGE).tobytes()], model="digits.saliency"), METADATA,
     INVALID, "model 'digits.saliency' produced NaN or Inf in 'probabilities'"),
    ("unknown model", _request([IMAGE], [RAW], model="mnist"), METADATA, Code.NOT_FOUND, "unknown model 'mnist'; this server has: digits"),
    ("unknown version", _request([IMAGE], [RAW], version="2"), METADATA, Code.NOT_FOUND, "has no version '2'"),
    ("oversized message", _request([IMAGE], [RAW], id="x" * MAX_BODY), METADATA, Code.RESOURCE_EXHAUSTED,
     "Received message larger than max"),
    ("missing token", _request([IMAGE], [RAW]), [], Code.UNAUTHENTICATED, "missing bearer token"),
    ("other scheme", _request([IMAGE], [RAW]), [("authorization", f"Basic {TOKEN}")], Code.UNAUTHENTICATED, "missing bearer token"),
    ("wrong token", _request([IMAGE], [RAW]), [("authorization", "Bearer nope")], Code.UNAUTHENTICATED, "invalid bearer token"),
]


@pytest.mark.parametrize(("case", "body", "metadata", "code", "message"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_requests_get_a_status_code_and_a_clear_message(servers, client, x, case, body, metadata, code, message):
    with pytest.raises(grpc.RpcError) as refused:
        servers.infer(body, metadata=metadata, timeout=30)
    details = refused.value.details()
    assert refused.value.code() == code, (case, refused.value.code(), details)
    assert message in details and "\n" not in details and len(details) < 300, (case, details)
    assert "Traceback" not in details and "File " not in details
    assert infer(client, "digits.saliency", x[:1]).as_numpy("heatmap").shape == (1, 28, 28)  # still serving


def test_the_official_client_reports_errors_clearly(client, x):
    image = grpcclient.InferInput("image", [1, 28, 28, 1], "FP64")
    image.set_data_from_numpy(x[:1].astype(np.float64))
    with pytest.raises(InferenceServerException, match="the model expects FP32") as error:
        client.infer("digits.gradcam", [image], headers=dict(HEADERS))
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException, match="unknown model") as error:
        client.get_model_metadata("nope", headers=HEADERS)
    assert error.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException, match="Method not found") as error:
        client.get_inference_statistics(headers=HEADERS)  # Triton's methods beyond KServe v2's: not served
    assert error.value.status() == "StatusCode.UNIMPLEMENTED"


def test_concurrent_grpc_and_http_clients_all_get_their_own_answers(servers, http, model, x):
    expected = onnxsight.gradcam(model, x[:2], target=[5, 6])

    def client_loop(index):
        own = servers.client() if index % 2 else httpclient.InferenceServerClient(f"127.0.0.1:{servers.http_port}")
        try:
            for _ in range(5):
                result = infer(own, "digits.gradcam", x[:2], target=[5, 6], module=grpcclient if index % 2 else httpclient)
                np.testing.assert_allclose(result.as_numpy("heatmap"), expected, atol=TOLERANCE)
        finally:
            own.close()

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(client_loop, range(6)))  # re-raises the first failure


def test_unexpected_errors_are_a_bare_internal(folder, x, caplog):
    """A failure inside the server is logged there; the client sees no traceback or internal detail."""
    models = load_models(folder / "digits.onnx", methods=[], device="cpu")

    def broken(inputs):
        raise RuntimeError("secret internal detail")

    models["digits"].check = broken
    servers = Servers(models, Settings())
    try:
        with pytest.raises(grpc.RpcError) as failed:
            servers.infer(_plain(x[:1]), timeout=30)
    finally:
        servers.stop()
    assert (failed.value.code(), failed.value.details()) == (Code.INTERNAL, "internal server error")
    assert "secret internal detail" in caplog.text


# ---- the worker pool and the body budget, shared with HTTP; shutdown -------------------------------------
@pytest.fixture()
def blocked(folder):
    """The plain model, whose inference waits for ``release`` once it has set ``started``."""
    models = load_models(folder / "digits.onnx", methods=[], device="cpu")
    started, release = threading.Event(), threading.Event()

    run = models["digits"].run

    def blocked_run(inputs, outputs):
        started.set()
        release.wait(20)
        return run(inputs, outputs)

    models["digits"].run = blocked_run
    yield models, started, release
    release.set()


def _plain(x) -> bytes:
    return _request([_tensor("input", shape=list(x.shape))], [x.tobytes()], model="digits")


def test_the_queue_is_shared_with_http(blocked, model, x):
    """One worker, no queue: while an HTTP request runs, a gRPC one is refused UNAVAILABLE, then served."""
    models, started, release = blocked
    servers = Servers(models, Settings(workers=1, queue=0))
    try:
        with ThreadPoolExecutor(1) as pool:
            image = httpclient.InferInput("input", [1, 28, 28, 1], "FP32")
            image.set_data_from_numpy(x[:1])
            running = pool.submit(httpclient.InferenceServerClient(f"127.0.0.1:{servers.http_port}").infer, "digits", [image])
            assert started.wait(10)
            with pytest.raises(grpc.RpcError) as busy:
                servers.infer(_plain(x[:1]), timeout=30)
            assert busy.value.code() == Code.UNAVAILABLE and "server busy" in busy.value.details(), busy.value.details()
            release.set()
            np.testing.assert_allclose(running.result().as_numpy("output"), model.predict(x[:1]), atol=1e-6)
        response = servers.infer(_plain(x[:1]), timeout=30)
        np.testing.assert_allclose(np.frombuffer(response.raw_output_contents[0], np.float32), model.predict(x[:1]).ravel(),
                                   atol=1e-6)
    finally:
        release.set()
        servers.stop()


def test_the_body_budget_is_shared_with_http(folder, x):
    """An HTTP upload holding the whole body budget refuses gRPC messages UNAVAILABLE until it is done."""
    models = load_models(folder / "digits.onnx", methods=[], device="cpu")
    servers = Servers(models, Settings(max_body_bytes=64 * 1024, max_pending_bytes=64 * 1024))
    try:
        connection = upload(servers.http_port, 64 * 1024, b" ")  # declares the whole budget, sends one byte
        deadline, details = time.monotonic() + 10, ""
        while "bytes of request bodies in progress" not in details and time.monotonic() < deadline:
            if _answered(connection):  # refused: a message held some of the budget when the upload asked for it
                connection = upload(servers.http_port, 64 * 1024, b" ")
            try:  # answered until the server has read the upload's headers
                servers.infer(_plain(x[:1]), timeout=30)
                time.sleep(0.05)
            except grpc.RpcError as error:
                assert error.code() == Code.UNAVAILABLE, error.details()
                details = error.details()
        assert "bytes of request bodies in progress (limit 65536)" in details, details
        connection.close()  # the upload ends; its budget comes back
        deadline = time.monotonic() + 10
        while True:
            try:
                assert servers.infer(_plain(x[:1]), timeout=30).outputs[0].name == "output"
                break
            except grpc.RpcError as error:
                assert error.code() == Code.UNAVAILABLE and time.monotonic() < deadline, error.details()
                time.sleep(0.05)
    finally:
        servers.stop()


def test_shutdown_answers_queued_calls_unavailable_and_lets_the_running_one_finish(blocked, model, x):
    models, started, release = blocked
    servers = Servers(models, Settings(workers=1, queue=1))
    try:
        with ThreadPoolExecutor(2) as pool:
            running = pool.submit(servers.infer, _plain(x[:1]), timeout=30)
            assert started.wait(10)
            queued = pool.submit(servers.infer, _plain(x[:2]), timeout=30)
            deadline = time.monotonic() + 10
            while servers.runner._pending < 2:  # the second call waits for the worker
                assert time.monotonic() < deadline, "the second call was not queued"
                time.sleep(0.02)
            stopping = threading.Thread(target=servers.stop)
            stopping.start()
            with pytest.raises(grpc.RpcError) as refused:
                queued.result(timeout=20)  # answered at once, while the running call still waits
            assert refused.value.code() == Code.UNAVAILABLE
            assert refused.value.details() == "server is shutting down; retry on another instance"
            assert not running.done()
            release.set()
            np.testing.assert_allclose(np.frombuffer(running.result().raw_output_contents[0], np.float32),
                                       model.predict(x[:1]).ravel(), atol=1e-6)
            stopping.join(30)
            assert not stopping.is_alive()
    finally:
        release.set()
        if servers.thread.is_alive():
            servers.stop()


# ---- the serve command --------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_command_serves_grpc_beside_http_and_shuts_both_down(folder, model, x):
    grpc_port = _free_port()
    process, port = serve_process(str(folder / "digits.onnx"), "--method", "saliency", "--grpc-port", str(grpc_port),
                                  env={"ONNXSIGHT_TOKEN": TOKEN})
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        with pytest.raises(InferenceServerException, match="missing bearer token"):
            client.get_model_metadata("digits.saliency")
        result = infer(client, "digits.saliency", x, target=[3, 1, 4, 1])
        np.testing.assert_allclose(result.as_numpy("heatmap"), LIBRARY["saliency"](model, x, np.array([3, 1, 4, 1])),
                                   atol=TOLERANCE)
        client.close()
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode in (0, -signal.SIGTERM), stderr
    assert f"serving them over gRPC on 127.0.0.1:{grpc_port}" in stderr and "Traceback" not in stderr, stderr


def test_a_grpc_port_in_use_or_equal_to_the_http_port_is_refused(folder):
    models = load_models(folder / "digits.onnx", methods=[], device="cpu")
    app = create_app(models)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        front = GrpcServer(models, Settings(), app.state, port=port)
        with pytest.raises(InvalidArgument, match=f"cannot serve gRPC on 127.0.0.1:{port}"):
            asyncio.run(front.start())
    refused = CliRunner().invoke(cli, ["serve", str(folder / "digits.onnx"), "--port", "8100", "--grpc-port", "8100"])
    assert refused.exit_code == 1 and "--grpc-port and --port are both 8100" in refused.output, refused.output


# ---- test_serve_fuzz.py, as messages -------------------------------------------------------------
INPUTS = {"digits": "input", "digits.saliency": "image", "digits.gradcam": "image", "digits.smoothgrad": "image",
          "digits_cam2": "image"}
FIELDS = ["bool_contents", "int_contents", "int64_contents", "uint_contents", "uint64_contents", "fp32_contents",
          "fp64_contents", "bytes_contents"]
NUMBERS = {"bool_contents": st.booleans(), "int_contents": st.integers(-2**31, 2**31 - 1),
           "int64_contents": st.integers(-2**63, 2**63 - 1), "uint_contents": st.integers(0, 2**32 - 1),
           "uint64_contents": st.integers(0, 2**64 - 1), "fp32_contents": st.floats(width=32), "fp64_contents": st.floats(),
           "bytes_contents": st.binary(max_size=8)}


@st.composite
def messages(draw) -> tuple[bytes, list]:
    """A ModelInferRequest for a served model, raw or typed, with mostly one thing changed (a name, datatype, shape,
    the bytes, a contents field, an input added or dropped, the outputs, the model, the version), or any bytes;
    and mostly the right token."""
    model = draw(mostly(st.sampled_from(sorted(INPUTS)), st.text(max_size=8), odds=9))
    rows, fill = draw(st.integers(1, 3)), draw(st.sampled_from([0.0, 0.5, 1.0, 3e38]))
    image = np.full((rows, 28, 28, 1), fill, np.float32)
    inputs = [_tensor(INPUTS.get(model, "image"), shape=image.shape)]
    raw = [image.tobytes()] if draw(st.booleans()) else None
    if raw is None:
        inputs[0].contents.fp32_contents.extend(image.ravel().tolist())
    if model not in ("digits", "digits_cam2") and draw(st.booleans()):
        target = draw(st.lists(st.integers(-2, 11), min_size=1, max_size=3))
        inputs.append(_tensor("target", "INT64", [len(target)]))
        if raw is None:
            inputs[-1].contents.int64_contents.extend(target)
        else:
            raw.append(np.array(target, np.int64).tobytes())
    request = service_pb2.ModelInferRequest(model_name=model, inputs=inputs, raw_input_contents=raw or [],
                                            model_version=draw(mostly(st.sampled_from(["", "1"]), st.text(max_size=3), odds=9)))
    for _ in range(draw(mostly(st.just(1), st.integers(0, 3), odds=2))):
        tensor = draw(st.sampled_from(list(request.inputs) or [request.inputs.add()]))
        change = draw(st.sampled_from(["name", "datatype", "shape", "raw", "contents", "drop", "outputs"]))
        if change == "name":
            tensor.name = draw(st.sampled_from(["image", "input", "target", ""]) | st.text(max_size=6))
        elif change == "datatype":
            tensor.datatype = draw(st.sampled_from(sorted(DATATYPES) + ["BYTES", ""]))
        elif change == "shape":
            tensor.shape[:] = draw(st.lists(st.integers(-2, 40) | st.integers(-2**63, 2**63 - 1), max_size=5))
        elif change == "raw" and request.raw_input_contents:
            request.raw_input_contents[0] = draw(st.binary(max_size=64) | st.just(request.raw_input_contents[0][:-1]))
        elif change == "contents":
            field = draw(st.sampled_from(FIELDS))
            getattr(tensor.contents, field).extend(draw(st.lists(NUMBERS[field], max_size=6)))
        elif change == "drop":
            del request.inputs[-1]
        else:
            output = request.outputs.add(name=draw(st.sampled_from(["output", "heatmap", "target_class", "x"])))
            if draw(st.booleans()):
                output.parameters[draw(st.sampled_from(["classification", "binary_data", "x"]))].int64_param = 1
    body = draw(mostly(st.just(request.SerializeToString()), st.binary(max_size=64)))
    token = draw(mostly(st.just(METADATA), st.sampled_from([[], [("authorization", "Bearer nope")]])))
    return body, token


ANSWERED = {Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.UNAUTHENTICATED}


def test_fuzzed_messages_never_get_an_internal_error_and_leave_the_server_correct(servers, model, digits_data):
    codes = []

    @settings(max_examples=150, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(messages())
    def fuzz(case):
        body, metadata = case
        try:
            response = servers.infer(body, metadata=metadata, timeout=30)  # a hang fails the test
        except grpc.RpcError as error:
            assert error.code() in ANSWERED and "\n" not in error.details(), (error.code(), error.details())
            codes.append(error.code())
            return
        for output, data in zip(response.outputs, response.raw_output_contents):
            values = np.frombuffer(data, DATATYPES[output.datatype])
            assert values.size == math.prod(output.shape) and np.isfinite(values).all(), output
        codes.append(Code.OK)

    fuzz()
    assert {Code.OK, Code.INVALID_ARGUMENT}.issubset(codes), set(codes)
    print({code.name: codes.count(code) for code in set(codes)})
    x, chosen = digits_data.x_test[:4], np.array([3, 1, 4, 1])
    result = servers.infer(_request([_tensor(shape=x.shape), _tensor("target", "INT64", [4])], [x.tobytes(), chosen.tobytes()]),
                           metadata=METADATA, timeout=30)
    heatmap = np.frombuffer(result.raw_output_contents[list(o.name for o in result.outputs).index("heatmap")], np.float32)
    np.testing.assert_allclose(heatmap.reshape(4, 28, 28), LIBRARY["gradcam"](model, x, chosen), atol=TOLERANCE)
