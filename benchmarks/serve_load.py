"""Load test of ``onnxsight serve`` on loopback, with and without dynamic batching: concurrent tritonclient.http clients.

Starts two servers as subprocesses (as a user would: ``onnxsight serve model.onnx``, bearer token on),
one with ``--dynamic-batch 0`` and one with the default batching (or ``--dynamic-batch``/``--max-delay-us``),
then for each served model and each client count runs that many threads, each with its own client,
sending ``--requests`` single-image requests in all (binary tensors both ways, as Triton's perf_analyzer
sends them), after one client's warm-up pass; the two servers take turns on each (model, clients) cell,
so that other work on the machine weighs on both alike. Reports throughput, latency percentiles and errors as a table on stderr and JSON on stdout.
Default: the plain model and its saliency explainer at 1, 8 and 32 clients, 640 requests per cell.
Run: .venv/bin/python benchmarks/serve_load.py [--model model.onnx] [--served NAME ...] [--clients 1 --clients 8]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient

START_TIMEOUT = 120  # seconds for the server to load the models
REQUEST_TIMEOUT = 60.0
WARM_UP = 100  # requests of one client before each measurement (fewer left the first cell slow)
CLIENT_PROCESSES = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="ONNX classifier (default: the seed-000 CNN, untrained)")
    parser.add_argument("--clients", type=int, action="append", help="concurrent clients (repeatable; default 1, 8, 32)")
    parser.add_argument("--requests", type=int, default=640, help="requests per (model, clients) cell, all clients together")
    parser.add_argument("--workers", type=int, default=2, help="the servers' inference threads")
    parser.add_argument("--dynamic-batch", type=int, help="the batching server's --dynamic-batch (default: serve's)")
    parser.add_argument("--max-delay-us", type=int, help="the batching server's --max-delay-us (default: serve's)")
    parser.add_argument("--served", action="append", help="served model names to load (default: MODEL, MODEL.saliency)")
    args = parser.parse_args()
    client_counts = args.clients or [1, 8, 32]

    load_before = os.getloadavg()[0]  # other work on the machine shares its cores with the servers and clients
    with tempfile.TemporaryDirectory() as folder:
        path = args.model or _seed_model(Path(folder))
        served = args.served or [path.stem, f"{path.stem}.saliency"]
        methods = sorted({name.split(".", 1)[1] for name in served if "." in name})
        batching = [option for flag, value in (("--dynamic-batch", args.dynamic_batch), ("--max-delay-us", args.max_delay_us))
                    if value is not None for option in (flag, str(value))]
        token = secrets.token_hex(16)
        configurations = {"unbatched": ["--dynamic-batch", "0"], "batched": batching}
        servers = {label: _start(path, methods, options, token, args.workers, 4 * max(client_counts))
                   for label, options in configurations.items()}
        results = []
        try:
            for label, (server, port) in servers.items():
                _wait_ready(server, port)
            for name in served:
                for clients in client_counts:
                    for label, (_, port) in servers.items():  # interleaved: both see the same machine
                        results.append({"server": label, **_load(port, token, name, clients, max(1, args.requests // clients),
                                                                 servers[label][0].pid)})
                        print(_row(results[-1]), file=sys.stderr, flush=True)
        finally:
            for server, _ in servers.values():
                server.send_signal(signal.SIGTERM)
            for server, _ in servers.values():
                server.communicate(timeout=60)
    print(json.dumps({"cpus": os.cpu_count(), "load_average_1min_before": round(load_before, 2),
                      "load_average_1min_after": round(os.getloadavg()[0], 2), "server_workers": args.workers,
                      "batched_server_options": batching, "results": results}, indent=2))


def _start(path: Path, methods: list[str], options: list[str], token: str, workers: int, queue: int):
    """``onnxsight serve PATH`` with these options on a free port: the process and the port."""
    port = _free_port()
    command = [sys.executable, "-c", "from onnxsight.cli.app import main; main()", "serve", str(path),
               "--port", str(port), "--workers", str(workers), "--queue", str(queue), "--log-level", "warning",
               *(["--no-explainers"] if not methods else [option for m in methods for option in ("--method", m)]), *options]
    server = subprocess.Popen(command, env={**os.environ, "ONNXSIGHT_TOKEN": token}, stderr=subprocess.PIPE, text=True)
    return server, port


def _row(result: dict) -> str:
    return (f"{result['server']:>9}  {result['model']:<22} clients {result['clients']:>3}  "
            f"{result['throughput_rps']:>7.1f} req/s  p50 {result['p50_ms']:>8.1f} ms  p99 {result['p99_ms']:>8.1f} ms  "
            f"rows/run {result['rows_per_run']:>5.1f}  server CPU {result['server_cpu_ms_per_request']:>6.2f} ms/req  "
            f"errors {result['errors']}")


def _load(port: int, token: str, name: str, clients: int, requests: int, server_pid: int) -> dict:
    """``clients`` clients x ``requests`` single-image requests to ``name``, on up to CLIENT_PROCESSES processes (one
    Python process cannot drive 32 clients); latencies, errors, the server's session runs (from its statistics)
    and CPU time per request (a measure that other work on the machine does not skew as it does throughput)."""
    processes = min(clients, CLIENT_PROCESSES)
    _clients(port, token, name, 1, WARM_UP, time.time())  # sessions' first runs
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_started, range(processes)))
        before, cpu_before = _stats(port, token, name), _cpu_seconds(server_pid)
        start = time.time() + 0.2  # every process begins at once
        shares = [clients // processes + (k < clients % processes) for k in range(processes)]
        outcomes = list(pool.map(_clients, *zip(*[(port, token, name, share, requests, start) for share in shares])))
    seconds = max(end for _, _, end in outcomes) - start
    after, cpu = _stats(port, token, name), _cpu_seconds(server_pid) - cpu_before
    runs = after["execution_count"] - before["execution_count"]
    latencies = np.array([t for times, _, _ in outcomes for t in times]) * 1e3
    errors = [e for _, errs, _ in outcomes for e in errs]
    return {
        "model": name, "clients": clients, "requests": int(latencies.size), "errors": len(errors),
        "first_errors": errors[:3], "seconds": round(seconds, 3), "throughput_rps": round(latencies.size / seconds, 1),
        "p50_ms": round(float(np.percentile(latencies, 50)), 2), "p99_ms": round(float(np.percentile(latencies, 99)), 2),
        "mean_ms": round(float(latencies.mean()), 2), "session_runs": runs,
        "server_cpu_ms_per_request": round(cpu * 1e3 / latencies.size, 2),
        "rows_per_run": round((after["inference_count"] - before["inference_count"]) / max(runs, 1), 2),
    }


def _started(_) -> None:
    """Nothing: mapped once so that the client processes exist (and have imported) before the clock starts."""


def _clients(port: int, token: str, name: str, threads: int, requests: int, start: float):
    """In a client process: ``threads`` clients sending ``requests`` each from time ``start``; their latencies
    (seconds), errors, and the time the last one finished."""
    auth = {"Authorization": f"Bearer {token}"}
    metadata = httpclient.InferenceServerClient(f"127.0.0.1:{port}").get_model_metadata(name, headers=auth)
    input_name, shape = metadata["inputs"][0]["name"], metadata["inputs"][0]["shape"]
    image = np.random.default_rng(0).uniform(0, 1, (1, *shape[1:])).astype(np.float32)

    def client_loop(_) -> tuple[list[float], list[str]]:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}", connection_timeout=REQUEST_TIMEOUT,
                                                  network_timeout=REQUEST_TIMEOUT)
        tensor = httpclient.InferInput(input_name, list(image.shape), "FP32").set_data_from_numpy(image, binary_data=True)
        wanted = [httpclient.InferRequestedOutput(output["name"], binary_data=True) for output in metadata["outputs"]]
        latencies, errors = [], []
        time.sleep(max(0.0, start - time.time()))
        for _ in range(requests):
            began = time.perf_counter()
            try:
                result = client.infer(name, [tensor], outputs=wanted, headers=auth)
                if result.as_numpy(metadata["outputs"][0]["name"]) is None:
                    errors.append("missing output")
            except Exception as error:  # noqa: BLE001 - every failure counts as an error of the run
                errors.append(str(error)[:200])
            latencies.append(time.perf_counter() - began)
        client.close()
        return latencies, errors

    with ThreadPoolExecutor(threads) as pool:
        outcomes = list(pool.map(client_loop, range(threads)))
    return [t for times, _ in outcomes for t in times], [e for _, errs in outcomes for e in errs], time.time()


def _cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of process ``pid`` and all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stats(port: int, token: str, name: str) -> dict:
    """The server's statistics of ``name`` (Triton's statistics extension)."""
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        return client.get_inference_statistics(name, headers={"Authorization": f"Bearer {token}"})["model_stats"][0]
    finally:
        client.close()


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
