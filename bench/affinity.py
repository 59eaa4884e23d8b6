"""Session affinity at a load balancer: PutChunk sessions through HAProxy (or nginx) to two replicas,
round-robin (the baseline) against a consistent hash of the session id metadata (deploy/haproxy.cfg,
deploy/nginx.conf), in the same run.

    python bench/affinity.py [--sessions 20] [--chunks 6] [--seed 0] [--proxy haproxy|nginx] [--out FILE]

Two `moodstream server` processes (a tiny model, the default state cache, each
with its Prometheus port) share one Redis; the real HAProxy (Debian's haproxy,
deploy/haproxy.cfg with only its addresses changed, and `balance roundrobin`
for the baseline) listens on 127.0.0.1. Each session sends its chunks one
`PutChunk` call at a time, every call with the bearer token and the session id
metadata, as the record page does; chunk k of every session goes out before
chunk k+1 of any, the sessions in a shuffled order each round, as many phones
recording at once would send them. A session's first chunk finds no stored state
(no cache lookup); each later one is a state-cache hit on a replica that
applied the session's previous chunk, and a miss anywhere else. It reports
per mode the hits and misses summed over both replicas' counters
(moodstream_state_cache_lookups_total), the hit ratio, the sessions each
replica served (HAProxy's log), and the mean PutChunk time.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, bench_main, machine, machine_line, markdown_table, stop_process  # noqa: E402

HAPROXY_CONFIG = ROOT / "deploy" / "haproxy.cfg"
NGINX_CONFIG = ROOT / "deploy" / "nginx.conf"
REPLICAS = ("server-1", "server-2")  # the server names, and compose's addresses, in deploy/haproxy.cfg
HASH_LINES = "    balance hdr(moodstream-session-id)\n    hash-type consistent\n"
MODES = {"round-robin": "    balance roundrobin\n", "consistent hash": HASH_LINES}
PARTICIPANT = "bench"
# One line per call in HAProxy's httplog: "... grpc scoring/server-2 ... {session id} ... "POST /path HTTP/2.0""
LOG_LINE = re.compile(r" scoring/(?P<server>\S+) .*\{(?P<session>[^}|]*)\} .*\"POST (?P<path>\S+) ")


NGINX_HASH_LINE = "        hash $http_moodstream_session_id consistent;\n"
NGINX_MODES = {"round-robin": "", "consistent hash": NGINX_HASH_LINE}
# One line per call in deploy/nginx.conf's log format: "... "POST /path HTTP/2.0" 200 upstream=ADDRESS {session} ..."
NGINX_LOG_LINE = re.compile(r"\"POST (?P<path>\S+) [^\"]*\" \d+ upstream=(?P<address>\S+) \{(?P<session>[^}]*)\}")


def _replaced(text: str, old: str, new: str, config: Path = HAPROXY_CONFIG) -> str:
    if text.count(old) != 1:
        raise ValueError(f"{config.name} no longer holds {old!r} exactly once: update {Path(__file__).name}")
    return text.replace(old, new)


def proxy_config(port: int, addresses: list[str], stats_socket: Path, mode: str = "consistent hash") -> str:
    """deploy/haproxy.cfg listening on 127.0.0.1:`port` in front of `addresses`, with an admin socket."""
    text = _replaced(HAPROXY_CONFIG.read_text(), "bind :50051", f"bind 127.0.0.1:{port}")
    for name, address in zip(REPLICAS, addresses, strict=True):
        text = _replaced(text, f"server {name} {name}:50051", f"server {name} {address}")
    text = _replaced(text, "\nglobal\n", f"\nglobal\n    stats socket {stats_socket}\n")
    return _replaced(text, HASH_LINES, MODES[mode])


def proxy_binary(name: str) -> str | None:
    """The proxy's executable: on PATH, or in /usr/sbin (Debian's place, not on a user's PATH)."""
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))


class ProxyProcess:
    """A real proxy binary in the foreground on 127.0.0.1, its log (stdout) in a file. Subclasses set `port`,
    `config_path` and `log_path` first, hand over the config's text and the command's arguments, and say when
    it is ready (`all_up`) and what it logged (`calls`)."""

    name = ""

    def __init__(self, config: str, arguments: list[str]) -> None:
        binary = proxy_binary(self.name)
        if binary is None:
            raise FileNotFoundError(f"{self.name} is not installed (Debian: apt-get install {self.name})")
        self.config_path.write_text(config)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([binary, *arguments], stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def check_running(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited ({self.process.returncode}):\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        stop_process(self.process, 10)


class HAProxy(ProxyProcess):
    """haproxy in the foreground (-db), asked through its admin socket."""

    name = "haproxy"

    def __init__(self, directory: Path, addresses: list[str], mode: str = "consistent hash") -> None:
        from moodstream.compose.redis_process import free_port

        self.port = free_port()
        self.socket_path = directory / f"haproxy-{self.port}.sock"
        self.config_path = directory / f"haproxy-{self.port}.cfg"
        self.log_path = directory / f"haproxy-{self.port}.log"
        super().__init__(proxy_config(self.port, addresses, self.socket_path, mode),
                         ["-db", "-f", str(self.config_path)])

    def admin(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX) as connection:
            connection.connect(str(self.socket_path))
            connection.sendall(command.encode() + b"\n")
            reply = b""
            while chunk := connection.recv(65536):
                reply += chunk
        return reply.decode()

    def server_states(self) -> dict[str, tuple[str, str]]:
        """Each server's (status, last check status) from `show stat`: ("UP", "L7OK") once its check passed."""
        self.check_running()
        try:
            lines = self.admin("show stat").splitlines()
        except OSError:
            return {}  # not listening yet
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","))) for line in lines[1:] if line]
        return {row["svname"]: (row["status"], row["check_status"]) for row in rows
                if row["pxname"] == "scoring" and row["svname"] not in ("BACKEND", "FRONTEND")}

    def all_up(self) -> bool:
        states = self.server_states()
        return bool(states) and all(state == ("UP", "L7OK") for state in states.values())

    def calls(self) -> list[dict[str, str]]:
        """Every call HAProxy logged: the server it went to, the session id header, the path."""
        return [match.groupdict() for match in map(LOG_LINE.search, self.log().splitlines()) if match]


def nginx_config(port: int, addresses: list[str], mode: str = "consistent hash") -> str:
    """deploy/nginx.conf listening on 127.0.0.1:`port` in front of `addresses`, its temporary files under
    the prefix folder nginx is started with."""
    text = _replaced(NGINX_CONFIG.read_text(), "listen 50051 http2;", f"listen 127.0.0.1:{port} http2;", NGINX_CONFIG)
    for name, address in zip(REPLICAS, addresses, strict=True):
        text = _replaced(text, f"server {name}:50051 ", f"server {address} ", NGINX_CONFIG)
    temporary = "".join(f"    {kind}_temp_path {kind}_temp;\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi",
                                                                             "scgi"))
    text = _replaced(text, "\nhttp {\n", "\nhttp {\n" + temporary, NGINX_CONFIG)
    return _replaced(text, NGINX_HASH_LINE, NGINX_MODES[mode], NGINX_CONFIG)


class Nginx(ProxyProcess):
    """nginx in the foreground (daemon off), its files under a prefix folder of its own. Open-source nginx has
    no active health check, so it is ready once it accepts connections."""

    name = "nginx"

    def __init__(self, directory: Path, addresses: list[str], mode: str = "consistent hash") -> None:
        from moodstream.compose.redis_process import free_port

        self.port = free_port()
        self.addresses = addresses
        self.prefix = directory / f"nginx-{self.port}"
        self.prefix.mkdir()
        self.config_path = self.prefix / "nginx.conf"
        self.log_path = self.prefix / "nginx.log"
        super().__init__(nginx_config(self.port, addresses, mode),
                         ["-p", str(self.prefix), "-c", str(self.config_path), "-e", "stderr", "-g", "daemon off;"])

    def all_up(self) -> bool:
        self.check_running()
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def calls(self) -> list[dict[str, str]]:
        """Every call nginx logged: the server it went to (by its name in REPLICAS), the session id, the path."""
        names = dict(zip(self.addresses, REPLICAS))
        return [{"server": names.get(m["address"], m["address"]), "session": m["session"], "path": m["path"]}
                for m in map(NGINX_LOG_LINE.search, self.log().splitlines()) if m]


PROXIES = {"haproxy": HAProxy, "nginx": Nginx}


def wait_for(condition, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


def put_sessions(address: str, token: str, sessions: list[str], chunks: list[bytes], seed: int) -> list[float]:
    """Every session's chunks through `address`, one PutChunk each, round by round in a shuffled order;
    the seconds each call took."""
    import grpc

    from moodstream.v1 import moodstream_pb2 as pb
    from moodstream.v1 import moodstream_pb2_grpc as pb_grpc
    from moodstream.wire import bearer_metadata, open_channel, session_metadata

    order = random.Random(seed)
    seconds = []
    with open_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = pb_grpc.ScreeningStub(channel)
        for seq, pcm in enumerate(chunks):
            for session in order.sample(sessions, len(sessions)):
                header = pb.SessionHeader(session_id=session, participant_id=PARTICIPANT, device_id="bench",
                                          sample_rate=16000, encoding=pb.AUDIO_ENCODING_PCM_S16LE)
                request = pb.PutChunkRequest(header=header, chunk=pb.Chunk(seq=seq, start_seconds=7.0 * seq, pcm=pcm))
                started = time.perf_counter()
                reply = stub.PutChunk(request, metadata=bearer_metadata(token) + session_metadata(session), timeout=60)
                seconds.append(time.perf_counter() - started)
                assert reply.ack.seq == seq and not reply.ack.duplicate, reply
    return seconds


def lookups(servers) -> dict[str, float]:
    """State-cache hits and misses summed over the servers' Prometheus counters (each server's `metrics_port`)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = {"hit": 0.0, "miss": 0.0}
    for server in servers:
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
        for family in text_string_to_metric_families(text):
            if family.name == "moodstream_state_cache_lookups":
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        total[sample.labels["outcome"]] += sample.value
    return total


def measure(directory: Path, servers, token: str, mode: str, sessions: list[str], chunks: list[bytes],
            seed: int, proxy_name: str = "haproxy") -> dict:
    """One mode: a fresh proxy (PROXIES) in front of `servers` (each with `port` and `metrics_port`), every
    session through it, what the replicas counted."""
    proxy = PROXIES[proxy_name](directory, [f"127.0.0.1:{server.port}" for server in servers], mode)
    try:
        wait_for(proxy.all_up, f"{proxy_name} to be ready for both replicas")
        before = lookups(servers)
        seconds = put_sessions(proxy.address, token, sessions, chunks, seed)
        after = lookups(servers)
        wanted = len(sessions) * len(chunks)

        def logged():
            calls = [call for call in proxy.calls() if call["path"].endswith("/PutChunk")]
            return calls if len(calls) >= wanted else None

        try:
            calls = wait_for(logged, f"{proxy_name} to log every call", timeout=10)
        except TimeoutError:
            raise TimeoutError(f"{proxy_name} logged {len(proxy.calls())} of {wanted} calls:\n{proxy.log()[-2000:]}") from None
    finally:
        proxy.close()
    hits, misses = after["hit"] - before["hit"], after["miss"] - before["miss"]
    served = {name: sorted({c["session"] for c in calls if c["server"] == name}) for name in REPLICAS}
    replicas_per_session = {s: len({c["server"] for c in calls if c["session"] == s}) for s in sessions}
    return {"mode": mode, "calls": len(calls), "hits": hits, "misses": misses,
            "hit_ratio": hits / (hits + misses) if hits + misses else float("nan"),
            "sessions_per_replica": {name: len(names) for name, names in served.items()},
            "sessions_on_one_replica": sum(count == 1 for count in replicas_per_session.values()),
            "mean_ms": 1000 * sum(seconds) / len(seconds)}


def run(sessions: int = 20, chunks: int = 6, seed: int = 0, proxy: str = "haproxy", log=print) -> dict:
    import torch

    from loopback import pcm_chunks
    from state_cache import CacheServer

    from moodstream.compose.redis_process import RedisProcess
    from moodstream.model import ModelConfig, ScreeningModel
    from moodstream.server.auth import create_token

    info = machine()
    torch.manual_seed(seed)
    audio = pcm_chunks(chunks)
    rows = []
    with tempfile.TemporaryDirectory(prefix="moodstream-affinity-") as tmp, RedisProcess().start() as redis_server:
        directory = Path(tmp)
        checkpoint = ScreeningModel(ModelConfig.tiny()).eval().save_pretrained(directory / "checkpoint")
        token = create_token(directory / "tokens.json", "bench", [PARTICIPANT], [])
        servers = [CacheServer(checkpoint, redis_server.url, directory / "tokens.json", 256) for _ in REPLICAS]
        try:
            for mode in MODES:
                log(f"{mode}: {sessions} sessions x {chunks} PutChunk calls through {proxy} ...")
                names = [f"{mode.replace(' ', '-')}-{index:03d}" for index in range(sessions)]
                rows.append(measure(directory, servers, token, mode, names, audio, seed, proxy))
        finally:
            for server in servers:
                server.close()
    info["load_average_at_end"] = os.getloadavg()[0]
    version = subprocess.run([proxy_binary(proxy) or proxy, "-v"], capture_output=True, text=True)
    return {"machine": info, "proxy": proxy, "proxy_version": (version.stdout or version.stderr).strip().splitlines()[0],
            "sessions": sessions, "chunks": chunks, "rows": rows}


def report(result: dict) -> str:
    rows = [[r["mode"], r["calls"], f"{r['hits']:.0f} / {r['misses']:.0f}", f"{r['hit_ratio']:.1%}",
             " / ".join(str(n) for n in r["sessions_per_replica"].values()),
             f"{r['sessions_on_one_replica']} of {result['sessions']}", f"{r['mean_ms']:.1f} ms"]
            for r in result["rows"]]
    baseline, hashed = result["rows"][0]["hit_ratio"], result["rows"][1]["hit_ratio"]
    table = markdown_table([f"{result['proxy_version']}: balance", "PutChunk calls", "state-cache hits / misses", "hit ratio",
                            "sessions on server-1 / server-2", "sessions that stayed on one replica",
                            "mean PutChunk"], rows)
    ratio = f"\n\nhit ratio, consistent hash / round-robin: {hashed / baseline:.2f}×" if baseline else ""
    return f"{machine_line(result['machine'])}\n\n{table}{ratio}"

if __name__ == "__main__":
    bench_main(__doc__, run, report, {"sessions": (20, "PutChunk sessions per mode"),
                                      "chunks": (6, "chunks per session"),
                                      "seed": (0, "seed of the model and the call order"),
                                      "proxy": ("haproxy", "the load balancer", sorted(PROXIES))})
