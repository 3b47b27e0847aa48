"""`big5 bench dtypes`: bf16 against fp32 on each hot path, with how far the answers agree.

The same model loaded in both dtypes runs the same calls; per path the row gives both
times, bf16's speed-up (below 1: slower) and the agreement of what the pipeline keeps:

- option scoring (BFI-44): the largest difference of a renormalized option probability,
  the share of items whose most likely option is the same, and the largest difference of a
  trait score (the mean expected item score, reverse-keyed);
- greedy decoding and greedy DExperts (paper formula): the share of replies identical token
  for token, and the mean share of each reply before the first differing token;
- generate-and-parse (sampled, the same seeds): the share of answers read the same.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

from big5_dagster.bench.hot_paths import item_conversations, reply_requests
from big5_dagster.bench.roofline import Clock
from big5_dagster.lib.engine.adapters import random_lora_adapter
from big5_dagster.lib.engine.dexperts import DExpertsParams, generate_dexperts
from big5_dagster.lib.engine.generation import generate_chat
from big5_dagster.lib.engine.loading import LoadedModel
from big5_dagster.lib.engine.sampling import SamplingParams, row_seeds
from big5_dagster.lib.engine.scoring import score_options
from big5_dagster.lib.engine.shared_prefix import generate_with_shared_prefix
from big5_dagster.lib.personality.administration import scale_values
from big5_dagster.lib.personality.answer_reading import (
    answer_decided,
    logprob_answers,
    parse_answers,
)
from big5_dagster.lib.personality.inventory import load_inventory, score_responses


def _token_agreement(a: Sequence[Any], b: Sequence[Any]) -> dict[str, float]:
    def before_first_difference(x: tuple[int, ...], y: tuple[int, ...]) -> float:
        n = next((k for k, (s, t) in enumerate(zip(x, y, strict=False)) if s != t), None)
        longest = max(len(x), len(y), 1)
        return (min(len(x), len(y)) if n is None else n) / longest

    return {
        "identical_replies": sum(r.token_ids == s.token_ids for r, s in zip(a, b, strict=True))
        / len(a),
        "mean_share_before_first_difference": statistics.fmean(
            before_first_difference(r.token_ids, s.token_ids) for r, s in zip(a, b, strict=True)
        ),
    }


def bench_dtypes(
    fp32: LoadedModel,
    bf16: LoadedModel,
    clock: Clock,
    *,
    batch: int = 8,
    new_tokens: int = 24,
    n_items: int | None = None,
    answer_tokens: int = 128,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per hot path: seconds in each dtype, bf16's speed-up and the agreement.

    Scoring and generate-and-parse ask the first ``n_items`` BFI-44 items (None: all), the
    latter sampled up to ``answer_tokens`` (the paper's 128) with the stop rule; decoding and
    DExperts make ``batch`` greedy replies of ``new_tokens`` tokens."""
    say = log or (lambda message: None)
    bfi = load_inventory("bfi44")
    options = [str(v) for v in scale_values(bfi)]
    conversations = item_conversations(bfi, n_items or len(bfi.items))
    requests = reply_requests(batch)
    greedy = SamplingParams(
        max_new_tokens=new_tokens, do_sample=False, repetition_penalty=1.1, seed=0
    )
    sampled = SamplingParams(max_new_tokens=answer_tokens, temperature=0.6, seed=0)
    seeds = row_seeds(0, len(conversations))

    def scoring(loaded: LoadedModel) -> Any:
        scores = score_options(loaded, conversations, options, batch_size=16)
        return logprob_answers(scores.logprobs, ["normal"] * len(conversations), bfi)

    def decoding(loaded: LoadedModel) -> Any:
        prompts = [r.base_prompt for r in requests]
        return generate_chat(loaded, prompts, greedy, batch_size=batch)

    def dexperts(loaded: LoadedModel) -> Any:
        with random_lora_adapter(loaded.model, seed=0) as peft_model:
            return generate_dexperts(
                peft_model,
                loaded.tokenizer,
                requests,
                DExpertsParams(formula="paper", alpha=0.5),
                greedy,
                expert="expert",
                batch_size=batch,
            )

    def generate_and_parse(loaded: LoadedModel) -> Any:
        results = generate_with_shared_prefix(
            loaded, conversations, sampled, batch_size=16, seeds=seeds, stop=answer_decided
        )
        return parse_answers([r.text for r in results], ["normal"] * len(results), bfi)

    def trait_scores(answers: Any) -> dict[str, float]:
        ids = bfi.item_ids[: len(conversations)]
        values = dict(zip(ids, answers["expected_score"].astype(float), strict=True))
        scores = score_responses(bfi, values).items()
        return {trait: row["mean"] for trait, row in scores if row["mean"] is not None}

    def scoring_agreement(a: Any, b: Any) -> dict[str, float]:
        p = [c for c in a.columns if c.startswith("p_")]
        traits_a, traits_b = trait_scores(a), trait_scores(b)
        return {
            "max_probability_difference": float(
                (a[p].astype(float) - b[p].astype(float)).abs().to_numpy().max()
            ),
            "same_most_likely_option": float((a["argmax_score"] == b["argmax_score"]).mean()),
            "max_trait_score_difference": max(abs(traits_a[t] - traits_b[t]) for t in traits_a),
        }

    def parse_agreement(a: Any, b: Any) -> dict[str, float]:
        same = (a["parse_status"] == b["parse_status"]) & (
            a["presented_value"].fillna(-1) == b["presented_value"].fillna(-1)
        )
        return {
            "same_answer": float(same.mean()),
            "parse_failures_fp32": float((a["parse_status"] != "ok").mean()),
            "parse_failures_bf16": float((b["parse_status"] != "ok").mean()),
        }

    rows = []
    for name, run, agreement in (
        (f"option scoring (BFI-44, {len(conversations)} items)", scoring, scoring_agreement),
        (f"greedy decoding, batch {batch}", decoding, _token_agreement),
        (f"DExperts paper greedy, batch {batch}", dexperts, _token_agreement),
        (
            f"generate-and-parse ({len(conversations)} items, {answer_tokens} cap, stop)",
            generate_and_parse,
            parse_agreement,
        ),
    ):
        outcome, seconds = {}, {}
        for dtype, loaded in (("float32", fp32), ("bfloat16", bf16)):
            started = clock()
            outcome[dtype] = run(loaded)
            seconds[dtype] = clock() - started
        row = {
            "path": name,
            "seconds_float32": seconds["float32"],
            "seconds_bfloat16": seconds["bfloat16"],
            "bf16_speedup": seconds["float32"] / seconds["bfloat16"],
            **agreement(outcome["float32"], outcome["bfloat16"]),
        }
        say(f"{name}: bf16 speed-up {row['bf16_speedup']:.2f}")
        rows.append(row)
    return rows
