"""The session probability's calibration and its interval (docs/calibration.md): one function for the
batch and the incremental scorer, carried end to end in ScoreUpdate, absent for checkpoints without one."""
import grpc
import numpy as np
import pytest
import torch

from moodstream.model import ModelConfig, ScreeningModel
from moodstream.model.calibration import SessionCalibration
from moodstream.server.store_values import checked_interval
from moodstream.v1 import moodstream_pb2 as pb
from moodstream.wire import interval_text, score_from_dict, score_to_dict
from raw_client import client_for, compile_proto
from server_harness import chunk, end, header, make_chunks, offline_score, stream, stub_for

REPLICATES = [[0.6, 1.4, -0.2], [0.9, 1.1, 0.1], [0.3, 1.8, 0.0], [1.2, 0.7, -0.4], [0.5, 1.0, 0.3]]


def calibrated_model(seed: int = 4, **calibration) -> ScreeningModel:
    torch.manual_seed(seed)
    values = {"session_skip": "segment-mean", "calibration_scale": 0.5, "calibration_segment_scale": 1.5,
              "calibration_bias": -0.1, "calibration_replicates": REPLICATES, **calibration}
    return ScreeningModel(ModelConfig.tiny(**values)).eval()


def test_the_two_parts_are_weighed_apart_and_one_scale_reads_as_before():
    both = SessionCalibration(recurrent_scale=0.5, segment_scale=2.0, bias=0.25)
    assert both.logit(1.0, 1.0) == pytest.approx(2.75)
    legacy = SessionCalibration.of(ModelConfig.tiny(calibration_scale=0.7, calibration_bias=0.2))
    assert (legacy.recurrent_scale, legacy.segment_scale, legacy.bias) == (0.7, 0.7, 0.2)
    assert not legacy.score(1.0, -2.0).has_interval


def test_the_interval_holds_the_probability_and_narrows_with_agreeing_replicates():
    wide = SessionCalibration(replicates=np.array(REPLICATES))
    score = wide.score(2.0, -1.0)
    assert score.low <= score.probability <= score.high and score.level == 0.9
    agreeing = SessionCalibration(replicates=np.array([[1.0, 1.0, 0.0]] * 5))
    narrow = agreeing.score(2.0, -1.0)
    assert narrow.low == pytest.approx(narrow.high) == pytest.approx(narrow.probability)


@pytest.mark.parametrize("skip", ["segment-mean", "none"])
def test_batch_and_incremental_give_the_same_probability_and_interval_after_every_segment(skip):
    model = calibrated_model(session_skip=skip)
    scorer = model.incremental_scorer()
    vectors = torch.randn(25, model.config.segment_vector_size)
    state = scorer.init_state()
    for n in range(1, len(vectors) + 1):
        state, live = scorer.step_scored(state, vectors[n - 1])
        batch = model.session_score(vectors[:n])
        assert live.has_interval and batch.has_interval
        assert abs(live.probability - batch.probability) <= 1e-6
        assert abs(live.low - batch.low) <= 1e-6 and abs(live.high - batch.high) <= 1e-6


def test_a_calibrated_checkpoint_round_trips_and_an_old_one_keeps_its_model_version(tmp_path):
    model = calibrated_model()
    model.save_pretrained(tmp_path / "calibrated")
    loaded = ScreeningModel.from_pretrained(tmp_path / "calibrated")
    assert loaded.config.calibration_replicates == REPLICATES
    assert loaded.model_version == model.model_version
    plain = ScreeningModel(ModelConfig.tiny())
    # fields added with defaults stay out of config.json, so checkpoints saved before them keep their version
    assert "calibration_replicates" not in plain.config.to_dict()
    assert "calibration_segment_scale" not in plain.config.to_dict()


@pytest.mark.parametrize("change, message", [
    ({"calibration_replicates": [[1.0, 2.0]]}, "calibration_replicates must be rows of 3 finite numbers"),
    ({"calibration_replicates": [[1.0, 2.0, float("nan")]]}, "calibration_replicates must be rows of 3 finite"),
    ({"calibration_segment_scale": float("inf")}, "calibration_segment_scale must be finite"),
    ({"interval_level": 1.0}, "interval_level"),
])
def test_a_bad_calibration_is_refused_in_one_line(change, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.tiny(**change)


def test_the_store_takes_an_interval_whole_and_around_its_probability():
    assert checked_interval({}, 0.5) == {}
    whole = {"probability_low": 0.4, "probability_high": 0.7, "interval_level": 0.9}
    assert checked_interval(whole, 0.5) == whole
    with pytest.raises(ValueError, match="needs all of"):
        checked_interval({"probability_low": 0.4}, 0.5)
    with pytest.raises(ValueError, match="must hold the probability"):
        checked_interval({**whole, "probability_low": 0.6}, 0.5)
    with pytest.raises(ValueError, match="interval_level"):
        checked_interval({**whole, "interval_level": 1.5}, 0.5)


def test_a_score_reads_with_its_interval_or_without():
    with_interval = score_to_dict(pb.ScoreUpdate(probability=0.72, probability_low=0.61, probability_high=0.8,
                                                 interval_level=0.9))
    assert interval_text(with_interval) == "0.72 (0.61\u20130.80)"
    without = score_to_dict(pb.ScoreUpdate(probability=0.72))
    assert without["probability_low"] is None and interval_text(without) == "0.72"
    assert not score_from_dict(without).HasField("probability_low")


def streamed(server, tokens, session_id: str, chunks: list[bytes]):
    """The scores a whole session's Stream answered with, then GetModelInfo and GetScore."""
    requests = [header(session_id, "p1"), *[chunk(seq, pcm) for seq, pcm in enumerate(chunks)], end(len(chunks) - 1)]
    with stub_for(server.port) as stub:
        scores = [r.score for r in stream(stub, requests, tokens.metadata("agent")) if r.WhichOneof("message") == "score"]
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=tokens.metadata("agent"), timeout=10)
        stored = stub.GetScore(pb.GetScoreRequest(session_id=session_id), metadata=tokens.metadata("admin"),
                               timeout=10)
    return scores, info, stored


def test_a_live_session_carries_the_batch_interval_end_to_end(start_server, tokens):
    model = calibrated_model()
    chunks = make_chunks(4, seed=21)
    scores, info, stored = streamed(start_server(model=model), tokens, "interval", chunks)
    assert info.HasField("interval_level") and info.interval_level == pytest.approx(0.9)
    waves = [np.frombuffer(c, dtype="<i2").astype(np.float32) / 32768.0 for c in chunks]
    vectors = model.encode_segments(waves)
    for n, update in enumerate(scores, start=1):
        batch = model.session_score(vectors[:n])
        assert abs(update.probability - batch.probability) <= 1e-6
        assert abs(update.probability_low - batch.low) <= 1e-6
        assert abs(update.probability_high - batch.high) <= 1e-6
        assert update.interval_level == pytest.approx(0.9)
    assert stored.probability_low == scores[-1].probability_low
    assert stored.probability_high == scores[-1].probability_high


def test_a_checkpoint_without_an_interval_says_so_on_the_wire(start_server, tokens):
    torch.manual_seed(4)
    model = ScreeningModel(ModelConfig.tiny()).eval()
    chunks = make_chunks(2, seed=22)
    scores, info, stored = streamed(start_server(model=model), tokens, "no-interval", chunks)
    assert not info.HasField("interval_level") and not stored.HasField("probability_low")
    assert all(not s.HasField("probability_low") and not s.HasField("interval_level") for s in scores)
    assert abs(scores[-1].probability - offline_score(model, chunks)) <= 1e-5


def test_a_raw_client_compiled_from_the_proto_reads_the_interval(start_server, tokens):
    pool = compile_proto()
    server = start_server(model=calibrated_model())
    chunks = make_chunks(1, seed=23)
    requests = [header("raw-interval", "p1"), chunk(0, chunks[0]), end(0)]
    with stub_for(server.port) as stub:
        stream(stub, requests, tokens.metadata("agent"))
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        client = client_for(channel, pool, tokens, "admin")
        reply = client.unary("GetScore", client.request("GetScore", session_id="raw-interval"))
    assert reply.HasField("probability_low") and reply.probability_low <= reply.probability <= reply.probability_high
    assert reply.interval_level == pytest.approx(0.9)
