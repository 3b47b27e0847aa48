"""The KV cache layer of the decode loops (``engine.kv_decode``): keys and values written in
place into buffers with spare room, instead of concatenated at every step.

A transformers cache layer, so this module needs transformers and torch: ``kv_decode``
imports it when a cache is made.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers.cache_utils import DynamicLayer


class GrowingLayer(DynamicLayer):
    """A dynamic KV layer that appends in place into spare room instead of concatenating.

    ``keys``/``values`` are views of the first ``length`` positions of larger buffers; the
    buffers grow (by at least ``reserve`` positions, and by half when larger) only when full.
    """

    def __init__(self, reserve: int = 64) -> None:
        super().__init__()
        self.reserve = max(1, int(reserve))
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.keys = key_states[:, :, :0]
        self.values = value_states[:, :, :0]
        self.is_initialized = True

    def _grow(self, key_states: torch.Tensor, value_states: torch.Tensor, need: int) -> None:
        batch, heads, _, k_dim = key_states.shape
        capacity = 0 if self._k is None else self._k.shape[-2]
        size = need + max(self.reserve, capacity // 2)
        k = key_states.new_empty((batch, heads, size, k_dim))
        v = value_states.new_empty((batch, heads, size, value_states.shape[-1]))
        if self.length and self._k is not None and self._v is not None:
            k[:, :, : self.length] = self._k[:, :, : self.length]
            v[:, :, : self.length] = self._v[:, :, : self.length]
        self._k, self._v = k, v

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start, need = self.length, self.length + key_states.shape[-2]
        if self._k is None or need > self._k.shape[-2]:
            self._grow(key_states, value_states, need)
        assert self._k is not None and self._v is not None
        self._k[:, :, start:need] = key_states
        self._v[:, :, start:need] = value_states
        self.length = need
        self.keys = self._k[:, :, :need]
        self.values = self._v[:, :, :need]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def _reindex(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        if self._k is not None and self._v is not None:
            self._k, self._v = fn(self._k), fn(self._v)
            self.keys = self._k[:, :, : self.length]
            self.values = self._v[:, :, : self.length]

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._reindex(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._reindex(lambda t: t.index_select(0, indices.to(t.device)))

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        if tokens_to_remove and self.is_initialized:
            self.length = max(0, self.length + tokens_to_remove)
            self._reindex(lambda t: t)

    def reset(self) -> None:
        self._k = self._v = None
        self.length = 0
        super().reset()
