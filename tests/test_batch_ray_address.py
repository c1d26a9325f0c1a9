"""Which Ray cluster ``batch --engine ray`` joins, and that one that does not answer is one line
within the connection timeout, not a silent wait of minutes."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from onnxsight.cli.app import app

ray = pytest.importorskip("ray")


@pytest.fixture()
def job(mnist_onnx, digits_data, tmp_path):
    assert not ray.is_initialized()  # else run_ray would use that session and never connect
    np.save(tmp_path / "x.npy", digits_data.x_test[:4])
    return ["batch", str(mnist_onnx), "--data", str(tmp_path / "x.npy"), "--engine", "ray", "-o", str(tmp_path / "out")]


def timed(args):
    began = time.perf_counter()
    result = CliRunner().invoke(app, args)
    return result, time.perf_counter() - began


def test_help_says_which_cluster_is_used():
    text = " ".join(CliRunner().invoke(app, ["batch", "--help"]).stdout.replace("│", " ").split())
    assert "default: RAY_ADDRESS if set, else a new local Ray instance" in text and "--connect-timeout" in text


def test_a_closed_port_is_one_line_at_once(job):
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result, seconds = timed([*job, "--address", f"127.0.0.1:{port}", "--connect-timeout", "5"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: cannot reach the Ray cluster at 127.0.0.1:{port} (from --address): [Errno 111] Connection refused")
    assert seconds < 5


def test_a_silent_ray_address_from_the_environment_fails_after_the_timeout(job, monkeypatch):
    with socket.socket() as server:  # a full accept queue: the next connection attempt gets no answer
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        queued = socket.create_connection(("127.0.0.1", port), 1)
        monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
        result, seconds = timed([*job, "--connect-timeout", "2"])
        queued.close()
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: cannot reach the Ray cluster at 127.0.0.1:{port} (from RAY_ADDRESS): no answer within 2 s")
    assert 2 <= seconds < 2 + 5  # the timeout, plus loading the model and checking the job
