"""Helpers for tests that run a real scoring server on 127.0.0.1 against a real Redis."""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import torch

from moodstream.model import ModelConfig, ScreeningModel
from moodstream.server.app import BackgroundServer, ServerConfig
from moodstream.server.auth import create_token
from moodstream.v1 import moodstream_pb2 as pb
from moodstream.v1 import moodstream_pb2_grpc as pb_grpc

RATE = 16000


def tiny_model(seed: int = 0) -> ScreeningModel:
    torch.manual_seed(seed)
    return ScreeningModel(ModelConfig.tiny())


def make_chunks(count: int, seed: int, seconds: float = 7.0) -> list[bytes]:
    """Speech-like PCM s16le chunks (voiced harmonics with syllable-rate modulation)."""
    rng = np.random.default_rng(seed)
    chunks = []
    for index in range(count):
        t = np.arange(int(seconds * RATE)) / RATE
        pitch = rng.uniform(90, 220)
        voiced = sum(np.sin(2 * np.pi * pitch * k * t + rng.uniform(0, 6)) / k for k in range(1, 6))
        envelope = 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(3, 6) * t))
        wave = 0.2 * voiced * envelope + 0.01 * rng.standard_normal(t.size)
        chunks.append((np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes())
    return chunks


def offline_score(model: ScreeningModel, chunks: list[bytes]) -> float:
    waves = [np.frombuffer(c, dtype="<i2").astype(np.float32) / 32768.0 for c in chunks]
    return model.score(model.encode_segments(waves))


def header(session: str, participant: str, **overrides) -> pb.StreamRequest:
    values = dict(session_id=session, participant_id=participant, device_id="test-device", sample_rate=RATE,
                  encoding=pb.AUDIO_ENCODING_PCM_S16LE)
    values.update(overrides)
    return pb.StreamRequest(header=pb.SessionHeader(**values))


def chunk(seq: int, pcm: bytes) -> pb.StreamRequest:
    return pb.StreamRequest(chunk=pb.Chunk(seq=seq, start_seconds=7.0 * seq, pcm=pcm))


def end(last_seq: int) -> pb.StreamRequest:
    return pb.StreamRequest(end=pb.End(last_seq=last_seq))


@dataclass
class Tokens:
    path: Path
    by_name: dict[str, str] = field(default_factory=dict)

    def metadata(self, name: str) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.by_name[name]}")]


# name -> (participants it may stream for, participants it may read)
USUAL_SCOPES = {
    "agent": (["p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8", "p9"], []),
    "agent-p1": (["p1"], []),
    "reader-p1": ([], ["p1"]),
    "admin": (["*"], ["*"]),
}


def write_tokens(directory: Path, scopes: dict[str, tuple[list[str], list[str]]] | None = None) -> Tokens:
    tokens = Tokens(directory / "tokens.json")
    for name, (stream, read) in (USUAL_SCOPES if scopes is None else scopes).items():
        tokens.by_name[name] = create_token(tokens.path, name, stream, read)
    return tokens


@contextlib.contextmanager
def running_server(model, redis_url: str, tokens: Tokens, **overrides):
    # A fixed encoder path by default: no start-up measuring in tests that are not about it.
    options = {"precision": "fp32", "max_batch": 1, **overrides}
    config = ServerConfig(checkpoint="", redis_url=redis_url, port=0, tokens_file=tokens.path, **options)
    with BackgroundServer(config, model) as server:
        yield server


class ServerFactory:
    """Starts scoring servers (running_server) and stops every one of them at close().

    `model`, `tokens` and `redis_url` are callables giving what a call leaves out, asked only when
    needed: a test that brings its own never builds, or empties, the default one. Every server carries
    the `redis_url` and `tokens` it was started with.
    """

    def __init__(self, *, model, tokens, redis_url) -> None:
        self._defaults = {"model": model, "tokens": tokens, "redis_url": redis_url}
        self._started = contextlib.ExitStack()

    def __call__(self, **options) -> BackgroundServer:
        """A running server that stays up until close()."""
        return self._started.enter_context(self.running(**options))

    @contextlib.contextmanager
    def running(self, *, model=None, tokens: Tokens | None = None, redis_url: str | None = None, **overrides):
        """A running server for a `with` block: for a test that needs it stopped before the test ends."""
        model = self._defaults["model"]() if model is None else model
        tokens = self._defaults["tokens"]() if tokens is None else tokens
        redis_url = self._defaults["redis_url"]() if redis_url is None else redis_url
        with running_server(model, redis_url, tokens, **overrides) as server:
            server.redis_url, server.tokens = redis_url, tokens
            yield server

    def close(self) -> None:
        self._started.close()


@contextlib.contextmanager
def stub_for(port: int):
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield pb_grpc.ScreeningStub(channel)
    finally:
        channel.close()


def stream(stub, requests, metadata, timeout: float = 60.0) -> list[pb.StreamResponse]:
    return list(stub.Stream(iter(requests), metadata=metadata, timeout=timeout))


def finished_session(port: int, tokens: Tokens, session: str, participant: str = "p1", chunks: int = 3,
                     seed: int = 12) -> pb.ScoreUpdate:
    """A session of `chunks` 7 s chunks streamed and ended as an agent does; its latest stored score."""
    pcm = make_chunks(chunks, seed=seed)
    with stub_for(port) as stub:
        stream(stub, [header(session, participant),
                      *[pb.StreamRequest(chunk=pb.Chunk(seq=seq, start_seconds=7.0 * seq, pcm=c))
                        for seq, c in enumerate(pcm)], end(chunks - 1)], tokens.metadata("agent"))
        return stub.GetScore(pb.GetScoreRequest(session_id=session), metadata=tokens.metadata("admin"))


def redis_keys(redis_url: str) -> list[str]:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        return sorted(key.decode() for key in client.keys("*"))
    finally:
        client.close()


def dump(obj) -> str:
    return json.dumps(obj, indent=1, default=str)
