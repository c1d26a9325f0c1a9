"""Load test of ``onnxsight serve`` on loopback: concurrent tritonclient.http clients, bounded in count.

Starts the server as a subprocess (as a user would: ``onnxsight serve model.onnx``, bearer token
on), then for each served model runs ``--clients`` threads, each with its own client sending
``--requests`` inference requests of one image (binary tensors), after one client's warm-up pass,
and reports throughput, latency percentiles and errors as JSON. Default: 8 clients x 200 requests
on the plain model and on its Grad-CAM and SmoothGrad (20 samples) explainers. Run: .venv/bin/python benchmarks/serve_load.py [--model model.onnx]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient

START_TIMEOUT = 120  # seconds for the server to load the models
REQUEST_TIMEOUT = 60.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="ONNX classifier (default: the seed-000 CNN, untrained)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200, help="requests per client")
    parser.add_argument("--workers", type=int, default=2, help="the server's inference threads")
    parser.add_argument("--served", action="append",
                        help="served model names to load (default: MODEL, MODEL.gradcam, MODEL.smoothgrad)")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]  # other work on the machine shares its cores with the server and clients
    with tempfile.TemporaryDirectory() as folder:
        path = args.model or _seed_model(Path(folder))
        served = args.served or [path.stem, f"{path.stem}.gradcam", f"{path.stem}.smoothgrad"]
        token, port = secrets.token_hex(16), _free_port()
        command = [sys.executable, "-c", "from onnxsight.cli.app import main; main()", "serve", str(path),
                   "--port", str(port), "--workers", str(args.workers),
                   "--queue", str(4 * args.clients), "--log-level", "warning"]
        server = subprocess.Popen(command, env={**os.environ, "ONNXSIGHT_TOKEN": token}, stderr=subprocess.PIPE, text=True)
        try:
            _wait_ready(server, port)
            results = [_load(port, token, name, args.clients, args.requests) for name in served]
        finally:
            server.send_signal(signal.SIGTERM)
            server.communicate(timeout=60)
    print(json.dumps({"cpus": os.cpu_count(), "load_average_1min_before": round(load_before, 2), "server_workers": args.workers,
                      "results": results}, indent=2))


def _load(port: int, token: str, name: str, clients: int, requests: int) -> dict:
    """``clients`` threads x ``requests`` single-image requests to ``name``; latencies and errors."""
    image = np.random.default_rng(0).uniform(0, 1, (1, 28, 28, 1)).astype(np.float32)
    metadata = httpclient.InferenceServerClient(f"127.0.0.1:{port}").get_model_metadata(
        name, headers={"Authorization": f"Bearer {token}"})
    input_name = metadata["inputs"][0]["name"]

    def client_loop(_) -> tuple[list[float], list[str]]:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}", connection_timeout=REQUEST_TIMEOUT,
                                                  network_timeout=REQUEST_TIMEOUT)
        tensor = httpclient.InferInput(input_name, list(image.shape), "FP32").set_data_from_numpy(image, binary_data=True)
        latencies, errors = [], []
        for _ in range(requests):
            start = time.perf_counter()
            try:
                result = client.infer(name, [tensor], headers={"Authorization": f"Bearer {token}"})
                if result.as_numpy(metadata["outputs"][0]["name"]) is None:
                    errors.append("missing output")
            except Exception as error:  # noqa: BLE001 - every failure counts as an error of the run
                errors.append(str(error)[:200])
            latencies.append(time.perf_counter() - start)
        client.close()
        return latencies, errors

    with ThreadPoolExecutor(clients) as pool:
        client_loop(0)  # warm-up: sessions' first runs, connections
        start = time.perf_counter()
        outcomes = list(pool.map(client_loop, range(clients)))
    seconds = time.perf_counter() - start
    latencies = np.array([t for times, _ in outcomes for t in times]) * 1e3
    errors = [e for _, errs in outcomes for e in errs]
    return {
        "model": name, "clients": clients, "requests": int(latencies.size), "errors": len(errors),
        "first_errors": errors[:3], "seconds": round(seconds, 3), "throughput_rps": round(latencies.size / seconds, 1),
        "p50_ms": round(float(np.percentile(latencies, 50)), 2), "p99_ms": round(float(np.percentile(latencies, 99)), 2),
        "mean_ms": round(float(latencies.mean()), 2),
    }


def _seed_model(folder: Path) -> Path:
    import onnxsight
    from onnxsight.demo.architectures import mnist_cnn

    return Path(onnxsight.convert_keras(mnist_cnn(), folder / "mnist_cnn.onnx"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_ready(server: subprocess.Popen, port: int) -> None:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited: {server.stderr.read()}")
        try:
            if client.is_server_ready():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not become ready in time")


if __name__ == "__main__":
    main()
