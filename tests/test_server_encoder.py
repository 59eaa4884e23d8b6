"""The server's encoder worker: precisions, the accuracy bound, tuning, dynamic batching (CPU).

The contract is that `auto` never runs a path outside the accuracy bound
(docs/performance.md), whatever the CPU. How far each explicit precision lands
from fp32 depends on the CPU's kernels (AVX2, AVX-512, AMX), so it is measured
and reported (`-rP` shows it), and only checked for being a working encoder.
"""
import asyncio

import numpy as np
import pytest
import torch

from moodstream.model import ModelConfig, ScreeningModel
from moodstream.server.encoder import BatchingEncoder
from moodstream.server.encoder_paths import PRECISIONS, candidate_precisions, encode_function
from moodstream.server.encoder_tuning import (CLOSE_CALL, ROUNDS_BEFORE_PRUNING, TuningCache, accuracy,
                                              choose_encoder, choose_precision, interview_probe, speech_like_waves,
                                              tune, within_bound, worst_accuracy)

from moodstream.model.onnx_export import onnxruntime_available
from moodstream.server.onnx_encoder import ONNX_PATHS

DEMO_CHECKPOINT = "moodstream/assets/demo-checkpoint"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ScreeningModel(ModelConfig.tiny()).eval()


@pytest.fixture(scope="module")
def trained():
    from pathlib import Path

    return ScreeningModel.from_pretrained(Path(__file__).resolve().parents[1] / DEMO_CHECKPOINT).eval()


def waves(count, seed=0):
    return speech_like_waves(count, seed=seed)


@pytest.mark.parametrize("which", ["random tiny", "trained demo checkpoint"])
def test_each_precision_is_a_working_encoder_and_its_error_is_reported(model, trained, which, record_property,
                                                                       capsys):
    subject = model if which == "random tiny" else trained
    batch = waves(6, seed=3)
    reference = encode_function(subject, "fp32")(batch)
    for precision in ("bf16", "int8", *(ONNX_PATHS if onnxruntime_available() else ())):
        vectors = encode_function(subject, precision)(batch)
        assert vectors.dtype == np.float32 and vectors.shape == reference.shape
        assert np.isfinite(vectors).all()
        cosine, probability_error = accuracy(subject, reference, vectors)
        record_property(f"{precision} cosine", cosine)
        record_property(f"{precision} |dp|", probability_error)
        with capsys.disabled():
            print(f"\n{which}: {precision} vs fp32: min cosine {cosine:.5f}, |dp| {probability_error:.2e} "
                  f"({'within' if within_bound(cosine, probability_error) else 'outside'} the bound; "
                  f"CPU {torch.backends.cpu.get_cpu_capability()})")
        assert cosine > 0.9, f"{precision} is no longer the same encoder"


@pytest.mark.parametrize("which", ["random tiny", "trained demo checkpoint"])
def test_auto_only_runs_what_it_measured_within_the_bound(model, trained, which):
    subject = model if which == "random tiny" else trained
    precision, encode, tuning = choose_encoder(subject, "auto")
    chosen = [m for m in tuning.measurements if (m.precision, m.batch) == (precision, tuning.max_batch)]
    assert chosen and chosen[0].accurate
    fastest = max(m.chunks_per_second for m in tuning.measurements if m.accurate)
    assert chosen[0].chunks_per_second >= (1 - CLOSE_CALL) * fastest  # the fastest, or a near tie to it
    # and checked again from outside, on the tuner's probe chunks and on the bundled interviews' real speech
    config = subject.config
    sessions = [speech_like_waves(4, seed=0, seconds=config.segment_seconds, sample_rate=config.sample_rate),
                *interview_probe(subject)]
    assert len(sessions) == 3 and all(len(session) >= 2 for session in sessions[1:])
    fp32 = encode_function(subject, "fp32")
    cosine, probability_error = worst_accuracy(subject, [fp32(s) for s in sessions], [encode(s) for s in sessions])
    assert within_bound(cosine, probability_error), (precision, cosine, probability_error)


def test_the_probability_error_counts_the_score_after_every_segment():
    class MeanScorer:  # a session probability of the mean segment: simple enough to nudge exactly
        def score(self, vectors):
            return float(torch.sigmoid(vectors[:, 0].mean()))

    reference = np.zeros((4, 3), np.float32)
    nudged = reference.copy()
    nudged[0, 0], nudged[1, 0] = 0.5, -0.5  # the first score moves; from the second on they cancel out
    cosine, probability_error = accuracy(MeanScorer(), reference + 1, nudged + 1)
    first_score_moved = float(torch.sigmoid(torch.tensor(1.5)) - torch.sigmoid(torch.tensor(1.0)))
    assert probability_error == pytest.approx(first_score_moved)
    assert probability_error > 0.05 and cosine < 1  # a whole-session error alone would be 0


def test_the_fastest_path_outside_the_bound_is_never_picked(model):
    fp32 = encode_function(model, "fp32")
    memo = {}

    def instant_and_exact(batch):  # fp32's own vectors from a cache: faster than anything, and accurate
        key = tuple(id(w) for w in batch)
        if key not in memo:
            memo[key] = fp32(batch)
        return memo[key]

    width = model.config.segment_vector_size

    def instant_and_wrong(batch):
        return np.ones((len(batch), width), np.float32)

    def instant_and_slightly_off(batch):  # cosine just under the bound
        vectors = instant_and_exact(batch).copy()
        vectors[:, 0] += 0.05 * np.linalg.norm(vectors, axis=1)
        return vectors

    encoders = {"fp32": fp32, "wrong": instant_and_wrong, "off": instant_and_slightly_off}
    tuning, _ = tune(model, ["fp32", "wrong", "off"], (1, 2), encoders=encoders)
    assert tuning.precision == "fp32"
    assert {m.precision for m in tuning.measurements if not m.accurate} == {"wrong", "off"}
    encoders["exact"] = instant_and_exact
    tuning, _ = tune(model, ["fp32", "wrong", "exact"], (1, 2), encoders=encoders)
    assert tuning.precision == "exact"

    # Exact on the synthetic probe chunks, off on real speech only: still outside the bound.
    speech = {wave.tobytes() for session in interview_probe(model) for wave in session}

    def instant_and_off_on_speech(batch):
        vectors = instant_and_exact(batch).copy()
        for row, wave in enumerate(batch):
            if wave.tobytes() in speech:
                vectors[row, 0] += 0.05 * np.linalg.norm(vectors[row])
        return vectors

    encoders["off on speech"] = instant_and_off_on_speech
    tuning, _ = tune(model, ["fp32", "off on speech"], (1, 2), encoders=encoders)
    assert tuning.precision == "fp32"
    assert [m.precision for m in tuning.measurements if not m.accurate] == ["off on speech"]


class InjectedCosts:
    """A clock that only encoders move: each call costs what `cost(precision, batch, call number)` says, so
    the tuner's decisions are tested without timing anything."""

    def __init__(self, model, cost) -> None:
        self.now, self.cost = 0.0, cost
        self.calls: dict[tuple[str, int], int] = {}
        self.fp32, self.vectors = encode_function(model, "fp32"), {}

    def exact(self, batch):  # fp32's own vectors, so that every injected path is within the accuracy bound
        key = tuple(id(wave) for wave in batch)
        if key not in self.vectors:
            self.vectors[key] = self.fp32(batch)
        return self.vectors[key]

    def clock(self) -> float:
        return self.now

    def encoder(self, precision: str):
        def encode(batch):
            call = self.calls.get((precision, len(batch)), 0)
            self.calls[precision, len(batch)] = call + 1
            self.now += self.cost(precision, len(batch), call)
            return self.exact(batch)
        return encode

    def tune(self, model, precisions, batch_sizes, **options):
        return tune(model, precisions, batch_sizes, encoders={p: self.encoder(p) for p in precisions},
                    clock=self.clock, **options)[0]


def test_the_batch_limit_is_measured_not_assumed(model):
    # a GPU-like path: a batch costs what one chunk costs
    gpu_like = InjectedCosts(model, lambda precision, batch, call: 0.1).tune(model, ["gpu-like"], (1, 2, 4))
    assert gpu_like.max_batch == 4, gpu_like.summary()
    # the CPU behaviour measured on AMD EPYC: batches cost more per chunk
    cpu_like = InjectedCosts(model, lambda precision, batch, call: 0.05 * batch ** 2).tune(model, ["cpu-like"],
                                                                                           (1, 2, 4))
    assert cpu_like.max_batch == 1, cpu_like.summary()


PER_CHUNK = {"fp32": 1.0, "slow": 0.9, "fast": 0.6}  # seconds per chunk on a quiet machine, at any batch


@pytest.mark.parametrize("disturbed_call", range(4))
@pytest.mark.parametrize("disturbed", ["fp32", "slow", "fast"])
def test_a_load_swing_during_one_measurement_does_not_decide(model, disturbed, disturbed_call):
    # Another job takes the CPU for one call of one path: that call runs at a third of its speed. Whichever
    # call it hits, the path that is fastest on a quiet machine is chosen.
    def cost(precision, batch, call):
        slowdown = 3.0 if (precision, call) == (disturbed, disturbed_call) else 1.0
        return PER_CHUNK[precision] * batch * slowdown

    costs = InjectedCosts(model, cost)
    tuning = costs.tune(model, ["fp32", "slow", "fast"], (1,))
    assert tuning.precision == "fast", tuning.summary()


def test_clear_losers_are_dropped_and_the_rounds_go_to_the_close_calls(model):
    per_chunk = {"fp32": 1.0, "close": 0.52, "closer": 0.5}
    costs = InjectedCosts(model, lambda precision, batch, call: per_chunk[precision] * batch)
    tuning = costs.tune(model, ["fp32", "close", "closer"], (1, 2), rounds=6)
    rounds = {(m.precision, m.batch): m.rounds for m in tuning.measurements}
    assert rounds["fp32", 1] == rounds["fp32", 2] == ROUNDS_BEFORE_PRUNING, tuning.summary()
    assert all(rounds[p, b] == 6 for p in ("close", "closer") for b in (1, 2)), tuning.summary()
    # a tie within CLOSE_CALL goes to the smaller batch
    assert (tuning.precision, tuning.max_batch) == ("closer", 1), tuning.summary()
    assert all(m.chunks_per_second == pytest.approx(1 / per_chunk[m.precision]) for m in tuning.measurements)


def test_a_tuning_is_cached_per_model_and_machine(model, tmp_path, monkeypatch):
    monkeypatch.setattr("moodstream.server.encoder_tuning.os.getloadavg", lambda: (0.0, 0.0, 0.0))  # a quiet machine
    cache = TuningCache(tmp_path / "tuning.json")
    first = choose_encoder(model, "auto", cache=cache)[2]
    assert not first.cached

    def no_measuring(*args, **kwargs):
        raise AssertionError("a cached tuning was measured again")

    monkeypatch.setattr("moodstream.server.encoder_tuning.tune", no_measuring)
    precision, _, second = choose_encoder(model, "auto", cache=cache)
    assert second.cached and (precision, second.max_batch) == (first.precision, first.max_batch)
    torch.manual_seed(1)
    other = ScreeningModel(ModelConfig.tiny()).eval()
    with pytest.raises(AssertionError, match="measured again"):
        choose_encoder(other, "auto", cache=cache)
    (tmp_path / "tuning.json").write_text("{not json")
    with pytest.raises(AssertionError, match="measured again"):  # an unreadable cache is measured again
        choose_encoder(model, "auto", cache=cache)


def test_a_tuning_measured_on_a_busy_machine_is_measured_again_once_it_is_quiet(model, tmp_path, monkeypatch):
    cores = len(__import__("os").sched_getaffinity(0))
    load = {"now": 3.0 * cores}  # three runnable jobs per core while the first tuning is measured
    monkeypatch.setattr("moodstream.server.encoder_tuning.os.getloadavg", lambda: (load["now"], 0.0, 0.0))
    cache = TuningCache(tmp_path / "tuning.json")
    busy = choose_encoder(model, "auto", cache=cache)[2]
    assert busy.load_per_core == pytest.approx(3.0) and "at load 3.0 per core" in busy.summary()
    load["now"] = 2.0 * cores  # still busy: the cached ranking is as good as a new one
    assert choose_encoder(model, "auto", cache=cache)[2].cached
    load["now"] = 0.5 * cores  # quiet now: measured again, and the quiet tuning replaces it in the cache
    quiet = choose_encoder(model, "auto", cache=cache)[2]
    assert not quiet.cached and quiet.load_per_core == pytest.approx(0.5)
    again = choose_encoder(model, "auto", cache=cache)[2]
    assert again.cached and again.load_per_core == pytest.approx(0.5)


def test_int8_leaves_the_served_model_untouched(model):
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    encode_function(model, "int8")
    after = model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert not any("quantized" in type(module).__module__ for module in model.modules())


def test_precision_requests_are_checked(model):
    with pytest.raises(ValueError, match="precision must be one of"):
        choose_precision(model, "fp8")
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        choose_precision(model, "fp16")
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        BatchingEncoder(model, precision="fp16")
    assert choose_precision(model, "int8") == "int8"
    assert choose_precision(model, "auto") in PRECISIONS


def test_concurrent_chunks_share_forward_passes_and_get_their_own_vectors(model):
    chunks = waves(12, seed=1)
    expected = model.encode_segments(chunks).numpy()
    sizes = []

    async def main():
        encoder = BatchingEncoder(model, max_batch=4, max_wait_ms=50.0, precision="fp32")
        forward = encoder._forward

        def recording(batch):
            sizes.append(len(batch))
            return forward(batch)

        encoder._forward = recording
        await encoder.start()
        try:
            return await asyncio.gather(*(encoder.encode(chunk) for chunk in chunks))
        finally:
            await encoder.stop()

    vectors = np.stack(asyncio.run(main()))
    assert max(sizes) == 4 and sum(sizes) == 12 and len(sizes) < 12
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


def test_an_encoder_runs_what_it_was_told_or_what_it_measured(model, tmp_path):
    async def started(**options):
        encoder = BatchingEncoder(model, **options)
        await encoder.start()
        await encoder.stop()
        return encoder

    fixed = asyncio.run(started(precision="fp32", max_batch=2))
    assert (fixed.precision, fixed.max_batch, fixed.tuning.measurements) == ("fp32", 2, ())
    tuned = asyncio.run(started(precision="auto", tuning_cache=tmp_path / "cache.json"))
    assert tuned.precision in candidate_precisions(model) and tuned.max_batch in (1, 2, 4)
    assert (tmp_path / "cache.json").exists()
