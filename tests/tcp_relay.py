"""A TCP relay on 127.0.0.1 to a target port, one thread per direction of each connection; subclasses say
what each direction does with the bytes (tests/http2_relay.py rewrites HTTP/2 frames, test_wire.py's
FreezingProxy goes silent)."""
from __future__ import annotations

import socket
import threading


class TcpRelay:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
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
            threading.Thread(target=self.from_client, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self.from_server, args=(upstream, client), daemon=True).start()

    def from_client(self, source: socket.socket, sink: socket.socket) -> None:
        relay(source, sink)

    def from_server(self, source: socket.socket, sink: socket.socket) -> None:
        relay(source, sink)

    def close(self) -> None:
        self.listener.close()
        for sock in self.sockets:
            sock.close()


def receive(sock: socket.socket) -> bytes:
    """The next bytes, or b"" once the connection is closed or broken."""
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def send(sock: socket.socket, data: bytes) -> bool:
    try:
        sock.sendall(data)
        return True
    except OSError:
        return False


def relay(source: socket.socket, sink: socket.socket) -> None:
    while data := receive(source):
        if not send(sink, data):
            return
