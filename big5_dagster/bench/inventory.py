"""`big5 bench inventory`: items per second of the two inventory scorers (option
log-probabilities vs generate-and-parse) on the same item prompts."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from big5_dagster.lib.engine.loading import LoadedModel
from big5_dagster.lib.engine.sampling import SamplingParams, row_seeds
from big5_dagster.lib.engine.scoring import score_options
from big5_dagster.lib.engine.shared_prefix import generate_with_shared_prefix
from big5_dagster.lib.personality.administration import item_messages, scale_values
from big5_dagster.lib.personality.answer_reading import logprob_answers, parse_answers
from big5_dagster.lib.personality.inventory import Inventory


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
    base condition), exactly as ``personality.answers.administer`` builds them. Both scorers run
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
