"""An Open Inference Protocol (KServe v2) REST server for models and their explainers (FastAPI + uvicorn).

Safe by default: the CLI binds to loopback; an optional bearer token guards everything but the
health probes (compared in constant time); requests are validated strictly (400, 404, 422) with
one-line ``{"error": "..."}`` bodies as the protocol asks; inference runs on a fixed pool of worker
threads behind a bounded queue (503 when full, never a crash). Request bodies are bounded before
they are read: each in size (413), all those held at once in bytes (503: being received, queued
or in inference), and in the time a client may take to send one (408, and the connection is
closed). Requests for the same model that arrive close together are stacked into one run by the
dynamic batcher (``serving.batching``); ``GET /v2/models[/NAME]/stats`` reports the runs, as Triton's
statistics extension does. On SIGINT/SIGTERM, requests not yet started are answered 503 while running
ones finish.
An unexpected failure is logged on the server and answered with a bare 500, never a traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass


from onnxsight import __version__
from onnxsight.errors import InvalidArgument, MissingDependency, OnnxsightError
from onnxsight.serving.batching import Batcher, ModelStats
from onnxsight.serving.protocol import HEADER_LENGTH, Limits, ProtocolError, encode_response, parse_request
from onnxsight.serving.repository import VERSION, ServedModel

try:  # the ``serve`` extra; this module is imported only where a server is started
    import uvicorn
    from fastapi import Depends, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect
except ImportError as missing:
    raise MissingDependency(missing.name or "fastapi", "serve") from missing

log = logging.getLogger("onnxsight.serve")
EXTENSIONS = ["binary_tensor_data"]
SHUTTING_DOWN = "server is shutting down; retry on another instance"
# Requests and answers with this little JSON and data are parsed and encoded on the event loop (a thread hop costs
# more); JSON costs about 2.5 microseconds a value, so a heat map in JSON goes to a worker thread.
INLINE_JSON_BYTES, INLINE_VALUES, INLINE_BYTES = 2048, 256, 64 * 2**10


@dataclass(frozen=True)
class Settings:
    """Server limits: ``token`` (None: no auth), body size in bytes, rows per request, worker threads,
    requests that may wait for a worker before the server answers 503, bytes of request bodies held
    at once (being received, queued or in inference; 503 above), and seconds to receive a body (408)."""

    token: str | None = None
    max_body_bytes: int = 16 * 2**20
    max_batch: int = 64
    workers: int = 2
    queue: int = 64
    max_pending_bytes: int = 64 * 2**20
    body_timeout: float = 30.0

    def __post_init__(self):
        for name in ("max_body_bytes", "max_batch", "workers"):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.queue < 0:
            raise InvalidArgument(f"queue must be at least 0, got {self.queue}")
        if self.max_pending_bytes < self.max_body_bytes:
            raise InvalidArgument(f"max_pending_bytes ({self.max_pending_bytes}) must be at least max_body_bytes "
                                  f"({self.max_body_bytes}), or no body of the largest size would be taken")
        if not self.body_timeout > 0:
            raise InvalidArgument(f"body_timeout must be positive, got {self.body_timeout}")
        if self.token is not None and not self.token.strip():
            raise InvalidArgument("the bearer token is empty")


class Runner:
    """Runs blocking calls on ``workers`` threads; at most ``workers + queue`` calls at once, then 503.
    Once closed (shutdown has begun), calls not yet started and new ones are answered 503."""

    def __init__(self, workers: int, queue: int):
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="onnxsight-infer")
        self.workers = workers
        self._capacity = workers + queue
        self._pending = 0  # touched only on the event loop's thread, as are the two below
        self._queued: set = set()  # calls (not finish) submitted and not yet answered
        self._closed = False

    def admit(self) -> None:
        """503 unless a call could run or queue now."""
        if self._closed:
            raise ProtocolError(503, SHUTTING_DOWN)
        if self._pending >= self._capacity:
            raise ProtocolError(503, f"server busy: {self._pending} requests in progress or queued; retry later")

    @contextmanager
    def slot(self):
        """Holds one of the ``workers + queue`` places for a request's calls (503 when none is free)."""
        self.admit()
        self._pending += 1
        try:
            yield
        finally:
            self._pending -= 1

    async def call(self, function: Callable, *args):
        """``function(*args)`` on a worker thread, for a request that holds a slot; 503 once closed, or if closed
        before it starts."""
        if self._closed:
            raise ProtocolError(503, SHUTTING_DOWN)
        job = self._pool.submit(function, *args)
        self._queued.add(job)
        try:
            return await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            if self._closed and job.cancelled():  # close() took it off the queue before it started
                raise ProtocolError(503, SHUTTING_DOWN) from None
            raise
        finally:
            self._queued.discard(job)

    async def finish(self, function: Callable, *args):
        """As ``call``, but never refused: the last step of a request whose inference has run."""
        return await asyncio.wrap_future(self._pool.submit(function, *args))

    async def run(self, function: Callable, *args):
        with self.slot():
            return await self.call(function, *args)

    def close(self) -> None:
        """Cancels the queued calls (their callers get 503) and refuses new ones; running calls go on."""
        self._closed = True
        for job in list(self._queued):
            job.cancel()  # refused by those already running

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)


class BodyBudget:
    """Bytes of request bodies held at once, from the first byte received to the response; 503 above ``limit``."""

    def __init__(self, limit: int):
        self.limit = limit
        self.held = 0  # touched only on the event loop's thread

    @contextmanager
    def lease(self):
        """``take(size)``: hold ``size`` more bytes for this request (503 if over the budget); all given back on exit."""
        taken = 0

        def take(size: int) -> None:
            nonlocal taken
            if self.held + size > self.limit:
                raise ProtocolError(503, f"server busy: {self.held} bytes of request bodies in progress (limit "
                                         f"{self.limit}); retry later")
            self.held += size
            taken += size

        try:
            yield take
        finally:
            self.held -= taken


def check_bearer(authorization: str, token: str | None) -> None:
    """401 unless ``authorization`` is ``Bearer <token>`` (compared in constant time); anything goes without a token."""
    if token is None:
        return
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() != "bearer" or not credentials:
        raise ProtocolError(401, "missing bearer token: send 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(credentials.strip().encode(), token.encode()):
        raise ProtocolError(401, "invalid bearer token")


def find_model(models: dict[str, ServedModel], name: str, version: str | None) -> ServedModel:
    """The model served as ``name`` (any version when ``version`` is None); 404 naming the known ones otherwise."""
    if name not in models:
        raise ProtocolError(404, f"unknown model {name!r}; this server has: {', '.join(models)}")
    if version is not None and version != VERSION:
        raise ProtocolError(404, f"model {name!r} has no version {version!r}; versions: {VERSION}")
    return models[name]


def create_app(models: dict[str, ServedModel], settings: Settings = Settings()) -> FastAPI:
    """The FastAPI application serving ``models`` (by name) under the KServe v2 REST paths."""
    runner, budget = Runner(settings.workers, settings.queue), BodyBudget(settings.max_pending_bytes)
    batcher, limits = Batcher(runner), Limits(max_batch=settings.max_batch)

    @asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.to_thread(runner.shutdown)  # uvicorn has stopped taking requests; finish the running ones

    app = FastAPI(title="onnxsight", version=__version__, docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.state.runner = runner  # for run(): it closes the runner when shutdown begins
    app.state.budget = budget  # shared with the gRPC front end
    app.state.batcher = batcher  # the entry point of every front end: ``await batcher.infer(served, inputs, outputs)``

    def authorize(request: Request) -> None:
        check_bearer(request.headers.get("authorization", ""), settings.token)

    def lookup(name: str, version: str | None) -> ServedModel:
        return find_model(models, name, version)

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(ProtocolError)
    async def protocol_error(request: Request, exc: ProtocolError):
        headers = {401: {"WWW-Authenticate": "Bearer"}, 408: {"Connection": "close"}, 503: {"Retry-After": "1"}}
        return error(exc.status, str(exc), headers.get(exc.status))

    @app.exception_handler(OnnxsightError)
    async def user_error(request: Request, exc: OnnxsightError):
        return error(400, str(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return error(400, "invalid request parameters")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error(500, "internal server error")

    @app.get("/v2/health/live")
    async def live():
        return Response(status_code=200)

    @app.get("/v2/health/ready")
    async def ready():
        return Response(status_code=200)

    guarded = [Depends(authorize)]

    @app.get("/v2", dependencies=guarded)
    async def server_metadata():
        return {"name": "onnxsight", "version": __version__, "extensions": EXTENSIONS}

    @app.get("/v2/models/stats", dependencies=guarded)
    @app.get("/v2/models/{name}/stats", dependencies=guarded)
    @app.get("/v2/models/{name}/versions/{version}/stats", dependencies=guarded)
    async def model_stats(name: str | None = None, version: str | None = None):
        names = list(models) if name is None else [lookup(name, version).name]
        return {"model_stats": [batcher.stats.get(n, ModelStats()).report(n, VERSION) for n in names]}

    @app.get("/v2/models/{name}", dependencies=guarded)
    @app.get("/v2/models/{name}/versions/{version}", dependencies=guarded)
    async def model_metadata(name: str, version: str | None = None):
        return lookup(name, version).metadata()

    @app.get("/v2/models/{name}/ready", dependencies=guarded)
    @app.get("/v2/models/{name}/versions/{version}/ready", dependencies=guarded)
    async def model_ready(name: str, version: str | None = None):
        lookup(name, version)
        return Response(status_code=200)

    @app.post("/v2/models/{name}/infer", dependencies=guarded)
    @app.post("/v2/models/{name}/versions/{version}/infer", dependencies=guarded)
    async def infer(request: Request, name: str, version: str | None = None):
        served = lookup(name, version)
        encoding = request.headers.get("content-encoding", "identity").lower()
        if encoding != "identity":
            raise ProtocolError(415, f"Content-Encoding {encoding!r} is not supported; send the body uncompressed")
        declared = _declared_length(request, settings.max_body_bytes)
        runner.admit()  # before the body is read, not after
        with budget.lease() as take:
            body = await _read_body(request, declared, settings, take)
            header_length = request.headers.get(HEADER_LENGTH)

            def validate():
                parsed = parse_request(body, header_length, served.inputs, served.outputs, limits)
                served.check(parsed.inputs)  # before the request joins a batch: its errors are its own
                return parsed

            with runner.slot():
                parsed = validate() if _small_request(body, header_length) else await runner.call(validate)
                results = await batcher.infer(served, parsed.inputs, list(parsed.outputs))
                answer = (served.name, VERSION, parsed.id, results, parsed.outputs)
                if _small_answer(results, parsed.outputs):
                    content, headers = encode_response(*answer)
                else:
                    content, headers = await runner.finish(encode_response, *answer)
        return Response(content, headers=headers)

    return app


def _small_request(body: bytes, header_length: str | None) -> bool:
    """Whether the body is small with little JSON (a malformed header length goes to a thread, to be refused there)."""
    if len(body) > INLINE_BYTES:
        return False
    if header_length is None:
        return len(body) <= INLINE_JSON_BYTES
    return re.fullmatch(r"[0-9]{1,5}", header_length) is not None and int(header_length) <= INLINE_JSON_BYTES


def _small_answer(results: dict, binary: dict[str, bool]) -> bool:
    values = sum(array.size for name, array in results.items() if not binary.get(name, False))
    return values <= INLINE_VALUES and sum(array.nbytes for array in results.values()) <= INLINE_BYTES


def _too_large(limit: int) -> ProtocolError:
    return ProtocolError(413, f"request body exceeds this server's limit of {limit} bytes")


def _declared_length(request, limit: int) -> int | None:
    """The body's Content-Length (None for a chunked body; uvicorn's HTTP parser has refused a malformed one);
    413 above ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None and int(declared) > limit:
        raise _too_large(limit)
    return None if declared is None else int(declared)


async def _read_body(request, declared: int | None, settings: Settings, take: Callable[[int], None]) -> bytes:
    """The request body, held against the budget with ``take`` (all of a declared length up front, a chunked
    body as it arrives); 413 as soon as it exceeds the size limit, 408 if it takes longer than the timeout."""
    if declared is not None:
        take(declared)

    async def receive() -> bytes:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > settings.max_body_bytes:
                raise _too_large(settings.max_body_bytes)
            if declared is None:
                take(len(chunk))
        return bytes(body)

    try:
        return await asyncio.wait_for(receive(), settings.body_timeout)
    except asyncio.TimeoutError:
        raise ProtocolError(408, f"the request body took longer than {settings.body_timeout:g} s to arrive") from None
    except ClientDisconnect:
        raise ProtocolError(400, "the client disconnected before sending the whole body") from None


class _Server(uvicorn.Server):
    """uvicorn that closes the app's runner as shutdown begins: queued requests get 503, running ones finish.
    ``grpc`` (a ``grpc_server.GrpcServer`` on the same runner), if any, starts first and stops alongside."""

    def __init__(self, config: uvicorn.Config, runner: Runner, grpc=None):
        super().__init__(config)
        self._runner = runner
        self._grpc = grpc

    async def startup(self, sockets=None):
        if self._grpc is not None:
            await self._grpc.start()
        await super().startup(sockets)

    async def shutdown(self, sockets=None):
        self._runner.close()
        grpc = [] if self._grpc is None else [self._grpc.stop(self.config.timeout_graceful_shutdown)]
        await asyncio.gather(super().shutdown(sockets), *grpc)


def run(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", graceful_seconds: int = 10,
        grpc=None) -> None:
    """Serves ``app`` with uvicorn (and ``grpc``, a ``grpc_server.GrpcServer``, on the same event loop) until
    SIGINT/SIGTERM; then requests not yet started get 503 and the running ones have ``graceful_seconds`` to
    finish (graceful shutdown)."""
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, server_header=False,
                            timeout_graceful_shutdown=graceful_seconds)
    try:
        _Server(config, app.state.runner, grpc).run()  # exits with uvicorn's status 3 if it cannot bind
    except KeyboardInterrupt:  # uvicorn re-raises SIGINT once it has shut down
        pass
