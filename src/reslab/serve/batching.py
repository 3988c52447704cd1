"""Dynamic batching: concurrent requests' images grouped into one model call.

Each image waits in a bounded asyncio queue; one worker takes the first waiting image, then
keeps taking more until it has `max_batch` or `max_wait_s` has passed since the first, and runs
the batch in its own thread, off the event loop, so the server goes on accepting and decoding
requests meanwhile. The bound is what keeps an overloaded server honest: an image that would
make the queue longer than `max_queue` is refused at once (`Overloaded`, HTTP 503) instead of
waiting behind an ever-growing backlog.
"""
from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

Forward = Callable[[torch.Tensor], torch.Tensor]


class Overloaded(Exception):
    """The queue is full; `retry_after_s` estimates when it has room again."""

    def __init__(self, queued: int, retry_after_s: int) -> None:
        super().__init__(f"the server is busy: {queued} images are waiting, the queue's limit")
        self.retry_after_s = retry_after_s


@dataclass
class _Waiting:
    x: torch.Tensor  # (C, H, W), prepared as the model's input
    done: asyncio.Future


class Batcher:
    """Groups images into batches for `forward` ((N, C, H, W) -> (N, K) logits).
    on_batch(n, seconds) is called after each model call (metrics)."""

    def __init__(self, forward: Forward, *, max_batch: int, max_wait_s: float,
                 max_queue: int, on_batch: Callable[[int, float], None] | None = None) -> None:
        self.forward, self.max_batch, self.max_wait_s = forward, max_batch, max_wait_s
        self.max_queue, self.on_batch = max_queue, on_batch
        # A deque and an event rather than asyncio.Queue: waiting for "more, or the deadline"
        # with wait_for(queue.get()) can drop an image when the timeout and the get coincide
        # (before Python 3.12); cancelling an Event.wait() loses nothing.
        self._waiting: deque[_Waiting] = deque()
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._busy = 0  # images taken from the queue and not yet answered
        self._batch_s = 0.0  # the last batch's time: the Retry-After estimate
        # One thread: batches run one after another, each with all of torch's (or ONNX
        # Runtime's) intra-op threads.
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="reslab-inference")

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def start(self) -> None:
        self._arrived = asyncio.Event()
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of the images x (N, C, H, W), batched with whatever else is waiting."""
        assert self._arrived is not None, "start() the batcher first"
        if self.queued + len(x) > self.max_queue:
            batches = math.ceil((self.queued + self._busy) / self.max_batch) + 1
            raise Overloaded(self.queued, max(1, math.ceil(batches * self._batch_s)))
        loop = asyncio.get_running_loop()
        waiting = [_Waiting(image, loop.create_future()) for image in x]
        self._waiting.extend(waiting)
        self._arrived.set()
        return torch.stack(await asyncio.gather(*(w.done for w in waiting)))

    async def _more(self, timeout: float | None) -> bool:
        """Waits until an image is queued (True) or timeout seconds pass (False)."""
        assert self._arrived is not None
        self._arrived.clear()
        if self._waiting:
            return True
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout)
        except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11 on
            return False
        return True

    async def _next_batch(self) -> list[_Waiting]:
        while not self._waiting:
            await self._more(None)
        batch = [self._waiting.popleft()]
        self._busy = 1  # taken images count as busy at once: stop() waits for them
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while len(batch) < self.max_batch:
            if self._waiting:
                batch.append(self._waiting.popleft())
                self._busy = len(batch)
                continue
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0 or not await self._more(left):
                break
        return batch

    def _infer(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        start = time.perf_counter()
        with torch.inference_mode():
            logits = self.forward(x).float()
        return logits, time.perf_counter() - start

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            try:
                logits, seconds = await loop.run_in_executor(
                    self._pool, self._infer, torch.stack([w.x for w in batch]))
            except Exception as e:  # noqa: BLE001 - each waiting request gets the error
                for w in batch:
                    if not w.done.done():
                        w.done.set_exception(e)
            else:
                self._batch_s = seconds
                if self.on_batch is not None:
                    self.on_batch(len(batch), seconds)
                for w, row in zip(batch, logits):
                    if not w.done.done():  # its client may have gone
                        w.done.set_result(row)
            finally:
                self._busy = 0

    async def stop(self) -> None:
        """Finishes what is queued (the requests still waiting get their answers), then stops
        the worker."""
        while self._waiting or self._busy:
            await asyncio.sleep(0.01)
        if self._worker is not None:
            self._worker.cancel()
        self._pool.shutdown(wait=True)
