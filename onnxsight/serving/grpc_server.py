"""The Open Inference Protocol (KServe v2) over gRPC: Triton's ``GRPCInferenceService``, as ``tritonclient.grpc`` speaks it.

It runs on the HTTP server's event loop and shares its models, worker threads, queue and body budget:
one pool answers both front ends. Requests are checked as HTTP ones are (``protocol.decode_inputs``,
``ServedModel.check``), whether tensors come as ``raw_input_contents`` or typed ``contents``; answers
carry ``raw_output_contents``. A token is sent as ``authorization: Bearer <token>`` metadata and guards
all but ServerLive and ServerReady. Refusals are status codes with the HTTP server's one-line messages:
INVALID_ARGUMENT (a bad request, or an output holding NaN or Inf), UNAUTHENTICATED, NOT_FOUND,
UNAVAILABLE (queue full, body budget spent, shutting down: retry), RESOURCE_EXHAUSTED (a message over
the body limit, refused by gRPC before it is read), INTERNAL (logged here, no detail sent); Triton's
other methods (streaming, statistics, repository, shared memory, trace, logging) answer UNIMPLEMENTED.
"""

from __future__ import annotations

import functools
import logging

import numpy as np

from onnxsight import __version__
from onnxsight.errors import InvalidArgument, MissingDependency, OnnxsightError
from onnxsight.serving.batching import Batcher
from onnxsight.serving.protocol import (
    DATATYPES, NO_CLASSIFICATION, InferRequest, InputTensor, Limits, ProtocolError, check_finite, check_output,
    datatype_of, decode_inputs,
)
from onnxsight.serving.repository import VERSION, ServedModel
from onnxsight.serving.server import BodyBudget, Runner, Settings, check_bearer, find_model

try:  # the ``grpc`` extra: grpcio and the service classes generated for tritonclient
    import grpc
    from google.protobuf.message import DecodeError
    from tritonclient.grpc import model_config_pb2, service_pb2
except ImportError as missing:
    raise MissingDependency(missing.name or "tritonclient", "grpc") from missing

log = logging.getLogger("onnxsight.serve")
SERVICE = "inference.GRPCInferenceService"
EXTENSIONS = ["model_configuration"]
CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED, 404: grpc.StatusCode.NOT_FOUND,
         422: grpc.StatusCode.INVALID_ARGUMENT, 503: grpc.StatusCode.UNAVAILABLE}
CONTENTS = {  # the typed ``contents`` field of each datatype (FP16 travels as raw bytes only)
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
}
SHARED_MEMORY = "shared_memory_region"


def _rpc(guarded: bool = True):
    """An RPC handler that checks the token (when ``guarded``) and turns errors into status codes."""

    def wrap(method):
        @functools.wraps(method)
        async def handler(self, request, context):
            try:
                if guarded:
                    metadata = dict(context.invocation_metadata() or ())
                    check_bearer(metadata.get("authorization", ""), self.settings.token)
                if isinstance(request, ProtocolError):  # the message did not parse
                    raise request
                return await method(self, request, context)
            except ProtocolError as error:
                await context.abort(CODES.get(error.status, grpc.StatusCode.INTERNAL), str(error))
            except OnnxsightError as error:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
            except Exception:  # noqa: BLE001 - logged here; the client gets no internal detail
                log.exception("unexpected error in gRPC %s", method.__name__)
                await context.abort(grpc.StatusCode.INTERNAL, "internal server error")

        return handler

    return wrap


class _Service:
    """The implemented methods of ``GRPCInferenceService``, on the HTTP server's models, runner and budget."""

    def __init__(self, models: dict[str, ServedModel], settings: Settings, runner: Runner, budget: BodyBudget,
                 batcher: Batcher):
        self.models, self.settings, self.runner, self.budget, self.batcher = models, settings, runner, budget, batcher
        self.limits = Limits(max_batch=settings.max_batch)

    @_rpc(guarded=False)
    async def ServerLive(self, request, context):  # noqa: N802 - the protocol's method names
        return service_pb2.ServerLiveResponse(live=True)

    @_rpc(guarded=False)
    async def ServerReady(self, request, context):  # noqa: N802
        return service_pb2.ServerReadyResponse(ready=True)

    @_rpc()
    async def ModelReady(self, request, context):  # noqa: N802
        known = request.name in self.models and request.version in ("", VERSION)
        return service_pb2.ModelReadyResponse(ready=known)

    @_rpc()
    async def ServerMetadata(self, request, context):  # noqa: N802
        return service_pb2.ServerMetadataResponse(name="onnxsight", version=__version__, extensions=EXTENSIONS)

    @_rpc()
    async def ModelMetadata(self, request, context):  # noqa: N802
        served = find_model(self.models, request.name, request.version or None)
        tensor = service_pb2.ModelMetadataResponse.TensorMetadata
        return service_pb2.ModelMetadataResponse(
            name=served.name, versions=[VERSION], platform=served.platform,
            inputs=[tensor(name=s.name, datatype=s.datatype, shape=s.shape) for s in served.inputs],
            outputs=[tensor(name=s.name, datatype=s.datatype, shape=s.shape) for s in served.outputs])

    @_rpc()
    async def ModelConfig(self, request, context):  # noqa: N802
        """The configuration of a Triton repository entry (``serving.triton``): batch dimension in the dims."""
        served = find_model(self.models, request.name, request.version or None)
        kind = model_config_pb2.DataType.Value
        config = model_config_pb2.ModelConfig(
            name=served.name, platform=served.platform, max_batch_size=0,
            input=[model_config_pb2.ModelInput(name=s.name, data_type=kind(f"TYPE_{s.datatype}"), dims=s.shape,
                                               optional=s.optional) for s in served.inputs],
            output=[model_config_pb2.ModelOutput(name=s.name, data_type=kind(f"TYPE_{s.datatype}"), dims=s.shape)
                    for s in served.outputs])
        return service_pb2.ModelConfigResponse(config=config)

    @_rpc()
    async def ModelInfer(self, request, context):  # noqa: N802
        served = find_model(self.models, request.model_name, request.model_version or None)
        with self.budget.lease() as take:
            take(request.ByteSize())
            with self.runner.slot():  # as an HTTP request: decoded on a worker, run by the dynamic batcher
                parsed = await self.runner.call(self._decode, served, request)
                results = await self.batcher.infer(served, parsed.inputs, list(parsed.outputs))
                return await self.runner.finish(encode_response, served.name, parsed.id, results)

    def _decode(self, served: ServedModel, request) -> InferRequest:
        """One request's inputs, checked (also by the model) before it joins a batch: its errors are its own."""
        parsed = decode_request(request, served, self.limits)
        served.check(parsed.inputs)
        return parsed


def decode_request(request, served: ServedModel, limits: Limits) -> InferRequest:
    """A ``ModelInferRequest``'s inputs, checked as an HTTP request's are, and the outputs it asks for."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise ProtocolError(400, f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; give "
                                 "one per input, in order, or none and use contents")
    tensors = (_input_tensor(tensor, raw[index] if raw else None) for index, tensor in enumerate(request.inputs))
    inputs = decode_inputs(tensors, served.inputs, limits)
    outputs = [_output_name(output, served) for output in request.outputs] or [spec.name for spec in served.outputs]
    return InferRequest(request.id or None, inputs, dict.fromkeys(outputs, True))


def encode_response(model: str, request_id: str | None, results: dict[str, np.ndarray]) -> service_pb2.ModelInferResponse:
    """The answer with every output as raw little-endian bytes; 422 (INVALID_ARGUMENT) when one holds NaN or Inf."""
    check_finite(model, results)
    response = service_pb2.ModelInferResponse(model_name=model, model_version=VERSION, id=request_id or "")
    for name, array in results.items():
        response.outputs.add(name=name, datatype=datatype_of(array.dtype), shape=array.shape)
        response.raw_output_contents.append(np.ascontiguousarray(array).tobytes())
    return response


def _input_tensor(tensor, raw: bytes | None) -> InputTensor:
    """One input of the message as :class:`InputTensor`: its raw bytes, or the typed contents of its datatype."""
    name, datatype, shape = tensor.name, tensor.datatype, list(tensor.shape)
    if SHARED_MEMORY in tensor.parameters:
        raise ProtocolError(400, f"input {name!r}: shared memory is not supported; send the tensor in the request")
    filled = [field.name for field, _ in tensor.contents.ListFields()]
    if raw is not None:
        if filled:
            raise ProtocolError(400, f"input {name!r} has both raw_input_contents and contents")
        return InputTensor(name, datatype, shape, raw, True, "raw_input_contents")
    field = CONTENTS.get(datatype)  # None for a datatype decode_inputs refuses, and for FP16
    if field is None and datatype in DATATYPES:
        raise ProtocolError(400, f"input {name!r}: {datatype} has no typed contents; send it in raw_input_contents")
    stray = [other for other in filled if other != field]
    if field is not None and stray:
        raise ProtocolError(400, f"input {name!r}: {datatype} values go in contents.{field}, not contents.{stray[0]}")
    values = list(getattr(tensor.contents, field)) if field else []
    return InputTensor(name, datatype, shape, values, False, f"contents.{field}")


def _output_name(output, served: ServedModel) -> str:
    name = check_output(output.name, served.outputs)
    if "classification" in output.parameters:
        raise ProtocolError(400, NO_CLASSIFICATION)
    if SHARED_MEMORY in output.parameters:
        raise ProtocolError(400, f"output {name!r}: shared memory is not supported; the answer carries the tensor")
    return name


class GrpcServer:
    """The gRPC front end on ``host:port`` (0: a free port, read from ``port`` once started), serving ``models``
    with the HTTP app's runner, body budget and dynamic batcher (``state``: ``app.state`` of
    ``server.create_app``); messages over ``settings.max_body_bytes`` are refused."""

    def __init__(self, models: dict[str, ServedModel], settings: Settings, state, host: str = "127.0.0.1",
                 port: int = 8001):
        self.service = _Service(models, settings, state.runner, state.budget, state.batcher)
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.port = port
        self._server = None

    async def start(self) -> None:
        """Binds and starts serving, on the running event loop; InvalidArgument if the address cannot be bound."""
        options = [("grpc.max_receive_message_length", self.service.settings.max_body_bytes),
                   ("grpc.so_reuseport", 0)]  # a port in use is an error, not shared with another server
        server = grpc.aio.server(options=options)
        server.add_generic_rpc_handlers([_handlers(self.service)])
        try:
            self.port = server.add_insecure_port(self.address)
        except RuntimeError as error:
            raise InvalidArgument(f"cannot serve gRPC on {self.address}: {error}") from None
        await server.start()
        self._server = server

    async def stop(self, grace: float | None) -> None:
        """Stops taking calls; those in progress have ``grace`` seconds (None: none) to finish."""
        if self._server is not None:
            await self._server.stop(grace)


def _handlers(service: _Service) -> grpc.GenericRpcHandler:
    names = ["ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelConfig", "ModelInfer"]
    return grpc.method_handlers_generic_handler(SERVICE, {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(service, name), request_deserializer=_parser(getattr(service_pb2, f"{name}Request")),
            response_serializer=getattr(service_pb2, f"{name}Response").SerializeToString)
        for name in names})


def _parser(message_type):
    """Parses a request message; a malformed one becomes the ProtocolError its handler raises (INVALID_ARGUMENT)
    instead of gRPC's UNKNOWN."""

    def parse(data: bytes):
        try:
            return message_type.FromString(data)
        except DecodeError as error:
            return ProtocolError(400, f"malformed {message_type.DESCRIPTOR.name}: {error}")

    return parse
