"""One encoder worker per device, batching chunks from every live stream.

Chunks wait at most `max_wait_ms` for company, up to `max_batch` per forward
pass (dynamic batching, as inference servers do). The forward pass runs in
one dedicated thread so the event loop keeps serving acks and subscribers.
A segment's vector does not depend on what it was batched with (see
moodstream.model.backbone), so batching never changes a score.
"""
from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from moodstream.server import metrics

log = logging.getLogger("moodstream.server.encoder")

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
# CPUs whose torch kernels run bf16 natively; elsewhere bf16 autocast is
# emulated and many times slower than fp32.
_BF16_CPU_CAPABILITIES = ("AVX512", "AVX512_BF16", "AMX", "AVX512_AMX")
# A faster precision must keep the segment vectors this close to fp32's.
MIN_COSINE = 0.999


@dataclass
class _Request:
    samples: np.ndarray
    future: asyncio.Future
    enqueued: float


class _Bf16FeatureEncoder(torch.nn.Module):
    """The frozen CNN under bf16 autocast, handing fp32 frames to the (int8) transformer."""

    def __init__(self, feature_encoder: torch.nn.Module) -> None:
        super().__init__()
        self.inner = feature_encoder

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.inner(waveforms).float()


def cpu_has_fast_bf16() -> bool:
    return torch.backends.cpu.get_cpu_capability() in _BF16_CPU_CAPABILITIES


def int8_model(model):
    """A copy of the model whose backbone Linear layers run int8 (dynamic quantisation, per-channel weights, CPU only).

    The frozen CNN front end, which no Linear layer touches, runs in bf16 where the
    CPU does bf16 natively. Segment and session heads stay fp32.
    """
    if model.device.type != "cpu":
        raise ValueError("int8 runs on the CPU only; use bf16 or fp16 on a GPU")
    if model.backbone.is_whisper:
        raise ValueError("int8 is implemented for wav2vec2-family backbones only")
    quantized = copy.deepcopy(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        # Per-channel weight scales: per-tensor ones measured about twice the probability error.
        for name in ("encoder", "feature_projection"):
            setattr(quantized.backbone.encoder, name, quantize_dynamic(
                getattr(quantized.backbone.encoder, name), {torch.nn.Linear: per_channel_dynamic_qconfig}))
    if cpu_has_fast_bf16():
        quantized.backbone.encoder.feature_extractor = _Bf16FeatureEncoder(
            quantized.backbone.encoder.feature_extractor)
    return quantized


def encode_function(model, precision: str):
    """waveforms -> segment vectors (float32 numpy) for one precision."""
    if precision == "int8":
        quantized = int8_model(model)
        return lambda batch: quantized.encode_segments(batch).numpy()

    def encode(batch):
        with autocast_context(model.device, precision):
            return model.encode_segments(batch).numpy()
    return encode


def choose_precision(model, requested: str = "auto") -> str:
    """fp32 unless a faster precision keeps the segment vectors (cosine >= MIN_COSINE)."""
    return choose_encoder(model, requested)[0]


def choose_encoder(model, requested: str = "auto"):
    """(precision, encode function): the probe's winner is built once and kept."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    device = model.device
    if requested != "auto":
        if requested == "fp16" and device.type != "cuda":
            raise ValueError("fp16 needs a CUDA device; use fp32, bf16 or int8 on the CPU")
        if requested == "int8" and device.type != "cpu":
            raise ValueError("int8 runs on the CPU only; use bf16 or fp16 on a GPU")
        return requested, encode_function(model, requested)
    if device.type == "cuda":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return precision, encode_function(model, precision)
    candidates = ["fp32"]
    if cpu_has_fast_bf16():
        candidates.append("bf16")
    if not model.backbone.is_whisper and torch.backends.quantized.engine in ("x86", "fbgemm", "onednn"):
        candidates.append("int8")
    if len(candidates) == 1:
        log.info("precision fp32: CPU capability %s has neither fast bf16 nor int8 kernels",
                 torch.backends.cpu.get_cpu_capability())
        return "fp32", encode_function(model, "fp32")
    # A start-up probe: capabilities alone do not say what pays off on this machine.
    rng = np.random.default_rng(0)
    probe = [(0.1 * rng.standard_normal(int(model.config.sample_rate * model.config.segment_seconds)))
             .astype(np.float32)]
    timings, cosines, encoders = {}, {}, {}
    reference = None
    for precision in candidates:
        encode = encoders[precision] = encode_function(model, precision)
        best = float("inf")
        for _ in range(2):
            start = time.perf_counter()
            output = torch.from_numpy(encode(probe))
            best = min(best, time.perf_counter() - start)
        timings[precision] = best
        reference = output if reference is None else reference
        cosines[precision] = float(torch.nn.functional.cosine_similarity(reference, output).min())
    accurate = [p for p in candidates[1:] if cosines[p] >= MIN_COSINE and timings[p] < 0.8 * timings["fp32"]]
    chosen = min(accurate, key=timings.get, default="fp32")
    log.info("precision %s: probe %s (CPU %s)", chosen,
             ", ".join(f"{p} {timings[p] * 1000:.0f} ms cos {cosines[p]:.5f}" for p in candidates),
             torch.backends.cpu.get_cpu_capability())
    return chosen, encoders[chosen]


def autocast_context(device: torch.device, precision: str):
    if precision in ("fp32", "int8"):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def default_max_batch(device: torch.device) -> int:
    """Batches fill a GPU; on a CPU the forward pass is memory-bound and a batch is slower per chunk."""
    return 8 if device.type == "cuda" else 1


class BatchingEncoder:
    def __init__(self, model, max_batch: int | None = None, max_wait_ms: float = 5.0,
                 precision: str = "fp32") -> None:
        if max_batch is None:
            max_batch = default_max_batch(model.device)
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
        self.model = model
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.precision, self._encode = choose_encoder(model, precision)
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoder")
        self._worker: asyncio.Task | None = None

    async def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name="encoder-worker")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        while not self._queue.empty():
            request = self._queue.get_nowait()
            if not request.future.done():
                request.future.set_exception(RuntimeError("encoder stopped"))
        self._executor.shutdown(wait=True, cancel_futures=True)

    def submit(self, samples: np.ndarray) -> asyncio.Future:
        """Queue one mono float32 segment; the future resolves to its vector (float32 numpy)."""
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Request(samples, future, time.perf_counter()))
        metrics.ENCODER_QUEUE_DEPTH.set(self._queue.qsize())
        return future

    async def encode(self, samples: np.ndarray) -> np.ndarray:
        return await self.submit(samples)

    def _forward(self, batch: list[np.ndarray]) -> np.ndarray:
        return self._encode(batch)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            requests = [await self._queue.get()]
            deadline = loop.time() + self.max_wait
            while len(requests) < self.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    requests.append(await asyncio.wait_for(self._queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
            while len(requests) < self.max_batch and not self._queue.empty():
                requests.append(self._queue.get_nowait())
            metrics.ENCODER_QUEUE_DEPTH.set(self._queue.qsize())
            live = [r for r in requests if not r.future.cancelled()]
            if not live:
                continue
            metrics.ENCODER_BATCH_SIZE.observe(len(live))
            started = time.perf_counter()
            try:
                vectors = await loop.run_in_executor(self._executor, self._forward, [r.samples for r in live])
            except Exception as error:  # a bad batch fails its own requests, never the worker
                log.exception("encoder batch of %d failed", len(live))
                for request in live:
                    if not request.future.done():
                        request.future.set_exception(error)
                continue
            finished = time.perf_counter()
            metrics.ENCODE_SECONDS.observe(finished - started)
            for request, vector in zip(live, vectors):
                metrics.ENCODER_WAIT_SECONDS.observe(started - request.enqueued)
                if not request.future.done():
                    request.future.set_result(vector)
