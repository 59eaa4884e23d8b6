"""Delivery over real gRPC sockets against a tiny in-test implementation of the Stream contract.

The real scoring server is exercised end to end elsewhere; this small one can
drop connections and refuse on cue, so resend-until-acked and the error
handling are tested deterministically.
"""
import json
import os
import signal
import subprocess
import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile

from moodstream.agent import (AgentError, CaptureSettings, DeliveryGaveUp, FileSource, Outbox, PromptGate,
                              RetryPolicy, ServerRefused, ServerTarget, capture_chunks, run_agent)
from moodstream.v1 import moodstream_pb2 as pb
from moodstream.v1 import moodstream_pb2_grpc as pb_grpc
from certs import CertificateAuthority
from test_agent_signals import RATE, quiet, speech_like

TOKEN = "test-token"
FAST_RETRY = RetryPolicy(initial_delay_seconds=0.05, max_delay_seconds=0.2, max_total_seconds=10.0)


class TinyScreening(pb_grpc.ScreeningServicer):
    """Applies chunks in seq order, idempotently; its "score" is the mean level of the audio so far."""

    def __init__(self):
        self.lock = threading.Lock()
        self.applied: dict[str, list[bytes]] = {}
        self.headers: list[pb.SessionHeader] = []
        self.ended: dict[str, int] = {}
        self.drop_connection_after_acks: int | None = None  # simulate transport failures ...
        self.drops_left = 1                                   # ... this many times

    def Stream(self, requests, context):
        if dict(context.invocation_metadata()).get("authorization") != f"Bearer {TOKEN}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown or revoked token")
        header = next(requests).header
        with self.lock:
            self.headers.append(header)
            applied = self.applied.setdefault(header.session_id, [])
        acks = 0
        for request in requests:
            if request.WhichOneof("message") == "end":
                if request.end.last_seq != len(applied) - 1:
                    context.abort(grpc.StatusCode.FAILED_PRECONDITION, "End does not match the applied chunks")
                self.ended[header.session_id] = request.end.last_seq
                return
            chunk = request.chunk
            if chunk.seq > len(applied):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"gap before seq {chunk.seq}")
            duplicate = chunk.seq < len(applied)
            if not duplicate:
                applied.append(chunk.pcm)
            yield pb.StreamResponse(ack=pb.Ack(seq=chunk.seq, duplicate=duplicate))
            if not duplicate:
                yield pb.StreamResponse(score=pb.ScoreUpdate(
                    session_id=header.session_id, participant_id=header.participant_id, segments=len(applied),
                    probability=level(applied), seq=chunk.seq, model_version="tiny-test"))
            acks += 1
            if self.drop_connection_after_acks is not None and acks >= self.drop_connection_after_acks \
                    and self.drops_left > 0:
                self.drops_left -= 1
                context.abort(grpc.StatusCode.UNAVAILABLE, "server restarting")


def level(chunks: list[bytes]) -> float:
    samples = np.concatenate([np.frombuffer(c, dtype="<i2") for c in chunks]).astype(np.float64)
    return float(np.abs(samples).mean() / 32768.0)


def serve(service: "TinyScreening"):
    """Run a TinyScreening on a free local port; yields it with .address set."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_ScreeningServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    service.address = f"127.0.0.1:{port}"
    try:
        yield service
    finally:
        server.stop(grace=None)


@pytest.fixture
def screening():
    yield from serve(TinyScreening())


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """35 s: two answers separated by silence, one interviewer prompt in between."""
    audio = np.concatenate([quiet(1.0, seed=1), speech_like(10.0, seed=2), quiet(3.0, seed=3),
                            speech_like(3.0, pitch_hz=210, seed=4), quiet(1.0, seed=5),
                            speech_like(12.0, seed=6), quiet(5.0, seed=7)])
    path = tmp_path_factory.mktemp("recording") / "interview.flac"
    soundfile.write(path, audio, RATE, format="FLAC")
    return path


PROMPT = (14.0, 17.0)


def gate() -> PromptGate:
    prompts = PromptGate(echo_tail_seconds=0.3)
    prompts.add_interval(*PROMPT)
    return prompts


def expected_chunks(path) -> list[bytes]:
    return [c.pcm for c in capture_chunks(FileSource(path), CaptureSettings(), gate()).chunks]


def test_a_file_is_delivered_acked_and_scored(screening, recording, tmp_path):
    events = []
    result = run_agent(FileSource(recording), server=ServerTarget(screening.address, token=TOKEN),
                       participant_id="p1", device_id="kiosk-7", outbox=tmp_path, gate=gate(),
                       on_event=events.append)
    expected = expected_chunks(recording)
    assert len(expected) == 3  # ~22.7 s kept: three 7 s chunks and a 1.7 s tail, too short to send
    assert screening.applied[result.session_id] == expected
    assert screening.ended[result.session_id] == 2
    header = screening.headers[0]
    assert (header.participant_id, header.device_id, header.sample_rate, header.encoding,
            header.resume_from_seq) == ("p1", "kiosk-7", RATE, pb.AUDIO_ENCODING_PCM_S16LE, 0)
    assert result.completed and result.last_seq == 2
    assert result.final_score.probability == pytest.approx(level(expected))
    assert result.final_score.segments == 3
    with Outbox(tmp_path) as outbox:
        assert outbox.pending_count() == 0
        assert outbox.session(result.session_id).completed
    kinds = [e.kind for e in events]
    assert kinds[0] == "session" and kinds[-1] == "done"
    assert kinds.count("chunk") == kinds.count("ack") == kinds.count("score") == 3
    (tail,) = [e.data for e in events if e.kind == "dropped"]
    assert tail["drop"] == "last_partial" and 1.0 < tail["speech_seconds"] < 3.0


def test_a_dropped_connection_is_retried_and_only_unacked_chunks_are_resent(screening, recording, tmp_path):
    screening.drop_connection_after_acks = 1
    events = []
    result = run_agent(FileSource(recording), server=ServerTarget(screening.address, token=TOKEN),
                       participant_id="p1", outbox=tmp_path, gate=gate(), retry=FAST_RETRY, on_event=events.append)
    assert screening.applied[result.session_id] == expected_chunks(recording)  # each exactly once, in order
    assert len(screening.headers) == 2
    assert screening.headers[1].resume_from_seq == 1  # chunk 0 was acked before the failure
    retries = [e for e in events if e.kind == "retry"]
    assert len(retries) == 1 and "UNAVAILABLE: server restarting" in retries[0].data["reason"]
    assert result.completed and result.delivery.reconnects == 1


def test_the_retry_budget_counts_each_outage_not_the_whole_session(screening, recording, tmp_path):
    """Three separate failures, each after progress: none of them alone exhausts the budget."""
    screening.drop_connection_after_acks, screening.drops_left = 1, 3
    budget = RetryPolicy(initial_delay_seconds=0.2, max_delay_seconds=0.2, max_total_seconds=0.25)
    result = run_agent(FileSource(recording), server=ServerTarget(screening.address, token=TOKEN),
                       participant_id="p1", outbox=tmp_path, gate=gate(), retry=budget)
    assert result.completed and result.delivery.reconnects == 3
    assert screening.applied[result.session_id] == expected_chunks(recording)


def test_a_refused_token_stops_at_once_and_keeps_the_chunks(screening, recording, tmp_path):
    with pytest.raises(ServerRefused, match="server refused the stream: UNAUTHENTICATED: unknown or revoked token"):
        run_agent(FileSource(recording), server=ServerTarget(screening.address, token="wrong"),
                  participant_id="p1", outbox=tmp_path, gate=gate(), retry=FAST_RETRY)
    assert screening.applied == {}


def test_an_unreachable_server_is_given_up_on_and_flush_delivers_the_outbox_later(screening, recording, tmp_path):
    unreachable = ServerTarget("127.0.0.1:1", token=TOKEN)
    budget = RetryPolicy(initial_delay_seconds=0.05, max_delay_seconds=0.2, max_total_seconds=1.0)
    with pytest.raises(DeliveryGaveUp, match=r"gave up reaching 127.0.0.1:1 .* chunk\(s\) of session (\S+) stay in "
                                             r"the outbox .* --session") as failure:
        run_agent(FileSource(recording), server=unreachable, participant_id="p1", outbox=tmp_path, gate=gate(),
                  retry=budget)
    session_id = failure.value.result.session_id
    with Outbox(tmp_path) as outbox:
        assert outbox.pending_count(session_id) >= 1

    # After a crash or reboot: `--flush` delivers whatever the outbox holds, no audio needed.
    flush = subprocess.run(
        [sys.executable, "-P", "-m", "moodstream.compose.cli", "agent", "--server", screening.address, "--flush",
         "--outbox", str(tmp_path), "--json"], capture_output=True, text=True, timeout=60,
        env={**os.environ, "MOODSTREAM_TOKEN": TOKEN})
    assert flush.returncode == 0, flush.stderr
    done = [json.loads(line) for line in flush.stdout.splitlines() if json.loads(line)["event"] == "done"]
    assert [(d["session_id"], d["completed"]) for d in done] == [(session_id, True)]
    applied = screening.applied[session_id]
    # All of the recording, unless giving up stopped the capture before its end (a slow machine).
    assert applied and applied == expected_chunks(recording)[:len(applied)]
    with Outbox(tmp_path) as outbox:
        assert outbox.pending_count() == 0


def test_tls_with_a_private_ca(recording, tmp_path):
    ca = CertificateAuthority.create(tmp_path / "pki", "private-ca")
    service = TinyScreening()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_ScreeningServicer_to_server(service, server)
    credentials = grpc.ssl_server_credentials([ca.issue(tmp_path / "pki", "server", server=True).read()])
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        result = run_agent(FileSource(recording), server=ServerTarget(f"127.0.0.1:{port}", token=TOKEN,
                                                                      tls_ca=ca.cert),
                           participant_id="p1", outbox=tmp_path / "box", gate=gate())
        assert result.completed and service.applied[result.session_id] == expected_chunks(recording)
    finally:
        server.stop(grace=None)


@pytest.mark.parametrize("policy", ["refuse", "drop-oldest"])
def test_a_full_outbox_is_reported_never_silent(recording, tmp_path, policy):
    events = []
    one_chunk = 7 * RATE * 2 + 512
    with pytest.raises(AgentError):
        run_agent(FileSource(recording), server=ServerTarget("127.0.0.1:1"), participant_id="p1", outbox=tmp_path,
                  outbox_max_bytes=2 * one_chunk, outbox_policy=policy, gate=gate(),
                  retry=RetryPolicy(initial_delay_seconds=0.05, max_total_seconds=0.5), on_event=events.append)
    if policy == "refuse":
        errors = [e.data["message"] for e in events if e.kind == "error" and e.data.get("stage") == "capture"]
        assert errors and "outbox full" in errors[0] and "policy 'refuse'" in errors[0]
    else:
        dropped = [e.data for e in events if e.kind == "dropped"]
        evicted = [d for d in dropped if d["drop"] == "outbox_evicted"]
        assert evicted and all("drop-oldest" in d["reason"] for d in evicted)
        with Outbox(tmp_path) as outbox:  # and each drop is on record in the outbox itself
            assert [d.reason for d in outbox.drops()] == [d["reason"] for d in dropped]


def test_an_agent_killed_mid_capture_resumes_its_session_from_the_outbox(screening, recording, tmp_path):
    """Capture in a child process that cannot reach the server, SIGKILL it after two chunks are
    stored, then rerun the same session: the server ends up with exactly the chunks of one clean run."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{PROMPT[0]} {PROMPT[1]}\n")
    common = ["--participant", "p1", "--session", "resumed-1", "--outbox", str(tmp_path / "box"),
              "--prompt-intervals", str(prompts), "--json"]
    child = subprocess.Popen(
        [sys.executable, "-P", "-m", "moodstream.compose.cli", "agent", "--server", "127.0.0.1:1", "--speed", "8",
         str(recording), *common], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    chunks_seen = 0
    try:
        for line in child.stdout:
            chunks_seen += json.loads(line)["event"] == "chunk"
            if chunks_seen == 2:
                os.kill(child.pid, signal.SIGKILL)
                break
    finally:
        child.kill()
        child.wait(timeout=30)
    assert chunks_seen == 2
    with Outbox(tmp_path / "box") as outbox:
        assert not outbox.session("resumed-1").source_done
        assert outbox.session("resumed-1").chunks_produced == 2

    rerun = subprocess.run(
        [sys.executable, "-P", "-m", "moodstream.compose.cli", "agent", "--server", screening.address, "--token", TOKEN,
         str(recording), *common], capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    events = [json.loads(line) for line in rerun.stdout.splitlines()]
    assert events[0]["event"] == "session" and events[0]["resumed"] is True
    assert [e["seq"] for e in events if e["event"] == "chunk"] == [2]  # only the chunk not stored before
    assert events[-1]["event"] == "done" and events[-1]["completed"] is True
    assert screening.applied["resumed-1"] == expected_chunks(recording)
    assert "screening aid, not a diagnosis" in rerun.stderr


def twin_servers(first: TinyScreening, second: TinyScreening) -> None:
    """Two replicas of one service: separate processes' worth of connections, one shared store."""
    second.lock, second.applied, second.ended = first.lock, first.applied, first.ended


@pytest.fixture
def replica(screening):
    service = TinyScreening()
    twin_servers(screening, service)
    yield from serve(service)


def test_a_broken_connection_fails_over_to_the_next_server(screening, replica, recording, tmp_path):
    screening.drop_connection_after_acks = 1
    events = []
    result = run_agent(FileSource(recording), server=ServerTarget(f"{screening.address},{replica.address}", TOKEN),
                       participant_id="p1", outbox=tmp_path, gate=gate(), retry=FAST_RETRY, on_event=events.append)
    assert screening.applied[result.session_id] == expected_chunks(recording)  # each exactly once, in order
    assert [h.resume_from_seq for h in screening.headers] == [0]
    assert [h.resume_from_seq for h in replica.headers] == [1]  # the replica resumed after the acked chunk
    (retry,) = [e.data for e in events if e.kind == "retry"]
    assert (retry["failed_server"], retry["server"]) == (screening.address, replica.address)
    assert result.completed and result.delivery.reconnects == 1


def test_failover_goes_round_robin_past_an_unreachable_server(screening, replica, recording, tmp_path):
    """`--server` repeated and comma-separated: the dead first address is skipped, then the next
    failure wraps around through the dead one again to the other live replica."""
    replica.drop_connection_after_acks = 1
    agent = subprocess.run(
        [sys.executable, "-P", "-m", "moodstream.compose.cli", "agent", "--server", "127.0.0.1:1",
         "--server", f"{replica.address}, {screening.address}", "--token", TOKEN, "--participant", "p1",
         "--session", "rr-1", "--outbox", str(tmp_path / "box"), "--json", str(recording)],
        capture_output=True, text=True, timeout=120)
    assert agent.returncode == 0, agent.stderr
    events = [json.loads(line) for line in agent.stdout.splitlines()]
    hops = [(e["failed_server"], e["server"]) for e in events if e["event"] == "retry"]
    assert hops == [("127.0.0.1:1", replica.address), (replica.address, screening.address)]
    assert events[0]["server"] == f"127.0.0.1:1,{replica.address},{screening.address}"
    assert len(replica.headers) == len(screening.headers) == 1
    ungated = [c.pcm for c in capture_chunks(FileSource(recording), CaptureSettings()).chunks]
    assert screening.applied["rr-1"] == ungated  # each exactly once, in order, across three connections
    assert events[-1]["event"] == "done" and events[-1]["completed"] is True


def test_the_agent_help_explains_failover():
    shown = subprocess.run([sys.executable, "-P", "-m", "moodstream.compose.cli", "agent", "--help"], capture_output=True,
                           text=True, timeout=60)
    assert shown.returncode == 0
    assert "fail over" in " ".join(shown.stdout.split())
    from moodstream.samples import SAMPLE_AUDIO

    empty = subprocess.run([sys.executable, "-P", "-m", "moodstream.compose.cli", "agent", "--server", " , ",
                            "--participant", "p1", str(SAMPLE_AUDIO)], capture_output=True, text=True, timeout=60)
    assert empty.returncode == 2 and "no server address given" in empty.stderr


def test_a_chunk_stored_while_a_connection_opens_is_still_sent_first(tmp_path):
    """The capture thread may store chunk 0 between the delivery's two outbox reads."""
    from moodstream.agent.client import SessionDelivery, ServerTarget
    from moodstream.agent.events import EventHub
    from test_agent_outbox import make_chunk, open_with_session

    with open_with_session(tmp_path) as outbox:
        delivery = SessionDelivery(outbox, "s1", ServerTarget("127.0.0.1:1"), hub=EventHub("s1", None),
                                   capture_done=threading.Event())
        reads = {"lowest": outbox.lowest_pending_seq, "session": outbox.session}

        def capture_lands_between(read):
            def wrapped(*args, **kwargs):
                result = reads[read](*args, **kwargs)
                if reads["session"]("s1").next_seq == 0:
                    outbox.put("s1", make_chunk(0))  # the capture thread, right after the first read
                return result
            return wrapped

        for read, attribute in (("lowest", "lowest_pending_seq"), ("session", "session")):
            setattr(outbox, attribute, capture_lands_between(read))
        assert delivery._new_connection().start_seq == 0


def test_giving_up_takes_the_whole_budget_and_reports_the_time_it_waited(recording, tmp_path):
    import re
    import time

    budget = RetryPolicy(initial_delay_seconds=0.4, max_delay_seconds=5.0, max_total_seconds=1.5)
    started = time.monotonic()
    with pytest.raises(DeliveryGaveUp) as failure:
        run_agent(FileSource(recording), server=ServerTarget("127.0.0.1:1", token=TOKEN), participant_id="p1",
                  outbox=tmp_path, gate=gate(), retry=budget)
    elapsed = time.monotonic() - started
    reported = float(re.search(r"gave up reaching 127.0.0.1:1 after ([0-9.]+) s", str(failure.value)).group(1))
    assert budget.max_total_seconds <= reported <= elapsed + 0.05
