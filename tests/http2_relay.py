"""A TCP relay that reads the client's HTTP/2 frames and can rewrite them on the way: what a client that
speaks raw HTTP/2 could send, made from what a real gRPC client sends.

No HTTP/2 library is needed: frames are a 9-byte header and a payload; a client's first HEADERS frame
on a connection carries grpc-python's header fields as plain literals (no Huffman coding), and a DATA
frame that holds one whole gRPC message starts with its 5-byte prefix (compressed flag, length).

    relay = Http2Relay(server_port, rewrite_headers=..., rewrite_message=...)
    channel = grpc.insecure_channel(f"127.0.0.1:{relay.port}")
"""
from __future__ import annotations

import socket

from tcp_relay import TcpRelay, receive, send

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS = 0, 1


class Http2Relay(TcpRelay):
    """Relays 127.0.0.1:port to the target; `rewrite_headers(block)` gets each HEADERS payload (HPACK),
    `rewrite_message(flag, body)` each DATA frame that holds exactly one gRPC message, returning the new pair."""

    def __init__(self, target_port: int, *, rewrite_headers=None, rewrite_message=None) -> None:
        self.rewrite_headers = rewrite_headers
        self.rewrite_message = rewrite_message
        super().__init__(target_port)

    def from_client(self, source: socket.socket, sink: socket.socket) -> None:
        pending, preface_seen = b"", False
        while data := receive(source):
            pending += data
            out = b""
            if not preface_seen:
                if len(pending) < len(PREFACE):
                    continue
                out, pending, preface_seen = pending[:len(PREFACE)], pending[len(PREFACE):], True
            while len(pending) >= 9 and len(pending) >= 9 + int.from_bytes(pending[:3], "big"):
                length = int.from_bytes(pending[:3], "big")
                head, payload, pending = pending[:9], pending[9:9 + length], pending[9 + length:]
                out += self._frame(head, self._rewrite(head[3], payload))
            if not send(sink, out):
                return

    def _rewrite(self, kind: int, payload: bytes) -> bytes:
        if kind == HEADERS and self.rewrite_headers:
            return self.rewrite_headers(payload)
        one_message = len(payload) >= 5 and 5 + int.from_bytes(payload[1:5], "big") == len(payload)
        if kind == DATA and one_message and self.rewrite_message:
            flag, body = self.rewrite_message(payload[0], payload[5:])
            return bytes([flag]) + len(body).to_bytes(4, "big") + body
        return payload

    @staticmethod
    def _frame(head: bytes, payload: bytes) -> bytes:
        return len(payload).to_bytes(3, "big") + head[3:] + payload
