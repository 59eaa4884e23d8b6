"""gRPC-web on an HTTP port of the scoring server itself, for browsers.

Browsers cannot open HTTP/2 gRPC calls, so the record page calls the server
over gRPC-web (sonora's ASGI implementation of the protocol), served by
uvicorn on the scoring server's own event loop: the same servicer, encoder
batches, Redis connection and tokens as the gRPC port, and the same TLS
files. Only the unary methods are offered (a browser cannot send a request
stream, and PutChunk is how it sends speech); requests that do not parse
get INVALID_ARGUMENT exactly as on the gRPC port, and a request body over
the gRPC port's message limit is RESOURCE_EXHAUSTED.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import ssl
import struct
from urllib.parse import quote

import grpc
import uvicorn
from sonora.asgi import grpcASGI
from starlette.middleware.cors import CORSMiddleware

from moodstream.listening import listening_socket
from moodstream.server.interceptors import SESSION_METHODS, checking_session_metadata, refusing_malformed_requests
from moodstream.v1 import moodstream_pb2_grpc
from moodstream.wire import SESSION_ID_METADATA_KEY

BROWSER_METHODS = ("PutChunk", "GetScore", "ListSessions", "GetModelInfo", "Enrol")
# What a gRPC-web client sends and must be able to read back (grpc-web and @connectrpc/connect-web).
REQUEST_HEADERS = ["authorization", "content-type", "grpc-timeout", "x-grpc-web", "x-user-agent",
                   "connect-protocol-version", "connect-timeout-ms", SESSION_ID_METADATA_KEY]
RESPONSE_HEADERS = ["grpc-status", "grpc-message", "grpc-status-details-bin"]
FRAME_HEADER_BYTES = 5  # gRPC-web frame: a flags byte and a 4-byte length


class _HandlerCollector:
    """Takes the method handlers the generated add_*_to_server function registers."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}
        self.service = ""

    def add_generic_rpc_handlers(self, handlers) -> None:
        pass  # the same handlers also arrive below, by name

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        self.service = service
        self.handlers.update(handlers)


def _answered_as_a_stream_of_one(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    # sonora 0.2.3 writes a unary answer's trailers as Python reprs of bytes ("b'grpc-status': b'0'"),
    # which no gRPC-web client reads; its response-stream path writes them correctly, and a stream of
    # one message is the same bytes on the wire as a unary answer.
    unary = handler.unary_unary

    async def one(request, context):
        yield await unary(request, context)

    return grpc.unary_stream_rpc_method_handler(one, handler.request_deserializer, handler.response_serializer)


def browser_handler(servicer) -> grpc.GenericRpcHandler:
    collector = _HandlerCollector()
    moodstream_pb2_grpc.add_ScreeningServicer_to_server(servicer, collector)
    handlers = {name: checking_session_metadata(handler) if name in SESSION_METHODS else handler
                for name, handler in collector.handlers.items()}
    offered = {name: _answered_as_a_stream_of_one(refusing_malformed_requests(handlers[name]))
               for name in BROWSER_METHODS}
    return grpc.method_handlers_generic_handler(collector.service, offered)


def _refusal(code: grpc.StatusCode, reason: str) -> list[dict]:
    """A trailers-only gRPC-web answer: the status in the HTTP headers, no body."""
    return [{"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"application/grpc-web+proto"),
                (b"grpc-status", str(code.value[0]).encode()), (b"grpc-message", quote(reason).encode())]},
            {"type": "http.response.body", "body": b""}]


class _OneFrameBody:
    """Reads a call's body (bounded) and passes it on only if it is one whole gRPC-web frame.

    sonora waits for more body after a short or empty one until the client
    hangs up; here such a call ends at once, as on the gRPC port.
    """

    def __init__(self, app, max_message_bytes: int) -> None:
        self.app = app
        self.max_message_bytes = max_message_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        body = bytearray()
        limit = self.max_message_bytes + FRAME_HEADER_BYTES
        text = dict(scope["headers"]).get(b"content-type", b"").startswith(b"application/grpc-web-text")
        if text:
            limit = limit * 4 // 3 + 4
        while True:
            event = await receive()
            if event["type"] == "http.disconnect":
                return
            body += event.get("body", b"")
            if len(body) > limit:
                for message in _refusal(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                        f"the request is over the {self.max_message_bytes} byte message limit"):
                    await send(message)
                return
            if not event.get("more_body"):
                break
        try:
            problem = self._frame_problem(base64.b64decode(body, validate=True) if text else bytes(body))
        except binascii.Error:
            problem = "the application/grpc-web-text body is not base64"
        if problem:
            for message in _refusal(grpc.StatusCode.INVALID_ARGUMENT, problem):
                await send(message)
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    @staticmethod
    def _frame_problem(data: bytes) -> str:
        if len(data) < FRAME_HEADER_BYTES:
            return "the call was closed without a request message: send exactly one"
        flags, length = struct.unpack(">BI", data[:FRAME_HEADER_BYTES])
        if flags:
            return "the request frame is compressed or marked as trailers: send one uncompressed message"
        if FRAME_HEADER_BYTES + length != len(data):
            return (f"the request frame declares {length} bytes but the body holds "
                    f"{len(data) - FRAME_HEADER_BYTES}: send exactly one whole message")
        return ""


def grpc_web_app(servicer, origins: list[str], max_message_bytes: int):
    """The ASGI application: CORS for the page's origins, the body limit, then gRPC-web."""
    grpc_web = grpcASGI(enable_cors=False)  # sonora's own CORS answers with the Host, not the page's origin
    grpc_web.add_generic_rpc_handlers((browser_handler(servicer),))
    return CORSMiddleware(_OneFrameBody(grpc_web, max_message_bytes), allow_origins=origins,
                          allow_methods=["POST"], allow_headers=REQUEST_HEADERS, expose_headers=RESPONSE_HEADERS,
                          max_age=600)


class _EmbeddedUvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        yield  # the scoring server owns SIGINT and SIGTERM and stops this server itself


class GrpcWebServer:
    """uvicorn serving the gRPC-web application as a task of the running event loop."""

    def __init__(self, app, host: str, port: int, tls_cert=None, tls_key=None, tls_client_ca=None) -> None:
        self.app, self.host, self.requested_port = app, host, port
        self.tls = (tls_cert, tls_key, tls_client_ca)
        self.port: int | None = None
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> int:
        sock = listening_socket("--grpc-web-port", self.host, self.requested_port)
        self.port = sock.getsockname()[1]
        cert, key, client_ca = self.tls
        config = uvicorn.Config(
            self.app, log_level="warning", access_log=False, lifespan="off", server_header=False,
            ssl_certfile=str(cert) if cert else None, ssl_keyfile=str(key) if key else None,
            ssl_ca_certs=str(client_ca) if client_ca else None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if client_ca else ssl.CERT_NONE)
        self._server = _EmbeddedUvicorn(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="grpc-web")
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise ValueError(f"the gRPC-web server on {self.host}:{self.port} stopped at start")
            await asyncio.sleep(0.01)
        return self.port

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(self._task, 10)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            pass
        self._task = None
