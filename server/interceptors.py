"""Turn request messages that do not parse into INVALID_ARGUMENT, and refuse a session id in the call
metadata that is not the session the request names.

gRPC deserialises a request before (unary) or while (streaming) the handler
runs; a message that is not valid protobuf, or whose string fields are not
valid UTF-8, would otherwise end the call with UNKNOWN ("Unexpected
DecodeError"). This interceptor wraps the Screening service's deserialisers so
such a message ends the call with INVALID_ARGUMENT and a one-line reason, and
never reaches the service's logic.
"""
from __future__ import annotations

import grpc
from google.protobuf.message import DecodeError

from moodstream.server.rpc_errors import StreamAbort
from moodstream.wire import SESSION_ID_METADATA_KEY


class _Undecodable:
    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _message(undecodable: _Undecodable) -> str:
    return f"request message is not valid protobuf for this method: {undecodable.reason}"


def _tolerant(deserializer):
    if deserializer is None:
        return None

    def deserialize(data: bytes):
        try:
            return deserializer(data)
        except DecodeError as error:
            return _Undecodable(str(error))

    return deserialize


async def _checked(requests):
    async for request in requests:
        if isinstance(request, _Undecodable):
            # The Stream handler turns a StreamAbort raised by its request iterator into this status.
            raise StreamAbort(grpc.StatusCode.INVALID_ARGUMENT, _message(request))
        yield request


def refusing_malformed_requests(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    deserializer = _tolerant(handler.request_deserializer)
    serializer = handler.response_serializer
    if handler.unary_unary is not None:
        inner = handler.unary_unary

        async def unary_unary(request, context):
            if isinstance(request, _Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message(request))
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, deserializer, serializer)
    if handler.unary_stream is not None:
        inner = handler.unary_stream

        async def unary_stream(request, context):
            if isinstance(request, _Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message(request))
            async for response in inner(request, context):
                yield response

        return grpc.unary_stream_rpc_method_handler(unary_stream, deserializer, serializer)
    if handler.stream_stream is not None:
        inner = handler.stream_stream

        async def stream_stream(requests, context):
            async for response in inner(_checked(requests), context):
                yield response

        return grpc.stream_stream_rpc_method_handler(stream_stream, deserializer, serializer)
    return handler  # no client-streaming unary-response methods in moodstream.v1


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    """Applies to the methods of one service (its full name, e.g. moodstream.v1.Screening)."""

    def __init__(self, service_name: str) -> None:
        self.prefix = f"/{service_name}/"

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(self.prefix):
            return handler
        return refusing_malformed_requests(handler)


async def _the_one_request(requests, context):
    """The single request message of a unary-request call, or the call ends INVALID_ARGUMENT."""
    async for request in requests:
        return request
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                        "the call was closed without a request message: send exactly one")


def _exactly_one_request(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    deserializer, serializer = handler.request_deserializer, handler.response_serializer
    if handler.unary_unary is not None:
        inner = handler.unary_unary

        async def stream_unary(requests, context):
            return await inner(await _the_one_request(requests, context), context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, deserializer, serializer)
    if handler.unary_stream is not None:
        inner = handler.unary_stream

        async def stream_stream(requests, context):
            request = await _the_one_request(requests, context)
            async for response in inner(request, context):
                yield response

        return grpc.stream_stream_rpc_method_handler(stream_stream, deserializer, serializer)
    return handler


class SingleRequestInterceptor(grpc.aio.ServerInterceptor):
    """Ends a unary-request call that half-closes without a message at once, with INVALID_ARGUMENT.

    grpc.aio leaves such a call open, without a status, until the client's
    deadline (or forever without one); this takes the request from a
    request stream instead, so the empty case can be answered. Every
    service, health and reflection included.
    """

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming:
            return handler
        return _exactly_one_request(handler)


# Methods whose requests name a session in a SessionHeader, and so may carry SESSION_ID_METADATA_KEY.
SESSION_METHODS = ("Stream", "PutChunk")


def _session_mismatch(metadata, header) -> str:
    """Why the call's session metadata contradicts `header` ("" if it does not, or is absent)."""
    for key, value in metadata or ():
        if key == SESSION_ID_METADATA_KEY and value != header.session_id:
            # A balancer routes by the metadata and the server stores by the header: if they differ, the
            # session's calls are spread over replicas by another session's hash. Better to say so at once.
            return (f"the {SESSION_ID_METADATA_KEY} metadata {value!r} is not the session_id of the request's "
                    f"SessionHeader {header.session_id!r}: send the same session id in both, or leave the "
                    f"metadata out")
    return ""


async def _headers_checked(requests, metadata):
    async for request in requests:
        if not isinstance(request, _Undecodable) and request.WhichOneof("message") == "header":
            problem = _session_mismatch(metadata, request.header)
            if problem:
                raise StreamAbort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        yield request


def checking_session_metadata(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """`handler` (of Stream or PutChunk), refusing a call whose session metadata names another session."""
    deserializer, serializer = handler.request_deserializer, handler.response_serializer
    if handler.unary_unary is not None:
        inner = handler.unary_unary

        async def unary_unary(request, context):
            if not isinstance(request, _Undecodable) and request.HasField("header"):
                problem = _session_mismatch(context.invocation_metadata(), request.header)
                if problem:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, deserializer, serializer)
    if handler.stream_stream is not None:
        inner = handler.stream_stream

        async def stream_stream(requests, context):
            async for response in inner(_headers_checked(requests, context.invocation_metadata()), context):
                yield response

        return grpc.stream_stream_rpc_method_handler(stream_stream, deserializer, serializer)
    return handler


class SessionMetadataInterceptor(grpc.aio.ServerInterceptor):
    """Applies checking_session_metadata to one service's Stream and PutChunk (its full name, as above).

    Innermost of the interceptors, so a request that does not parse is refused as such first.
    """

    def __init__(self, service_name: str) -> None:
        self.methods = {f"/{service_name}/{name}" for name in SESSION_METHODS}

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method not in self.methods:
            return handler
        return checking_session_metadata(handler)
