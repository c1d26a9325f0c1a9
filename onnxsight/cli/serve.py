"""``export`` and ``serve``: explainer ONNX files (and Triton entries), and an Open Inference Protocol server."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Optional

import onnx
import typer
from rich.table import Table

from onnxsight.cli.options import Device, Force, HeadOpt, ModelArg, err, out
from onnxsight.data.files import atomic_open, refuse_overwrite
from onnxsight.engine.model import load
from onnxsight.errors import InvalidArgument
from onnxsight.kernels.attribution import QUADRATURES, choice
from onnxsight.serving.explainer import ALL_METHODS, IG_BASELINES, METHODS, NAMED_METHODS, TARGET, export_explainer

Layer = Annotated[Optional[str], typer.Option("--layer", "-l", help="CAM layer (gradcam, its variants and guided-gradcam); default: the last spatial layer.")]
Samples = Annotated[int, typer.Option(min=1, help="smoothgrad: noisy copies per image.")]
Noise = Annotated[float, typer.Option(min=0, help="smoothgrad: noise std as a fraction of each image's value range.")]
Seed = Annotated[int, typer.Option(help="smoothgrad: seed of the noise baked into the graph.")]
ENGINES = ("onnxsight", "triton")
TRITON_GRPC_PORT = 8001


def export(
    model: ModelArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="The explainer ONNX file to write.")],
    method: Annotated[str, typer.Option(help=f"Attribution method: {', '.join(ALL_METHODS)}.")] = "gradcam",
    layer: Layer = None,
    samples: Samples = 20,
    noise: Noise = 0.15,
    seed: Seed = 0,
    steps: Annotated[int, typer.Option(min=1, help="ig: path points.")] = 50,
    baseline: Annotated[str, typer.Option(help="ig: black, grey or a number.")] = "black",
    quadrature: Annotated[str, typer.Option(help=f"ig: {', '.join(QUADRATURES)}.")] = "riemann_trapezoid",
    window: Annotated[Optional[int], typer.Option(min=1, help="occlusion: window side in pixels; default 1/14 of "
                                                              "the shorter image side, at least 4.")] = None,
    stride: Annotated[Optional[int], typer.Option(min=1, help="occlusion: stride in pixels; default half the window.")] = None,
    fill: Annotated[str, typer.Option(help="occlusion: what a window shows, a number or 'mean' (per image and channel).")] = "0",
    triton: Annotated[Optional[Path], typer.Option(help="Also write a Triton model repository entry into this folder.")] = None,
    force: Force = False,
    head: HeadOpt = None,
) -> None:
    """Write an explainer: one ONNX model returning probabilities, the explained class and a heat map.

    Inputs: image (any batch) and optional target (int64 per image, or one for all; default: the
    predicted class); a model's other inputs keep their names. Outputs: probabilities (of --head),
    target_class, heatmap (input size, normalised to [0, 1]).
    """
    from onnxsight.serving.triton import write_triton_entry

    choice("--quadrature", quadrature, QUADRATURES)
    refuse_overwrite(output, force)
    proto = export_explainer(load(model, device="cpu").with_output(head), method, layer=layer, samples=samples, noise=noise,
                             seed=seed, steps=steps, baseline=_name_or_number(baseline, IG_BASELINES, "--baseline"),
                             quadrature=quadrature, window=window, stride=stride, fill=_name_or_number(fill, ("mean",), "--fill"))
    folder = None if triton is None else write_triton_entry(proto, triton, output.stem, optional=[TARGET], force=force)
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(output) as handle:
        handle.write(proto.SerializeToString())
    table = Table(title=f"{output}: {method} explainer of {model.name}")
    for column in ("Kind", "Name", "Type", "Shape"):
        table.add_column(column)
    for kind, values in (("input", proto.graph.input), ("output", proto.graph.output)):
        for value in values:
            dims = [d.dim_param or str(d.dim_value) for d in value.type.tensor_type.shape.dim]
            optional = " (optional)" if value.name == TARGET and kind == "input" else ""
            table.add_row(kind, value.name + optional, _type_name(value.type.tensor_type.elem_type), f"({', '.join(dims)})")
    out.print(table)
    if folder is not None:
        out.print(f"wrote Triton model repository entry {folder}")


def serve(
    path: Annotated[Path, typer.Argument(help="An ONNX model, or a folder of .onnx models.", show_default=False)],
    host: Annotated[str, typer.Option(help="Address to bind; the default is loopback only.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    grpc_port: Annotated[Optional[int], typer.Option(min=1, max=65535, help="Also serve the KServe v2 gRPC protocol "
                                                     "on this port (Triton's is 8001), same host; needs the 'grpc' extra "
                                                     "(--engine triton: always on, 8001 by default).")] = None,
    token: Annotated[Optional[str], typer.Option(envvar="ONNXSIGHT_TOKEN", show_envvar=True,
                                                 help="Require 'Authorization: Bearer TOKEN' (all but health probes).")] = None,
    method: Annotated[Optional[list[str]], typer.Option(help=f"Explainer variants to serve (repeatable); default: {', '.join(METHODS)}; also "
                                                               f"{', '.join(NAMED_METHODS)}.")] = None,
    no_explainers: Annotated[bool, typer.Option("--no-explainers", help="Serve the models only.")] = False,
    layer: Layer = None,
    samples: Samples = 20,
    noise: Noise = 0.15,
    seed: Seed = 0,
    max_body_mb: Annotated[float, typer.Option(min=0.001, help="Largest request body, in MiB (413 above).")] = 16.0,
    max_pending_mb: Annotated[float, typer.Option(min=0.001, help="Request bodies held at once (being received, queued "
                                                                  "or in inference), in MiB (503 above).")] = 64.0,
    body_timeout: Annotated[float, typer.Option(min=0.001, help="Seconds a client may take to send a request body "
                                                               "(408 after).")] = 30.0,
    max_batch: Annotated[int, typer.Option(min=1, help="Most images per request (400 above).")] = 64,
    dynamic_batch: Annotated[int, typer.Option(min=0, help="onnxsight engine: most rows stacked into one run from requests "
                                                           "arriving together (0 or 1: no dynamic batching); "
                                                           "batching.json next to the models sets it per model.")] = 32,
    workers: Annotated[int, typer.Option(min=1, help="Inference threads.")] = 2,
    queue: Annotated[int, typer.Option(min=0, help="Requests that may wait for a thread (503 above).")] = 64,
    device: Device = "cpu",
    log_level: Annotated[str, typer.Option(help="uvicorn log level: critical, error, warning, info, debug.")] = "info",
    engine: Annotated[str, typer.Option(help="onnxsight (the built-in FastAPI server) or triton (a Triton Inference Server "
                                             "through PyTriton; needs the 'triton' extra).")] = "onnxsight",
    max_delay_us: Annotated[Optional[int], typer.Option(min=0, help="Longest wait, in microseconds, for more requests to "
                                                                    "batch (rows up to --dynamic-batch; triton: --max-batch); "
                                                                    "default: onnxsight 0 (requests still stack while the "
                                                                    "workers are busy), triton 2000.")] = None,
    preferred_batch: Annotated[Optional[list[int]], typer.Option(min=1, help="Batch sizes the batcher aims for "
                                                                            "(repeatable).")] = None,
) -> None:
    """Serve models and their explainers over the Open Inference Protocol (KServe v2 REST; gRPC too with --grpc-port).

    Each FILE.onnx is served as FILE and, per explainer method, as FILE.METHOD (e.g. mnist_cnn.gradcam);
    an explainer file written by `onnxsight export` is served as it is. Requests for one model that arrive
    together are stacked into one run (dynamic batching). Needs the 'serve' extra
    (--engine triton: the 'triton' extra; Triton batches requests, so an explainer's target is one per image,
    shape [N, 1]; it takes --host, --port, --grpc-port, --max-batch, --max-delay-us, --preferred-batch and the
    model options; --token, --dynamic-batch and the request-body, worker, queue and log options are the built-in
    server's).
    """
    from onnxsight.serving.batching import BatchPolicy
    from onnxsight.serving.repository import load_models
    from onnxsight.serving.server import Settings, create_app, run

    if engine not in ENGINES:
        raise InvalidArgument(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
    if engine == "triton" and token is not None:
        raise InvalidArgument("the triton engine does not check tokens; serve it on loopback or behind a proxy that does")
    if grpc_port is not None and grpc_port == port:
        raise InvalidArgument(f"--grpc-port and --port are both {port}; give them different ports")
    if grpc_port is not None and engine == "onnxsight":
        from onnxsight.serving.grpc_server import GrpcServer  # before the models load: a missing extra fails fast
    delay = {"onnxsight": 0, "triton": 2000}[engine] if max_delay_us is None else max_delay_us
    batching = _triton_batching(max_batch, delay, preferred_batch) if engine == "triton" else None
    policy = BatchPolicy(dynamic_batch, delay, tuple(preferred_batch or ())) if engine == "onnxsight" else BatchPolicy(0)
    settings = Settings(token=token, max_body_bytes=int(max_body_mb * 2**20), max_batch=max_batch, workers=workers,
                        queue=queue, max_pending_bytes=int(max_pending_mb * 2**20), body_timeout=body_timeout)
    methods = [] if no_explainers else (method or list(METHODS))
    models = load_models(path, methods, layer=layer, device=device, samples=samples, noise=noise, seed=seed,
                         batching=policy)
    if engine == "triton":
        _serve_triton(models, host, port, grpc_port or TRITON_GRPC_PORT, batching)
        return
    app = create_app(models, settings)
    grpc = None if grpc_port is None else GrpcServer(models, settings, app.state, host, grpc_port)
    if token is None and not _loopback(host):
        err.print(f"[bold yellow]warning:[/] serving on {host} without a token: anyone who reaches it can use the models")
    err.print(f"serving {len(models)} models on http://{host}:{port}/v2: {', '.join(models)}")
    if grpc is not None:
        err.print(f"serving them over gRPC on {grpc.address}")
    run(app, host, port, log_level=log_level, grpc=grpc)


def _triton_batching(max_batch: int, max_delay_us: int, preferred_batch: Optional[list[int]]):
    from onnxsight.serving.pytriton_engine import Batching

    return Batching(max_batch, max_delay_us, tuple(preferred_batch or ()))


def _serve_triton(models, host: str, port: int, grpc_port: int, batching) -> None:
    from onnxsight.serving.pytriton_engine import serve as serve_triton

    if not _loopback(host):
        err.print(f"[bold yellow]warning:[/] serving on {host} without a token: anyone who reaches it can use the models")
    err.print(f"serving {len(models)} models in Triton on http://{host}:{port}/v2 and grpc {host}:{grpc_port}: {', '.join(models)}")
    serve_triton(models, host, port, grpc_port, batching)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _name_or_number(text: str, names: tuple[str, ...], option: str) -> str | float:
    """``text`` if it is one of ``names``, else the number it spells, or InvalidArgument."""
    if text in names:
        return text
    try:
        return float(text)
    except ValueError:
        raise InvalidArgument(f"{option} must be {', '.join(names)} or a number, got {text!r}") from None


def _type_name(elem_type: int) -> str:
    return onnx.TensorProto.DataType.Name(elem_type).lower()
