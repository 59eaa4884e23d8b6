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
import threading

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS = 0, 1


class Http2Relay:
    """Relays 127.0.0.1:port to the target; `rewrite_headers(block)` gets each HEADERS payload (HPACK),
    `rewrite_message(flag, body)` each DATA frame that holds exactly one gRPC message, returning the new pair."""

    def __init__(self, target_port: int, *, rewrite_headers=None, rewrite_message=None) -> None:
        self.target_port = target_port
        self.rewrite_headers = rewrite_headers
        self.rewrite_message = rewrite_message
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [client, upstream]
            threading.Thread(target=self._from_client, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._from_server, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _from_server(source: socket.socket, sink: socket.socket) -> None:
        while data := _receive(source):
            if not _send(sink, data):
                return

    def _from_client(self, source: socket.socket, sink: socket.socket) -> None:
        pending, preface_seen = b"", False
        while data := _receive(source):
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
            if not _send(sink, out):
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

    def close(self) -> None:
        self.listener.close()
        for sock in self.sockets:
            sock.close()


def _receive(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def _send(sock: socket.socket, data: bytes) -> bool:
    try:
        sock.sendall(data)
        return True
    except OSError:
        return False
