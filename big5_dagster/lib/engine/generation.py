"""Chat generation: batched, left-padded, seeded, in input order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedTokenizerBase

from big5_dagster.lib.engine.chat import render_chat
from big5_dagster.lib.engine.loading import LoadedModel
from big5_dagster.lib.engine.sampling import SamplingParams, seeded
from big5_dagster.lib.engine.tokens import eos_token_ids
from big5_dagster.lib.engine.types import Conversation, ProgressCallback


@dataclass(frozen=True)
class GenerationResult:
    """One generated reply."""

    text: str
    """Decoded new tokens without special tokens; not stripped (a leading space can matter)."""
    n_new_tokens: int
    """Tokens the model generated, counting the end-of-sequence token when it stopped there."""
    finish_reason: Literal["eos", "length"]
    token_ids: tuple[int, ...]
    """The generated token ids, the end-of-sequence token included."""


def batches_by_length(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (less padding); deterministic."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
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


@torch.inference_mode()
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
    its special tokens already, and generated in left-padded batches of similar length.
    Seeded: the same call with the same inputs returns the same texts. ``logits_processors``
    run on every step after the built-in ones (e.g. DExperts steering). ``progress(done,
    total)`` is called after each batch.
    """
    if not prompts:
        return []
    tokenizer, model = loaded.tokenizer, loaded.model
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    for i, ids in enumerate(encoded):
        if not ids:
            raise ValueError(f"prompt {i} is empty")
    eos_ids = eos_token_ids(model, tokenizer)
    gen_config = params.generation_config(eos_ids, tokenizer.pad_token_id)
    results: list[GenerationResult | None] = [None] * len(prompts)
    done = 0
    with seeded(params.seed, loaded.device):
        for batch in batches_by_length([len(ids) for ids in encoded], batch_size):
            # Left padding: generation continues at the right end of every row.
            inputs = tokenizer.pad(
                {"input_ids": [encoded[i] for i in batch]},
                padding=True,
                padding_side="left",
                return_tensors="pt",
            ).to(loaded.device)
            output = model.generate(
                **inputs,
                generation_config=gen_config,
                logits_processor=LogitsProcessorList(logits_processors),
            )
            new_tokens = output[:, inputs["input_ids"].shape[1] :].cpu().tolist()
            for row, index in enumerate(batch):
                results[index] = finish_generation(tokenizer, new_tokens[row], eos_ids)
            done += len(batch)
            if progress is not None:
                progress(done, len(prompts))
    return [r for r in results if r is not None]


def finish_generation(
    tokenizer: PreTrainedTokenizerBase, new_tokens: list[int], eos_ids: Sequence[int]
) -> GenerationResult:
    stop = next((k for k, token in enumerate(new_tokens) if token in eos_ids), None)
    # After EOS a finished row is filled with pad tokens until the batch ends.
    kept = new_tokens if stop is None else new_tokens[: stop + 1]
    text_tokens = kept if stop is None else kept[:-1]
    return GenerationResult(
        text=tokenizer.decode(text_tokens, skip_special_tokens=True),
        n_new_tokens=len(kept),
        finish_reason="length" if stop is None else "eos",
        token_ids=tuple(kept),
    )
