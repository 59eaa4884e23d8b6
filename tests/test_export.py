"""`moodstream export`: sessions out of a real Redis (single and Cluster), into Parquet, read back exactly."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from moodstream.field_export import read_export, write_export
from moodstream.server.export import collect_sessions, parse_since
from moodstream.server.redis_connection import connect
from server_harness import chunk, end, header, make_chunks, running_server, stream, stub_for, tiny_model

MODEL_SEED = 0  # the conftest's `model` fixture: the tiny model of this seed


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-P", "-m", "moodstream.compose.cli", *args], capture_output=True, text=True,
                          timeout=120)


def stream_session(server, tokens, session: str, participant: str, pcm: list[bytes], finish: bool = True) -> None:
    requests = [header(session, participant, device_id=f"kiosk-{participant}")]
    requests += [chunk(seq, c) for seq, c in enumerate(pcm)]
    with stub_for(server.port) as stub:
        stream(stub, requests + ([end(len(pcm) - 1)] if finish else []), tokens.metadata("agent"))


def encoded(model, pcm: list[bytes]) -> np.ndarray:
    return model.encode_segments([np.frombuffer(c, dtype="<i2").astype(np.float32) / 32768.0 for c in pcm]).numpy()


def test_export_writes_every_sessions_vectors_and_context_and_reads_back(redis_url, tokens, tmp_path):
    first, second = tiny_model(0), tiny_model(1)
    audio = {"a": make_chunks(3, seed=21), "b": make_chunks(2, seed=22), "c": make_chunks(4, seed=23)}
    with running_server(first, redis_url, tokens) as one, running_server(second, redis_url, tokens) as two:
        stream_session(one, tokens, "a", "p1", audio["a"])
        stream_session(two, tokens, "b", "p1", audio["b"], finish=False)
        middle = time.time()
        time.sleep(0.05)
        stream_session(one, tokens, "c", "p2", audio["c"])

    out = tmp_path / "export"
    done = cli("export", "--redis", redis_url, str(out))
    assert done.returncode == 0, done.stderr
    assert "exported 3 session(s), 9 segment(s)" in done.stdout
    manifest, sessions = read_export(out)
    assert manifest["sessions"] == 3 and manifest["segments"] == 9
    assert manifest["model_versions"] == sorted({first.model_version, second.model_version})
    assert "not a diagnosis" in manifest["notice"]
    by_id = {s.session_id: s for s in sessions}
    for session_id, model, participant, state in (("a", first, "p1", "ended"), ("b", second, "p1", "interrupted"),
                                                  ("c", first, "p2", "ended")):
        session, pcm = by_id[session_id], audio[session_id]
        assert (session.participant_id, session.model_version, session.state) == (participant, model.model_version,
                                                                                  state)
        assert session.device_id == f"kiosk-{participant}"
        assert session.seqs == list(range(len(pcm)))
        np.testing.assert_allclose(session.vector_matrix(), encoded(model, pcm), atol=1e-5)
        assert session.speech_seconds == pytest.approx(7.0 * len(pcm))
        assert session.cumulative_speech == pytest.approx([7.0 * (s + 1) for s in range(len(pcm))])
        assert session.start_seconds == pytest.approx([7.0 * s for s in range(len(pcm))])
        assert all(t is not None and t > 1e9 for t in session.times)
        assert session.probability == pytest.approx(session.probabilities[-1])
        assert (session.ended_unix is not None) == (state == "ended")
    # Plain Parquet: what a data scientist opens. No audio anywhere.
    table = pq.read_table(out / "segments.parquet")
    assert table.num_rows == 9 and "vector" in table.column_names
    assert not {"pcm", "audio"} & set(table.column_names + pq.read_table(out / "sessions.parquet").column_names)

    only = tmp_path / "p1-since"
    done = cli("export", "--redis", redis_url, "--participant", "p1", "--since", str(middle - 3600), str(only))
    assert done.returncode == 0, done.stderr
    assert {s.session_id for s in read_export(only)[1]} == {"a", "b"}
    later = tmp_path / "later"
    assert cli("export", "--redis", redis_url, "--since", str(middle), str(later)).returncode == 0
    assert {s.session_id for s in read_export(later)[1]} == {"c"}


def test_export_selects_model_versions_and_refuses_an_empty_export_unless_allowed(redis_url, tokens, tmp_path):
    first, second = tiny_model(0), tiny_model(1)
    with running_server(first, redis_url, tokens) as one, running_server(second, redis_url, tokens) as two:
        stream_session(one, tokens, "a", "p1", make_chunks(2, seed=31))
        stream_session(two, tokens, "b", "p1", make_chunks(1, seed=32))

    only_second = tmp_path / "second"
    done = cli("export", "--redis", redis_url, "--model-version", second.model_version, str(only_second))
    assert done.returncode == 0, done.stderr
    manifest, sessions = read_export(only_second)
    assert [s.session_id for s in sessions] == ["b"] and manifest["model_versions"] == [second.model_version]
    assert manifest["filters"]["model_versions"] == [second.model_version]

    # Nothing matches: exit 1, one line naming the filters and what is stored, nothing written.
    for args, words in ((["--model-version", "m-unknown"], "model version m-unknown"),
                        (["--participant", "nobody"], "participant nobody"),
                        (["--since", str(time.time() + 86400)], "since ")):
        out = tmp_path / "empty"
        done = cli("export", "--redis", redis_url, *args, str(out))
        assert done.returncode == 1, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "no session" in done.stderr and words in done.stderr and first.model_version in done.stderr
        assert not out.exists()
    done = cli("export", "--redis", redis_url, "--participant", "nobody", "--allow-empty", str(tmp_path / "empty"))
    assert done.returncode == 0, done.stderr
    assert read_export(tmp_path / "empty")[0]["sessions"] == 0


def test_export_refuses_bad_arguments_with_one_line_and_writes_nothing(redis_url, redis_cluster_url, tmp_path):
    existing = tmp_path / "existing"
    existing.mkdir()
    cases = [
        (["--redis", redis_url, str(existing)], "exists: choose a new folder"),
        (["--redis", redis_url, "--since", "last tuesday", str(tmp_path / "x")], "neither Unix seconds nor an ISO"),
        (["--redis", redis_url, "--participant", "no way", str(tmp_path / "x")], "is not a participant id"),
        (["--redis", redis_url, "--model-version", "no way", str(tmp_path / "x")], "is not a model version"),
        (["--redis", redis_cluster_url, str(tmp_path / "x")], "is a Redis Cluster node: add --redis-cluster"),
        (["--redis", "redis://127.0.0.1:1", str(tmp_path / "x")], "cannot reach Redis"),
    ]
    for args, words in cases:
        done = cli("export", *args)
        assert done.returncode != 0 and words in done.stderr, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "x").exists() and not list(existing.iterdir())


def test_export_reads_a_redis_cluster(redis_cluster_url, model, tokens, tmp_path):
    audio = {f"k{i}": make_chunks(2, seed=30 + i) for i in range(4)}
    with running_server(model, redis_cluster_url, tokens, redis_cluster=True) as server:
        for index, (session, pcm) in enumerate(audio.items()):
            stream_session(server, tokens, session, f"p{index + 1}", pcm)

    async def export():
        client = connect(redis_cluster_url, cluster=True)
        try:
            return await collect_sessions(client)
        finally:
            await client.aclose()

    write_export(tmp_path / "cluster", asyncio.run(export()), {})
    _, sessions = read_export(tmp_path / "cluster")
    assert sorted(s.session_id for s in sessions) == sorted(audio)
    for session in sessions:
        np.testing.assert_allclose(session.vector_matrix(), encoded(model, audio[session.session_id]), atol=1e-5)
    done = cli("export", "--redis", redis_cluster_url, "--redis-cluster", str(tmp_path / "by-cli"))
    assert done.returncode == 0, done.stderr
    assert len(read_export(tmp_path / "by-cli")[1]) == 4


def test_since_takes_unix_seconds_and_iso_dates():
    assert parse_since("1700000000") == 1700000000.0
    assert parse_since("2026-11-01") == 1793491200.0
    assert parse_since("2026-11-01T01:00+01:00") == 1793491200.0
    with pytest.raises(ValueError, match=">= 0"):
        parse_since("-5")
