"""A real Triton Inference Server (PyTriton's tritonserver) serving the CNN and two explainers on loopback,
spoken to by tritonclient over HTTP and gRPC: metadata, inference equal to the library, requests merged
by Triton's dynamic batcher and split back, bad requests refused by Triton; and every ``config.pbtxt``
that ``write_triton_entry`` writes parsed by Triton's own protobuf schema."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnxsight
from onnxsight.serving.explainer import METHODS, RELEVANCE_METHODS, TARGET, export_explainer
from onnxsight.serving.triton import TRITON_TYPES, config_pbtxt, write_triton_entry

grpcclient = pytest.importorskip("tritonclient.grpc")
httpclient = pytest.importorskip("tritonclient.http")
from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402
from tritonclient.utils import InferenceServerException, np_to_triton_dtype  # noqa: E402

# The server runs the very sessions the references run, but Triton merges requests into other batch
# sizes; float32 sums over a few hundred terms in another order differ by ~1e-7 relative, and
# probabilities and heat maps lie in [0, 1].
TOLERANCE = 1e-5
MAX_BATCH = 8
MAX_DELAY_US = 100_000  # long enough that concurrent requests meet in one batch, short enough for the tests
SERVED = ("saliency", "gradcam")
LIBRARY = {
    "saliency": lambda m, x, t: onnxsight.saliency(m, x, target=t, normalize=True),
    "gradcam": lambda m, x, t: onnxsight.gradcam(m, x, target=t),
}


def _tritonserver_problem() -> str | None:
    """Why PyTriton's tritonserver binary cannot run here, or None."""
    try:
        from pytriton.utils.distribution import get_libs_path, get_root_module_path
    except ImportError as error:
        return f"PyTriton is not installed (pip install 'onnxsight[triton]'): {error}"
    binary = get_root_module_path() / "tritonserver" / "bin" / "tritonserver"
    env = {**os.environ, "LD_LIBRARY_PATH": str(get_libs_path())}
    try:
        done = subprocess.run([str(binary), "--help"], capture_output=True, text=True, env=env, timeout=60)
    except OSError as error:
        return f"{binary} cannot start: {error}"
    if "Usage: tritonserver" not in done.stdout + done.stderr:
        return f"{binary} --help failed: {(done.stderr or done.stdout).strip()[-500:]}"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(mnist_onnx, tmp_path_factory):
    """The CNN and its saliency and Grad-CAM explainers, by served name; and the CNN fixed to batches of
    two images, ``mnist_cnn_pairs`` (served unbatched)."""
    from onnxsight.serving.repository import load_models

    pairs = onnx.load(mnist_onnx)
    for value in (*pairs.graph.input, *pairs.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 2
    path = tmp_path_factory.mktemp("pairs") / "mnist_cnn_pairs.onnx"
    onnx.save(pairs, path)
    return load_models(mnist_onnx, SERVED) | load_models(path, [])


@pytest.fixture(scope="module")
def ports(served):
    """A running Triton serving ``served`` on loopback; its HTTP and gRPC ports."""
    problem = _tritonserver_problem()
    if problem:
        print(f"skipping: {problem}", file=sys.stderr)
        pytest.skip(problem)
    from onnxsight.serving.pytriton_engine import Batching, running

    http_port, grpc_port = _free_port(), _free_port()
    with running(served, "127.0.0.1", http_port, grpc_port, Batching(MAX_BATCH, MAX_DELAY_US, (MAX_BATCH,))):
        yield http_port, grpc_port


@pytest.fixture(params=["http", "grpc"])
def client(request, ports):
    """A tritonclient of either protocol; closed after the test so that Triton stops promptly."""
    module = httpclient if request.param == "http" else grpcclient
    connection = module.InferenceServerClient(f"127.0.0.1:{ports[0] if request.param == 'http' else ports[1]}")
    connection.protocol = module
    yield connection
    connection.close()


@pytest.fixture(scope="module")
def x(digits_data):
    return digits_data.x_test[:5].astype(np.float32)


def infer(client, name: str, arrays: dict[str, np.ndarray]):
    inputs = []
    for input_name, array in arrays.items():
        tensor = client.protocol.InferInput(input_name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return client.infer(name, inputs)


def test_server_and_model_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert all(client.is_model_ready(name) for name in ("mnist_cnn", "mnist_cnn.saliency", "mnist_cnn.gradcam"))
    metadata = client.get_model_metadata("mnist_cnn.gradcam")
    if client.protocol is grpcclient:
        inputs = {t.name: (t.datatype, list(t.shape)) for t in metadata.inputs}
        outputs = {t.name: (t.datatype, list(t.shape)) for t in metadata.outputs}
    else:
        inputs = {t["name"]: (t["datatype"], t["shape"]) for t in metadata["inputs"]}
        outputs = {t["name"]: (t["datatype"], t["shape"]) for t in metadata["outputs"]}
    assert inputs == {"image": ("FP32", [-1, 28, 28, 1]), "target": ("INT64", [-1, 1])}
    assert outputs == {"probabilities": ("FP32", [-1, 10]), "target_class": ("INT64", [-1, 1]),
                       "heatmap": ("FP32", [-1, 28, 28])}
    config = client.get_model_config("mnist_cnn")
    config = config.config if client.protocol is grpcclient else config
    if client.protocol is grpcclient:
        batching = config.max_batch_size, config.dynamic_batching.max_queue_delay_microseconds, \
            list(config.dynamic_batching.preferred_batch_size)
    else:
        batcher = config["dynamic_batching"]
        batching = config["max_batch_size"], int(batcher["max_queue_delay_microseconds"]), batcher["preferred_batch_size"]
    assert batching == (MAX_BATCH, MAX_DELAY_US, [MAX_BATCH])


def test_the_model_equals_the_library(client, model, x):
    result = infer(client, "mnist_cnn", {"input": x})
    np.testing.assert_allclose(result.as_numpy("output"), model.predict(x), atol=TOLERANCE)


def test_a_model_with_a_fixed_batch_is_served_unbatched(client, model, x):
    config = client.get_model_config("mnist_cnn_pairs")
    config = config.config if client.protocol is grpcclient else config
    batch_size = config.max_batch_size if client.protocol is grpcclient else config["max_batch_size"]
    assert batch_size == 0
    result = infer(client, "mnist_cnn_pairs", {"input": x[:2]})
    np.testing.assert_allclose(result.as_numpy("output"), model.predict(x[:2]), atol=TOLERANCE)
    with pytest.raises(InferenceServerException, match="unexpected shape"):
        infer(client, "mnist_cnn_pairs", {"input": x[:3]})


@pytest.mark.parametrize("method", SERVED)
def test_explainers_equal_the_library(client, model, x, method):
    chosen = np.array([0, 1, 2, 3, 4], np.int64)
    result = infer(client, f"mnist_cnn.{method}", {"image": x, TARGET: chosen[:, None]})
    np.testing.assert_array_equal(result.as_numpy("target_class")[:, 0], chosen)
    np.testing.assert_allclose(result.as_numpy("heatmap"), LIBRARY[method](model, x, chosen), atol=TOLERANCE)
    np.testing.assert_allclose(result.as_numpy("probabilities"), model.predict(x), atol=TOLERANCE)


def test_without_a_target_the_predicted_class_is_explained(client, model, x):
    result = infer(client, "mnist_cnn.gradcam", {"image": x})
    predicted = model.predict(x).argmax(axis=1)
    np.testing.assert_array_equal(result.as_numpy("target_class")[:, 0], predicted)
    np.testing.assert_allclose(result.as_numpy("heatmap"), onnxsight.gradcam(model, x, target=predicted), atol=TOLERANCE)


def test_concurrent_requests_are_batched_and_split_back(ports, served, model, digits_data, monkeypatch):
    """Requests of 1-3 images, with and without targets, sent at once: Triton's batcher hands several to
    one call, which runs the session once for them, and each answer is its own images' Grad-CAM."""
    images = digits_data.x_test[:24].astype(np.float32)
    sizes = [1, 3, 2, 1, 2, 3, 1, 2, 1, 3, 2, 3]
    starts = np.cumsum([0] + sizes[:-1])
    predicted = model.predict(images).argmax(axis=1)
    targets = (np.arange(len(images)) * 7 % 10).astype(np.int64)
    name = "mnist_cnn.gradcam"
    session_rows = []
    run = served[name].run
    monkeypatch.setattr(served[name], "run", lambda feed, outputs: session_rows.append(len(feed["image"])) or run(feed, outputs))

    def ask(k: int):
        rows = slice(starts[k], starts[k] + sizes[k])
        with httpclient.InferenceServerClient(f"127.0.0.1:{ports[0]}") as connection:
            connection.protocol = httpclient
            arrays = {"image": images[rows]} | ({TARGET: targets[rows, None]} if k % 2 else {})
            return rows, k % 2, infer(connection, name, arrays)

    with ThreadPoolExecutor(len(sizes)) as pool:
        answers = list(pool.map(ask, range(len(sizes))))
    for rows, targeted, result in answers:
        expected = targets[rows] if targeted else predicted[rows]
        np.testing.assert_array_equal(result.as_numpy("target_class")[:, 0], expected)
        np.testing.assert_allclose(result.as_numpy("heatmap"), onnxsight.gradcam(model, images[rows], target=expected),
                                   atol=TOLERANCE)
    assert sum(session_rows) == sum(sizes) and max(session_rows) <= MAX_BATCH, session_rows
    assert len(session_rows) < len(sizes), session_rows


X2 = np.zeros((2, 28, 28, 1), np.float32)
BAD = [  # (why, model, inputs, words in Triton's message)
    ("wrong shape", "mnist_cnn.gradcam", {"image": np.zeros((2, 28, 27, 1), np.float32)}, "unexpected shape"),
    ("wrong dtype", "mnist_cnn.gradcam", {"image": X2.astype(np.float64)},
     "data-type is 'FP64', but model 'mnist_cnn.gradcam' expects 'FP32'"),
    ("unknown model", "mnist_cnn.cam", {"image": X2}, "unknown model"),
    ("unknown input", "mnist_cnn.gradcam", {"pixels": X2}, "unexpected inference input 'pixels'"),
    ("one target for two images", "mnist_cnn.gradcam", {"image": X2, TARGET: np.zeros((1, 1), np.int64)},
     "batch size does not match"),
    ("batch too large", "mnist_cnn", {"input": np.zeros((MAX_BATCH + 1, 28, 28, 1), np.float32)},
     f"batch-size must be <= {MAX_BATCH}"),
]


@pytest.mark.parametrize("why, name, arrays, words", BAD, ids=[case[0] for case in BAD])
def test_bad_requests_are_refused_by_triton(client, why, name, arrays, words):
    with pytest.raises(InferenceServerException) as refused:
        infer(client, name, arrays)
    status = refused.value.status()
    if client.protocol is httpclient:
        assert status.startswith("4"), (why, status, refused.value.message())
    else:
        assert status in ("StatusCode.INVALID_ARGUMENT", "StatusCode.NOT_FOUND", "StatusCode.UNAVAILABLE"), (why, status)
    assert words in refused.value.message(), (why, refused.value.message())
    assert client.is_server_ready()


REFUSED_BY_ONNXSIGHT = [  # what Triton lets through; PyTriton answers the inference function's error as 500/INTERNAL
    ("target out of range", {"image": X2, TARGET: np.array([[1], [10]], np.int64)}, "the model has 10 classes"),
    ("missing image", {TARGET: np.zeros((2, 1), np.int64)}, "missing input 'image' for model 'mnist_cnn.gradcam'"),
]


@pytest.mark.parametrize("why, arrays, words", REFUSED_BY_ONNXSIGHT, ids=[case[0] for case in REFUSED_BY_ONNXSIGHT])
def test_what_triton_lets_through_is_refused_and_the_server_keeps_serving(client, model, x, why, arrays, words):
    with pytest.raises(InferenceServerException) as refused:
        infer(client, "mnist_cnn.gradcam", arrays)
    assert words in refused.value.message(), (why, refused.value.message())
    np.testing.assert_allclose(infer(client, "mnist_cnn", {"input": x}).as_numpy("output"), model.predict(x), atol=TOLERANCE)


@pytest.mark.parametrize("method", [None, *METHODS, RELEVANCE_METHODS[0]])
def test_config_pbtxt_parses_as_tritons_model_config(model, method, tmp_path):
    """Each entry written for Triton's onnxruntime backend is a valid ModelConfig naming the graph's tensors."""
    proto = model.proto if method is None else export_explainer(model, method)
    optional = [] if method is None else [TARGET]
    folder = write_triton_entry(proto, tmp_path, "entry", optional=optional)
    config = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert (config.name, config.platform, config.max_batch_size) == ("entry", "onnxruntime_onnx", 0)
    assert onnx.load(folder / "1" / "model.onnx").graph == proto.graph
    defaults = {t.name for t in proto.graph.initializer}
    expected_inputs = [v for v in proto.graph.input if v.name not in defaults or v.name in optional]
    for declared, values in ((config.input, expected_inputs), (config.output, proto.graph.output)):
        assert [t.name for t in declared] == [v.name for v in values]
        for tensor, value in zip(declared, values):
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
            assert list(tensor.dims) == dims, (tensor.name, list(tensor.dims), dims)
            assert model_config_pb2.DataType.Name(tensor.data_type) == TRITON_TYPES[value.type.tensor_type.elem_type]
    assert [t.name for t in config.input if t.optional] == optional


def test_config_pbtxt_gives_a_scalar_tensor_one_dim_reshaped_away():
    """Triton refuses a tensor without dims; a scalar is declared [1] and reshaped to []."""
    scalar = helper.make_tensor_value_info("total", TensorProto.FLOAT, [])
    graph = helper.make_graph([helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])], [scalar])
    config = text_format.Parse(config_pbtxt(helper.make_model(graph), "sum"), model_config_pb2.ModelConfig())
    (output,) = config.output
    assert list(output.dims) == [1] and output.HasField("reshape") and list(output.reshape.shape) == []
    assert list(config.input[0].dims) == [-1, 3] and not config.input[0].HasField("reshape")


def test_serve_command_runs_triton_until_sigterm(mnist_onnx, ports, x, model, tmp_path):
    """``onnxsight serve --engine triton`` answers on its ports and stops cleanly, stubs included, on SIGTERM
    (``ports``: skipped where Triton cannot run)."""
    http_port, grpc_port = _free_port(), _free_port()
    command = [sys.executable, "-c", "from onnxsight.cli.app import main; main()", "serve", str(mnist_onnx),
               "--engine", "triton", "--no-explainers", "--port", str(http_port), "--grpc-port", str(grpc_port),
               "--max-batch", "4", "--max-delay-us", "500"]
    log = tmp_path / "serve.log"
    with open(log, "w") as output:
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        connection = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        deadline = time.monotonic() + 120
        while not _ready(connection):
            if server.poll() is not None:
                pytest.fail(f"the serve command exited with {server.returncode}: {log.read_text()[-3000:]}")
            assert time.monotonic() < deadline, "the serve command's Triton was not ready in 120 s"
            time.sleep(0.5)
        connection.protocol = grpcclient
        answer = infer(connection, "mnist_cnn", {"input": x[:4]}).as_numpy("output")
        np.testing.assert_allclose(answer, model.predict(x[:4]), atol=TOLERANCE)
        assert connection.get_model_config("mnist_cnn").config.max_batch_size == 4
        connection.close()
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert not _stubs_of(server.pid)


def _stubs_of(pid: int) -> list[str]:
    """Python-backend stub processes PyTriton started for the process ``pid`` (their command line names it)."""
    stubs = []
    for entry in os.scandir("/proc"):
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as handle:
                command = handle.read().decode(errors="replace")
        except (OSError, ValueError):
            continue
        if "triton_python_backend_stub" in command and f"pytrtion{pid}-" in command:
            stubs.append(entry.name)
    return stubs


def _ready(connection) -> bool:
    try:
        return connection.is_model_ready("mnist_cnn")
    except InferenceServerException:
        return False


@pytest.mark.parametrize("arguments, words", [
    (["--engine", "tensorrt"], "unknown engine 'tensorrt'; choose from onnxsight, triton"),
    (["--engine", "triton", "--token", "secret"], "the triton engine does not check tokens"),
    (["--engine", "triton", "--max-batch", "4", "--preferred-batch", "8"],
     "preferred batch size 8 is not between 1 and max_batch 4"),
])
def test_serve_command_refuses_bad_engine_options(mnist_onnx, arguments, words):
    from typer.testing import CliRunner

    from onnxsight.cli.app import app

    result = CliRunner().invoke(app, ["serve", str(mnist_onnx), "--no-explainers", *arguments])
    assert result.exit_code == 1, result.output
    assert words in result.output
