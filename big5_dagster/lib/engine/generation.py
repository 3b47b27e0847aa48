"""Chat generation: batched, left-padded, seeded per prompt, in input order.

torch and transformers are imported where used: the definitions load without them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from big5_dagster.lib.engine.chat import render_chat
from big5_dagster.lib.engine.inference import inference_mode
from big5_dagster.lib.engine.kv_decode import Decoded, decode_rows
from big5_dagster.lib.engine.loading import LoadedModel
from big5_dagster.lib.engine.sampling import SamplingParams, repetition_penalties, row_seeds
from big5_dagster.lib.engine.tokens import eos_token_ids
from big5_dagster.lib.engine.types import Conversation, ProgressCallback

if TYPE_CHECKING:
    from transformers import LogitsProcessor, PreTrainedTokenizerBase


@dataclass(frozen=True)
class GenerationResult:
    """One generated reply."""

    text: str
    """Decoded new tokens without special tokens; not stripped (a leading space can matter)."""
    n_new_tokens: int
    """Tokens the model generated, counting the end-of-sequence token when it stopped there."""
    finish_reason: Literal["eos", "stop", "length"]
    """'eos': the end-of-turn token; 'stop': a stop rule said the reply was decided (e.g. the
    answer's number was complete); 'length': the token cap."""
    token_ids: tuple[int, ...]
    """The generated token ids, the end-of-sequence token included."""


def batches_by_length(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (less padding); deterministic."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def encode_rendered(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of rendered prompts (their special tokens are in the text already); an empty
    prompt is an error naming its index."""
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    for i, ids in enumerate(encoded):
        if not ids:
            raise ValueError(f"prompt {i} is empty")
    return encoded


@inference_mode
def generate_chat(
    loaded: LoadedModel,
    conversations: Sequence[Conversation],
    params: SamplingParams,
    *,
    batch_size: int = 8,
    progress: ProgressCallback | None = None,
    logits_processors: Sequence[LogitsProcessor] = (),
) -> list[GenerationResult]:
    """Reply to each conversation (list of {role, content} messages), in input order: the
    prompts rendered with the chat template, then generated as ``generate_from_text`` does."""
    prompts = [render_chat(loaded.tokenizer, c, index=i) for i, c in enumerate(conversations)]
    return generate_from_text(
        loaded,
        prompts,
        params,
        batch_size=batch_size,
        progress=progress,
        logits_processors=logits_processors,
    )


@inference_mode
def generate_from_text(
    loaded: LoadedModel,
    prompts: Sequence[str],
    params: SamplingParams,
    *,
    batch_size: int = 8,
    progress: ProgressCallback | None = None,
    logits_processors: Sequence[LogitsProcessor] = (),
) -> list[GenerationResult]:
    """Continue already rendered prompt strings (no chat template applied), in input order.

    Prompts are tokenized with ``add_special_tokens=False`` because a rendered prompt holds
    its special tokens already, and generated in left-padded batches of similar length
    (``kv_decode.decode_rows``: a prefix the batch shares is computed once, rows leave the
    batch at their end-of-turn token). Seeded per prompt: prompt i samples from its own
    stream seeded by ``row_seeds(params.seed, len(prompts))[i]``, so its text does not depend
    on the batch it ran in. The repetition penalty runs first, then ``logits_processors``
    (e.g. masks), then temperature, top-k and top-p (``CandidateSampler``), in transformers'
    order. ``progress(done, total)`` is called after each batch.
    """
    from big5_dagster.lib.engine.candidate_sampler import CandidateSampler

    if not prompts:
        return []
    tokenizer, model = loaded.tokenizer, loaded.model
    encoded = encode_rendered(tokenizer, prompts)
    eos_ids = eos_token_ids(model, tokenizer)
    seeds = row_seeds(params.seed, len(prompts))
    processors = [*repetition_penalties(params), *logits_processors]
    results: list[GenerationResult | None] = [None] * len(prompts)
    done = 0
    for batch in batches_by_length([len(ids) for ids in encoded], batch_size):
        decoded = decode_rows(
            model,
            [encoded[i] for i in batch],
            max_new_tokens=params.max_new_tokens,
            eos_ids=eos_ids,
            pad_token_id=tokenizer.pad_token_id,
            sampler=CandidateSampler.for_params(params, [seeds[i] for i in batch])
            if params.do_sample
            else None,
            processors=processors,
        )
        for row, index in enumerate(batch):
            results[index] = generation_result(tokenizer, decoded[row])
        done += len(batch)
        if progress is not None:
            progress(done, len(prompts))
    return [r for r in results if r is not None]


@inference_mode
def generate_in_row_order(
    loaded: LoadedModel,
    prompts: Sequence[str],
    params: SamplingParams,
    *,
    seeds: Sequence[int],
) -> list[GenerationResult]:
    """Continue rendered prompts as one batch whose rows keep their input order through the
    whole decode: no shared-prefix prefill, no merging of identical prompts, no dropping of
    finished rows. For a forward hook that acts on each row of the batch (one persona's
    steering vector per row). ``seeds``: each row's sampling seed; a row draws exactly what
    it would draw in ``generate_from_text`` under the same seed and prompt."""
    from big5_dagster.lib.engine.candidate_sampler import CandidateSampler

    if len(seeds) != len(prompts):
        raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
    if not prompts:
        return []
    tokenizer, model = loaded.tokenizer, loaded.model
    encoded = encode_rendered(tokenizer, prompts)
    decoded = decode_rows(
        model,
        encoded,
        max_new_tokens=params.max_new_tokens,
        eos_ids=eos_token_ids(model, tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        sampler=CandidateSampler.for_params(params, list(seeds)) if params.do_sample else None,
        processors=repetition_penalties(params),
        share_prefix=False,
        compact_fraction=math.inf,
        distinct_rows=True,
    )
    return [generation_result(tokenizer, d) for d in decoded]


def generation_result(tokenizer: PreTrainedTokenizerBase, decoded: Decoded) -> GenerationResult:
    """A decoded row as a reply: the text without special tokens or the end-of-turn token."""
    tokens = list(decoded.tokens)
    text_tokens = tokens[:-1] if decoded.finish_reason == "eos" else tokens
    return GenerationResult(
        text=tokenizer.decode(text_tokens, skip_special_tokens=True),
        n_new_tokens=len(tokens),
        finish_reason=decoded.finish_reason,
        token_ids=tuple(tokens),
    )


def cut_at_stop(
    tokenizer: PreTrainedTokenizerBase, result: GenerationResult, stop: Callable[[str], bool]
) -> GenerationResult:
    """``result`` cut after its first token at which ``stop(text so far)`` holds, as a decode
    loop with that stop rule would have ended it (for engines that generate to the end)."""
    tokens = list(result.token_ids)
    for k in range(1, len(tokens) + 1):
        if result.finish_reason == "eos" and k == len(tokens):
            break  # the end-of-turn token came first
        if stop(tokenizer.decode(tokens[:k], skip_special_tokens=True)):
            return generation_result(tokenizer, Decoded(tokens[:k], "stop"))
    return result
