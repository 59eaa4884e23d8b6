"""The encoder's tuning: the fastest (precision, max batch) that keeps every score within the accuracy bound.

Each candidate path (moodstream.server.encoder_paths) is checked against fp32
on a synthetic probe and on the bundled interviews' first chunks; those within
the bound are timed at each batch size, and the fastest wins. A tuning is
cached per model, machine and what was weighed, so a restart skips the probe.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from moodstream.samples import DEMO_PARTICIPANTS
from moodstream.server.encoder_paths import candidate_precisions, check_request, default_cache_dir, encode_function
from moodstream.speech import CaptureSettings, FileSource, capture_chunks, load_prompt_intervals, make_gate
from moodstream.wire import SAMPLE_RATE

# The encoder's logger: what was tuned is read beside what the encoder then serves with.
log = logging.getLogger("moodstream.server.encoder")

# The accuracy bound: a faster path must keep every segment vector this close to fp32's
# and the session probability over the probe chunks within this of fp32's.
MIN_COSINE = 0.999
MAX_PROBABILITY_ERROR = 1e-3
# Batch sizes the tuner weighs. On a CPU a batch measured slower per chunk on one machine and
# faster on another (bench/encoder.py), so it is measured, not assumed.
CPU_BATCH_SIZES = (1, 2, 4)
GPU_BATCH_SIZES = (1, 4, 8, 16)
# Measurements closer than this are a tie: the smaller batch (lower latency), then fp32, wins it.
CLOSE_CALL = 0.05


def candidate_batch_sizes(device: torch.device) -> tuple[int, ...]:
    return GPU_BATCH_SIZES if device.type == "cuda" else CPU_BATCH_SIZES


def speech_like_waves(count: int, seed: int = 0, seconds: float = 7.0, sample_rate: int = 16000) -> list[np.ndarray]:
    """Voiced harmonics with a syllable-rate envelope: what VAD keeps, as far as the encoder's cost and
    numerics go (white noise would flatter a low precision's accuracy less predictably)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    waves = []
    for _ in range(count):
        pitch = rng.uniform(90, 220)
        voiced = sum(np.sin(2 * np.pi * pitch * k * t + rng.uniform(0, 6)) / k for k in range(1, 6))
        envelope = 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(3, 6) * t))
        waves.append((0.2 * voiced * envelope + 0.01 * rng.standard_normal(t.size)).astype(np.float32))
    return waves


# Real speech the bound is checked on besides the synthetic probe: the first chunks of each bundled
# interview, cut by the checkpoint's own speech path. A score moves most over its first segments.
PROBE_INTERVIEW_CHUNKS = 6


def accuracy(model, reference: np.ndarray, vectors: np.ndarray) -> tuple[float, float]:
    """(smallest cosine of a segment vector to fp32's, largest |Δ session probability| over the scores
    after 1, 2, ... n of the segments, as a live monitor shows them)."""
    reference_t, vectors_t = torch.from_numpy(np.asarray(reference)), torch.from_numpy(np.asarray(vectors))
    cosine = float(torch.nn.functional.cosine_similarity(reference_t, vectors_t).min())
    error = max(abs(model.score(vectors_t[:n]) - model.score(reference_t[:n])) for n in range(1, len(vectors_t) + 1))
    return cosine, error


def worst_accuracy(model, references, outputs) -> tuple[float, float]:
    """accuracy() over several sessions: the smallest cosine and the largest |Δp| of any of them."""
    measured = [accuracy(model, reference, vectors) for reference, vectors in zip(references, outputs)]
    return min(cosine for cosine, _ in measured), max(error for _, error in measured)


def interview_probe(model, max_chunks: int | None = PROBE_INTERVIEW_CHUNKS) -> list[list[np.ndarray]]:
    """The first `max_chunks` chunks (None: all) of each bundled interview (moodstream/assets), interviewer
    prompts gated out, cut by the checkpoint's own speech settings: real speech as the server gets it.
    Empty for a model that does not take the agent's 16 kHz audio."""
    if model.config.sample_rate != SAMPLE_RATE:
        return []
    settings = CaptureSettings.from_dict(model.config.speech) if model.config.speech else CaptureSettings()
    return [list(session[:max_chunks]) for session in _interview_chunks(settings)]


@functools.lru_cache(maxsize=4)
def _interview_chunks(settings) -> tuple[tuple[np.ndarray, ...], ...]:
    sessions = []
    for audio_path, prompts_path in DEMO_PARTICIPANTS.values():
        gate = make_gate(settings, load_prompt_intervals(prompts_path))
        chunks = capture_chunks(FileSource(audio_path), settings, gate).chunks
        sessions.append(tuple(chunk.samples.astype(np.float32) / 32768 for chunk in chunks))
    return tuple(sessions)


def within_bound(cosine: float, probability_error: float) -> bool:
    return cosine >= MIN_COSINE and probability_error <= MAX_PROBABILITY_ERROR


@dataclass(frozen=True)
class Measurement:
    """One (precision, batch size) the tuner timed, with that precision's accuracy against fp32.

    chunks_per_second comes from the least-disturbed of its `rounds` timings (the shortest)."""

    precision: str
    batch: int
    chunks_per_second: float
    min_cosine: float
    abs_diff_probability: float
    rounds: int = 0

    @property
    def accurate(self) -> bool:
        return within_bound(self.min_cosine, self.abs_diff_probability)


@dataclass(frozen=True)
class Tuning:
    """What the encoder runs: the fastest measured (precision, max batch) within the accuracy bound."""

    precision: str
    max_batch: int
    measurements: tuple[Measurement, ...] = ()
    cached: bool = False
    load_per_core: float | None = None  # the machine's load while it was measured (the higher of start and end)

    def to_json(self) -> dict:
        return {"precision": self.precision, "max_batch": self.max_batch, "load_per_core": self.load_per_core,
                "measurements": [asdict(m) for m in self.measurements]}

    @classmethod
    def from_json(cls, data: dict) -> "Tuning":
        return cls(data["precision"], int(data["max_batch"]),
                   tuple(Measurement(**m) for m in data.get("measurements", ())), cached=True,
                   load_per_core=data.get("load_per_core"))

    def measured_busier_than_now(self) -> bool:
        """Measured while other work held the cores (a ranking under contention), and the machine is
        markedly quieter now: worth measuring again."""
        if self.load_per_core is None or self.load_per_core <= BUSY_LOAD_PER_CORE:
            return False
        return load_per_core() < self.load_per_core / 2

    def summary(self) -> str:
        def shown(m: Measurement) -> str:
            if m.accurate:
                return f"{m.precision}x{m.batch} {m.chunks_per_second:.2f}/s ({m.rounds} rounds)"
            return f"{m.precision} outside the bound (cos {m.min_cosine:.4f}, |dp| {m.abs_diff_probability:.1e})"

        measured = ", ".join(shown(m) for m in self.measurements)
        source = "cached" if self.cached else "measured"
        if self.load_per_core is not None:
            source += f" at load {self.load_per_core:.1f} per core"
        return f"precision {self.precision}, max batch {self.max_batch} ({source}: {measured or 'nothing to weigh'})"


# Above this load average per usable core, other work was competing for the cores while a tuning was measured.
BUSY_LOAD_PER_CORE = 1.0


def load_per_core() -> float:
    return os.getloadavg()[0] / len(os.sched_getaffinity(0))


# Every combination is timed in the first rounds; after them, one whose best time per chunk is more than
# PRUNE_FACTOR times the leader's is dropped, so the remaining rounds go to the close calls.
TUNING_ROUNDS = 6
ROUNDS_BEFORE_PRUNING = 2
PRUNE_FACTOR = 1.3


def time_combinations(encoders: dict, probe: list, combinations: list[tuple[str, int]], rounds: int = TUNING_ROUNDS,
                      clock=time.perf_counter) -> dict[tuple[str, int], tuple[float, int]]:
    """(precision, batch) -> (shortest seconds per chunk, rounds timed).

    On a shared machine load only ever adds time, so each combination keeps its shortest round, the one
    least disturbed. The combinations take turns within a round, starting one further on each round, so
    a load swing or a cache left warm by the previous call does not always favour the same one.
    """
    best = {combination: float("inf") for combination in combinations}
    timed = dict.fromkeys(combinations, 0)
    alive = list(combinations)
    for round_index in range(rounds):
        start = round_index % len(alive)
        for precision, batch in alive[start:] + alive[:start]:
            started = clock()
            encoders[precision](probe[:batch])
            best[precision, batch] = min(best[precision, batch], (clock() - started) / batch)
            timed[precision, batch] += 1
        if round_index + 1 >= ROUNDS_BEFORE_PRUNING:
            leader = min(best[combination] for combination in alive)
            alive = [combination for combination in alive if best[combination] <= PRUNE_FACTOR * leader]
            if len(alive) == 1:
                break
    return {combination: (best[combination], timed[combination]) for combination in combinations}


def tune(model, precisions: list[str], batch_sizes: tuple[int, ...], encoders: dict | None = None,
         rounds: int = TUNING_ROUNDS, clock=time.perf_counter) -> tuple[Tuning, dict]:
    """Time every (precision, batch) in `precisions` x `batch_sizes`; keep the fastest within the bound.

    `encoders` may bring ready encode functions (precision -> function); the rest are built here.
    The first precision is the reference and always qualifies. Accuracy is measured on the probe chunks
    and on real speech (interview_probe), after every segment. Paths outside the bound are never timed;
    the rest are timed by time_combinations. One within CLOSE_CALL of the fastest with a smaller batch
    (lower latency) or the reference precision wins the tie. Returns the choice and the encoders built.
    Call it from the thread that will serve: OpenMP thread pools belong to the calling thread.
    """
    encoders = dict(encoders or {})
    load_at_start = load_per_core()
    probe = speech_like_waves(max(batch_sizes), seed=0, seconds=model.config.segment_seconds,
                              sample_rate=model.config.sample_rate)
    sessions = [probe, *interview_probe(model)]
    references = None
    quality = {}
    for precision in precisions:
        encode = encoders[precision] = encoders.get(precision) or encode_function(model, precision)
        outputs = [encode(session) for session in sessions]  # the first is also the warm-up of the largest batch
        if references is None:
            references, quality[precision] = outputs, (1.0, 0.0)
        else:
            quality[precision] = worst_accuracy(model, references, outputs)
    combinations = [(p, b) for p in precisions if within_bound(*quality[p]) for b in batch_sizes]
    timings = time_combinations(encoders, probe, combinations, rounds, clock)
    measurements = [Measurement(p, max(batch_sizes), 0.0, *quality[p]) for p in precisions
                    if not within_bound(*quality[p])]
    measurements += [Measurement(p, b, 1 / max(timings[p, b][0], 1e-9), *quality[p], rounds=timings[p, b][1])
                     for p, b in combinations]
    fastest = max(m.chunks_per_second for m in measurements if m.accurate)
    close = [m for m in measurements if m.accurate and m.chunks_per_second >= (1 - CLOSE_CALL) * fastest]
    chosen = min(close, key=lambda m: (m.batch, m.precision != precisions[0], -m.chunks_per_second))
    load = max(load_at_start, load_per_core())
    return Tuning(chosen.precision, chosen.batch, tuple(measurements), load_per_core=round(load, 2)), encoders


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def tuning_key(model, precisions, batch_sizes) -> str:
    """What a tuning depends on: the model, the hardware and its kernels, and what was weighed."""
    device = model.device
    hardware = (torch.cuda.get_device_name(device) if device.type == "cuda" else
                f"{cpu_name()} {torch.backends.cpu.get_cpu_capability()} {len(os.sched_getaffinity(0))} cores "
                f"{torch.get_num_threads()} threads")
    parts = [model.model_version, device.type, hardware, f"torch {torch.__version__}", ",".join(precisions),
             ",".join(map(str, batch_sizes)), f"bound cos {MIN_COSINE} dp {MAX_PROBABILITY_ERROR}",
             f"probe: synthetic + {PROBE_INTERVIEW_CHUNKS} chunks of each bundled interview, every prefix"]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


class TuningCache:
    """Tunings by tuning_key in one JSON file, so a restart on the same machine and model skips the probe."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def get(self, key: str) -> Tuning | None:
        try:
            return Tuning.from_json(json.loads(self.path.read_text())[key])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # missing or unreadable: measure again

    def put(self, key: str, tuning: Tuning) -> None:
        try:
            entries = json.loads(self.path.read_text())
            if not isinstance(entries, dict):
                entries = {}
        except (OSError, ValueError):
            entries = {}
        entries[key] = tuning.to_json()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            spare = self.path.with_suffix(f".{os.getpid()}.tmp")
            spare.write_text(json.dumps(entries, indent=1))
            spare.replace(self.path)
        except OSError as error:
            log.warning("could not write the encoder tuning cache %s: %s", self.path, error)


def default_tuning_cache() -> Path:
    return default_cache_dir() / "encoder-tuning.json"


def choose_precision(model, requested: str = "auto") -> str:
    """The precision the encoder would run for `requested` (auto: the tuner's pick at each batch size)."""
    return choose_encoder(model, requested)[0]


def choose_encoder(model, requested: str = "auto", max_batch: int | None = None,
                   cache: TuningCache | None = None):
    """(precision, encode function, tuning): fixed where asked, else measured here (or cached)."""
    check_request(model, requested)
    precisions = candidate_precisions(model) if requested == "auto" else [requested]
    batch_sizes = (max_batch,) if max_batch is not None else candidate_batch_sizes(model.device)
    if len(precisions) == 1 and len(batch_sizes) == 1:
        return precisions[0], encode_function(model, precisions[0]), Tuning(precisions[0], batch_sizes[0])
    key = tuning_key(model, precisions, batch_sizes)
    tuning = cache.get(key) if cache is not None else None
    if tuning is not None and tuning.measured_busier_than_now():
        log.info("encoder: measuring again: the cached tuning was measured at load %.1f per core, now %.1f",
                 tuning.load_per_core, load_per_core())
    elif tuning is not None and tuning.precision in precisions and tuning.max_batch in batch_sizes:
        return tuning.precision, encode_function(model, tuning.precision), tuning
    tuning, encoders = tune(model, precisions, batch_sizes)
    if cache is not None:
        cache.put(key, tuning)
    return tuning.precision, encoders[tuning.precision], tuning

