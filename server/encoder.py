"""One encoder worker per device, batching chunks from every live stream.

Chunks wait at most `max_wait_ms` for company, up to `max_batch` per forward
pass (dynamic batching, as inference servers do). The forward pass runs in
one dedicated thread so the event loop keeps serving acks and subscribers.
A segment's vector does not depend on what it was batched with (see
moodstream.model.backbone), so batching never changes a score. The precision
paths are in moodstream.server.encoder_paths, their tuning in
moodstream.server.encoder_tuning.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from moodstream.server import metrics
from moodstream.server.encoder_paths import check_request
from moodstream.server.encoder_tuning import Tuning, TuningCache, choose_encoder

log = logging.getLogger("moodstream.server.encoder")


@dataclass
class _Request:
    samples: np.ndarray
    future: asyncio.Future
    enqueued: float


class BatchingEncoder:
    """Args: precision and max_batch fixed, or "auto" / None to be measured at start() (see moodstream.server.encoder_tuning.tune);
    tuning_cache keeps what was measured per model and machine (None: measure at every start)."""

    def __init__(self, model, max_batch: int | None = None, max_wait_ms: float = 5.0,
                 precision: str = "fp32", tuning_cache: TuningCache | str | os.PathLike | None = None) -> None:
        if max_batch is not None and max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
        check_request(model, precision)
        self.model = model
        self.requested_precision = precision
        self.requested_max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        if tuning_cache is not None and not isinstance(tuning_cache, TuningCache):
            tuning_cache = TuningCache(tuning_cache)
        self.tuning_cache = tuning_cache
        self.precision: str | None = None   # known once started
        self.max_batch: int | None = None
        self.tuning: Tuning | None = None
        self._encode = None
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoder")
        self._worker: asyncio.Task | None = None

    async def start(self) -> None:
        if self._encode is None:
            # Measured in the worker thread itself: the thread (and OpenMP pool) that will serve.
            self.precision, self._encode, self.tuning = await asyncio.get_running_loop().run_in_executor(
                self._executor, choose_encoder, self.model, self.requested_precision, self.requested_max_batch,
                self.tuning_cache)
            self.max_batch = self.tuning.max_batch
            log.info("encoder: %s", self.tuning.summary())
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
