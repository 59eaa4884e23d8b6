"""Helpers for fault-injection tests: scoring servers as real processes, windowed gRPC clients, and a
look at what Redis holds for a session."""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moodstream.server.store_keys import SessionKeys
from server_harness import chunk, end, header


class ServerProcess:
    """`moodstream server` as a child process on 127.0.0.1, port chosen by the OS.

    Logs go to a file (nobody reads a pipe while the server runs). kill() is SIGKILL: no drain, no
    graceful shutdown, as a crash or an OOM kill would be.
    """

    def __init__(self, checkpoint: Path, redis_url: str, tokens_file: Path, log_path: Path, *extra: str) -> None:
        self.command = [sys.executable, "-P", "-m", "moodstream.compose.cli", "server", "--checkpoint", str(checkpoint),
                        "--redis", redis_url, "--port", "0", "--tokens", str(tokens_file), "--precision", "fp32",
                        "--max-batch", "1", "--device", "cpu", *extra]
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self.model_version: str | None = None

    def launch(self) -> ServerProcess:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
        return self

    def wait_listening(self, timeout: float = 90.0) -> ServerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited ({self.process.returncode}):\n{self.log_tail()}")
            ready, _, _ = select.select([self.process.stdout], [], [], 0.2)
            if ready:
                line = self.process.stdout.readline().decode()
                announced = json.loads(line)
                self.port = int(announced["listening"].rsplit(":", 1)[1])
                self.model_version = announced["model_version"]
                return self
        self.kill()
        raise AssertionError(f"the server did not listen within {timeout:.0f} s:\n{self.log_tail()}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS line")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def start_servers(count: int, checkpoint: Path, redis_url: str, tokens_file: Path, directory: Path,
                  *extra: str) -> list[ServerProcess]:
    """Start `count` replicas at once (their start-ups overlap) and wait until each listens."""
    servers = [ServerProcess(checkpoint, redis_url, tokens_file, directory / f"server-{i}.log", *extra).launch()
               for i in range(count)]
    try:
        for server in servers:
            server.wait_listening()
    except BaseException:
        for server in servers:
            server.close()
        raise
    return servers


@dataclass
class StreamResult:
    responses: list
    ack_latency: dict[int, float]   # seq -> seconds from sending the chunk to its ack
    error: Exception | None = None

    @property
    def acks(self) -> list[tuple[int, bool]]:
        return [(r.ack.seq, r.ack.duplicate) for r in self.responses if r.WhichOneof("message") == "ack"]

    @property
    def scores(self) -> list:
        return [r.score for r in self.responses if r.WhichOneof("message") == "score"]


def windowed_stream(stub, session: str, participant: str, chunks: dict[int, bytes], metadata, *, window: int = 8,
                    last_seq: int | None = None, timeout: float = 120.0, hold: threading.Event | None = None,
                    start: threading.Barrier | None = None) -> StreamResult:
    """One Stream call as the agent makes it: at most `window` chunks unacknowledged at a time.

    chunks: seq -> PCM, sent in seq order. last_seq: send End(last_seq) after them. hold: wait
    for this event before half-closing (a connection that stays open). start: a barrier to pass
    before the first chunk (to race another connection).
    """
    slots = threading.Semaphore(window)
    sent_at: dict[int, float] = {}
    latency: dict[int, float] = {}

    def requests():
        yield header(session, participant)
        if start is not None:
            start.wait(30)
        for seq in sorted(chunks):
            if not slots.acquire(timeout=timeout):
                return
            sent_at[seq] = time.perf_counter()
            yield chunk(seq, chunks[seq])
        if last_seq is not None:
            yield end(last_seq)
        if hold is not None:
            hold.wait(timeout)

    responses = []
    try:
        for response in stub.Stream(requests(), metadata=metadata, timeout=timeout):
            responses.append(response)
            if response.WhichOneof("message") == "ack":
                seq = response.ack.seq
                if seq in sent_at and seq not in latency:
                    latency[seq] = time.perf_counter() - sent_at[seq]
                slots.release()
    except Exception as error:  # the caller asserts on it
        return StreamResult(responses, latency, error)
    return StreamResult(responses, latency)


@dataclass
class StoredSession:
    applied: int | None
    segments: int
    ended: bool
    probability: float | None
    vectors: dict[int, np.ndarray]
    stream_seqs: list[int]               # seq of each entry of the session's score stream, in stream order
    participant_stream_seqs: list[int]   # the same, from the participant's stream (this session's entries)

    def assert_each_seq_applied_once(self, count: int) -> None:
        expected = list(range(count))
        assert self.applied == count - 1, self
        assert self.segments == count
        assert sorted(self.vectors) == expected
        assert self.stream_seqs == expected, "a segment applied twice, skipped or out of order"
        assert self.participant_stream_seqs == expected


def stored_session(redis_url: str, participant: str, session: str, model_version: str, *,
                   cluster: bool = False) -> StoredSession:
    """What Redis holds for one session, read with a plain client (see the key schema in store_keys.py)."""
    import redis
    from redis.cluster import RedisCluster

    keys = SessionKeys.build(participant, session, model_version)
    client = RedisCluster.from_url(redis_url) if cluster else redis.Redis.from_url(redis_url)
    try:
        record = client.hgetall(keys.session)
        vectors = client.hgetall(keys.vectors)
        entries = client.xrange(keys.updates)
        participant_entries = client.xrange(keys.participant_updates)
    finally:
        client.close()
    latest = json.loads(record[b"latest"]) if b"latest" in record else None
    return StoredSession(
        applied=int(record[b"applied"]) if b"applied" in record else None,
        segments=int(record.get(b"segments", 0)),
        ended=b"ended_at" in record,
        probability=latest["probability"] if latest else None,
        vectors={int(seq): np.frombuffer(vector, dtype="<f4") for seq, vector in vectors.items()},
        stream_seqs=[json.loads(fields[b"score"])["seq"] for _, fields in entries],
        participant_stream_seqs=[json.loads(fields[b"score"])["seq"] for _, fields in participant_entries
                                 if json.loads(fields[b"score"])["session_id"] == session],
    )


def offline_vectors(model, chunks: list[bytes]) -> np.ndarray:
    """The encoder's segment vectors for these chunks, computed offline in one batch."""
    waves = [np.frombuffer(c, dtype="<i2").astype(np.float32) / 32768.0 for c in chunks]
    return model.encode_segments(waves).numpy()
