"""Batched incremental decoding over left-padded rows with an in-place KV cache.

One decode loop (:func:`decode`) serves plain generation, generation over a shared prefix
and DExperts: each model is a :class:`DecodeStream` fed only the newest token per step.

- Rows are left-padded; position ids count only real tokens, so a row's tokens do not
  depend on the other rows of its batch. Rows with the same prompt (and adapter) run their
  prefill once and their cache rows are copied.
- A prefix shared by every prompt (a persona's system turn and instructions) can be
  computed once (:class:`PrefixCache`) and copied to the rows of many batches; each row's
  suffix is padded *between* the prefix and the suffix, masked out.
- The cache (``growing_layer.GrowingLayer``) writes new keys and values in place into
  buffers with spare room, instead of concatenating every layer's cache at every step; the
  sequence the logits processors see is a view of one preallocated buffer.
- A row ends at an end-of-sequence token, when a stop rule says its reply is decided, or at
  the token cap. Ended rows ride along (their tokens are ignored) until they are at least
  ``compact_fraction`` of the batch, then leave the batch and the caches at once: dropping
  rows copies every layer's cache, so it is done in bulk.

torch and transformers are imported where used: the definitions load without them.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from big5_dagster.lib.engine.adapters import RowMaskedLora
from big5_dagster.lib.engine.inference import inference_mode

if TYPE_CHECKING:
    import torch
    from transformers import Cache

    from big5_dagster.lib.engine.candidate_sampler import CandidateSampler

FinishReason = Literal["eos", "stop", "length"]


def model_device(model: Any) -> torch.device:
    return next(model.parameters()).device


def kv_cache(config: Any, reserve: int) -> Cache:
    """An empty KV cache for a model with ``config``: in-place growing layers with room for
    ``reserve`` more tokens; transformers' DynamicCache when the model has layers of another
    kind (sliding windows, linear attention), which need their own cache layers."""
    from transformers import Cache, DynamicCache

    from big5_dagster.lib.engine.growing_layer import GrowingLayer

    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    layer_types = getattr(text_config, "layer_types", None) or []
    if any(kind != "full_attention" for kind in layer_types):
        return DynamicCache(config=config)
    return Cache(layers=[GrowingLayer(reserve) for _ in range(text_config.num_hidden_layers)])


class PrefixCache:
    """The KV cache of one token prefix (batch 1), computed once and copied for many batches."""

    def __init__(self, model: Any, ids: Sequence[int], *, reserve: int) -> None:
        import torch

        self.ids = [int(i) for i in ids]
        self.cache = kv_cache(model.config, reserve)
        if self.ids:
            with torch.inference_mode():
                model(
                    input_ids=torch.tensor([self.ids], device=model_device(model)),
                    cache=self.cache,
                    use_cache=True,
                    logits_to_keep=1,
                )

    def expanded(self, rows: int) -> Cache:
        """A copy of the cache for ``rows`` rows (the forward appends to it in place)."""
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(rows)
        return cache


class DecodeStream:
    """One model's batched incremental decode: left-padded prompts, then one token per step.

    ``prefix``: a cached prefix every prompt starts with (and extends by at least one token);
    only the suffixes are prefilled. Identical prompts (with the same adapter) are prefilled
    once and copied, unless ``distinct_rows``. ``adapter_names``: a peft adapter per row (peft's
    ``"__base__"`` for none); plain LoRA runs as :class:`RowMaskedLora` (every adapter on
    every row, each row's delta masked in), other adapter kinds through peft's mixed-batch
    forward. The attention mask is allocated once for the whole generation and sliced each
    step; pads keep mask 0 and do not count in the position ids.
    """

    def __init__(
        self,
        model: Any,
        prompt_ids: Sequence[Sequence[int]],
        *,
        pad_token_id: int,
        max_new_tokens: int,
        adapter_names: Sequence[str] | None = None,
        prefix: PrefixCache | None = None,
        distinct_rows: bool = False,
    ) -> None:
        import torch

        if not prompt_ids:
            raise ValueError("DecodeStream needs at least one prompt")
        self.model = model
        self.device = model_device(model)
        prefix_len = len(prefix.ids) if prefix is not None else 0
        if prefix is not None:
            for row, ids in enumerate(prompt_ids):
                if len(ids) <= prefix_len or list(ids[:prefix_len]) != prefix.ids:
                    raise ValueError(
                        f"prompt {row} does not extend the cached prefix by at least one token"
                    )
        suffixes = [tuple(int(t) for t in ids[prefix_len:]) for ids in prompt_ids]
        if any(not s for s in suffixes):
            raise ValueError("every prompt needs at least one token")
        self.adapter_names = list(adapter_names) if adapter_names is not None else None
        # Rows with the same adapter and prompt are prefilled once, unless every row must
        # stay its own (a per-row forward hook sees the batch's rows).
        keys = [
            (
                row if distinct_rows else self.adapter_names[row] if self.adapter_names else None,
                suffix,
            )
            for row, suffix in enumerate(suffixes)
        ]
        first_row: dict[tuple[int | str | None, tuple[int, ...]], int] = {}
        for row, key in enumerate(keys):
            first_row.setdefault(key, row)
        self._unique_rows = list(first_row.values())
        index_of = {key: i for i, key in enumerate(first_row)}
        self._expand = torch.tensor([index_of[key] for key in keys], device=self.device)
        self._suffixes = [suffixes[row] for row in self._unique_rows]
        self._pad_token_id = pad_token_id
        self._prefix_len = prefix_len

        width = max(len(s) for s in suffixes)
        mask = torch.zeros((len(prompt_ids), prefix_len + width + max_new_tokens), dtype=torch.long)
        mask[:, :prefix_len] = 1
        for row, suffix in enumerate(suffixes):
            mask[row, prefix_len + width - len(suffix) : prefix_len + width] = 1
        mask[:, prefix_len + width :] = 1  # every generated token is attended
        self.attention_mask = mask.to(self.device)
        self.length = prefix_len + width
        positions = mask[:, : self.length].cumsum(1) - 1
        self.next_position = (positions[:, -1:] + 1).to(self.device)
        unique = torch.tensor(self._unique_rows)
        self._prefill_positions = positions.index_select(0, unique)[:, prefix_len:].clamp(min=0)
        self.cache = (
            prefix.expanded(len(self._unique_rows))
            if prefix is not None
            else kv_cache(model.config, max_new_tokens + 1)
        )
        self.lora = (
            RowMaskedLora(model, self.adapter_names)
            if self.adapter_names is not None and RowMaskedLora.supports(model, self.adapter_names)
            else None
        )

    @contextlib.contextmanager
    def running(self) -> Any:
        """The adapters set up for this stream's rows while it decodes (restored after)."""
        if self.lora is None:
            yield
            return
        with self.lora.active():
            yield

    def _adapter_kwargs(self, names: Sequence[str] | None) -> dict[str, Any]:
        return {"adapter_names": list(names)} if names is not None and self.lora is None else {}

    def prefill(self) -> torch.Tensor:
        """Run the prompts' suffixes; the next-token logits of every row, shape (rows, vocab)."""
        import torch

        unique_rows = self._unique_rows
        width = self.length - self._prefix_len
        input_ids = torch.full((len(unique_rows), width), self._pad_token_id, dtype=torch.long)
        for i, suffix in enumerate(self._suffixes):
            input_ids[i, width - len(suffix) :] = torch.as_tensor(suffix, dtype=torch.long)
        rows = torch.tensor(unique_rows, device=self.device)
        names = None
        if self.adapter_names is not None:
            names = [self.adapter_names[row] for row in unique_rows]
            if self.lora is not None:
                self.lora.set_rows(names)
        output = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=self.attention_mask.index_select(0, rows)[:, : self.length],
            position_ids=self._prefill_positions.to(self.device),
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,  # only the last position's logits are ever used
            **self._adapter_kwargs(names),
        )
        del self._suffixes, self._prefill_positions
        if len(unique_rows) < len(self._expand):
            self.cache.batch_select_indices(self._expand)  # copy the shared prompts' rows
        if self.lora is not None and self.adapter_names is not None:
            self.lora.set_rows(self.adapter_names)
        return output.logits[:, -1, :].index_select(0, self._expand)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row; the next-token logits of every row."""
        self.length += 1
        output = self.model(
            input_ids=tokens.to(self.device).view(-1, 1),
            attention_mask=self.attention_mask[:, : self.length],
            position_ids=self.next_position,
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,
            **self._adapter_kwargs(self.adapter_names),
        )
        self.next_position = self.next_position + 1
        return output.logits[:, -1, :]

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Drop every row not in ``rows`` (ascending indices) from the batch and its cache."""
        rows = rows.to(self.device)
        self.cache.batch_select_indices(rows)
        self.attention_mask = self.attention_mask.index_select(0, rows)
        self.next_position = self.next_position.index_select(0, rows)
        if self.adapter_names is not None:
            self.adapter_names = [self.adapter_names[i] for i in rows.tolist()]
        if self.lora is not None:
            self.lora.keep_rows(rows)


@dataclass(frozen=True)
class Decoded:
    """The generated tokens of one row (the end-of-sequence token included when it ended there)."""

    tokens: list[int]
    finish_reason: FinishReason
    """'eos', 'stop' (the stop rule said the reply is decided) or 'length' (the cap)."""


StopRule = Callable[[list[int]], bool]
"""Given a row's generated tokens so far, whether its reply is decided (it may end)."""

ScoresFn = Callable[[int, "torch.Tensor", list["torch.Tensor"]], "torch.Tensor"]
"""(step, the rows' sequences, each row block's raw logits) -> the scores to draw from."""


@inference_mode
def decode(
    streams: Sequence[tuple[DecodeStream, int]],
    prompt_ids: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    eos_ids: Sequence[int],
    pad_token_id: int,
    scores: ScoresFn,
    sampler: CandidateSampler | None = None,
    stop: StopRule | None = None,
    on_prefill: Callable[[list[torch.Tensor]], None] | None = None,
    compact_fraction: float = 0.25,
) -> list[Decoded]:
    """Decode ``len(prompt_ids)`` rows with one or more streams, in lockstep.

    ``streams``: (stream, blocks) pairs; a stream holds ``blocks`` blocks of the batch's rows
    (e.g. DExperts' base, expert and anti-expert rows in one stream), all fed the same token.
    ``prompt_ids`` are the rows' prompts as the logits processors see them (left-padded, then
    the generated tokens). ``scores(step, sequences, blocks)`` turns the blocks' raw logits
    into the scores to draw from; ``sampler`` draws (None: greedy argmax).
    ``on_prefill(blocks)`` receives the raw next-token logits right after the prompts.
    """
    import torch

    n = len(prompt_ids)
    device = streams[0][0].device
    width = max(len(ids) for ids in prompt_ids)
    buffer = torch.full((n, width + max_new_tokens), pad_token_id, dtype=torch.long)
    for row, ids in enumerate(prompt_ids):
        buffer[row, width - len(ids) : width] = torch.as_tensor(list(ids), dtype=torch.long)
    buffer = buffer.to(device)
    eos = {int(e) for e in eos_ids}
    outputs: list[list[int]] = [[] for _ in range(n)]
    reasons: list[FinishReason | None] = [None] * n
    rows = list(range(n))  # batch position -> row
    alive = [True] * n  # per batch position

    def blocks_of(logits: list[torch.Tensor]) -> list[torch.Tensor]:
        return [
            block
            for stream_logits, (_, count) in zip(logits, streams, strict=True)
            for block in stream_logits.to(device).float().chunk(count, dim=0)
        ]

    with contextlib.ExitStack() as running:
        for stream, _ in streams:
            running.enter_context(stream.running())
        blocks = blocks_of([stream.prefill() for stream, _ in streams])
        if on_prefill is not None:
            on_prefill(blocks)
        for step in range(max_new_tokens):
            step_scores = scores(step, buffer[:, : width + step], blocks)
            next_tokens = (
                sampler.draw(step_scores) if sampler is not None else step_scores.argmax(dim=-1)
            )
            buffer[:, width + step] = next_tokens
            for position, token in enumerate(next_tokens.tolist()):
                if not alive[position]:
                    continue
                row = rows[position]
                outputs[row].append(token)
                if token in eos:
                    reasons[row] = "eos"
                elif stop is not None and stop(outputs[row]):
                    reasons[row] = "stop"
                elif step == max_new_tokens - 1:
                    reasons[row] = "length"
                if reasons[row] is not None:
                    alive[position] = False
            n_alive = sum(alive)
            if n_alive == 0:
                break
            if len(alive) - n_alive >= max(1.0, compact_fraction * len(alive)):
                keep_list = [p for p, a in enumerate(alive) if a]
                keep = torch.tensor(keep_list, device=device)
                for stream, count in streams:
                    before = len(alive)
                    stream.keep_rows(torch.cat([keep + block * before for block in range(count)]))
                buffer = buffer.index_select(0, keep)
                next_tokens = next_tokens.index_select(0, keep)
                if sampler is not None:
                    sampler.keep_rows(keep_list)
                rows = [rows[p] for p in keep_list]
                alive = [True] * len(keep_list)
            blocks = blocks_of(
                [stream.step(next_tokens.repeat(count)) for stream, count in streams]
            )
    return [Decoded(outputs[row], reasons[row] or "length") for row in range(n)]


@inference_mode
def decode_rows(
    model: Any,
    prompt_ids: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    eos_ids: Sequence[int],
    pad_token_id: int,
    sampler: CandidateSampler | None = None,
    processors: Sequence[Any] = (),
    stop: StopRule | None = None,
    on_prefill: Callable[[torch.Tensor], None] | None = None,
    prefix: PrefixCache | None = None,
    share_prefix: bool = True,
    compact_fraction: float = 0.25,
    distinct_rows: bool = False,
) -> list[Decoded]:
    """Decode one batch of prompts (token ids) with one model; each row's new tokens, in order.

    ``processors`` (repetition penalty, masks) run on the raw logits, then ``sampler`` draws
    (None: greedy). ``prefix``: a cached prefix every prompt extends; else, with
    ``share_prefix``, the batch's longest common prefix is computed once (batch 1) and copied
    to its rows. ``on_prefill(logits)`` receives the raw next-token logits after each prompt.
    ``distinct_rows``: no identical prompts merged in the prefill (see :class:`DecodeStream`).
    """
    from transformers import LogitsProcessorList

    if not prompt_ids:
        return []
    if prefix is None and share_prefix:
        length = min(common_prefix_length(prompt_ids), min(len(p) for p in prompt_ids) - 1)
        if length > 0 and len(prompt_ids) > 1:
            width = max(len(p) for p in prompt_ids) - length
            prefix = PrefixCache(model, prompt_ids[0][:length], reserve=width + max_new_tokens + 1)
    stream = DecodeStream(
        model,
        prompt_ids,
        pad_token_id=pad_token_id,
        max_new_tokens=max_new_tokens,
        prefix=prefix,
        distinct_rows=distinct_rows,
    )
    processor_list = LogitsProcessorList(processors)

    def scores(step: int, sequences: torch.Tensor, blocks: list[torch.Tensor]) -> torch.Tensor:
        return processor_list(sequences, blocks[0])

    return decode(
        [(stream, 1)],
        prompt_ids,
        max_new_tokens=max_new_tokens,
        eos_ids=eos_ids,
        pad_token_id=pad_token_id,
        scores=scores,
        sampler=sampler,
        stop=stop,
        on_prefill=(lambda blocks: on_prefill(blocks[0])) if on_prefill is not None else None,
        compact_fraction=compact_fraction,
    )


def common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix shared by all sequences."""
    if not sequences:
        return 0
    shortest = min(len(s) for s in sequences)
    first = sequences[0]
    for n in range(shortest):
        token = first[n]
        if any(s[n] != token for s in sequences):
            return n
    return shortest
