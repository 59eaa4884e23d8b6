"""Turn request messages that do not parse into INVALID_ARGUMENT.

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
