"""The served models and explainers in a real Triton Inference Server, through PyTriton (the 'triton' extra).

Each :class:`ServedModel` becomes a Triton model whose inference function runs its onnxsight session.
Where every tensor has a dynamic first dimension, Triton's dynamic batcher merges requests row-wise
(at most ``max_batch`` rows, waiting at most ``max_delay_us``), and every input is per row: an
explainer's optional ``target`` is one int64 per image, shape ``[rows, 1]`` as Triton has no empty
dims (so is ``target_class``), and a request without it explains each image's predicted class.
Other models are served unbatched, with their own shapes. What Triton lets through and onnxsight
refuses (a class out of range, a missing image) PyTriton answers as 500/INTERNAL, to every request
of that batch.

PyTriton 0.7's Python-backend stub embeds the interpreter through its shared ``libpython`` and reads
arrays through the numpy 1 ABI (under numpy 2 it answers empty tensors). The stub therefore loads
the running interpreter's own ``libpython`` and, where numpy 2 is installed, imports numpy 1 from
a small environment layered over this one (made once, with pip, in the user's cache).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import site
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np

from onnxsight.errors import InvalidArgument, MissingDependency, OnnxsightError
from onnxsight.serving.explainer import TARGET
from onnxsight.serving.protocol import DATATYPES, ProtocolError, TensorSpec
from onnxsight.serving.repository import ServedModel

STUB_NUMPY = "numpy>=1.21,<2"


@dataclass(frozen=True)
class Batching:
    """Triton's dynamic batcher: most rows per batch, longest wait for more, batch sizes it prefers."""

    max_batch: int = 32
    max_delay_us: int = 2000
    preferred: tuple[int, ...] = ()

    def __post_init__(self):
        if self.max_batch < 1 or self.max_delay_us < 0:
            raise InvalidArgument(f"max_batch must be >= 1 and max_delay_us >= 0, not {self.max_batch} and {self.max_delay_us}")
        for size in self.preferred:
            if not 1 <= size <= self.max_batch:
                raise InvalidArgument(f"preferred batch size {size} is not between 1 and max_batch {self.max_batch}")


@contextmanager
def running(models: dict[str, ServedModel], host: str = "127.0.0.1", http_port: int = 8000, grpc_port: int = 8001,
            batching: Batching = Batching()) -> Iterator[object]:
    """A started Triton serving ``models`` on ``host`` (HTTP and gRPC); stopped on exit. Yields the ``Triton``."""
    triton = _triton(host, http_port, grpc_port)
    try:
        for name, model in models.items():
            _bind(triton, name, model, batching)
        with _stub_environment():
            triton.run()
        yield triton
    finally:
        triton.stop()


def serve(models: dict[str, ServedModel], host: str = "127.0.0.1", http_port: int = 8000, grpc_port: int = 8001,
          batching: Batching = Batching()) -> None:
    """Serves ``models`` until SIGINT or SIGTERM, or until Triton dies; then stops Triton and its stubs."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with running(models, host, http_port, grpc_port, batching) as triton:
            while triton.is_alive() and not stop.wait(1.0):
                pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _triton(host: str, http_port: int, grpc_port: int):
    try:
        from pytriton.triton import Triton, TritonConfig
    except ImportError as error:
        raise MissingDependency("nvidia-pytriton", "triton") from error
    config = TritonConfig(http_address=host, http_port=http_port, grpc_address=host, grpc_port=grpc_port,
                          allow_metrics=False, exit_timeout_secs=5)
    return Triton(config=config)


def _bind(triton, name: str, model: ServedModel, batching: Batching) -> None:
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    rows = model.stackable  # every tensor has a dynamic batch axis: Triton may batch it
    inputs = [Tensor(name=s.name, dtype=DATATYPES[s.datatype], shape=_triton_shape(s, rows), optional=s.optional)
              for s in model.inputs]
    outputs = [Tensor(name=s.name, dtype=DATATYPES[s.datatype], shape=_triton_shape(s, rows)) for s in model.outputs]
    if rows:
        config = ModelConfig(max_batch_size=batching.max_batch, batcher=DynamicBatcher(
            max_queue_delay_microseconds=batching.max_delay_us, preferred_batch_size=list(batching.preferred) or None))
    else:
        config = ModelConfig(max_batch_size=0, batching=False)
    triton.bind(model_name=name, infer_func=_infer_function(model, rows), inputs=inputs, outputs=outputs, config=config)


def _triton_shape(spec: TensorSpec, rows: bool) -> tuple[int, ...]:
    """The dims Triton declares: without the batch dimension when batched; a per-row scalar as ``(1,)``."""
    if not rows:
        return spec.shape
    return spec.shape[1:] or (1,)


def _infer_function(model: ServedModel, rows: bool):
    """The inference callable for ``model``: one session run for all requests of a batch, split back per request."""
    output_names = [s.name for s in model.outputs]
    if not rows:
        return lambda requests: [_run(model, _required(model, dict(request.data)), output_names) for request in requests]
    scalars = {s.name for s in model.inputs + model.outputs if len(s.shape) == 1}  # sent and answered as (rows, 1)
    first = next(s.name for s in model.inputs if not s.optional)

    def infer(requests) -> list[dict[str, np.ndarray]]:
        feeds = [_required(model, {name: a.reshape(-1) if name in scalars else a for name, a in request.data.items()})
                 for request in requests]
        sizes = [len(feed[first]) for feed in feeds]
        if any(TARGET in feed for feed in feeds):
            for feed, size in zip(feeds, sizes):
                feed.setdefault(TARGET, np.full(size, -1, np.int64))  # a request without targets: predicted classes
        merged = {name: np.concatenate([feed[name] for feed in feeds]) for name in feeds[0]}
        results = _run(model, merged, output_names)
        results = {name: a.reshape(-1, 1) if name in scalars else a for name, a in results.items()}
        bounds = np.cumsum(sizes)[:-1]
        return [dict(zip(output_names, parts)) for parts in zip(*(np.split(results[n], bounds) for n in output_names))]

    return infer


def _required(model: ServedModel, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``feed`` if it has every required input (Triton counts a request's inputs, but does not check which)."""
    from pytriton.exceptions import PyTritonValidationError

    for spec in model.inputs:
        if not spec.optional and spec.name not in feed:
            raise PyTritonValidationError(f"missing input {spec.name!r} for model {model.name!r}")
    return feed


def _run(model: ServedModel, feed: dict[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
    from pytriton.exceptions import PyTritonValidationError

    try:
        model.check(feed)
        return model.run(feed, output_names)
    except (ProtocolError, OnnxsightError) as error:
        raise PyTritonValidationError(str(error)) from None


@contextmanager
def _stub_environment() -> Iterator[None]:
    """While Triton starts: its Python-backend stubs load this interpreter's libpython and, under numpy 2, numpy 1."""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        raise OnnxsightError(f"the triton engine needs a Python built with a shared libpython; {sys.executable} is not")
    library_dir = sysconfig.get_config_var("LIBDIR")
    path = os.environ.get("LD_LIBRARY_PATH")
    with mock.patch.dict(os.environ, {"LD_LIBRARY_PATH": f"{library_dir}:{path}" if path else library_dir}):
        if int(np.__version__.split(".")[0]) < 2:
            yield
            return
        from pytriton.server import triton_server

        layered = _numpy1_environment()
        with mock.patch.object(triton_server, "get_triton_python_backend_python_env", lambda: layered):
            yield


def _numpy1_environment() -> Path:
    """A virtual environment holding numpy 1 and, after it, this environment's packages; made once."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "onnxsight"
    key = hashlib.sha256(sys.prefix.encode()).hexdigest()[:12]
    root = cache / f"pytriton-stub-{sys.implementation.cache_tag}-{key}"
    if root.is_dir():
        return root
    building = cache / f"{root.name}.{os.getpid()}"
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    packages = building / "lib" / version / "site-packages"
    packages.mkdir(parents=True)
    (building / "bin").mkdir()
    for name in ("python", "python3", version):
        (building / "bin" / name).symlink_to(Path(sys._base_executable))
    (building / "pyvenv.cfg").write_text(f"home = {Path(sys._base_executable).parent}\ninclude-system-site-packages = false\n"
                                         f"version = {'.'.join(map(str, sys.version_info[:3]))}\n")
    (packages / "onnxsight-environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(packages),
                                STUB_NUMPY], capture_output=True, text=True)
    if installed.returncode != 0:
        shutil.rmtree(building, ignore_errors=True)
        reason = (installed.stderr.strip() or "pip failed").splitlines()[-1]
        raise OnnxsightError(f"could not install {STUB_NUMPY!r} for PyTriton's stub into {packages}: {reason}")
    try:
        building.rename(root)
    except OSError:  # another process made it first
        shutil.rmtree(building, ignore_errors=True)
    return root
