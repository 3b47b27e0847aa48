"""`big5 bench inventory`: what the two inventory scorers cost against the paper's protocol.

On the same items and prompts (the base condition, one option order):

- ``logprob``: the option log-probabilities after the prompt (``score_options``), one forward
  of each prompt's suffix: deterministic, so one answer per item.
- ``generate_and_parse``: the pipeline's generate-and-parse: ``runs`` sampled replies per
  item, up to ``max_new_tokens`` (the paper's 128), each ending once its number is decided
  (``answer_decided``), then read with the first-integer rule.
- ``paper_protocol``: the paper's protocol on the same engine: the same replies (same seeds)
  generated to the end-of-turn token or the cap, without the stop rule.

With the same seeds a stopped reply is a prefix of the paper protocol's reply and parses the
same (``answers_equal`` counts it); the stop rule changes what an answer costs, never the
answer. Each repeat times the three in turn (interleaved); rates use the median repeat.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from big5_dagster.bench.roofline import Clock
from big5_dagster.lib.engine.loading import LoadedModel
from big5_dagster.lib.engine.sampling import SamplingParams, row_seeds
from big5_dagster.lib.engine.scoring import score_options
from big5_dagster.lib.engine.shared_prefix import generate_with_shared_prefix
from big5_dagster.lib.personality.administration import item_messages, scale_values
from big5_dagster.lib.personality.answer_reading import (
    answer_decided,
    logprob_answers,
    parse_answers,
)
from big5_dagster.lib.personality.inventory import Inventory

PAPER_RUNS = 5
PAPER_MAX_NEW_TOKENS = 128


def bench_inventory(
    loaded: LoadedModel,
    inventory: Inventory,
    n_items: int,
    *,
    batch_size: int = 16,
    runs: int = PAPER_RUNS,
    max_new_tokens: int = PAPER_MAX_NEW_TOKENS,
    temperature: float = 0.6,
    system: str | None = None,
    order: str = "normal",
    repeats: int = 1,
    seed: int = 0,
    clock: Clock | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Items per second of log-prob scoring, of generate-and-parse (``runs`` replies per item,
    early stop) and of the paper's protocol (the same replies without the stop), on the first
    ``n_items`` items of ``inventory``; parse failures and tokens per answer beside them.

    The prompts are built exactly as ``personality.answers.administer`` builds them (system
    text ``system``; None: the chat template's default, as in the base condition). The
    generation time includes parsing the replies (negligible next to generating them).
    """
    if n_items < 1 or n_items > len(inventory.items):
        raise ValueError(
            f"n_items must be between 1 and {len(inventory.items)} (the items of "
            f"{inventory.name!r}), got {n_items}"
        )
    if repeats < 1 or runs < 1:
        raise ValueError(f"repeats and runs must be >= 1, got {repeats} and {runs}")
    say = log or (lambda message: None)
    clock = clock or time.perf_counter
    items = inventory.items[:n_items]
    conversations = [item_messages(inventory, item, order, system) for item in items]
    options = [str(v) for v in scale_values(inventory)]
    # Item-major: the runs of an item sit side by side, as administer asks them.
    asked = [c for c in conversations for _ in range(runs)]
    orders = [order] * len(asked)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    seeds = row_seeds(seed, len(asked))

    def logprob() -> Any:
        scores = score_options(loaded, conversations, options, batch_size=batch_size)
        return scores, logprob_answers(scores.logprobs, [order] * n_items, inventory)

    def generate(stop: Callable[[str], bool] | None) -> Any:
        results = generate_with_shared_prefix(
            loaded, asked, params, batch_size=batch_size, seeds=seeds, stop=stop
        )
        return results, parse_answers([r.text for r in results], orders, inventory)

    score_options(loaded, conversations[:batch_size], options, batch_size=batch_size)  # warm-up
    runs_of: dict[str, Callable[[], Any]] = {
        "logprob": logprob,
        "generate": lambda: generate(answer_decided),
        "paper": lambda: generate(None),
    }
    seconds: dict[str, list[float]] = {name: [] for name in runs_of}
    outcome: dict[str, Any] = {}
    for repeat in range(repeats):
        for name, fn in runs_of.items():
            started = clock()
            outcome[name] = fn()
            seconds[name].append(clock() - started)
        say(
            f"repeat {repeat + 1}/{repeats}: logprob {n_items / seconds['logprob'][-1]:.2f}, "
            f"generate+parse {n_items / seconds['generate'][-1]:.2f}, paper protocol "
            f"{n_items / seconds['paper'][-1]:.2f} items/s"
        )
    rate = {name: n_items / statistics.median(s) for name, s in seconds.items()}
    (scores, answers), (stopped, parsed), (full, paper_parsed) = (
        outcome["logprob"],
        outcome["generate"],
        outcome["paper"],
    )
    same = sum(
        s.token_ids == f.token_ids[: len(s.token_ids)] and a == b
        for s, f, a, b in zip(
            stopped,
            full,
            zip(parsed["presented_value"], parsed["parse_status"], strict=True),
            zip(paper_parsed["presented_value"], paper_parsed["parse_status"], strict=True),
            strict=True,
        )
    )

    def replies(results: list, frame: Any) -> dict[str, Any]:
        statuses = frame["parse_status"].value_counts().to_dict()
        return {
            "mean_new_tokens": statistics.fmean(r.n_new_tokens for r in results),
            "parse_failure_rate": float((frame["parse_status"] != "ok").mean()),
            "parse_statuses": {str(k): int(v) for k, v in statuses.items()},
            "finish_reasons": {
                reason: sum(r.finish_reason == reason for r in results)
                for reason in ("stop", "eos", "length")
            },
        }

    return {
        "model_id": loaded.model_id,
        "dtype": loaded.dtype,
        "device": loaded.device,
        "torch_threads": torch.get_num_threads(),
        "inventory": inventory.name,
        "n_items": n_items,
        "runs": runs,
        "option_order": order,
        "system": system,
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "repeats": repeats,
        "prefix_tokens": scores.prefix_tokens,
        "logprob": {
            "seconds": seconds["logprob"],
            "items_per_second": rate["logprob"],
            "mean_option_mass": float(answers["option_mass"].mean()),
            "argmax_counts": {
                str(int(k)): int(v) for k, v in answers["argmax_score"].value_counts().items()
            },
        },
        "generate_and_parse": {
            "seconds": seconds["generate"],
            "items_per_second": rate["generate"],
            **replies(stopped, parsed),
        },
        "paper_protocol": {
            "seconds": seconds["paper"],
            "items_per_second": rate["paper"],
            **replies(full, paper_parsed),
        },
        "answers_equal": same,
        "answers": len(asked),
        "logprob_to_paper_ratio": rate["logprob"] / rate["paper"],
        "generate_to_paper_ratio": rate["generate"] / rate["paper"],
        "logprob_to_generate_ratio": rate["logprob"] / rate["generate"],
    }
