"""The durable outbox on real SQLite files: crash survival, acks, and the disk-bound policies."""
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from moodstream.agent import Outbox, OutboxFull, SpeechChunk
from moodstream.agent.outbox import ROW_OVERHEAD_BYTES

RATE = 16000
CHUNK_SAMPLES = 4 * RATE
ROW_BYTES = CHUNK_SAMPLES * 2 + ROW_OVERHEAD_BYTES


def make_chunk(index: int) -> SpeechChunk:
    pcm = np.random.default_rng(index).integers(-2000, 2000, CHUNK_SAMPLES, dtype=np.int16).tobytes()
    return SpeechChunk(seq=index, start_seconds=10.0 * index, pcm=pcm, speech_seconds=4.0,
                       dropped_seconds=1.5, vad_frames=120, end_seconds=10.0 * index + 4.0)


def open_with_session(directory, session="s1", participant="p1", **options) -> Outbox:
    outbox = Outbox(directory, **options)
    outbox.open_session(session, participant, "kiosk-1", {"chunk_seconds": 4.0})
    return outbox


def test_chunks_stay_until_acked_and_carry_their_header(tmp_path):
    with open_with_session(tmp_path) as outbox:
        for index in range(3):
            assert outbox.put("s1", make_chunk(index)).seq == index
        assert outbox.ack("s1", 1) is True
        assert outbox.ack("s1", 1) is False  # a repeated ack finds nothing
    with Outbox(tmp_path) as reopened:
        pending = reopened.pending("s1")
        assert [c.seq for c in pending] == [0, 2]
        assert pending[1].pcm == make_chunk(2).pcm
        assert (pending[1].participant_id, pending[1].device_id, pending[1].sample_rate) == ("p1", "kiosk-1", RATE)
        assert (pending[1].start_seconds, pending[1].speech_seconds, pending[1].dropped_seconds,
                pending[1].vad_frames) == (20.0, 4.0, 1.5, 120)
        assert reopened.session("s1").next_seq == 3


def test_the_database_is_wal_with_full_sync_and_private(tmp_path):
    with open_with_session(tmp_path / "box") as outbox:
        assert outbox._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert (outbox.path.stat().st_mode & 0o077) == 0
        assert ((tmp_path / "box").stat().st_mode & 0o077) == 0
    probe = sqlite3.connect(tmp_path / "box" / "outbox.sqlite3")
    assert probe.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    probe.close()


WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from moodstream.agent import Outbox, SpeechChunk
    outbox = Outbox(sys.argv[1])
    outbox.open_session("crash", "p1", "kiosk-1")
    for index in range(10_000):
        pcm = np.random.default_rng(index).integers(-2000, 2000, 64000, dtype=np.int16).tobytes()
        outbox.put("crash", SpeechChunk(seq=index, start_seconds=10.0 * index, pcm=pcm, speech_seconds=4.0,
                                        dropped_seconds=0.0, vad_frames=1, end_seconds=10.0 * index + 4))
        print(index, flush=True)  # put() has returned: the chunk must survive anything now
""")


def test_every_stored_chunk_survives_sigkill(tmp_path):
    writer = subprocess.Popen([sys.executable, "-P", "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    confirmed = []
    try:
        for line in writer.stdout:
            confirmed.append(int(line))
            if len(confirmed) == 12:
                os.kill(writer.pid, signal.SIGKILL)  # mid-write of a later chunk, most likely
                break
    finally:
        writer.kill()
        writer.wait(timeout=30)
    assert len(confirmed) == 12, writer.stderr.read()

    check = sqlite3.connect(tmp_path / "outbox.sqlite3")
    assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    check.close()
    with Outbox(tmp_path) as outbox:
        pending = outbox.pending("crash")
        seqs = [c.seq for c in pending]
        assert seqs[:12] == confirmed
        assert seqs == list(range(len(seqs)))  # no torn or partial rows, no gaps
        assert outbox.session("crash").next_seq == len(seqs)
        for chunk in pending:
            expected = np.random.default_rng(chunk.seq).integers(-2000, 2000, 64000, dtype=np.int16).tobytes()
            assert chunk.pcm == expected


def test_refuse_policy_stops_at_the_bound_and_drops_nothing(tmp_path):
    with open_with_session(tmp_path, max_bytes=3 * ROW_BYTES, policy="refuse") as outbox:
        for index in range(3):
            outbox.put("s1", make_chunk(index))
        with pytest.raises(OutboxFull, match=r"outbox full: 3 unacknowledged chunks .*policy 'refuse'.*nothing was dropped"):
            outbox.put("s1", make_chunk(3))
        assert [c.seq for c in outbox.pending("s1")] == [0, 1, 2]
        assert outbox.drops() == []
        assert outbox.used_bytes() <= outbox.max_bytes
        outbox.ack("s1", 0)  # room again once the server has a chunk
        assert outbox.put("s1", make_chunk(3)).seq == 3


def test_drop_oldest_evicts_unsent_chunks_reports_each_and_keeps_seqs_gap_free(tmp_path):
    with open_with_session(tmp_path, max_bytes=3 * ROW_BYTES, policy="drop-oldest") as outbox:
        results = [outbox.put("s1", make_chunk(index)) for index in range(5)]
        evicted = [drop for result in results for drop in result.evicted]
        assert [(d.session_id, d.seq, d.start_seconds) for d in evicted] == [("s1", 0, 0.0), ("s1", 0, 10.0)]
        assert all("drop-oldest" in d.reason for d in evicted)
        assert [(d.seq, d.start_seconds) for d in outbox.drops("s1")] == [(0, 0.0), (0, 10.0)]
        pending = outbox.pending("s1")
        # The wire sequence has no gap for the server to wait on: 0, 1, 2 hold chunks 2, 3, 4.
        assert [c.seq for c in pending] == [0, 1, 2]
        assert [c.start_seconds for c in pending] == [20.0, 30.0, 40.0]
        assert [c.pcm for c in pending] == [make_chunk(i).pcm for i in (2, 3, 4)]
        assert outbox.session("s1").next_seq == 3
        assert outbox.session("s1").chunks_produced == 5
        assert outbox.used_bytes() <= outbox.max_bytes


def test_drop_oldest_never_drops_a_chunk_that_may_be_on_the_wire(tmp_path):
    with open_with_session(tmp_path, max_bytes=3 * ROW_BYTES, policy="drop-oldest") as outbox:
        for index in range(3):
            outbox.put("s1", make_chunk(index))
        assert outbox.claim_next("s1", 0).seq == 0  # sent: the server may have applied it
        assert outbox.claim_next("s1", 1).seq == 1
        result = outbox.put("s1", make_chunk(3))
        assert [(d.seq, d.start_seconds) for d in result.evicted] == [(2, 20.0)]
        assert [c.start_seconds for c in outbox.pending("s1")] == [0.0, 10.0, 30.0]
        assert outbox.claim_next("s1", 2).seq == 2
        with pytest.raises(OutboxFull, match="awaiting the server's ack"):
            outbox.put("s1", make_chunk(4))
        assert len(outbox.pending("s1")) == 3  # the failed put evicted nothing


def test_drop_oldest_takes_the_oldest_session_first(tmp_path):
    with Outbox(tmp_path, max_bytes=3 * ROW_BYTES, policy="drop-oldest") as outbox:
        outbox.open_session("old", "p1", "kiosk-1")
        outbox.open_session("new", "p2", "kiosk-1")
        outbox.put("old", make_chunk(0))
        outbox.put("old", make_chunk(1))
        outbox.put("new", make_chunk(0))
        evicted = outbox.put("new", make_chunk(1)).evicted
        assert [(d.session_id, d.seq) for d in evicted] == [("old", 0)]
        assert [c.start_seconds for c in outbox.pending("old")] == [10.0]
        assert outbox.session("old").next_seq == 1


def test_a_session_belongs_to_one_participant(tmp_path):
    with open_with_session(tmp_path) as outbox:
        with pytest.raises(ValueError, match="belongs to participant 'p1'"):
            outbox.open_session("s1", "p2", "kiosk-1")


def test_bad_outbox_options_are_refused(tmp_path):
    with pytest.raises(ValueError, match="policy must be one of refuse, drop-oldest"):
        Outbox(tmp_path, policy="drop-newest")
    with pytest.raises(ValueError, match="bound must be more than"):
        Outbox(tmp_path, max_bytes=10)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="cannot create the outbox folder"):
        Outbox(tmp_path / "file" / "box")
