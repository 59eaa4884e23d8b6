"""The scoring server end to end: real gRPC on 127.0.0.1, real Redis, real (tiny) model."""
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from moodstream.server.store_keys import (DIRECTORY_PREFIX, VERSIONS_KEY, owner_key, participant_prefix,
                                          session_model_key)
from moodstream.v1 import moodstream_pb2 as pb
from server_harness import chunk, end, header, make_chunks, offline_score, redis_keys, stream, stub_for


MODEL_SEED = 1  # the conftest's `model` fixture: the tiny model of this seed


@pytest.fixture
def server(start_server):
    """A server of its own per test, on a Redis emptied for the test."""
    return start_server()


def scores_of(responses):
    return [r.score for r in responses if r.WhichOneof("message") == "score"]


def acks_of(responses):
    return [(r.ack.seq, r.ack.duplicate) for r in responses if r.WhichOneof("message") == "ack"]


def test_three_concurrent_sessions_end_with_the_offline_batch_score(model, server, tokens):
    sessions = {f"s{i}": (f"p{i}", make_chunks(5, seed=i)) for i in range(1, 4)}
    results, errors = {}, []

    def run(session_id, participant, chunks):
        try:
            order = [1, 0, 2, 2, 4, 3, 0]  # reordered and duplicated
            requests = [header(session_id, participant)] + [chunk(s, chunks[s]) for s in order] + [end(4)]
            with stub_for(server.port) as stub:
                results[session_id] = stream(stub, requests, tokens.metadata("agent"))
        except Exception as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(s, p, c)) for s, (p, c) in sessions.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    for session_id, (participant, chunks) in sessions.items():
        responses = results[session_id]
        applied = [seq for seq, duplicate in acks_of(responses) if not duplicate]
        assert applied == [0, 1, 2, 3, 4]
        scores = scores_of(responses)
        assert [s.segments for s in scores] == [1, 2, 3, 4, 5]
        assert [s.seq for s in scores] == [0, 1, 2, 3, 4]
        assert abs(scores[-1].probability - offline_score(model, chunks)) <= 1e-5
        for n in (1, 3):
            assert abs(scores[n - 1].probability - offline_score(model, chunks[:n])) <= 1e-5
        assert scores[-1].model_version == server.model_version
        assert "not a diagnosis" in scores[-1].notice
        assert scores[-1].speech_seconds == pytest.approx(35.0)


def test_resending_a_finished_session_changes_nothing(model, server, tokens):
    chunks = make_chunks(3, seed=9)
    requests = [header("again", "p1")] + [chunk(s, c) for s, c in enumerate(chunks)] + [end(2)]
    with stub_for(server.port) as stub:
        first = stream(stub, requests, tokens.metadata("agent"))
        second = stream(stub, requests, tokens.metadata("agent"))
        latest = stub.GetScore(pb.GetScoreRequest(session_id="again"), metadata=tokens.metadata("admin"))
    assert acks_of(second) == [(0, True), (1, True), (2, True)]
    assert scores_of(second) == []
    assert latest.probability == scores_of(first)[-1].probability
    assert latest.segments == 3


def test_a_server_restart_mid_session_ends_with_the_same_score(model, start_server, tokens):
    chunks = make_chunks(6, seed=4)
    with start_server.running() as first:
        with stub_for(first.port) as stub:
            partial = stream(stub, [header("restart", "p2")] + [chunk(s, chunks[s]) for s in range(3)],
                             tokens.metadata("agent"))
    assert [seq for seq, _ in acks_of(partial)] == [0, 1, 2]
    # a new replica takes over; the agent resends everything it has not seen acked (here: all)
    with start_server.running() as second:
        with stub_for(second.port) as stub:
            rest = stream(stub, [header("restart", "p2")] + [chunk(s, c) for s, c in enumerate(chunks)] + [end(5)],
                          tokens.metadata("agent"))
    assert acks_of(rest) == [(0, True), (1, True), (2, True), (3, False), (4, False), (5, False)]
    assert abs(scores_of(rest)[-1].probability - offline_score(model, chunks)) <= 1e-5


def test_subscribers_see_every_update_in_order_and_resume_from_their_offset(model, server, tokens):
    chunks = make_chunks(4, seed=5)
    with stub_for(server.port) as stub:
        stream(stub, [header("watched", "p1")] + [chunk(s, c) for s, c in enumerate(chunks)] + [end(3)],
               tokens.metadata("agent"))
        reader = tokens.metadata("reader-p1")
        call = stub.Subscribe(pb.SubscribeRequest(session_id="watched"), metadata=reader, timeout=30)
        seen = []
        for update in call:
            seen.append(update)
            if len(seen) == 2:
                call.cancel()
                break
        resumed = stub.Subscribe(pb.SubscribeRequest(session_id="watched", after_offset=seen[-1].offset),
                                 metadata=reader, timeout=30)
        for update in resumed:
            seen.append(update)
            if len(seen) == 4:
                resumed.cancel()
                break
        by_participant = stub.Subscribe(pb.SubscribeRequest(participant_id="p1"), metadata=reader, timeout=30)
        first_of_participant = next(iter(by_participant))
        by_participant.cancel()
    assert [u.seq for u in seen] == [0, 1, 2, 3]
    assert first_of_participant.session_id == "watched"


def test_live_subscriber_gets_updates_while_the_agent_streams(model, server, tokens):
    chunks = make_chunks(3, seed=6)
    received = []
    with stub_for(server.port) as stub:
        call = stub.Subscribe(pb.SubscribeRequest(participant_id="p3", after_offset="$"),
                              metadata=tokens.metadata("admin"), timeout=60)

        def listen():
            for update in call:
                received.append(update)
                if len(received) == 3:
                    return

        listener = threading.Thread(target=listen)
        listener.start()
        stream(stub, [header("live", "p3")] + [chunk(s, c) for s, c in enumerate(chunks)] + [end(2)],
               tokens.metadata("agent"))
        listener.join(30)
        call.cancel()
    assert [u.segments for u in received] == [1, 2, 3]


def test_health_and_reflection_are_served(server):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "moodstream.v1.Screening"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for s in next(iter(replies)).list_services_response.service}
    finally:
        channel.close()
    assert {"moodstream.v1.Screening", "grpc.health.v1.Health"} <= names


def test_stored_vectors_are_the_encoder_output_and_no_audio_is_stored(model, server, tokens, redis_url):
    import numpy as np

    chunks = make_chunks(2, seed=7)
    with stub_for(server.port) as stub:
        stream(stub, [header("stored", "p1")] + [chunk(s, c) for s, c in enumerate(chunks)] + [end(1)],
               tokens.metadata("agent"))
    keys = redis_keys(redis_url)
    assert not any(key.endswith(":audio") for key in keys)
    assert all(key.startswith((participant_prefix("p1"), DIRECTORY_PREFIX))
               or key in (owner_key("stored"), session_model_key("stored"), VERSIONS_KEY) for key in keys)


def test_scores_carry_their_speech_time_and_get_score_tells_open_interrupted_and_ended(server, tokens):
    pcm = make_chunks(3, seed=5)
    agent, reader = tokens.metadata("agent"), tokens.metadata("reader-p1")
    with stub_for(server.port) as stub:
        def state():
            return stub.GetScore(pb.GetScoreRequest(session_id="states"), metadata=reader)

        # a stream that closes without End leaves the session interrupted
        responses = stream(stub, [header("states", "p1"), chunk(0, pcm[0])], agent)
        assert [s.start_seconds for s in scores_of(responses)] == [0.0]
        interrupted = state()
        assert interrupted.session_state == pb.SESSION_STATE_INTERRUPTED
        assert interrupted.session_state_since_unix >= interrupted.time_unix

        # a resumed stream opens it again, and End finishes it
        hang_up = threading.Event()

        def live():
            yield header("states", "p1")
            yield chunk(1, pcm[1])
            hang_up.wait(30)

        call = stub.Stream(live(), metadata=agent, timeout=60)
        first = next(r for r in call if r.WhichOneof("message") == "score")
        assert first.score.start_seconds == 7.0
        assert state().session_state == pb.SESSION_STATE_OPEN
        hang_up.set()
        list(call)

        responses = stream(stub, [header("states", "p1"), chunk(2, pcm[2]), end(2)], agent)
        assert [s.start_seconds for s in scores_of(responses)] == [14.0]
        ended = state()
        assert ended.session_state == pb.SESSION_STATE_ENDED and ended.segments == 3
        assert ended.session_state_since_unix >= ended.time_unix
        updates = stub.Subscribe(pb.SubscribeRequest(session_id="states"), metadata=reader, timeout=10)
        replayed = [next(updates) for _ in range(3)]
        updates.cancel()
        assert [u.start_seconds for u in replayed] == [0.0, 7.0, 14.0]
        assert {u.session_state for u in replayed} == {pb.SESSION_STATE_UNSPECIFIED}


def test_no_label_before_the_checkpoints_minimum_speech(start_server, tokens):
    torch = pytest.importorskip("torch")
    from moodstream.model import ModelConfig, ScreeningModel

    torch.manual_seed(4)
    # A low threshold and a calibration bias push every probability above it: only the evidence rule says no.
    model = ScreeningModel(ModelConfig.tiny(min_evidence_segments=3, decision_threshold=0.01, calibration_bias=3.0))
    chunks = make_chunks(4, seed=11)
    requests = [header("evidence", "p1")] + [chunk(s, c) for s, c in enumerate(chunks)] + [end(3)]
    with start_server.running(model=model) as running, stub_for(running.port) as stub:
        scores = scores_of(stream(stub, requests, tokens.metadata("agent")))
        latest = stub.GetScore(pb.GetScoreRequest(session_id="evidence"), metadata=tokens.metadata("admin"))
    assert [s.HasField("evidence_sufficient") for s in scores] == [True] * 4
    assert [s.evidence_sufficient for s in scores] == [False, False, True, True]
    assert [s.above_threshold for s in scores] == [False, False, True, True]
    assert all(s.probability > 0.01 for s in scores)  # the probability is still there
    for n in (1, 4):
        assert abs(scores[n - 1].probability - offline_score(model, chunks[:n])) <= 1e-5
    assert latest.evidence_sufficient and latest.above_threshold
