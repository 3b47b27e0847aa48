"""Batched incremental decoding of one model over left-padded rows with a KV cache.

Every model is fed only the newest token per step. Rows are left-padded; position ids
count only real tokens, so a row's tokens do not depend on the other rows in its batch.
Rows that end (EOS) are dropped from the batch and their caches, the others go on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache


def model_device(model: Any) -> torch.device:
    return next(model.parameters()).device


class DecodeStream:
    """One model's batched incremental decode: left-padded prompts, then one token per step.

    Rows with the same prompt and adapter (the expert prompt is the same for every request of
    a persona) are run once in the prefill and their cache rows copied. The attention mask is
    allocated once for the whole generation and sliced each step; pads keep mask 0 and do not
    count in the position ids, so every row's real tokens sit at the positions they would have
    alone.
    """

    def __init__(
        self,
        model: Any,
        prompt_ids: Sequence[Sequence[int]],
        *,
        pad_token_id: int,
        max_new_tokens: int,
        adapter_names: Sequence[str] | None = None,
    ) -> None:
        self.model = model
        self.device = model_device(model)
        width = max(len(ids) for ids in prompt_ids)
        rows = len(prompt_ids)
        mask = torch.zeros((rows, width + max_new_tokens), dtype=torch.long)
        for row, ids in enumerate(prompt_ids):
            mask[row, width - len(ids) : width] = 1
        mask[:, width:] = 1  # every generated token is attended (a finished row leaves the batch)
        self.attention_mask = mask.to(self.device)
        self.length = width
        positions = (mask[:, :width].cumsum(1) - 1).clamp(min=0)
        self.next_position = (positions[:, -1:] + 1).to(self.device)
        self.adapter_names = list(adapter_names) if adapter_names is not None else None

        keys = [
            (self.adapter_names[row] if self.adapter_names else None, tuple(ids))
            for row, ids in enumerate(prompt_ids)
        ]
        first_row: dict[tuple[str | None, tuple[int, ...]], int] = {}
        for row, key in enumerate(keys):
            first_row.setdefault(key, row)
        self._unique_rows = list(first_row.values())
        index_of = {key: i for i, key in enumerate(first_row)}
        self._expand = torch.tensor([index_of[key] for key in keys], device=self.device)
        self._prompt_ids = [list(prompt_ids[row]) for row in self._unique_rows]
        self._pad_token_id = pad_token_id
        self.cache = DynamicCache(config=model.config)

    def prefill(self) -> torch.Tensor:
        """Run the prompts; the next-token logits of every row, shape (rows, vocab)."""
        unique_rows = self._unique_rows
        width = self.length
        input_ids = torch.full((len(unique_rows), width), self._pad_token_id, dtype=torch.long)
        for i, ids in enumerate(self._prompt_ids):
            input_ids[i, width - len(ids) :] = torch.as_tensor(ids, dtype=torch.long)
        rows = torch.tensor(unique_rows, device=self.device)
        mask = self.attention_mask.index_select(0, rows)[:, :width]
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        adapter_names = self.adapter_names
        if adapter_names is not None:
            adapter_names = [adapter_names[row] for row in unique_rows]
        output = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=mask,
            position_ids=positions,
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,  # only the last position's logits are ever used
            **({"adapter_names": adapter_names} if adapter_names is not None else {}),
        )
        del self._prompt_ids
        if len(unique_rows) < len(self._expand):
            self.cache.batch_select_indices(self._expand)  # copy the shared prompts' rows
        return output.logits[:, -1, :].index_select(0, self._expand)

    def _forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        extra: dict[str, Any] = {}
        if self.adapter_names is not None:
            extra["adapter_names"] = self.adapter_names
        output = self.model(
            input_ids=input_ids,
            attention_mask=self.attention_mask[:, : self.length],
            position_ids=position_ids,
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,  # only the last position's logits are ever used
            **extra,
        )
        return output.logits[:, -1, :]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row; the next-token logits of every row."""
        self.length += 1
        logits = self._forward(tokens.to(self.device).view(-1, 1), self.next_position)
        self.next_position = self.next_position + 1
        return logits

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Drop every row not in ``rows`` (ascending indices) from the batch and its cache."""
        rows = rows.to(self.device)
        self.cache.batch_select_indices(rows)
        self.attention_mask = self.attention_mask.index_select(0, rows)
        self.next_position = self.next_position.index_select(0, rows)
        if self.adapter_names is not None:
            self.adapter_names = [self.adapter_names[i] for i in rows.tolist()]
