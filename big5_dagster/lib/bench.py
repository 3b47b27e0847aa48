"""Speed measurements that return figures (the CLI prints them). Pure logic, no Dagster.

``bench_dexperts`` compares plain generation with DExperts generation (batched LoRA path) on
the same prompts, batch size and number of new tokens. ``bench_inventory`` compares the two
inventory scorers (option log-probabilities vs generate-and-parse) on the same item prompts.
"""

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

from big5_dagster.lib.administration import (
    item_messages,
    logprob_answers,
    parse_answers,
    scale_values,
)
from big5_dagster.lib.dexperts import (
    FORMULAS,
    DExpertsParams,
    DExpertsRequest,
    Formula,
    generate_dexperts,
    lora_adapter,
    persona_reply_request,
    random_lora_adapter,
)
from big5_dagster.lib.inventories import Inventory
from big5_dagster.lib.model import (
    LoadedModel,
    SamplingParams,
    eos_token_ids,
    generate_chat,
    generate_with_shared_prefix,
    row_seeds,
    score_options,
)
from big5_dagster.lib.prompts import opener_messages
from big5_dagster.lib.synthetic import generate_scenarios
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
        persona_reply_request(s, o.text.strip(), persona)
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
            started = time.perf_counter()
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
            seconds = time.perf_counter() - started  # adapter attach/detach not timed
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
        started = time.perf_counter()
        tokens = run_plain()
        plain_seconds.append(time.perf_counter() - started)
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


def bench_inventory(
    loaded: LoadedModel,
    inventory: Inventory,
    n_items: int,
    *,
    batch_size: int = 16,
    max_new_tokens: int = 8,
    temperature: float = 0.6,
    system: str | None = None,
    order: str = "normal",
    repeats: int = 2,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Items per second of the two inventory scorers on the same items and prompts.

    The prompts are the first ``n_items`` items of ``inventory`` in option ``order`` under
    the system text ``system`` (None: the chat template's default system prompt, as in the
    base condition), exactly as ``lib.evaluation.administer`` builds them. Both scorers run
    on the shared-prefix paths administer uses: ``score_options`` (one forward over each
    prompt's suffix, last position only) and ``generate_with_shared_prefix`` (sampled at
    ``temperature``, per-prompt seeds, up to ``max_new_tokens`` new tokens, stopping at the
    end-of-turn token). The generate-and-parse time includes parsing the replies with
    ``parse_answers`` (negligible next to generation), so it is the cost of a usable answer.
    Each repeat times both, interleaved; rates use the median over repeats after one
    untimed warm-up batch of each. Also reported: the parse-failure rate and status counts
    of the generated answers, the mean option mass of the log-probability answers, and the
    mean number of tokens generated (early stops make generation cheaper than the maximum).
    ``cpu_seconds`` (process CPU time, all threads) beside the wall-clock ``seconds`` shows
    when the machine was busy with other work: with one torch thread on a shared machine,
    items / cpu_seconds estimates the rate on a quiet one.
    """
    if n_items < 1 or n_items > len(inventory.items):
        raise ValueError(
            f"n_items must be between 1 and {len(inventory.items)} (the items of "
            f"{inventory.name!r}), got {n_items}"
        )
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    say = log or (lambda message: None)
    items = inventory.items[:n_items]
    conversations = [item_messages(inventory, item, order, system) for item in items]
    options = [str(v) for v in scale_values(inventory)]
    orders = [order] * n_items
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    seeds = row_seeds(seed, n_items)

    def run_logprob(subset: slice = slice(None)) -> Any:
        scores = score_options(loaded, conversations[subset], options, batch_size=batch_size)
        return scores, logprob_answers(scores.logprobs, orders[subset], inventory)

    def run_generate(subset: slice = slice(None)) -> Any:
        results = generate_with_shared_prefix(
            loaded, conversations[subset], params, batch_size=batch_size, seeds=seeds[subset]
        )
        return results, parse_answers([r.text for r in results], orders[subset], inventory)

    run_logprob(slice(0, batch_size))
    run_generate(slice(0, batch_size))
    logprob_seconds: list[float] = []
    generate_seconds: list[float] = []
    logprob_cpu: list[float] = []
    generate_cpu: list[float] = []
    for repeat in range(repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        scores, answers = run_logprob()
        logprob_seconds.append(time.perf_counter() - started)
        logprob_cpu.append(time.process_time() - cpu_started)
        started, cpu_started = time.perf_counter(), time.process_time()
        results, parsed = run_generate()
        generate_seconds.append(time.perf_counter() - started)
        generate_cpu.append(time.process_time() - cpu_started)
        say(
            f"repeat {repeat + 1}/{repeats}: logprob {n_items / logprob_seconds[-1]:.2f} items/s, "
            f"generate+parse {n_items / generate_seconds[-1]:.2f} items/s"
        )
    logprob_rate = n_items / statistics.median(logprob_seconds)
    generate_rate = n_items / statistics.median(generate_seconds)
    statuses = parsed["parse_status"].value_counts().to_dict()
    return {
        "model_id": loaded.model_id,
        "dtype": loaded.dtype,
        "device": loaded.device,
        "torch_threads": torch.get_num_threads(),
        "inventory": inventory.name,
        "n_items": n_items,
        "option_order": order,
        "system": system,
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "repeats": repeats,
        "prefix_tokens": scores.prefix_tokens,
        "logprob": {
            "seconds": logprob_seconds,
            "cpu_seconds": logprob_cpu,
            "items_per_second": logprob_rate,
            "mean_option_mass": float(answers["option_mass"].mean()),
            "argmax_counts": {
                str(int(k)): int(v) for k, v in answers["argmax_score"].value_counts().items()
            },
        },
        "generate_and_parse": {
            "seconds": generate_seconds,
            "cpu_seconds": generate_cpu,
            "items_per_second": generate_rate,
            "mean_new_tokens": statistics.fmean(r.n_new_tokens for r in results),
            "parse_failure_rate": float((parsed["parse_status"] != "ok").mean()),
            "parse_statuses": {str(k): int(v) for k, v in statuses.items()},
        },
        "logprob_to_generate_ratio": logprob_rate / generate_rate,
    }
