"""Generation over prompts that share a long prefix (one persona's inventory items): the
prefix is prefilled once, every row samples from its own seeded stream."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
from transformers import DynamicCache, LogitsProcessorList

from big5_dagster.lib.engine.chat import render_chat
from big5_dagster.lib.engine.generation import (
    GenerationResult,
    batches_by_length,
    finish_generation,
)
from big5_dagster.lib.engine.loading import LoadedModel
from big5_dagster.lib.engine.sampling import (
    PerRowSampler,
    SamplingParams,
    row_seeds,
    sampling_warpers,
)
from big5_dagster.lib.engine.scoring import (
    OptionScores,
    common_prefix_length,
    left_padded,
    option_token_ids,
)
from big5_dagster.lib.engine.tokens import eos_token_ids
from big5_dagster.lib.engine.types import Conversation, ProgressCallback


def shared_prefix_cache(loaded: LoadedModel, prefix_ids: Sequence[int]) -> DynamicCache | None:
    """The KV cache of ``prefix_ids`` (batch 1), or None for an empty prefix."""
    if not prefix_ids:
        return None
    cache = DynamicCache(config=loaded.model.config)
    loaded.model(
        input_ids=torch.tensor([list(prefix_ids)], device=loaded.device),
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    return cache


@torch.inference_mode()
def generate_with_shared_prefix(
    loaded: LoadedModel,
    prompts: Sequence[str | Conversation],
    params: SamplingParams,
    *,
    batch_size: int = 16,
    progress: ProgressCallback | None = None,
    seeds: Sequence[int] | None = None,
    use_prefix_cache: bool = True,
) -> list[GenerationResult]:
    """Reply to many prompts that share a long prefix, prefilling that prefix only once.

    A prompt is a conversation (rendered with the chat template and the assistant header) or
    an already rendered prompt string (used verbatim). The KV cache of the prompts' longest
    common token prefix is computed once; each batch gets a copy of it (generate() appends
    to the cache in place) and only prefills its rows' own suffixes. Batches group prompts of
    similar suffix length (equal lengths need no padding at all); shorter suffixes are padded
    *between* the prefix and the suffix, masked out, and generate() derives every real
    token's position from the attention mask (cumsum - 1), so each row sees exactly the
    positions of its unpadded prompt. With ``do_sample=False`` the tokens equal
    ``generate_chat``'s greedy tokens (up to float rounding in near-ties).

    Sampling (``params.do_sample``) is reproducible per row: prompt i is sampled with its own
    random stream seeded by ``seeds[i]`` (inverse-CDF sampling of the processed scores, see
    ``PerRowSampler``), so its reply does not depend on the batch size, on the other
    prompts in the call, or on which prompts a cache already answered. ``seeds`` None derives
    one seed per prompt from ``params.seed`` and the prompt's index (``row_seeds``). The
    distribution equals generate()'s multinomial sampling with the same temperature, top-k,
    top-p and repetition penalty; the draws differ, so sampled texts are not those of
    ``generate_chat`` with the same seed. The global torch RNG is not used.
    """
    if not prompts:
        return []
    results, _ = _generate_shared(
        loaded, prompts, params, None, batch_size, progress, seeds, use_prefix_cache
    )
    return results


@torch.inference_mode()
def generate_and_score_with_shared_prefix(
    loaded: LoadedModel,
    prompts: Sequence[str | Conversation],
    params: SamplingParams,
    options: Sequence[str],
    *,
    batch_size: int = 16,
    progress: ProgressCallback | None = None,
    seeds: Sequence[int] | None = None,
) -> tuple[list[GenerationResult], OptionScores]:
    """``generate_with_shared_prefix`` that also returns ``score_options``'s option scores.

    The first generation step's logits are the next-token distribution right after the
    prompt, before any sampling setting touches them: exactly what ``score_options``
    computes. Reading the options' log-probabilities off that step gives both answers from
    one prefill (the prefill of the prompts' suffixes is most of the cost of short
    answers). Equal to ``score_options`` up to float rounding.
    """
    results, scores = _generate_shared(
        loaded, prompts, params, options, batch_size, progress, seeds, True
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
) -> tuple[list[GenerationResult], OptionScores | None]:
    tokenizer, model = loaded.tokenizer, loaded.model
    texts = [
        p if isinstance(p, str) else render_chat(tokenizer, p, index=i)
        for i, p in enumerate(prompts)
    ]
    if not texts:
        raise ValueError("generation needs at least one prompt")
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
    # Every prompt keeps at least one token of its own: generate() needs an uncached input.
    prefix_len = common_prefix_length(prompt_ids) if use_prefix_cache else 0
    prefix_len = min(prefix_len, min(len(ids) for ids in prompt_ids) - 1)
    prefix_cache = shared_prefix_cache(loaded, prompt_ids[0][:prefix_len])

    eos_ids = eos_token_ids(model, tokenizer)
    greedy = dataclasses.replace(params, do_sample=False)
    gen_config = greedy.generation_config(eos_ids, tokenizer.pad_token_id)
    gen_config.return_dict_in_generate = True
    gen_config.output_logits = option_ids is not None  # raw logits; step 0 follows the prompt
    suffixes = [ids[prefix_len:] for ids in prompt_ids]
    prefix = torch.tensor(prompt_ids[0][:prefix_len], dtype=torch.long)
    results: list[GenerationResult | None] = [None] * len(texts)
    n_options = len(option_ids) if option_ids is not None else 0
    logprobs = np.zeros((len(texts), n_options), dtype=np.float64)
    argmax_ids = np.zeros(len(texts), dtype=np.int64)
    argmax_lp = np.zeros(len(texts), dtype=np.float64)
    done = 0
    for batch in batches_by_length([len(s) for s in suffixes], batch_size):
        suffix_ids, suffix_mask = left_padded([suffixes[i] for i in batch], tokenizer.pad_token_id)
        # generate() takes the whole prompt and prefills only what the cache does not hold.
        input_ids = torch.cat([prefix.expand(len(batch), prefix_len), suffix_ids], dim=1)
        attention_mask = torch.cat(
            [torch.ones((len(batch), prefix_len), dtype=torch.long), suffix_mask], dim=1
        )
        cache = None
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(len(batch))
        # Sampling: generate() decodes greedily over the warped scores, and the per-row
        # sampler (last) picks each row's token from its own seeded stream.
        processors = (
            [*sampling_warpers(params), PerRowSampler([seeds[i] for i in batch])]
            if params.do_sample
            else []
        )
        output = model.generate(
            input_ids=input_ids.to(loaded.device),
            attention_mask=attention_mask.to(loaded.device),
            cache=cache,
            generation_config=gen_config,
            logits_processor=LogitsProcessorList(processors),
        )
        new_tokens = output.sequences[:, input_ids.shape[1] :].cpu().tolist()
        for row, index in enumerate(batch):
            results[index] = finish_generation(tokenizer, new_tokens[row], eos_ids)
        if option_ids is not None:
            # output.logits holds the raw (unprocessed) logits of every step; step 0 follows
            # the prompt.
            first = output.logits[0].float().log_softmax(dim=-1)
            top_lp, top_id = first.max(dim=-1)
            chosen = first[:, option_ids].double().cpu().numpy()
            for row, index in enumerate(batch):
                logprobs[index] = chosen[row]
                argmax_ids[index] = int(top_id[row])
                argmax_lp[index] = float(top_lp[row])
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
