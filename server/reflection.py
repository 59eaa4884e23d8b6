"""Server reflection that carries the .proto's comments to every client.

The generated _pb2 modules keep no comments, so plain reflection would give
grpcurl and other tools the messages without the limits and rules written
in the .proto. proto/generate.py also writes a descriptor set with source
info (``moodstream.descriptor.binpb``); this serves its comments with the
descriptors of the default pool.
"""
from __future__ import annotations

import importlib.resources

from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection

DESCRIPTOR_SET = "moodstream.descriptor.binpb"


def commented_files() -> dict[str, descriptor_pb2.FileDescriptorProto]:
    raw = importlib.resources.files("moodstream.v1").joinpath(DESCRIPTOR_SET).read_bytes()
    return {file.name: file for file in descriptor_pb2.FileDescriptorSet.FromString(raw).file}


class _CommentedFile:
    """A file descriptor whose CopyToProto includes the comments, where known."""

    def __init__(self, descriptor, commented: dict) -> None:
        self._descriptor = descriptor
        self._commented = commented
        self.name = descriptor.name

    @property
    def dependencies(self):
        return [_CommentedFile(dependency, self._commented) for dependency in self._descriptor.dependencies]

    def CopyToProto(self, proto: descriptor_pb2.FileDescriptorProto) -> None:  # noqa: N802 (protobuf's name)
        self._descriptor.CopyToProto(proto)
        if self.name in self._commented:
            proto.source_code_info.CopyFrom(self._commented[self.name].source_code_info)


class CommentedPool:
    """The default descriptor pool, answering file look-ups with commented files."""

    def __init__(self) -> None:
        self._pool = descriptor_pool.Default()
        self._commented = commented_files()

    def FindFileByName(self, name):  # noqa: N802
        return _CommentedFile(self._pool.FindFileByName(name), self._commented)

    def FindFileContainingSymbol(self, symbol):  # noqa: N802
        try:
            file = self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            # The pool's own look-up knows messages, fields, enums and services but not methods, so
            # `grpcurl describe moodstream.v1.Screening.Stream` would be "Symbol not found".
            file = self._file_of_method(symbol)
        return _CommentedFile(file, self._commented)

    def _file_of_method(self, symbol: str):
        service_name, _, method = symbol.rpartition(".")
        try:
            service = self._pool.FindServiceByName(service_name)
        except KeyError:
            raise KeyError(symbol) from None
        if method not in service.methods_by_name:
            raise KeyError(symbol)
        return service.file

    def __getattr__(self, name):
        return getattr(self._pool, name)


def enable(service_names, server) -> None:
    reflection.enable_server_reflection(service_names, server, pool=CommentedPool())
