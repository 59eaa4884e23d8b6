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
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from moodstream.server import metrics

log = logging.getLogger("moodstream.server.encoder")

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# CPUs whose torch kernels run bf16 natively; elsewhere bf16 autocast is
# emulated and many times slower than fp32.
_BF16_CPU_CAPABILITIES = ("AVX512", "AVX512_BF16", "AMX", "AVX512_AMX")


@dataclass
class _Request:
    samples: np.ndarray
    future: asyncio.Future
    enqueued: float


def choose_precision(model, requested: str = "auto") -> str:
    """fp32 unless a faster precision keeps the segment vectors (cosine >= 0.999)."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    device = model.device
    if requested != "auto":
        if requested == "fp16" and device.type != "cuda":
            raise ValueError("fp16 needs a CUDA device; use fp32 or bf16 on the CPU")
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in _BF16_CPU_CAPABILITIES:
        log.info("precision fp32: CPU capability %s has no fast bf16", capability)
        return "fp32"
    # A start-up probe: capabilities alone do not say whether bf16 pays off.
    rng = np.random.default_rng(0)
    probe = [(0.1 * rng.standard_normal(int(model.config.sample_rate * model.config.segment_seconds)))
             .astype(np.float32)]
    timings = {}
    outputs = {}
    for precision in ("fp32", "bf16"):
        best = float("inf")
        for _ in range(2):
            start = time.perf_counter()
            with autocast_context(device, precision):
                outputs[precision] = model.encode_segments(probe)
            best = min(best, time.perf_counter() - start)
        timings[precision] = best
    cosine = float(torch.nn.functional.cosine_similarity(outputs["fp32"], outputs["bf16"]).min())
    chosen = "bf16" if timings["bf16"] < 0.8 * timings["fp32"] and cosine >= 0.999 else "fp32"
    log.info("precision %s: probe fp32 %.0f ms, bf16 %.0f ms, cosine %.5f (CPU %s)", chosen,
             timings["fp32"] * 1000, timings["bf16"] * 1000, cosine, capability)
    return chosen


def autocast_context(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


class BatchingEncoder:
    def __init__(self, model, max_batch: int = 8, max_wait_ms: float = 5.0, precision: str = "fp32") -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
        self.model = model
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.precision = choose_precision(model, precision)
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
        with autocast_context(self.model.device, self.precision):
            return self.model.encode_segments(batch).numpy()

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
