"""`big5 bench dexperts`: tokens per second of plain generation and of DExperts generation
(batched LoRA path) on the same prompts, batch size and number of new tokens."""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import SuppressTokensLogitsProcessor

from big5_dagster.lib.corpora.synthetic_scenarios import generate_scenarios
from big5_dagster.lib.dialogues.replies import reply_request
from big5_dagster.lib.engine.adapters import lora_adapter, random_lora_adapter
from big5_dagster.lib.engine.dexperts import (
    FORMULAS,
    DExpertsParams,
    DExpertsRequest,
    Formula,
    generate_dexperts,
)
from big5_dagster.lib.engine.generation import generate_chat
from big5_dagster.lib.engine.loading import LoadedModel
from big5_dagster.lib.engine.sampling import SamplingParams
from big5_dagster.lib.engine.tokens import eos_token_ids
from big5_dagster.lib.prompts import opener_messages
from big5_dagster.lib.traits import Persona

ADAPTER_NAME = "expert"


def dialogue_bench_requests(
    loaded: LoadedModel,
    n_requests: int,
    persona: Persona,
    *,
    seed: int,
    opener_max_new_tokens: int = 24,
) -> list[DExpertsRequest]:
    """Reply requests as the dialogue stage builds them: synthetic scenarios, openers written by
    ``loaded`` (sampled, seeded), and the persona's base and expert prompts."""
    if n_requests < 1:
        raise ValueError(f"n_requests must be >= 1, got {n_requests}")
    scenarios = generate_scenarios(n_requests, seed=seed).to_dict("records")
    openers = generate_chat(
        loaded,
        [opener_messages(s) for s in scenarios],
        SamplingParams(
            max_new_tokens=opener_max_new_tokens,
            temperature=0.7,
            top_p=0.9,
            repetition_penalty=1.1,
            seed=seed,
        ),
    )
    return [
        reply_request(s, o.text.strip(), persona, expert_system_prompt="", classic=True)
        for s, o in zip(scenarios, openers, strict=True)
    ]


@contextlib.contextmanager
def _expert_adapter(
    model: Any, adapter_path: Path | None, *, seed: int, lora_r: int
) -> Iterator[Any]:
    if adapter_path is not None:
        with lora_adapter(model, {ADAPTER_NAME: Path(adapter_path)}) as peft_model:
            yield peft_model
    else:
        with random_lora_adapter(
            model, seed=seed, r=lora_r, adapter_name=ADAPTER_NAME
        ) as peft_model:
            yield peft_model


def bench_dexperts(
    loaded_base: LoadedModel,
    expert_adapter_path: Path | None,
    requests: Sequence[DExpertsRequest],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 64,
    repeats: int = 2,
    formulas: Sequence[Formula] = FORMULAS,
    alpha: float = 0.5,
    sampling: SamplingParams | None = None,
    lora_r: int = 8,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    clock: Callable[[], float] | None = None,
) -> dict[str, Any]:
    """Tokens per second of plain generation and of DExperts generation (batched LoRA path).

    Both runs generate exactly ``max_new_tokens`` per request: the end-of-sequence tokens are
    suppressed (set to -inf) in both, so neither stops early and the token counts are equal.
    Each repeat runs plain generation and then every formula, interleaved, so a load change on
    the machine hits all of them alike; tokens/s uses the median time over the repeats. One
    short untimed warm-up run of each comes first.

    ``expert_adapter_path`` None: a LoRA adapter with random non-zero weights (rank
    ``lora_r``, all linear layers) is created on the fly. The speed of a LoRA forward does not
    depend on the values of its weights, only on the rank and the layers it wraps, so this
    measures what a trained expert of that shape costs. The adapter is removed from
    ``loaded_base.model`` again at the end.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if not requests:
        raise ValueError("bench_dexperts needs at least one request")
    for formula in formulas:
        if formula not in FORMULAS:
            raise ValueError(f"unknown formula {formula!r}: expected one of {list(FORMULAS)}")
    say = log or (lambda message: None)
    clock = clock or time.perf_counter  # process_time: this process's work on a shared machine
    sampling = sampling or SamplingParams(
        max_new_tokens=max_new_tokens, temperature=0.7, top_p=0.9, repetition_penalty=1.1, seed=seed
    )
    sampling = dataclasses.replace(sampling, max_new_tokens=max_new_tokens)
    model, tokenizer = loaded_base.model, loaded_base.tokenizer
    eos_ids = eos_token_ids(model, tokenizer)
    no_eos = SuppressTokensLogitsProcessor(eos_ids, device=loaded_base.device)
    base_prompts = [r.base_prompt for r in requests]
    expected_tokens = len(requests) * max_new_tokens

    def run_plain(subset: slice = slice(None), params: SamplingParams = sampling) -> int:
        results = generate_chat(
            loaded_base,
            base_prompts[subset],
            params,
            batch_size=batch_size,
            logits_processors=[no_eos],
        )
        return sum(r.n_new_tokens for r in results)

    def run_dexperts(
        formula: Formula, subset: slice = slice(None), params: SamplingParams = sampling
    ) -> tuple[int, float]:
        with _expert_adapter(model, expert_adapter_path, seed=seed, lora_r=lora_r) as peft_model:
            started = clock()
            results = generate_dexperts(
                peft_model,
                tokenizer,
                list(requests[subset]),
                DExpertsParams(formula=formula, alpha=alpha),
                params,
                expert=ADAPTER_NAME,
                batch_size=batch_size,
                base_logits_processors=[no_eos],
                eos_ids=eos_ids,
            )
            seconds = clock() - started  # adapter attach/detach not timed
        return sum(r.n_new_tokens for r in results), seconds

    warmup = SamplingParams(
        max_new_tokens=2, temperature=sampling.temperature, do_sample=sampling.do_sample, seed=seed
    )
    run_plain(slice(0, batch_size), warmup)
    for formula in formulas:
        run_dexperts(formula, slice(0, batch_size), warmup)

    plain_seconds: list[float] = []
    dexperts_seconds: dict[str, list[float]] = {f: [] for f in formulas}
    for repeat in range(repeats):
        started = clock()
        tokens = run_plain()
        plain_seconds.append(clock() - started)
        _check_tokens("plain", tokens, expected_tokens)
        say(f"repeat {repeat + 1}/{repeats}: plain {tokens / plain_seconds[-1]:.1f} tok/s")
        for formula in formulas:
            tokens, seconds = run_dexperts(formula)
            dexperts_seconds[formula].append(seconds)
            _check_tokens(f"dexperts ({formula})", tokens, expected_tokens)
            say(f"repeat {repeat + 1}/{repeats}: {formula} {tokens / seconds:.1f} tok/s")

    plain_rate = expected_tokens / statistics.median(plain_seconds)
    figures: dict[str, Any] = {
        "model_id": loaded_base.model_id,
        "dtype": loaded_base.dtype,
        "device": loaded_base.device,
        "torch_threads": torch.get_num_threads(),
        "expert_adapter": str(expert_adapter_path)
        if expert_adapter_path is not None
        else f"random LoRA r={lora_r} on all linear layers (seed {seed})",
        "path": "batched_lora",
        "n_requests": len(requests),
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "new_tokens_per_run": expected_tokens,
        "repeats": repeats,
        "do_sample": sampling.do_sample,
        "alpha": alpha,
        "plain": {
            "seconds": plain_seconds,
            "tokens_per_second": plain_rate,
        },
        "dexperts": {},
    }
    for formula in formulas:
        rate = expected_tokens / statistics.median(dexperts_seconds[formula])
        figures["dexperts"][formula] = {
            "seconds": dexperts_seconds[formula],
            "tokens_per_second": rate,
            "ratio_to_plain": rate / plain_rate,
        }
    return figures


def _check_tokens(what: str, tokens: int, expected: int) -> None:
    # Equal token counts are what makes the two rates comparable.
    if tokens != expected:
        raise RuntimeError(
            f"{what} generated {tokens} tokens instead of {expected}: lengths differ, the "
            "speeds would not be comparable"
        )
