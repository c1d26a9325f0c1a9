"""The server fuzzed on loopback (hypothesis, derandomized): arbitrary JSON bodies, headers and binary tails,
valid requests changed in a few places, sent to every endpoint. No answer is a 5xx or takes longer than the
client's timeout; every refusal is a one-line ``{"error": ...}``; no answer carries NaN or Inf; afterwards the
server still returns the library's numbers."""

from __future__ import annotations

import http.client
import json
import math
import time
from urllib.parse import quote

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("fastapi")
pytest.importorskip("tritonclient.http")

from onnxsight.serving.explainer import HEATMAP, PROBABILITIES, TARGET_CLASS  # noqa: E402
from onnxsight.serving.protocol import DATATYPES, HEADER_LENGTH  # noqa: E402
from tests.test_serve import (  # noqa: E402, F401 (folder, server: the model folder and server fixtures)
    AUTH, LIBRARY, TOLERANCE, folder, server,
)

EXAMPLES = 200
INPUTS = {"digits": "input", "digits.saliency": "image", "digits.gradcam": "image", "digits.smoothgrad": "image",
          "digits_cam2": "image"}
OUTPUTS = {name: ["output"] if name == "digits" else [PROBABILITIES, TARGET_CLASS, HEATMAP] for name in INPUTS}
FIELDS = ["inputs", "outputs", "id", "parameters", "name", "shape", "datatype", "data", "binary_data_size",
          "binary_data", "binary_data_output", "classification"]

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | st.sampled_from(FIELDS), inner, max_size=4),
    max_leaves=12,
)
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"), max_size=12)


def mostly(usual, unusual, odds: int = 4):
    """``usual`` (a strategy) ``odds`` times out of ``odds + 1``, else ``unusual``: most requests get past the
    checks that come first (route, token) to reach the ones behind them."""
    return st.integers(0, odds).flatmap(lambda i: unusual if i == odds else usual)


NAMES = mostly(st.sampled_from(sorted(INPUTS)), st.text(max_size=12), odds=9)
TOKENS = mostly(st.just(AUTH), st.sampled_from([{}, {"Authorization": "Bearer nope"}]) | st.builds(
    lambda value: {"Authorization": value}, HEADER_TEXT), odds=9)


@st.composite
def inference(draw) -> tuple[str, str, bytes, dict]:
    """An inference POST: a valid request for a served model with mostly one field changed (set to any JSON value,
    or removed), or any JSON or bytes; with a binary tail, right or wrong, and headers, mostly right."""
    name = draw(NAMES)
    version = draw(mostly(st.sampled_from([None, "1"]), st.just("2") | st.text(max_size=4), odds=9))
    path = f"/v2/models/{quote(name, safe='')}" + ("" if version is None else f"/versions/{quote(version, safe='')}")
    model = name if name in INPUTS else draw(st.sampled_from(sorted(INPUTS)))
    image = np.full((draw(st.integers(1, 3)), 28, 28, 1), draw(st.sampled_from([0.0, 0.5, 1.0, 3e38])), np.float32)
    tensor, tail = {"name": INPUTS[model], "shape": list(image.shape), "datatype": "FP32"}, b""
    if draw(st.booleans()):
        tensor["parameters"], tail = {"binary_data_size": image.nbytes}, image.tobytes()
    else:
        tensor["data"] = image.ravel().tolist()
    request = {"inputs": [tensor]}
    if model != "digits" and draw(st.booleans()):
        request["inputs"].append({"name": "target", "shape": [1], "datatype": "INT64", "data": [draw(st.integers(-2, 11))]})
    if draw(mostly(st.just(True), st.just(False), odds=3)):
        wanted = draw(st.lists(st.sampled_from(OUTPUTS[model]), min_size=1, max_size=3, unique=True))
        request["outputs"] = [{"name": n, "parameters": {"binary_data": draw(st.booleans())}} for n in wanted]
    if draw(st.booleans()):
        request["parameters"] = {"binary_data_output": draw(st.booleans())}
    for _ in range(draw(mostly(st.just(1), st.integers(0, 3), odds=2))):
        place = draw(st.sampled_from(list(_objects(request))))
        key = draw(mostly(st.sampled_from(sorted(place) or FIELDS), st.sampled_from(FIELDS) | st.text(max_size=6), odds=2))
        delete = draw(mostly(st.just(False), st.just(True)))
        if delete:
            place.pop(key, None)
        else:
            place[key] = draw(JSON | st.lists(JSON, max_size=3) | st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=3))
    body = draw(mostly(st.just("request"), st.sampled_from(["any JSON", "any bytes"]), odds=5))
    header = json.dumps(request if body == "request" else draw(JSON)).encode() if body != "any bytes" else b""
    tail = draw(mostly(st.just(tail), st.sampled_from([tail + b"\0", tail[:-1], b""]) | st.binary(max_size=64)))
    length = draw(mostly(st.just(str(len(header)) if tail else None),
                         st.sampled_from([None, str(len(header) + 1), "-1", "\u00b2", "1" * 5000]) | HEADER_TEXT, odds=2))
    headers = {**draw(TOKENS), **draw(mostly(st.just({}), st.dictionaries(
        st.sampled_from(["Content-Encoding", "Content-Type", "Accept"]), st.just("identity") | HEADER_TEXT, max_size=2)))}
    if length is not None:
        headers[HEADER_LENGTH] = length
    return "POST", f"{path}/infer", header + tail, headers


METADATA = st.tuples(
    st.sampled_from(["GET", "GET", "POST", "DELETE"]),
    st.sampled_from(["/v2/health/live", "/v2/health/ready", "/v2"])
    | st.builds(lambda name, suffix: f"/v2/models/{quote(name, safe='')}{suffix}", NAMES,
                st.sampled_from(["", "/ready", "/versions/1", "/versions/1/ready", "/versions/2", "/infer"])),
    st.none() | st.binary(max_size=32),
    TOKENS,
)


def _objects(value):
    """Every JSON object in ``value``, itself included."""
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from _objects(item)
    elif isinstance(value, list) and not (value and isinstance(value[0], float)):  # skip tensor data
        for item in value:
            yield from _objects(item)


def _reject_constant(name: str):
    raise AssertionError(f"the response holds {name}")


def check(method: str, path: str, status: int, content: bytes, headers: http.client.HTTPMessage) -> None:
    """No 5xx; a refusal is one line of {"error": "..."}; an inference answer carries only finite numbers."""
    assert status < 500, (method, path, status, content[:300])
    if status >= 400:
        assert b"\n" not in content, content
        error = json.loads(content)
        assert list(error) == ["error"] and isinstance(error["error"], str), content
    elif path.endswith("/infer"):
        size = int(headers.get(HEADER_LENGTH, len(content)))
        response, offset = json.loads(content[:size], parse_constant=_reject_constant), size
        for output in response["outputs"]:
            if "parameters" in output:
                blob_size = output["parameters"]["binary_data_size"]
                values = np.frombuffer(content[offset:offset + blob_size], DATATYPES[output["datatype"]])
                assert values.size == math.prod(output["shape"]) and np.isfinite(values).all(), output
                offset += blob_size
        assert offset == len(content)


def request(port: int, method: str, path: str, body: bytes | None, headers: dict):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)  # a hang fails the test
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read(), response.headers
    finally:
        connection.close()


def test_fuzzed_requests_never_get_a_5xx_and_leave_the_server_correct(server, model, digits_data):
    statuses = []

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(mostly(inference(), METADATA, odds=3))
    def fuzz(case):
        method, path, body, headers = case
        status, content, response_headers = request(server.port, method, path, body, headers)
        check(method, path, status, content, response_headers)
        statuses.append(status)

    started = time.monotonic()
    fuzz()
    elapsed = time.monotonic() - started
    assert len(statuses) >= EXAMPLES // 2 and {200, 400}.issubset(statuses), sorted(set(statuses))
    print(f"{len(statuses)} fuzzed requests in {elapsed:.1f} s; statuses: "
          f"{ {s: statuses.count(s) for s in sorted(set(statuses))} }")

    x, chosen = digits_data.x_test[:4], np.array([3, 1, 4, 1])
    for name in ("digits.gradcam", "digits.smoothgrad"):
        body = json.dumps({"inputs": [
            {"name": "image", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()},
            {"name": "target", "shape": [4], "datatype": "INT64", "data": chosen.tolist()}]}).encode()
        status, content, _ = request(server.port, "POST", f"/v2/models/{name}/infer", body, AUTH)
        assert status == 200, content
        heatmap = next(o for o in json.loads(content)["outputs"] if o["name"] == HEATMAP)
        expected = LIBRARY[name.split(".")[1]](model, x, chosen)
        np.testing.assert_allclose(np.reshape(heatmap["data"], heatmap["shape"]), expected, atol=TOLERANCE)
    status, content, _ = request(server.port, "POST", "/v2/models/digits/infer", json.dumps({"inputs": [
        {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}).encode(), AUTH)
    assert status == 200
    np.testing.assert_allclose(json.loads(content)["outputs"][0]["data"], model.predict(x).ravel(), atol=1e-6)
