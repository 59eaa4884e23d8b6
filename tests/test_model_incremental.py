"""Incremental scoring equals the batch forward after every segment (docs/scorer-state.md)."""
import pytest
import torch

from moodstream.model import ModelConfig, ScreeningModel, ScorerState, StateError
from moodstream.model.incremental import IncrementalScorer
from moodstream.model.session_head import SessionHead


def batch_probability(head, vectors):
    with torch.no_grad():
        return float(torch.sigmoid(head(vectors[None])[0]))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("variant,time_pooling,skip", [
    ("self-attention", "sum", "none"), ("self-attention", "mean", "none"), ("last-step", "sum", "none"),
    ("self-attention", "sum", "segment-mean"), ("self-attention", "mean", "segment-mean"),
    ("last-step", "sum", "segment-mean")])
def test_incremental_equals_batch_after_every_segment(seed, variant, time_pooling, skip):
    torch.manual_seed(seed)
    head = SessionHead(input_size=24, hidden_size=32, attention_size=20, variant=variant,
                       time_pooling=time_pooling, skip=skip).eval()
    # larger weights make the softmax peaky, where an online softmax could drift
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.mul_(1.0 + seed)
    vectors = torch.randn(300, 24) * (1 + seed)
    scorer = IncrementalScorer(head, model_version="m-test")
    state = scorer.init_state()
    worst = 0.0
    checkpoints = set(range(1, 31)) | set(range(40, 301, 13)) | {300}
    for n in range(1, 301):
        state, probability = scorer.step(state, vectors[n - 1])
        if n in checkpoints:
            worst = max(worst, abs(probability - batch_probability(head, vectors[:n])))
    assert state.segments == 300
    assert worst <= 1e-5, worst


def test_incremental_logit_matches_away_from_saturation():
    # sigmoid saturation would hide differences: compare the summed attention too
    torch.manual_seed(7)
    head = SessionHead(input_size=8, hidden_size=8, attention_size=8).eval()
    vectors = torch.randn(60, 8)
    scorer = IncrementalScorer(head)
    state = scorer.init_state()
    for vector in vectors:
        state, _ = scorer.step(state, vector)
    with torch.no_grad():
        outputs, _ = head.lstm(vectors[None])
        q, k, v = head.query(outputs[0]), head.key(outputs[0]), head.value(outputs[0])
        batch_rows = torch.softmax(q @ k.T * head.scale, dim=-1) @ v
    incremental_rows = torch.from_numpy(state.row_numerator / state.row_denominator[:, None])
    assert torch.allclose(incremental_rows, batch_rows, atol=1e-5)


def test_state_bytes_round_trip_exactly_and_continue_identically():
    torch.manual_seed(5)
    head = SessionHead(input_size=6, hidden_size=7, attention_size=5).eval()
    scorer = IncrementalScorer(head, model_version="m-abc")
    state = scorer.init_state()
    assert ScorerState.from_bytes(state.to_bytes()).to_bytes() == state.to_bytes()
    vectors = torch.randn(12, 6)
    for vector in vectors[:8]:
        state, _ = scorer.step(state, vector)
    data = state.to_bytes()
    restored = ScorerState.from_bytes(data, expected_model_version="m-abc")
    assert restored.to_bytes() == data
    assert restored.segments == 8
    a, b = state, restored
    for vector in vectors[8:]:
        a, pa = scorer.step(a, vector)
        b, pb = scorer.step(b, vector)
        assert pa == pb


def test_corrupt_or_foreign_state_is_refused():
    head = SessionHead(input_size=4, hidden_size=4, attention_size=4).eval()
    scorer = IncrementalScorer(head, model_version="m-one")
    state, _ = scorer.step(scorer.init_state(), torch.randn(4))
    data = bytearray(state.to_bytes())
    with pytest.raises(StateError, match="truncated"):
        ScorerState.from_bytes(bytes(data[:10]))
    flipped = bytearray(data)
    flipped[30] ^= 0xFF
    with pytest.raises(StateError, match="corrupt"):
        ScorerState.from_bytes(bytes(flipped))
    with pytest.raises(StateError, match="belongs to model"):
        ScorerState.from_bytes(bytes(data), expected_model_version="m-two")
    other = IncrementalScorer(head, model_version="m-two")
    with pytest.raises(StateError, match="belongs to model"):
        other.step(ScorerState.from_bytes(bytes(data)), torch.randn(4))


def test_model_incremental_scorer_matches_model_score():
    torch.manual_seed(6)
    model = ScreeningModel(ModelConfig.tiny())
    vectors = torch.randn(25, model.config.segment_vector_size)
    scorer = model.incremental_scorer()
    state = scorer.init_state()
    for n, vector in enumerate(vectors, start=1):
        state, probability = scorer.step(state, vector)
        assert abs(probability - model.score(vectors[:n])) <= 1e-5


def test_wrong_vector_width_and_non_finite_vectors_are_refused():
    head = SessionHead(input_size=4, hidden_size=4, attention_size=4).eval()
    scorer = IncrementalScorer(head)
    state = scorer.init_state()
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        scorer.step(state, torch.randn(5))
    with pytest.raises(ValueError, match="NaN or infinite"):
        scorer.step(state, torch.tensor([0.0, float("nan"), 0.0, 0.0]))


def test_stepping_an_older_state_again_leaves_every_state_intact():
    # The server may retry a step from the same state (a Redis conflict): states share row buffers.
    torch.manual_seed(8)
    head = SessionHead(input_size=6, hidden_size=5, attention_size=4).eval()
    scorer = IncrementalScorer(head)
    vectors = torch.randn(40, 6)
    state = scorer.init_state()
    for vector in vectors[:20]:
        state, _ = scorer.step(state, vector)
    first, p_first = scorer.step(state, vectors[20])
    first_bytes = first.to_bytes()
    second, p_second = scorer.step(state, vectors[21])   # a different next segment from the same state
    assert first.to_bytes() == first_bytes
    assert abs(p_second - batch_probability(head, torch.cat([vectors[:20], vectors[21:22]]))) <= 1e-5
    for vector in vectors[22:]:
        first, p_first = scorer.step(first, vector)
    assert abs(p_first - batch_probability(head, torch.cat([vectors[:21], vectors[22:]]))) <= 1e-5
    assert second.segments == 21 and state.segments == 20


def stepped(scorer, vectors):
    """States after each vector, and what each step appended to the rows."""
    state, appended = scorer.init_state(), []
    for vector in vectors:
        previous = state
        state, _ = scorer.step(state, vector)
        appended.append(state.row_bytes(previous.rows))
    return state, appended


def assert_continue_identically(scorer, head, state, restored, vectors, start):
    """Stepping `state` and `restored` through vectors[start:] gives equal scores, equal to the batch head."""
    a, b = state, restored
    for n, vector in enumerate(vectors[start:], start=start + 1):
        a, pa = scorer.step(a, vector)
        b, pb = scorer.step(b, vector)
        assert pa == pb
        assert abs(pb - batch_probability(head, vectors[:n])) <= 1e-5


@pytest.mark.parametrize("variant", ["self-attention", "last-step"])
def test_head_and_rows_restore_the_exact_state_and_continue_identically(variant):
    torch.manual_seed(9)
    head = SessionHead(input_size=6, hidden_size=7, attention_size=5, variant=variant).eval()
    scorer = IncrementalScorer(head, model_version="m-rows")
    vectors = torch.randn(40, 6)
    state, appended = stepped(scorer, vectors[:30])
    assert b"".join(appended) == state.row_bytes()
    restored = scorer.restore(state.head_bytes(), b"".join(appended))
    assert restored.to_bytes() == state.to_bytes()  # every array, bit for bit
    assert restored.head_bytes() == state.head_bytes()
    assert_continue_identically(scorer, head, state, restored, vectors, start=30)
    assert scorer.restore(scorer.init_state().head_bytes()).segments == 0


def test_what_a_step_writes_does_not_grow_with_the_session():
    torch.manual_seed(10)
    head = SessionHead(input_size=8, hidden_size=16, attention_size=12).eval()
    scorer = IncrementalScorer(head, model_version="m-flat")
    state, appended = stepped(scorer, torch.randn(300, 8))
    assert {len(row) for row in appended} == {3 * 12 * 4}
    heads = set()
    for n in (1, 10, 300):
        heads.add(len(scorer.restore(state.head_bytes(), state.row_bytes()).head_bytes()) if n == 300 else
                  len(stepped(scorer, torch.randn(n, 8))[0].head_bytes()))
    assert len(heads) == 1


def test_rows_that_do_not_match_their_head_are_refused():
    torch.manual_seed(11)
    head = SessionHead(input_size=4, hidden_size=4, attention_size=4).eval()
    scorer = IncrementalScorer(head, model_version="m-one")
    state, appended = stepped(scorer, torch.randn(5, 4))
    state_head, rows = state.head_bytes(), b"".join(appended)
    with pytest.raises(StateError, match="bytes of rows for 5 rows"):
        scorer.restore(state_head, rows[:-48])
    flipped = bytearray(rows)
    flipped[7] ^= 0x01
    with pytest.raises(StateError, match="rows are corrupt"):
        scorer.restore(state_head, bytes(flipped))
    other_rows = stepped(scorer, torch.randn(5, 4))[0].row_bytes()
    with pytest.raises(StateError, match="rows are corrupt"):
        scorer.restore(state_head, other_rows)
    broken_head = bytearray(state_head)
    broken_head[30] ^= 0xFF
    with pytest.raises(StateError, match="head is corrupt"):
        scorer.restore(bytes(broken_head), rows)
    with pytest.raises(StateError, match="belongs to model"):
        IncrementalScorer(head, model_version="m-two").restore(state_head, rows)
    with pytest.raises(StateError, match="truncated"):
        scorer.restore(state_head[:10], rows)
    with pytest.raises(StateError, match="IncrementalScorer.restore"):
        ScorerState.from_bytes(state_head)
    with pytest.raises(StateError, match="not a moodstream scorer state head"):
        scorer.restore(state.to_bytes(), b"")  # a whole state of format 1 is no head


@pytest.mark.parametrize("scale,bias", [(0.3, -0.4), (2.5, 0.7)])
def test_a_calibrated_checkpoint_scores_the_same_in_batch_and_incrementally(scale, bias, tmp_path):
    torch.manual_seed(3)
    model = ScreeningModel(ModelConfig.tiny(calibration_scale=scale, calibration_bias=bias))
    reloaded = ScreeningModel.from_pretrained(model.save_pretrained(tmp_path / "calibrated"))
    assert (reloaded.config.calibration_scale, reloaded.config.calibration_bias) == (scale, bias)
    vectors = torch.randn(25, model.config.segment_vector_size)
    scorer = reloaded.incremental_scorer()
    state = scorer.init_state()
    for n in range(1, 26):
        state, probability = scorer.step(state, vectors[n - 1])
        with torch.no_grad():
            raw_logit = float(model.session_head(vectors[None, :n])[0])
        expected = 1.0 / (1.0 + torch.exp(torch.tensor(-(scale * raw_logit + bias), dtype=torch.float64)))
        assert abs(probability - reloaded.score(vectors[:n])) <= 1e-6
        assert abs(probability - float(expected)) <= 1e-6  # the calibration is applied, not ignored


def test_mean_time_pooling_divides_the_summed_evidence_by_the_session_length():
    # The paper's sum grows the logit with the session's length; the mean is that sum over n.
    torch.manual_seed(4)
    summing = SessionHead(input_size=6, hidden_size=5, attention_size=4).eval()
    averaging = SessionHead(input_size=6, hidden_size=5, attention_size=4, time_pooling="mean").eval()
    averaging.load_state_dict(summing.state_dict())
    vectors = torch.randn(7, 6)
    with torch.no_grad():
        for n in (1, 3, 7):
            summed = summing(vectors[None, :n])[0] - summing.classifier.bias
            averaged = averaging(vectors[None, :n])[0] - averaging.classifier.bias
            assert float(averaged) == pytest.approx(float(summed) / n, rel=1e-5, abs=1e-7)


def test_checkpoint_round_trips_mean_time_pooling_and_old_configs_keep_their_version(tmp_path):
    model = ScreeningModel(ModelConfig.tiny(session_time_pooling="mean"))
    assert model.session_head.time_pooling == "mean"
    loaded = ScreeningModel.from_pretrained(model.save_pretrained(tmp_path / "mean"))
    assert loaded.session_head.time_pooling == "mean"
    assert "session_time_pooling" not in ModelConfig.tiny().to_dict()
    with pytest.raises(ValueError, match="session_time_pooling"):
        ModelConfig.tiny(session_time_pooling="max")


def test_the_skip_path_starts_at_the_mean_segment_logit_and_restores_exactly():
    torch.manual_seed(12)
    segment_classifier = torch.nn.Linear(6, 1)
    head = SessionHead(input_size=6, hidden_size=5, attention_size=4, skip="segment-mean").eval()
    head.start_from_segment_classifier(segment_classifier)
    vectors = torch.randn(9, 6)
    with torch.no_grad():
        for n in (1, 4, 9):
            expected = segment_classifier(vectors[:n]).mean()
            assert float(head(vectors[None, :n])[0]) == pytest.approx(float(expected), abs=1e-6)
    with torch.no_grad():  # train the recurrent path a little, so both paths count below
        head.classifier.weight.normal_()
    scorer = IncrementalScorer(head, model_version="m-skip")
    state, appended = stepped(scorer, vectors[:6])
    with torch.no_grad():
        assert state.segment_score_sum == pytest.approx(float(segment_classifier(vectors[:6]).sum()), abs=1e-5)
    restored = scorer.restore(state.head_bytes(), b"".join(appended))
    assert restored.head_bytes() == state.head_bytes()
    assert_continue_identically(scorer, head, state, restored, vectors, start=6)
    snapshot = ScorerState.from_bytes(state.to_bytes(), expected_model_version="m-skip")
    assert snapshot.segment_score_sum == state.segment_score_sum
    assert scorer.step(snapshot, vectors[0])[1] == scorer.step(state, vectors[0])[1]


def _as_format_2(head_bytes: bytes) -> bytes:
    """A head as servers wrote it before the skip path's sum was stored."""
    import struct
    import zlib

    payload = bytearray(head_bytes[:-4 - 8])
    payload[4:6] = struct.pack("<H", 2)
    return bytes(payload) + struct.pack("<I", zlib.crc32(bytes(payload)))


def test_format_2_heads_are_read_without_a_sum_and_refused_by_a_skip_model():
    torch.manual_seed(13)
    plain = SessionHead(input_size=4, hidden_size=4, attention_size=4).eval()
    scorer = IncrementalScorer(plain, model_version="m-old")
    state, appended = stepped(scorer, torch.randn(5, 4))
    old_head = _as_format_2(state.head_bytes())
    assert scorer.restore(old_head, b"".join(appended)).head_bytes() == state.head_bytes()
    skipping = SessionHead(input_size=4, hidden_size=4, attention_size=4, skip="segment-mean").eval()
    skip_scorer = IncrementalScorer(skipping, model_version="m-old")
    with pytest.raises(StateError, match="no sum for this model's skip path"):
        skip_scorer.restore(old_head, b"".join(appended))


def test_a_calibrated_checkpoint_with_the_skip_path_scores_the_same_in_batch_and_incrementally(tmp_path):
    torch.manual_seed(14)
    model = ScreeningModel(ModelConfig.tiny(session_skip="segment-mean", calibration_scale=0.6,
                                            calibration_bias=-0.2))
    reloaded = ScreeningModel.from_pretrained(model.save_pretrained(tmp_path / "skip"))
    assert reloaded.config.session_skip == "segment-mean"
    assert reloaded.model_version == model.model_version
    vectors = torch.randn(12, model.config.segment_vector_size)
    scorer = reloaded.incremental_scorer()
    state = scorer.init_state()
    for n in range(1, 13):
        state, probability = scorer.step(state, vectors[n - 1])
        assert abs(probability - reloaded.score(vectors[:n])) <= 1e-6
