"""Listening TCP sockets for the HTTP sides of moodstream (dashboard, gRPC-web), with one clear error."""
import errno
import socket


def listening_socket(option: str, host: str, port: int, backlog: int = 128) -> socket.socket:
    """A TCP socket bound to host:port and listening; ValueError naming `option` and why when it cannot be."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        reason = "the port is already in use" if error.errno == errno.EADDRINUSE else (error.strerror or str(error))
        raise ValueError(f"{option} {port}: cannot listen on {host}: {reason}") from None
    sock.listen(backlog)
    return sock
