"""The DExperts sweep: alpha x formula on a small fixed set of scenarios, per persona the
target-trait accuracy, the off-target drift and the fluency of the replies (METHOD.md 4: the
paper swept alpha from 0.25 to 4 and found replies running on at alpha >= 2).

alpha 0 is plain generation from the persona's role-play prompt for either formula, so it is
generated once (formula ``"none"``) and is the reference of the drift: for each reply, the
mean over the four other traits of |P(high) - P(high) of the alpha-0 reply to the same
scenario by the same persona|.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from big5_dagster.lib.dialogues.cleaning import clean_reply
from big5_dagster.lib.dialogues.replies import reply_request
from big5_dagster.lib.engine import dexperts
from big5_dagster.lib.engine.dexperts import FORMULAS, DExpertsParams
from big5_dagster.lib.engine.generation import GenerationResult, generate_chat
from big5_dagster.lib.engine.loading import LoadedModel
from big5_dagster.lib.engine.sampling import SamplingParams
from big5_dagster.lib.experts.decoding import decoding_group, persona_batches
from big5_dagster.lib.experts.records import ExpertRecord
from big5_dagster.lib.prompts import reply_messages
from big5_dagster.lib.traits import PERSONAS, TRAITS, Persona

PLAIN = "none"
"""The formula label of the alpha-0 (unsteered) replies."""

SUMMARY_COLUMNS: tuple[str, ...] = (
    "formula",
    "alpha",
    "persona",
    "trait",
    "level",
    "n",
    "target_accuracy",
    "binom_p",
    "target_mean_p_high",
    "off_target_drift",
    "perplexity_median",
    "distinct_2",
    "words_mean",
    "truncation_rate",
)


def sweep_grid(alphas: Sequence[float], formulas: Sequence[str]) -> list[tuple[str, float]]:
    """(formula, alpha) settings to generate: alpha 0 once as ``(PLAIN, 0.0)``, then every
    formula at every positive alpha, in the given order."""
    unknown = [f for f in formulas if f not in FORMULAS]
    if unknown or not formulas:
        raise ValueError(f"formulas must be a non-empty list of {list(FORMULAS)}, got {formulas}")
    bad = [a for a in alphas if not (np.isfinite(a) and a >= 0)]
    if bad or not alphas:
        raise ValueError(f"alphas must be a non-empty list of numbers >= 0, got {alphas}")
    grid = [(PLAIN, 0.0)] if 0 in alphas else []
    grid += [(f, float(a)) for f in formulas for a in sorted(set(alphas)) if a > 0]
    return grid


def distinct_2(texts: Iterable[str]) -> float:
    """Distinct word bigrams over all bigrams of the texts (Li et al. 2016); NaN without any."""
    seen: set[tuple[str, str]] = set()
    total = 0
    for text in texts:
        words = str(text).lower().split()
        pairs = list(zip(words, words[1:], strict=False))
        seen.update(pairs)
        total += len(pairs)
    return len(seen) / total if total else float("nan")


def off_target_drift(replies: pd.DataFrame) -> pd.Series:
    """Per reply (``replies`` index): mean |P(high) - P(high) of the alpha-0 reply| over the
    four traits other than the persona's own; NaN when there is no alpha-0 reply to match."""
    columns = [f"p_high_{t}" for t in TRAITS]
    plain = replies[replies.formula == PLAIN].set_index(["persona", "scenario_id"])[columns]
    keys = pd.MultiIndex.from_frame(replies[["persona", "scenario_id"]])
    reference = plain.reindex(keys).to_numpy()
    delta = np.abs(replies[columns].to_numpy() - reference)
    own = np.array([[t == trait for t in TRAITS] for trait in replies.trait])
    delta[own] = np.nan
    with np.errstate(all="ignore"):
        return pd.Series(np.nanmean(delta, axis=1), index=replies.index)


def sweep_summary(replies: pd.DataFrame) -> pd.DataFrame:
    """One row per (formula, alpha, persona) of ``replies``: target accuracy with a one-sided
    binomial test against chance, mean P(high) of the target trait, off-target drift, median
    perplexity under the base model, distinct-2, mean words and truncation rate.

    ``replies`` has formula, alpha, persona, trait, level, scenario_id, reply, finish_reason,
    perplexity and p_high_<trait> for every trait.
    """
    from scipy.stats import binomtest

    drift = off_target_drift(replies)
    order = {p.key: i for i, p in enumerate(PERSONAS)}
    rows = []
    for (formula, alpha, persona), group in replies.groupby(["formula", "alpha", "persona"]):
        trait, level = group.trait.iloc[0], group.level.iloc[0]
        high = group[f"p_high_{trait}"] > 0.5
        hits = high if level == "high" else ~high
        n, k = len(group), int(hits.sum())
        rows.append(
            {
                "formula": formula,
                "alpha": float(alpha),
                "persona": persona,
                "trait": trait,
                "level": level,
                "n": n,
                "target_accuracy": k / n,
                "binom_p": float(binomtest(k, n, 0.5, alternative="greater").pvalue),
                "target_mean_p_high": float(group[f"p_high_{trait}"].mean()),
                "off_target_drift": float(drift[group.index].mean()),
                "perplexity_median": float(group.perplexity.median()),
                "distinct_2": distinct_2(group.reply),
                "words_mean": float(group.reply.str.split().str.len().mean()),
                "truncation_rate": float((group.finish_reason == "length").mean()),
            }
        )
    table = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    table["_order"] = table.persona.map(order)
    table = table.sort_values(["formula", "alpha", "_order"], kind="stable")
    return table.drop(columns="_order").reset_index(drop=True)


def sweep_curve(summary: pd.DataFrame, formulas: Sequence[str] = FORMULAS) -> pd.DataFrame:
    """Per formula and alpha, over personas: mean target accuracy, how many personas pass
    (accuracy >= 0.75, p < 0.01), median perplexity, mean drift, distinct-2, words and
    truncation. The alpha-0 row is repeated under every formula, as the start of its curve.
    ``formulas``: the curves to draw, in order (the steering sweep: one per variant/layer)."""
    plain = summary[summary.formula == PLAIN]
    parts = []
    for formula in [f for f in formulas if f in set(summary.formula)]:
        parts.append(
            pd.concat([plain.assign(formula=formula), summary[summary.formula == formula]])
        )
    if not parts:
        parts = [plain]
    long = pd.concat(parts, ignore_index=True)
    long["passes"] = (long.target_accuracy >= 0.75) & (long.binom_p < 0.01)
    return (
        long.groupby(["formula", "alpha"])
        .agg(
            target_accuracy=("target_accuracy", "mean"),
            min_target_accuracy=("target_accuracy", "min"),
            personas_passing=("passes", "sum"),
            perplexity_median=("perplexity_median", "median"),
            off_target_drift=("off_target_drift", "mean"),
            distinct_2=("distinct_2", "mean"),
            words_mean=("words_mean", "mean"),
            truncation_rate=("truncation_rate", "mean"),
        )
        .reset_index()
    )


def sweep_replies(
    loaded: LoadedModel,
    records: Mapping[str, ExpertRecord],
    scenarios: pd.DataFrame,
    openers: Mapping[str, str],
    grid: Sequence[tuple[str, float]],
    sampling: SamplingParams,
    *,
    warmup_tokens: int,
    expert_path: str,
    personas: Sequence[Persona] = PERSONAS,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Every persona's reply to every scenario at every (formula, alpha) of ``grid``.

    alpha 0 (``PLAIN``) is plain generation from the role-play prompt; the other settings
    steer it with the persona's trait experts (``records``: trait -> expert record). All
    personas share one batch per setting where the experts are LoRA adapters on the base
    (``experts.decoding.persona_batches``), else each persona is a batch of its own. Within
    a batch, reply i (persona-major) samples from the same seeded stream in every setting,
    so settings differ only in the steering. Rows: formula, alpha, persona,
    trait, level, scenario_id, raw_reply, reply, n_new_tokens, finish_reason.
    """
    rows = scenarios.to_dict("records")
    steered = [(f, a) for f, a in grid if f != PLAIN]
    batches = persona_batches(loaded, records, personas, expert_path)
    by_setting: dict[tuple[str, float], list[pd.DataFrame]] = {s: [] for s in grid}
    done, total = 0, len(batches) * len(grid)

    def advance() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    for batch in batches:
        jobs = [(persona, r) for persona in batch for r in rows]
        if len(steered) < len(grid):
            results = generate_chat(
                loaded,
                [reply_messages(r, openers[r["scenario_id"]], p) for p, r in jobs],
                sampling,
                batch_size=len(jobs),
            )
            by_setting[(PLAIN, 0.0)].append(_reply_rows(jobs, results, PLAIN, 0.0))
            advance()
        if not steered:
            continue
        with decoding_group(loaded, records, batch, expert_path) as group:
            expert, anti_expert = group.expert_arguments([p for p, _ in jobs])
            for formula, alpha in steered:
                classic = formula == "dexperts"
                requests = [
                    reply_request(
                        r,
                        openers[r["scenario_id"]],
                        p,
                        expert_system_prompt=records[p.trait].system_prompt,
                        classic=classic,
                    )
                    for p, r in jobs
                ]
                results = dexperts.generate_dexperts(
                    group.decoder,
                    loaded.tokenizer,
                    requests,
                    DExpertsParams(formula=formula, alpha=alpha, warmup_tokens=warmup_tokens),
                    sampling,
                    expert=expert,
                    anti_expert=anti_expert if classic else None,
                    batch_size=len(requests),
                )
                by_setting[(formula, alpha)].append(_reply_rows(jobs, results, formula, alpha))
                advance()
    return pd.concat([f for s in grid for f in by_setting[s]], ignore_index=True)


def _reply_rows(
    jobs: Sequence[tuple[Persona, Mapping[str, Any]]],
    results: Sequence[GenerationResult],
    formula: str,
    alpha: float,
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "formula": formula,
            "alpha": float(alpha),
            "persona": [p.key for p, _ in jobs],
            "trait": [p.trait for p, _ in jobs],
            "level": [p.level for p, _ in jobs],
            "scenario_id": [r["scenario_id"] for _, r in jobs],
            "raw_reply": [x.text for x in results],
            "reply": [
                clean_reply(x.text, r["person_y"]) for x, (_, r) in zip(results, jobs, strict=True)
            ],
            "n_new_tokens": [x.n_new_tokens for x in results],
            "finish_reason": [x.finish_reason for x in results],
        }
    )
