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
        self._queue: asyncio.Queue[_Waiting] | None = None
        self._worker: asyncio.Task | None = None
        self._busy = 0  # images in the model right now
        self._batch_s = 0.0  # the last batch's time: the Retry-After estimate
        # One thread: batches run one after another, each with all of torch's (or ONNX
        # Runtime's) intra-op threads.
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="reslab-inference")

    @property
    def queued(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of the images x (N, C, H, W), batched with whatever else is waiting."""
        assert self._queue is not None, "start() the batcher first"
        if self.queued + len(x) > self.max_queue:
            batches = math.ceil((self.queued + self._busy) / self.max_batch) + 1
            raise Overloaded(self.queued, max(1, math.ceil(batches * self._batch_s)))
        loop = asyncio.get_running_loop()
        waiting = [_Waiting(image, loop.create_future()) for image in x]
        for w in waiting:
            self._queue.put_nowait(w)
        return torch.stack(await asyncio.gather(*(w.done for w in waiting)))

    async def _next_batch(self) -> list[_Waiting]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        self._busy = 1  # taken images count as busy at once: stop() waits for them
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                self._busy = len(batch)
                continue
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except TimeoutError:
                break
            self._busy = len(batch)
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
        if self._queue is not None:
            while not self._queue.empty() or self._busy:
                await asyncio.sleep(0.01)
        if self._worker is not None:
            self._worker.cancel()
        self._pool.shutdown(wait=True)
