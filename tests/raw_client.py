"""A gRPC client that knows only the .proto: what an outside team would build.

The .proto is compiled here, at test time, by protoc (grpcio-tools) into a
descriptor set; message classes come from a private descriptor pool, and
calls go through plain grpcio channel methods with those classes'
serialisers. Nothing from moodstream's own stubs or client is used, so a test
through this client checks the wire contract, not the project's code.
"""
from __future__ import annotations

import importlib.resources
import tempfile
from functools import cached_property
from pathlib import Path

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PROTO_ROOT = Path(__file__).resolve().parent.parent / "proto"
PROTO_FILE = "moodstream/v1/moodstream.proto"
PACKAGE = "moodstream.v1"


def compile_proto() -> descriptor_pool.DescriptorPool:
    from grpc_tools import protoc

    include = str(importlib.resources.files("grpc_tools") / "_proto")
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "set.pb"
        status = protoc.main(["protoc", f"-I{PROTO_ROOT}", f"-I{include}", "--include_imports",
                              f"--descriptor_set_out={out}", PROTO_FILE])
        assert status == 0, f"protoc failed on {PROTO_FILE}"
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return pool


def client_for(channel: grpc.Channel, pool: descriptor_pool.DescriptorPool, tokens, name: str | None) -> "RawClient":
    """A RawClient carrying the token of that name from the usual tokens file (None: no token)."""
    return RawClient(channel, pool, tokens.by_name[name] if name else None)


class RawClient:
    """Calls moodstream.v1.Screening on `channel` with messages built from the compiled .proto."""

    def __init__(self, channel: grpc.Channel, pool: descriptor_pool.DescriptorPool, token: str | None = None):
        self.channel = channel
        self.pool = pool
        self.metadata = [("authorization", f"Bearer {token}")] if token else []

    def message(self, name: str):
        return message_factory.GetMessageClass(self.pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))

    @cached_property
    def service(self):
        return self.pool.FindServiceByName(f"{PACKAGE}.Screening")

    def _types(self, method: str):
        descriptor = self.service.methods_by_name[method]
        request = message_factory.GetMessageClass(descriptor.input_type)
        response = message_factory.GetMessageClass(descriptor.output_type)
        return f"/{self.service.full_name}/{method}", request, response

    def request(self, method: str, **fields):
        return self._types(method)[1](**fields)

    def unary(self, method: str, request, timeout: float = 30.0, metadata=None):
        path, request_type, response_type = self._types(method)
        call = self.channel.unary_unary(path, request_serializer=request_type.SerializeToString,
                                        response_deserializer=response_type.FromString)
        return call(request, timeout=timeout, metadata=self.metadata if metadata is None else metadata)

    def server_stream(self, method: str, request, timeout: float = 30.0, metadata=None):
        path, request_type, response_type = self._types(method)
        call = self.channel.unary_stream(path, request_serializer=request_type.SerializeToString,
                                         response_deserializer=response_type.FromString)
        return call(request, timeout=timeout, metadata=self.metadata if metadata is None else metadata)

    def bidi(self, method: str, requests, timeout: float = 60.0, metadata=None):
        path, request_type, response_type = self._types(method)
        call = self.channel.stream_stream(path, request_serializer=request_type.SerializeToString,
                                          response_deserializer=response_type.FromString)
        return call(iter(requests), timeout=timeout, metadata=self.metadata if metadata is None else metadata)

    def zero_message_call(self, path: str, timeout: float | None = None, metadata=None):
        """A call to a unary-request method that half-closes without sending any request message."""
        call = self.channel.stream_unary(path, request_serializer=bytes, response_deserializer=bytes)
        return call.future(iter(()), timeout=timeout, metadata=self.metadata if metadata is None else metadata)

    # -- stream messages ----------------------------------------------------
    def header(self, session: str, participant: str, **fields):
        encoding = self.pool.FindEnumTypeByName(f"{PACKAGE}.AudioEncoding").values_by_name[
            "AUDIO_ENCODING_PCM_S16LE"].number
        values = dict(session_id=session, participant_id=participant, device_id="raw-client", sample_rate=16000,
                      encoding=encoding)
        values.update(fields)
        return self.request("Stream", header=self.message("SessionHeader")(**values))

    def chunk(self, seq: int, pcm: bytes):
        return self.request("Stream", chunk=self.message("Chunk")(seq=seq, start_seconds=7.0 * seq, pcm=pcm))

    def end(self, last_seq: int):
        return self.request("Stream", end=self.message("End")(last_seq=last_seq))


def acks(responses) -> list[tuple[int, bool]]:
    """(seq, duplicate) of every Ack among stream responses, in arrival order."""
    return [(r.ack.seq, r.ack.duplicate) for r in responses if r.WhichOneof("message") == "ack"]
