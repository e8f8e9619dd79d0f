"""The optimizer steps' micro-batches, built one step ahead on a thread; in pinned memory on CUDA.

Building a step's batches (gathering 64 blocks of 1,024 tokens, collating) takes ~1-2 ms of host time, and
copying them from pageable memory blocks the host until the copy is done. On a GPU both sit between two
steps, where the device waits. Ahead of time, the host work overlaps the previous step, and a pinned
buffer lets the copy to the device run without blocking.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Hashable, Sequence

import torch

Batch = dict[str, torch.Tensor]


class StepFeeder:
    """`get(key, groups)` gives one step's batches, one per index group; `ahead(key, groups)` starts the next
    step's on a thread. A `get` for another key than the one started (a new epoch, a resume) builds in place."""

    def __init__(self, blocks, pad_id: int, device: torch.device, *, prefetch: bool):
        self.blocks, self.pad_id, self.device = blocks, pad_id, device
        self.pin = device.type == "cuda"
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="stentor-batches") if prefetch else None
        self._next: tuple[Hashable, Future] | None = None
        self.wait_seconds = 0.0  # host time the training loop spent getting batches
        self.steps = 0

    def _host(self, indices: Sequence[int]) -> Batch:
        from stentor.data import collate_blocks

        batch = collate_blocks([self.blocks[int(i)] for i in indices], self.pad_id)
        if bool(batch["attention_mask"].all()):  # full packed blocks: no mask lets SDPA take its causal fast path
            del batch["attention_mask"]
        return {k: v.pin_memory() for k, v in batch.items()} if self.pin else batch

    def _build(self, groups: Sequence[Sequence[int]]) -> list[Batch]:
        return [self._host(indices) for indices in groups]

    def _to_device(self, batch: Batch) -> Batch:
        return {k: v.to(self.device, non_blocking=self.pin) for k, v in batch.items()}

    def batch(self, indices: Sequence[int]) -> Batch:
        """One micro-batch of these blocks, on the device, now."""
        return self._to_device(self._host(indices))

    def get(self, key: Hashable, groups: Sequence[Sequence[int]]) -> list[Batch]:
        start = time.perf_counter()
        ready, self._next = self._next, None
        host = ready[1].result() if ready is not None and ready[0] == key else self._build(groups)
        batches = [self._to_device(b) for b in host]
        self.wait_seconds += time.perf_counter() - start
        self.steps += 1
        return batches

    def ahead(self, key: Hashable, groups: Sequence[Sequence[int]]) -> None:
        if self._pool is not None:
            self._next = (key, self._pool.submit(self._build, groups))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
