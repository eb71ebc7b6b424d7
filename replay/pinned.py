"""Replay batches assembled in page-locked (pinned) host memory for a CUDA device.

A copy from pageable memory to a GPU is staged through a driver buffer and runs at a fraction of the bus
speed; from pinned memory it is one DMA that the host only enqueues (`non_blocking`), so the next batch is
assembled while the device still trains on the last one. `PinnedBatches.sample(replay)` has the replay
stack its windows straight into one of two pinned slots (no extra host copy) and returns them as CPU
tensors, which `preprocess` copies with `non_blocking=True`. A slot is refilled only once the device has
passed the event recorded after its batch was handed out (the update that read it), so a copy still in
flight is never overwritten; that wait lets the host run at most one update ahead of the device. On any
other device it returns the replay's own numpy batch.

Legend: B batch, T window length.
"""
from __future__ import annotations

import torch

SLOTS = 2


def pinned_empty(shape, dtype) -> torch.Tensor:
    """An uninitialised page-locked CPU tensor."""
    return torch.empty(shape, dtype=dtype, pin_memory=True)


class PinnedBatches:
    """Full (B, T) training batches of a replay, in pinned memory when `device` is CUDA."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.pinned = self.device.type == "cuda"
        self._slots: list[dict[str, torch.Tensor]] = []
        self._events: list = [None] * SLOTS
        self._last: int | None = None  # the slot handed out by the previous call

    def sample(self, replay) -> dict:
        """`replay.sample()`, drawn from the replay's own random stream: the same batches either way."""
        if not self.pinned:
            return replay.sample()
        if self._last is not None:  # the update of the previous batch has been enqueued since
            self._events[self._last] = torch.cuda.Event()
            self._events[self._last].record(torch.cuda.current_stream(self.device))
        if not self._slots:  # shapes and dtypes from the first batch
            first = replay.sample()
            self._slots = [{k: pinned_empty(v.shape, torch.from_numpy(v).dtype) for k, v in first.items()}
                           for _ in range(SLOTS)]
            for k, v in first.items():
                self._slots[0][k].numpy()[...] = v
            i = 0
        else:
            i = (self._last + 1) % SLOTS
            if self._events[i] is not None:
                self._events[i].synchronize()  # the update that read this slot is done on the device
            replay.sample(out={k: v.numpy() for k, v in self._slots[i].items()})
        self._last = i
        return dict(self._slots[i])
