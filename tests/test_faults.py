"""Fault injection against real processes on 127.0.0.1: a scoring server SIGKILLed mid-session (the
agent fails over to a replica), Redis SIGKILLed and restarted (AOF, appendfsync always), a full agent
outbox, two servers writing one session at once, and a subscriber that stops reading.

Every run ends with the same check: the score equals the offline batch score of the same chunks, and
Redis holds each seq exactly once (applied seq, vectors, and one stream entry per seq, in order).
Where the agent is involved it is the real `moodstream agent` process. An agent killed and restarted
is covered by test_pipeline_e2e.py::test_an_agent_killed_mid_session_resends_from_its_outbox and
test_agent_client.py::test_an_agent_killed_mid_capture_resumes_its_session_from_the_outbox.
"""
import json
import queue
import statistics
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import redis
from prometheus_client import REGISTRY

from moodstream.agent import CaptureSettings, FileSource, capture_chunks
from moodstream.compose.redis_process import RedisProcess
from moodstream.server.service import ServiceSettings
from moodstream.server.redis_connection import redis_retry
from moodstream.server.store import SessionStore
from moodstream.v1 import moodstream_pb2 as pb
from process_harness import offline_vectors, start_servers, stored_session, windowed_stream
from raw_client import client_for
from server_harness import make_chunks, offline_score, running_server, stub_for
from test_pipeline_e2e import interview_file
from waiting import wait_for, wait_until_steady

TOLERANCE = 1e-5
MODEL_SEED = 11  # the conftest's `model` fixture, which its `checkpoint` fixture saves for server processes


def agent_chunks(path) -> list[bytes]:
    """The chunks `moodstream agent FILE` makes (default settings, no prompts), without a server."""
    chunks = [c.pcm for c in capture_chunks(FileSource(path), CaptureSettings()).chunks]
    assert len(chunks) >= 5
    return chunks


class AgentProcess:
    """`moodstream agent --json` as a child process; its events are read on a thread."""

    def __init__(self, servers: list[str], token: str, participant: str, session: str, path, outbox, log_path,
                 *extra: str, speed: float = 12.0) -> None:
        command = [sys.executable, "-P", "-m", "moodstream.compose.cli", "agent", "--token", token,
                   "--participant", participant, "--session", session, "--outbox", str(outbox),
                   "--speed", str(speed), "--json", "--max-retry-seconds", "30", *extra]
        for server in servers:
            command += ["--server", server]
        command.append(str(path))
        self.log = open(log_path, "w")
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.events: list[dict] = []
        self._queue: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self._queue.put(json.loads(line))
        self._queue.put(None)

    def wait_for(self, predicate, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                event = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            if event is None:
                raise AssertionError(f"the agent ended early (events: {self.events[-5:]})")
            self.events.append(event)
            if predicate(event, self.events):
                return event
        raise AssertionError(f"timed out waiting for an agent event (last: {self.events[-5:]})")

    def finish(self, timeout: float = 90.0) -> int:
        try:
            code = self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(10)
            self._reader.join(10)
            self.log.close()
        while True:
            event = self._queue.get_nowait() if not self._queue.empty() else None
            if event is None:
                break
            self.events.append(event)
        return code

    def of_kind(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["event"] == kind]


def acked(count: int):
    return lambda event, events: sum(e["event"] == "ack" for e in events) >= count


def assert_matches_offline(model, chunks, stored, count=None):
    stored.assert_each_seq_applied_once(count or len(chunks))
    assert stored.ended
    vectors = np.stack([stored.vectors[seq] for seq in sorted(stored.vectors)])
    assert np.abs(vectors - offline_vectors(model, chunks)).max() <= TOLERANCE
    assert abs(stored.probability - offline_score(model, chunks)) <= TOLERANCE


# -- 1. a scoring server SIGKILLed mid-session --------------------------------------------------------


def test_a_server_sigkilled_mid_session_fails_over_to_a_replica(checkpoint, model, redis_url, tokens, tmp_path):
    path = interview_file(tmp_path / "interview.wav", seed=31, answers=5)
    chunks = agent_chunks(path)
    first, second = start_servers(2, checkpoint, redis_url, tokens.path, tmp_path)
    try:
        assert first.model_version == second.model_version == model.model_version
        agent = AgentProcess([first.address, second.address], tokens.by_name["agent"], "p1", "failover", path,
                             tmp_path / "outbox", tmp_path / "agent.log")
        agent.wait_for(acked(2))
        first.kill()  # SIGKILL mid-session: no drain, the agent's stream breaks
        assert agent.finish() == 0, (tmp_path / "agent.log").read_text()
        assert first.process.returncode == -9
        with stub_for(second.port) as stub:
            latest = stub.GetScore(pb.GetScoreRequest(session_id="failover"), metadata=tokens.metadata("admin"))
    finally:
        for server in (first, second):
            server.close()
    hops = [(e["failed_server"], e["server"]) for e in agent.of_kind("retry")]
    assert hops and hops[0] == (first.address, second.address)
    failed_over = next(i for i, e in enumerate(agent.events) if e["event"] == "retry")
    applied_by_second = [e["seq"] for e in agent.events[failed_over:] if e["event"] == "ack" and not e["duplicate"]]
    assert applied_by_second and max(applied_by_second) == len(chunks) - 1  # the replica finished the session
    done = agent.of_kind("done")[-1]
    assert done["completed"] and done["final_segments"] == len(chunks)
    assert sorted({e["seq"] for e in agent.of_kind("ack")}) == list(range(len(chunks)))
    stored = stored_session(redis_url, "p1", "failover", model.model_version)
    assert_matches_offline(model, chunks, stored)
    assert latest.segments == len(chunks) and abs(latest.probability - offline_score(model, chunks)) <= TOLERANCE


# -- 2. Redis SIGKILLed and restarted mid-session ----------------------------------------------------


def redis_errors() -> float:
    return REGISTRY.get_sample_value("moodstream_redis_errors_total") or 0.0


OUTAGE_FAILURES = 4  # failed attempts of the server's Redis calls (retries 50, 100, 200 ms apart) before Redis is back


def test_redis_sigkilled_and_restarted_mid_session_loses_no_acked_chunk(model, tokens, tmp_path):
    path = interview_file(tmp_path / "interview.wav", seed=32, answers=5)
    chunks = agent_chunks(path)
    errors_before = redis_errors()
    with RedisProcess(appendonly=True, appendfsync="always") as store_process, \
            running_server(model, store_process.url, tokens) as server:
        agent = AgentProcess([f"127.0.0.1:{server.port}"], tokens.by_name["agent"], "p2", "redis-crash", path,
                             tmp_path / "outbox", tmp_path / "agent.log")
        agent.wait_for(acked(2))
        acked_before = max(e["seq"] for e in agent.of_kind("ack"))
        store_process.kill()      # SIGKILL: only what was fsynced to the AOF survives
        # The agent keeps sending; keep Redis down until the server has met the outage (its next
        # apply fails) and retried through it: every failed attempt counts in redis_errors.
        wait_for(lambda: redis_errors() >= errors_before + OUTAGE_FAILURES, "the server to retry through the outage",
                 timeout=20)
        store_process.start()     # same port, AOF replayed
        client = redis.Redis.from_url(store_process.url)
        try:
            session_key = f"ms:{{p:p2}}:{model.model_version}:s:redis-crash"
            applied_after_restart = int(client.hget(session_key, "applied"))
        finally:
            client.close()
        assert agent.finish() == 0, (tmp_path / "agent.log").read_text()
        stored = stored_session(store_process.url, "p2", "redis-crash", model.model_version)
    assert acked_before < len(chunks) - 1          # the crash came mid-session
    assert applied_after_restart >= acked_before  # every chunk acked before the crash is still there
    assert redis_errors() > errors_before         # the server did see Redis go away ...
    done = agent.of_kind("done")[-1]
    assert done["completed"] and done["reconnects"] == 0  # ... and rode it out without dropping the stream
    assert_matches_offline(model, chunks, stored)


def test_a_redis_down_past_the_retry_budget_is_unavailable_and_the_next_call_after_its_restart_works(model, tokens,
                                                                                                       pool):
    settings = ServiceSettings(redis_retry_seconds=1.0)
    with RedisProcess() as store_process, running_server(model, store_process.url, tokens, settings=settings) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        raw = client_for(channel, pool, tokens, "admin")
        request = raw.request("GetScore", session_id="never-streamed")

        def status() -> tuple[grpc.StatusCode, str]:
            with pytest.raises(grpc.RpcError) as refused:
                raw.unary("GetScore", request, timeout=30)
            return refused.value.code(), refused.value.details()

        assert status()[0] == grpc.StatusCode.NOT_FOUND
        errors_before = redis_errors()
        store_process.kill()
        started = time.monotonic()
        code, details = status()
        waited = time.monotonic() - started
        store_process.start()
        assert (code, details.startswith("session store unavailable")) == (grpc.StatusCode.UNAVAILABLE, True)
        assert waited >= settings.redis_retry_seconds  # the client rode the outage out first ...
        assert redis_errors() - errors_before >= redis_retry(settings.redis_retry_seconds).get_retries() + 1
        assert status()[0] == grpc.StatusCode.NOT_FOUND  # ... and reconnects by itself once Redis is back


# -- 3. a full outbox -----------------------------------------------------------------------------------


def test_a_full_outbox_under_refuse_is_reported_by_the_cli_and_what_was_stored_is_delivered(model, redis_url,
                                                                                             tokens, tmp_path):
    """The bound is hit while the server is unreachable: the --json stream says so (policy 'refuse',
    nothing dropped), the exit code is 1, and --flush later delivers exactly the stored chunks."""
    path = interview_file(tmp_path / "interview.wav", seed=33, answers=5)
    chunks = agent_chunks(path)
    two_chunks_mb = 2.2 * (len(chunks[0]) + 512) / 2**20
    outbox = tmp_path / "outbox"
    full = subprocess.run(
        [sys.executable, "-P", "-m", "moodstream.compose.cli", "agent", "--server", "127.0.0.1:1", "--participant", "p3",
         "--session", "full-box", "--outbox", str(outbox), "--outbox-max-mb", f"{two_chunks_mb:.4f}",
         "--max-retry-seconds", "1", "--json", str(path)], capture_output=True, text=True, timeout=60)
    assert full.returncode == 1
    events = [json.loads(line) for line in full.stdout.splitlines()]
    assert events[0]["event"] == "session" and events[0]["outbox_policy"] == "refuse"
    capture_errors = [e["message"] for e in events if e["event"] == "error" and e["stage"] == "capture"]
    assert len(capture_errors) == 1
    assert "outbox full: 2 unacknowledged chunks" in capture_errors[0]
    assert "policy 'refuse'" in capture_errors[0] and "nothing was dropped" in capture_errors[0]
    assert not [e for e in events if e["event"] == "dropped" and e["drop"] != "last_partial"]
    assert [e["seq"] for e in events if e["event"] == "chunk"] == [0, 1]
    assert "agent: error: outbox full" in full.stderr and "policy 'refuse'" in full.stderr
    assert "moodstream agent: failed: gave up reaching 127.0.0.1:1" in full.stderr  # exit 1, not 130: no Ctrl-C

    with running_server(model, redis_url, tokens) as server:
        flush = subprocess.run(
            [sys.executable, "-P", "-m", "moodstream.compose.cli", "agent", "--server", f"127.0.0.1:{server.port}",
             "--token", tokens.by_name["agent"], "--flush", "--outbox", str(outbox), "--json"],
            capture_output=True, text=True, timeout=60)
    assert flush.returncode == 0, flush.stderr
    stored = stored_session(redis_url, "p3", "full-box", model.model_version)
    assert_matches_offline(model, chunks[:2], stored)


# -- 4. two servers receive the same session at once --------------------------------------------------


def test_a_stale_connection_and_a_new_one_on_two_replicas_apply_each_seq_once(model, redis_url, tokens):
    """The agent's connection to A looks dead to it but is still open (a half-open TCP connection);
    it reconnects to B and resends everything. Both write the same session at once: the apply
    script lets exactly one writer win each seq, the loser takes the state over from Redis."""
    chunks = make_chunks(8, seed=41, seconds=3.0)
    metadata = tokens.metadata("agent")
    with running_server(model, redis_url, tokens) as a, running_server(model, redis_url, tokens) as b, \
            stub_for(a.port) as stub_a, stub_for(b.port) as stub_b:
        # 1. the stale connection applied 0-2 and stays open
        release = threading.Event()
        stale = {}
        stale_thread = threading.Thread(target=lambda: stale.setdefault("first", windowed_stream(
            stub_a, "raced", "p4", {s: chunks[s] for s in range(3)}, metadata, hold=release)))
        stale_thread.start()
        deadline = time.monotonic() + 30
        while stored_session(redis_url, "p4", "raced", model.model_version).applied != 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # 2. both race over 3-7: A on a second stale-side connection, B on the new one
        start = threading.Barrier(2)
        results = {}

        def send(name, stub, last_seq):
            results[name] = windowed_stream(stub, "raced", "p4", {s: chunks[s] for s in range(8)}, metadata,
                                            last_seq=last_seq, start=start, window=4)

        racers = [threading.Thread(target=send, args=("a", stub_a, None)),
                  threading.Thread(target=send, args=("b", stub_b, 7))]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join(60)
        # 3. the stale connection sends one more chunk, after B's End: refused, nothing written
        release.set()
        stale_thread.join(30)
        late = windowed_stream(stub_a, "raced", "p4", {8: make_chunks(1, seed=42, seconds=3.0)[0]}, metadata)
    assert stale["first"].error is None and [seq for seq, _ in stale["first"].acks] == [0, 1, 2]
    for name in ("a", "b"):
        assert results[name].error is None, results[name].error
        assert sorted(seq for seq, _ in results[name].acks) == list(range(8))
    winners = [seq for name in ("a", "b") for seq, duplicate in results[name].acks if not duplicate]
    assert sorted(winners) == [3, 4, 5, 6, 7]  # one writer won each seq
    assert late.error is not None and late.error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "has ended" in late.error.details()
    stored = stored_session(redis_url, "p4", "raced", model.model_version)
    assert_matches_offline(model, chunks, stored)


# -- 5. a subscriber that reads nothing for a while ---------------------------------------------------


def test_a_stalled_subscriber_never_blocks_ingestion_and_then_sees_every_update_in_order(model, redis_url, tokens,
                                                                                         monkeypatch):
    """Subscribers that stop reading while a session streams hundreds of chunks: their HTTP/2
    windows fill up (BDP probing is off, so each stays at the 64 KiB default) and their Subscribe
    handlers wait, yet acks come as fast as with nobody subscribed. Each then reads every update, in
    order, on the same call, and again from an offset after it."""
    count = 600  # ~200 bytes per update: more than a 64 KiB window holds
    chunks = dict(enumerate(make_chunks(count, seed=51, seconds=1.2)))
    metadata = tokens.metadata("agent")
    handed_to_subscribers = []
    read_updates = SessionStore.read_updates

    async def counted(self, *args, **kwargs):
        batch = await read_updates(self, *args, **kwargs)
        if kwargs.get("participant_id") == "p6":
            handed_to_subscribers.append(len(batch.updates))
        return batch

    monkeypatch.setattr(SessionStore, "read_updates", counted)
    with running_server(model, redis_url, tokens) as server, stub_for(server.port) as stub:
        baseline = windowed_stream(stub, "unwatched", "p5", {s: chunks[s] for s in range(200)}, metadata,
                                   last_seq=199)
        assert baseline.error is None
        channels = [grpc.insecure_channel(f"127.0.0.1:{server.port}", options=[("grpc.http2.bdp_probe", 0)])
                    for _ in range(4)]
        try:
            stalled = [pb_stub(channel).Subscribe(pb.SubscribeRequest(participant_id="p6", after_offset=""),
                                                  metadata=tokens.metadata("admin"), timeout=120)
                       for channel in channels]
            watched = windowed_stream(stub, "watched", "p6", chunks, metadata, last_seq=count - 1)
            assert watched.error is None
            # the stalled handlers read what they can until flow control holds them
            held_back = wait_until_steady(lambda: sum(handed_to_subscribers), "the stalled handlers to settle")
            seen = [[update for _, update in zip(range(count), call)] for call in stalled]
            for call in stalled:
                call.cancel()
            resumed = stub.Subscribe(pb.SubscribeRequest(participant_id="p6", after_offset=seen[0][99].offset),
                                     metadata=tokens.metadata("admin"), timeout=60)
            rest = [update for _, update in zip(range(count - 100), resumed)]
            resumed.cancel()
        finally:
            for channel in channels:
                channel.close()
    assert held_back < len(stalled) * count  # flow control held the stalled subscribers' handlers back
    assert [seq for seq, duplicate in watched.acks] == list(range(count))
    slowed = statistics.median(watched.ack_latency.values())
    unwatched = statistics.median(baseline.ack_latency.values())
    assert slowed <= 4 * unwatched + 0.1, (slowed, unwatched)
    for updates in seen:
        assert [u.seq for u in updates] == list(range(count))
        assert len({u.offset for u in updates}) == count
    assert [u.seq for u in rest] == list(range(100, count))
    assert abs(seen[0][-1].probability - offline_score(model, list(chunks.values()))) <= TOLERANCE


def pb_stub(channel):
    from moodstream.v1 import moodstream_pb2_grpc

    return moodstream_pb2_grpc.ScreeningStub(channel)


SUBSCRIBE_BLOCK_MS = 50


def test_cancelled_subscribers_leave_no_handler_behind(model, redis_url, tokens):
    """A dashboard that reconnects often: each Subscribe it cancels must end on the server too.
    (A cancellation arriving during the handler's blocking Redis read used to be lost, leaving the
    handler polling Redis forever.) Handlers block on Redis 50 ms at a time here, so a live one would
    poll Redis 4 times in the 0.2 s watched at the end."""
    import redis as redis_sync

    chunks = make_chunks(3, seed=71, seconds=2.0)
    client = redis_sync.Redis.from_url(redis_url)

    def xread_calls() -> int:
        return int(client.info("commandstats").get("cmdstat_xread", {}).get("calls", 0))

    def subscribers() -> float:
        return REGISTRY.get_sample_value("moodstream_subscribers_active") or 0.0

    try:
        settings = ServiceSettings(subscribe_block_ms=SUBSCRIBE_BLOCK_MS)
        with running_server(model, redis_url, tokens, settings=settings) as server, stub_for(server.port) as stub:
            assert windowed_stream(stub, "followed", "p1", dict(enumerate(chunks)), tokens.metadata("agent"),
                                   last_seq=2).error is None
            before = subscribers()
            for _ in range(8):
                call = stub.Subscribe(pb.SubscribeRequest(session_id="followed"),
                                      metadata=tokens.metadata("reader-p1"), timeout=30)
                assert [u.seq for _, u in zip(range(3), call)] == [0, 1, 2]
                call.cancel()
                time.sleep(0.2)
            deadline = time.monotonic() + 5
            while subscribers() > before and time.monotonic() < deadline:
                time.sleep(0.1)
            left_open = subscribers() - before
            polled = xread_calls()
            time.sleep(4 * SUBSCRIBE_BLOCK_MS / 1000)  # a live handler polls Redis every subscribe_block_ms
            polls_since = xread_calls() - polled
    finally:
        client.close()
    assert left_open == 0
    assert polls_since == 0
