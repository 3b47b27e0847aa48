"""Generation over prompts that share a long prefix (one persona's inventory items): the
prefix is prefilled once, every row samples from its own seeded stream. torch is imported
where used: the definitions load without it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from big5_dagster.lib.engine.chat import render_chat
from big5_dagster.lib.engine.generation import GenerationResult, generation_result
from big5_dagster.lib.engine.inference import inference_mode
from big5_dagster.lib.engine.kv_decode import PrefixCache, common_prefix_length, decode_rows
from big5_dagster.lib.engine.loading import LoadedModel
from big5_dagster.lib.engine.sampling import SamplingParams, repetition_penalties, row_seeds
from big5_dagster.lib.engine.scoring import OptionScores, option_token_ids
from big5_dagster.lib.engine.tokens import eos_token_ids
from big5_dagster.lib.engine.types import Conversation, ProgressCallback

if TYPE_CHECKING:
    import torch

TextStop = Callable[[str], bool]
"""Given a reply's text so far, whether it is decided (generation may stop there)."""


@inference_mode
def generate_with_shared_prefix(
    loaded: LoadedModel,
    prompts: Sequence[str | Conversation],
    params: SamplingParams,
    *,
    batch_size: int = 16,
    progress: ProgressCallback | None = None,
    seeds: Sequence[int] | None = None,
    use_prefix_cache: bool = True,
    stop: TextStop | None = None,
) -> list[GenerationResult]:
    """Reply to many prompts that share a long prefix, prefilling that prefix only once.

    A prompt is a conversation (rendered with the chat template and the assistant header) or
    an already rendered prompt string (used verbatim). The KV cache of the prompts' longest
    common token prefix is computed once; each batch gets a copy of it and only prefills its
    rows' own suffixes (``kv_decode``). Identical prompts (the same item in every run) are
    put side by side, so a batch prefills each once. Shorter suffixes are padded *between*
    the prefix and the suffix, masked out, and every real token gets the position it has in
    its unpadded prompt. With ``do_sample=False`` the tokens equal ``generate_chat``'s greedy
    tokens (up to float rounding in near-ties).

    Sampling (``params.do_sample``) is reproducible per row: prompt i is sampled with its own
    random stream seeded by ``seeds[i]`` (``candidate_sampler.CandidateSampler``), so its
    reply does not depend on the batch size, on the other prompts in the call, or on which
    prompts a cache already answered. ``seeds`` None derives one seed per prompt from ``params.seed``
    and the prompt's index (``row_seeds``). The distribution is that of transformers'
    temperature, top-k, top-p and repetition penalty; the global torch RNG is not used.

    ``stop(text)``: a reply ends as soon as this says its text is decided (e.g. an answer's
    number is complete), besides at the end-of-turn token and the cap; its finish reason is
    then 'stop'. With the same seed, a stopped reply is a prefix of the reply generation
    without the rule would give (the row's draws do not depend on when it ends).
    """
    if not prompts:
        return []
    results, _ = _generate_shared(
        loaded, prompts, params, None, batch_size, progress, seeds, use_prefix_cache, stop
    )
    return results


@inference_mode
def generate_and_score_with_shared_prefix(
    loaded: LoadedModel,
    prompts: Sequence[str | Conversation],
    params: SamplingParams,
    options: Sequence[str],
    *,
    batch_size: int = 16,
    progress: ProgressCallback | None = None,
    seeds: Sequence[int] | None = None,
    stop: TextStop | None = None,
) -> tuple[list[GenerationResult], OptionScores]:
    """``generate_with_shared_prefix`` that also returns ``score_options``'s option scores.

    The first generation step's logits are the next-token distribution right after the
    prompt, before any sampling setting touches them: exactly what ``score_options``
    computes. Reading the options' log-probabilities off that step gives both answers from
    one prefill (the prefill of the prompts' suffixes is most of the cost of short
    answers). Equal to ``score_options`` up to float rounding.
    """
    results, scores = _generate_shared(
        loaded, prompts, params, options, batch_size, progress, seeds, True, stop
    )
    if scores is None:  # unreachable: options were given
        raise RuntimeError("option scores missing")
    return results, scores


def _generate_shared(
    loaded: LoadedModel,
    prompts: Sequence[str | Conversation],
    params: SamplingParams,
    options: Sequence[str] | None,
    batch_size: int,
    progress: ProgressCallback | None,
    seeds: Sequence[int] | None,
    use_prefix_cache: bool,
    stop: TextStop | None,
) -> tuple[list[GenerationResult], OptionScores | None]:
    from big5_dagster.lib.engine.candidate_sampler import CandidateSampler

    tokenizer, model = loaded.tokenizer, loaded.model
    texts = [
        p if isinstance(p, str) else render_chat(tokenizer, p, index=i)
        for i, p in enumerate(prompts)
    ]
    if not texts:
        raise ValueError("generation needs at least one prompt")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if seeds is None:
        seeds = row_seeds(params.seed, len(texts))
    seeds = [int(s) for s in seeds]
    if len(seeds) != len(texts):
        raise ValueError(f"got {len(seeds)} seeds for {len(texts)} prompts")
    prompt_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    for i, ids in enumerate(prompt_ids):
        if not ids:
            raise ValueError(f"prompt {i} is empty")
    option_ids = (
        option_token_ids(tokenizer, texts, prompt_ids, options) if options is not None else None
    )
    # Every prompt keeps at least one token of its own: its last position gives the logits.
    prefix_len = common_prefix_length(prompt_ids) if use_prefix_cache else 0
    prefix_len = min(prefix_len, min(len(ids) for ids in prompt_ids) - 1)
    suffixes = [tuple(ids[prefix_len:]) for ids in prompt_ids]
    prefix = (
        PrefixCache(
            model,
            prompt_ids[0][:prefix_len],
            reserve=max(len(s) for s in suffixes) + params.max_new_tokens + 1,
        )
        if prefix_len > 0
        else None
    )
    eos_ids = eos_token_ids(model, tokenizer)
    processors = list(repetition_penalties(params))
    stop_tokens = None
    if stop is not None:

        def stop_tokens(tokens: list[int]) -> bool:
            return stop(tokenizer.decode(tokens, skip_special_tokens=True))

    results: list[GenerationResult | None] = [None] * len(texts)
    n_options = len(option_ids) if option_ids is not None else 0
    logprobs = np.zeros((len(texts), n_options), dtype=np.float64)
    argmax_ids = np.zeros(len(texts), dtype=np.int64)
    argmax_lp = np.zeros(len(texts), dtype=np.float64)
    # Batches of similar suffix length, identical prompts side by side (prefilled once).
    order = sorted(range(len(texts)), key=lambda i: (len(suffixes[i]), suffixes[i], i))
    done = 0
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]

        def read_first_step(logits: torch.Tensor, batch: list[int] = batch) -> None:
            # The raw logits right after each prompt: what score_options computes.
            first = logits.float().log_softmax(dim=-1)
            top_lp, top_id = first.max(dim=-1)
            chosen = first[:, list(option_ids or [])].double().cpu().numpy()
            for row, index in enumerate(batch):
                logprobs[index] = chosen[row]
                argmax_ids[index] = int(top_id[row])
                argmax_lp[index] = float(top_lp[row])

        decoded = decode_rows(
            model,
            [prompt_ids[i] for i in batch],
            max_new_tokens=params.max_new_tokens,
            eos_ids=eos_ids,
            pad_token_id=tokenizer.pad_token_id,
            sampler=CandidateSampler.for_params(params, [seeds[i] for i in batch])
            if params.do_sample
            else None,
            processors=processors,
            stop=stop_tokens,
            on_prefill=read_first_step if option_ids is not None else None,
            prefix=prefix,
            share_prefix=False,
        )
        for row, index in enumerate(batch):
            results[index] = generation_result(tokenizer, decoded[row])
        done += len(batch)
        if progress is not None:
            progress(done, len(texts))
    scores = None
    if option_ids is not None and options is not None:
        scores = OptionScores(
            options=tuple(options),
            option_token_ids=tuple(option_ids),
            logprobs=logprobs,
            argmax_token_ids=argmax_ids,
            argmax_logprobs=argmax_lp,
            prefix_tokens=prefix_len,
        )
    return [r for r in results if r is not None], scores
