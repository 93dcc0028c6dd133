"""Measure the peak memory of tensors on any device, CPU included: `LiveTensorBytes`."""

from __future__ import annotations

import weakref
from collections.abc import Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveTensorBytes(TorchDispatchMode):
    """The bytes of tensor storage alive at once while the block runs, and their peak.

    Every operation's outputs (the backward pass's too) are counted until the last tensor on
    their storage is gone; storage of `exclude` (weights, preallocated gradients) is not. What a
    CPU's allocator reports cannot separate this from the rest of the process.
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._storages: dict[int, list[int]] = {}  # data pointer -> [bytes, tensors on it]
        self._excluded = {t.untyped_storage().data_ptr() for t in exclude}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                self._track(tensor)
        return out

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer == 0 or pointer in self._excluded:
            return
        entry = self._storages.get(pointer)
        if entry is None:
            entry = self._storages[pointer] = [storage.nbytes(), 0]
            self.live += entry[0]
            self.peak = max(self.peak, self.live)
        entry[1] += 1
        weakref.finalize(tensor, self._release, pointer)

    def _release(self, pointer: int) -> None:
        entry = self._storages.get(pointer)
        if entry is not None:
            entry[1] -= 1
            if entry[1] == 0:
                del self._storages[pointer]
                self.live -= entry[0]
