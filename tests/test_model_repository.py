"""The model folder (`moodstream server --models DIR`): versions side by side, picked up while serving.

Real server on 127.0.0.1, real Redis, real tiny models saved as checkpoint folders.
"""
from __future__ import annotations

import contextlib
import logging
import shutil

import grpc
import pytest
import torch

from moodstream.server.app import BackgroundServer, ServerConfig
from moodstream.v1 import moodstream_pb2 as pb
from server_harness import chunk, end, header, make_chunks, offline_score, stream, stub_for, tiny_model
from waiting import wait_for

POLL = 0.2
Code = grpc.StatusCode


def other_session_head(seed: int):
    """Model 0's encoder with another session head: the checkpoint a session-head retraining writes."""
    model = tiny_model(0)
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in model.session_head.parameters():
            parameter.normal_(0.0, 0.3)
    return model


@contextlib.contextmanager
def models_server(folder, redis_url, tokens):
    config = ServerConfig(checkpoint=None, models=folder, redis_url=redis_url, port=0, tokens_file=tokens.path,
                          precision="fp32", max_batch=1, models_poll_seconds=POLL)
    with BackgroundServer(config) as server:
        yield server


def set_current(folder, name: str) -> None:
    spare = folder / ".current.tmp"
    spare.write_text(name + "\n")
    spare.replace(folder / "current")


def info(stub, tokens, version: str = "") -> pb.ModelInfo:
    return stub.GetModelInfo(pb.GetModelInfoRequest(model_version=version), metadata=tokens.metadata("agent"),
                             timeout=10)


def put(stub, tokens, session: str, seq: int, pcm: bytes, **pins) -> pb.PutChunkResponse:
    return stub.PutChunk(pb.PutChunkRequest(header=header(session, "p1", **pins).header,
                                            chunk=pb.Chunk(seq=seq, start_seconds=7.0 * seq, pcm=pcm)),
                         metadata=tokens.metadata("agent"), timeout=60)


def refusal(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


@pytest.fixture
def folder(tmp_path):
    models = tmp_path / "models"
    tiny_model(0).save_pretrained(models / "first")
    return models


def test_a_new_version_and_a_new_current_are_taken_without_a_restart(folder, redis_url, tokens):
    first, second = tiny_model(0), tiny_model(1)
    pcm = make_chunks(3, seed=11)
    with models_server(folder, redis_url, tokens) as server, stub_for(server.port) as stub:
        assert server.model_version == first.model_version
        assert [v.model_version for v in info(stub, tokens).versions] == [first.model_version]
        assert put(stub, tokens, "before", 0, pcm[0]).score.model_version == first.model_version

        second.save_pretrained(folder / "second")
        set_current(folder, "second")
        wait_for(lambda: info(stub, tokens).model_version == second.model_version, "the new current version")
        reply = info(stub, tokens)
        assert [v.model_version for v in reply.versions] == [second.model_version, first.model_version]
        assert info(stub, tokens, first.model_version).model_version == first.model_version

        # The session started before the switch stays on its version; new sessions get the new one.
        later = stream(stub, [header("before", "p1")] + [chunk(s, c) for s, c in enumerate(pcm) if s] + [end(2)],
                       tokens.metadata("agent"))
        scores = [r.score for r in later if r.WhichOneof("message") == "score"]
        assert [s.model_version for s in scores] == [first.model_version] * 2
        assert scores[-1].probability == pytest.approx(offline_score(first, pcm), abs=1e-4)
        after = stream(stub, [header("after", "p1")] + [chunk(s, c) for s, c in enumerate(pcm)] + [end(2)],
                       tokens.metadata("agent"))
        scores = [r.score for r in after if r.WhichOneof("message") == "score"]
        assert [s.model_version for s in scores] == [second.model_version] * 3
        assert scores[-1].probability == pytest.approx(offline_score(second, pcm), abs=1e-4)

        # An agent may pin a held version for a new session, not one the server lacks, nor switch a session.
        assert put(stub, tokens, "pinned", 0, pcm[0], model_version=first.model_version).score.model_version \
            == first.model_version
        error = refusal(lambda: put(stub, tokens, "pinned-x", 0, pcm[0], model_version="m0000"))
        assert error.code() == Code.FAILED_PRECONDITION
        assert error.details() == (f"this server does not hold model m0000; it holds "
                                   f"{second.model_version}, {first.model_version}")
        error = refusal(lambda: put(stub, tokens, "before", 3, pcm[0], model_version=second.model_version))
        assert error.code() == Code.FAILED_PRECONDITION
        assert f"session before runs model {first.model_version}" in error.details()
        error = refusal(lambda: info(stub, tokens, "m0000"))
        assert error.code() == Code.NOT_FOUND and "it holds" in error.details()

        # Readers see each session under its own version.
        listed = stub.ListSessions(pb.ListSessionsRequest(participant_id="p1"), metadata=tokens.metadata("admin"),
                                   timeout=10)
        versions = {s.session_id: s.model_version for s in listed.sessions}
        assert versions == {"before": first.model_version, "after": second.model_version,
                            "pinned": first.model_version}
        assert stub.GetScore(pb.GetScoreRequest(session_id="before"), metadata=tokens.metadata("admin"),
                             timeout=10).model_version == first.model_version
        updates = stub.Subscribe(pb.SubscribeRequest(participant_id="p1"), metadata=tokens.metadata("admin"),
                                 timeout=5)
        seen = []
        with contextlib.suppress(grpc.RpcError):
            for update in updates:
                seen.append((update.session_id, update.model_version))
                if len(seen) == 7:
                    break
        assert set(seen) == set(versions.items())


def test_a_bad_folder_or_current_is_refused_and_the_served_versions_keep_serving(folder, redis_url, tokens,
                                                                                caplog):
    first = tiny_model(0)
    pcm = make_chunks(1, seed=12)
    with models_server(folder, redis_url, tokens) as server, stub_for(server.port) as stub:
        caplog.set_level(logging.INFO, logger="moodstream.server.models")
        broken = folder / "broken"
        shutil.copytree(folder / "first", broken)
        (broken / "scorer.safetensors").write_bytes(b"not weights")
        wait_for(lambda: any("model folder" in r.message and "refused" in r.message for r in caplog.records),
                 "the refusal in the log")
        refused = [r for r in caplog.records if "refused" in r.message]
        assert len(refused) == 1 and refused[0].levelno == logging.ERROR and "\n" not in refused[0].getMessage()
        assert "broken" in refused[0].getMessage() and "corrupt" in refused[0].getMessage()

        set_current(folder, "broken")
        wait_for(lambda: any("names 'broken'" in r.message for r in caplog.records), "the current refusal")
        assert info(stub, tokens).model_version == first.model_version
        assert [v.model_version for v in info(stub, tokens).versions] == [first.model_version]
        assert put(stub, tokens, "still", 0, pcm[0]).score.model_version == first.model_version

        # Fixed in place, the folder loads (its files changed) and current names it again.
        shutil.rmtree(broken)
        tiny_model(2).save_pretrained(broken)
        wait_for(lambda: info(stub, tokens).model_version == tiny_model(2).model_version, "the repaired folder")


def test_versions_sharing_an_encoder_load_it_once_and_removed_versions_take_no_new_streams(folder, redis_url,
                                                                                         tokens):
    first, retrained, other = tiny_model(0), other_session_head(7), tiny_model(3)
    assert retrained.model_version != first.model_version
    pcm = make_chunks(2, seed=13)
    retrained.save_pretrained(folder / "retrained")
    other.save_pretrained(folder / "other")
    set_current(folder, "retrained")
    with models_server(folder, redis_url, tokens) as server, stub_for(server.port) as stub:
        repository = server.server.repository
        assert set(repository.held()) == {first.model_version, retrained.model_version, other.model_version}
        one, two, three = (repository.get(m.model_version) for m in (first, retrained, other))
        assert one.encoder is two.encoder and one.encoder is not three.encoder
        assert one.model.backbone is two.model.backbone and one.model.segment_head is two.model.segment_head
        assert len(repository.encoders()) == 2

        reply = stream(stub, [header("shared", "p1")] + [chunk(s, c) for s, c in enumerate(pcm)] + [end(1)],
                       tokens.metadata("agent"))
        scores = [r.score for r in reply if r.WhichOneof("message") == "score"]
        assert scores[-1].model_version == retrained.model_version
        assert scores[-1].probability == pytest.approx(offline_score(retrained, pcm), abs=1e-4)

        assert put(stub, tokens, "on-other", 0, pcm[0], model_version=other.model_version).score.model_version \
            == other.model_version
        shutil.rmtree(folder / "other")
        wait_for(lambda: other.model_version not in repository.held(), "the removed version to go")
        wait_for(lambda: len(repository.encoders()) == 1, "its encoder to be unloaded")
        error = refusal(lambda: put(stub, tokens, "on-other", 1, pcm[1]))
        assert error.code() == Code.FAILED_PRECONDITION
        assert f"started under model {other.model_version}, which this server no longer holds" in error.details()
        # Its stored session stays readable.
        assert stub.GetScore(pb.GetScoreRequest(session_id="on-other"), metadata=tokens.metadata("admin"),
                             timeout=10).model_version == other.model_version


def test_a_model_folder_needs_current_when_it_holds_several_versions(folder, redis_url, tokens):
    tiny_model(1).save_pretrained(folder / "second")
    config = ServerConfig(checkpoint=None, models=folder, redis_url=redis_url, port=0, tokens_file=tokens.path,
                          precision="fp32", max_batch=1)
    with pytest.raises(ValueError, match="holds 2 versions: write the folder name new sessions get into"):
        with BackgroundServer(config):
            pass
    set_current(folder, "third")
    with pytest.raises(ValueError, match="names 'third', which is neither a loadable folder nor a version there"):
        with BackgroundServer(config):
            pass
    empty = folder.parent / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no loadable checkpoint folder"):
        with BackgroundServer(ServerConfig(checkpoint=None, models=empty, redis_url=redis_url, port=0,
                                           tokens_file=tokens.path, precision="fp32", max_batch=1)):
            pass


def test_a_current_version_whose_folder_was_removed_retires_once_current_moves_away(folder, redis_url, tokens):
    first, second = tiny_model(0), tiny_model(1)
    second.save_pretrained(folder / "second")
    set_current(folder, "first")
    pcm = make_chunks(1, seed=5)
    with models_server(folder, redis_url, tokens) as server, stub_for(server.port) as stub:
        repository = server.server.repository
        shutil.rmtree(folder / "first")
        # Still current: it keeps taking new sessions, since they need some version.
        wait_for(lambda: "first" not in repository._folders, "the removal to be seen")
        assert first.model_version in repository.held()
        assert put(stub, tokens, "while-current", 0, pcm[0]).score.model_version == first.model_version

        set_current(folder, "second")
        wait_for(lambda: first.model_version not in repository.held(), "the removed version to retire")
        assert info(stub, tokens).model_version == second.model_version
        error = refusal(lambda: put(stub, tokens, "pinned-late", 0, pcm[0], model_version=first.model_version))
        assert error.code() in (Code.FAILED_PRECONDITION, Code.NOT_FOUND), error
        assert first.model_version in error.details()
        assert put(stub, tokens, "new", 0, pcm[0]).score.model_version == second.model_version


def test_chunk_and_latency_metrics_are_labelled_by_model_version(folder, redis_url, tokens):
    from prometheus_client import REGISTRY

    first, second = tiny_model(0), tiny_model(1)
    second.save_pretrained(folder / "second")
    set_current(folder, "first")
    pcm = make_chunks(3, seed=17)

    def counted(outcome: str, version: str) -> float:
        return REGISTRY.get_sample_value("moodstream_chunks_total",
                                         {"outcome": outcome, "model_version": version}) or 0.0

    def scored(version: str) -> float:
        return REGISTRY.get_sample_value("moodstream_chunk_to_score_seconds_count", {"model_version": version}) or 0.0

    before = {v.model_version: (counted("applied", v.model_version), scored(v.model_version)) for v in (first, second)}
    rejected_before = counted("rejected", "")
    with models_server(folder, redis_url, tokens) as server, stub_for(server.port) as stub:
        for seq in range(3):
            put(stub, tokens, "on-first", seq, pcm[seq])
        put(stub, tokens, "on-second", 0, pcm[0], model_version=second.model_version)
        refusal(lambda: put(stub, tokens, "on-nothing", 0, pcm[0], model_version="m-not-held"))
    assert counted("applied", first.model_version) - before[first.model_version][0] == 3
    assert scored(first.model_version) - before[first.model_version][1] == 3
    assert counted("applied", second.model_version) - before[second.model_version][0] == 1
    assert scored(second.model_version) - before[second.model_version][1] == 1
    assert counted("rejected", "") - rejected_before == 1  # refused before any version was chosen
