"""Expressed personality: what each method's model WRITES under each persona, rated by the
trait classifier (the text-based criterion validity check of Serapio-Garcia et al., Nature
Machine Intelligence 2025, who scored generated social-media posts the same way).

Every condition of a method (``personality.conditions``: base, a prompting baseline, or an
SFT/DPO adapter with its persona instruction) replies to the held-out evaluation scenarios:
the system turn is the condition's (none for base: the chat template's default applies), the
user turn is PersonX's opening line, as in SFT/DPO training. The base condition has no
persona: its one reply set is scored against every persona, so its high and low rows of a
trait are complements and it shows the model's default reading, not a separation.

Replies are cached by content key like the inventory answers: a hash of the model
fingerprint, the adapter version, the exact prompt, the sampling settings with a hash of the
generation code, and the row's seed. Each row samples from its own stream seeded by (seed,
scenario), so every condition answers a scenario under the same random numbers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict
from functools import cache
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from big5_dagster.lib.common.code_version import code_reach
from big5_dagster.lib.common.hashing import hash_json
from big5_dagster.lib.dialogues.cleaning import clean_reply
from big5_dagster.lib.engine.chat import render_chat
from big5_dagster.lib.engine.loading import LoadedModel
from big5_dagster.lib.engine.respondent import Respondent, respondent_of
from big5_dagster.lib.engine.sampling import SamplingParams
from big5_dagster.lib.engine.shared_prefix import generate_with_shared_prefix
from big5_dagster.lib.engine.steering import generate_steered
from big5_dagster.lib.personality.administration import messages_hash, system_text
from big5_dagster.lib.personality.conditions import Condition
from big5_dagster.lib.personality.methods import NO_PERSONA
from big5_dagster.lib.traits import PERSONAS, TRAITS

if TYPE_CHECKING:
    import torch

REPLY_COLUMNS: tuple[str, ...] = (
    "cache_key",
    "method",
    "condition",
    "persona",
    "adapter_seed",
    "adapter_version",
    "model_fingerprint",
    "messages_hash",
    "scenario_id",
    "row_seed",
    "sampling",
    "raw_reply",
    "reply",
    "n_new_tokens",
    "finish_reason",
)
P_HIGH = "p_high_"
"""Prefix of the classifier's P(high) columns, one per trait."""
CI_LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 2000


def reply_messages(condition: Condition, opener: str) -> list[dict[str, str]]:
    """The condition's chat prompt for a reply to PersonX's ``opener``."""
    system = system_text(condition.system, condition.demonstrations)
    user = {"role": "user", "content": opener}
    return [user] if system is None else [{"role": "system", "content": system}, user]


def row_seed(seed: int, scenario_id: str) -> int:
    """The sampling seed of every condition's reply to one scenario (common random numbers)."""
    return int(hash_json([seed, scenario_id]), 16) % (2**31)


@cache
def generation_code_hash() -> str:
    """Version of the code that turns a prompt into a reply; part of every cache key."""
    return code_reach(generate_with_shared_prefix, generate_steered, clean_reply).version()


def plan_replies(
    model_fingerprint: str,
    conditions: Sequence[Condition],
    scenarios: pd.DataFrame,
    sampling: SamplingParams,
) -> pd.DataFrame:
    """Every reply the conditions owe the scenarios (``scenario_id``, ``opener``), with its
    cache key and provenance; the reply columns are empty until :func:`write_replies`."""
    settings = {k: v for k, v in asdict(sampling).items() if k != "seed"}
    settings_text = json.dumps({**settings, "code": generation_code_hash()}, sort_keys=True)
    rows = []
    for condition in conditions:
        for scenario_id, opener in zip(scenarios.scenario_id, scenarios.opener, strict=True):
            messages = reply_messages(condition, opener)
            prompt_hash = messages_hash(messages)
            seed = row_seed(sampling.seed, scenario_id)
            rows.append(
                {
                    "cache_key": hash_json(
                        {
                            "model": model_fingerprint,
                            "adapter": condition.model_version,
                            "messages": prompt_hash,
                            "sampling": settings_text,
                            "seed": seed,
                        }
                    ),
                    "method": condition.method,
                    "condition": condition.label,
                    "persona": condition.persona,
                    "adapter_seed": condition.adapter_seed,
                    "adapter_version": condition.model_version,
                    "model_fingerprint": model_fingerprint,
                    "messages_hash": prompt_hash,
                    "scenario_id": scenario_id,
                    "row_seed": seed,
                    "sampling": settings_text,
                    "_opener": opener,
                }
            )
    plan = pd.DataFrame(rows)
    for column in ("raw_reply", "reply", "n_new_tokens", "finish_reason"):
        plan[column] = None
    return plan


def write_replies(
    respondent: LoadedModel | Respondent,
    conditions: Sequence[Condition],
    plan: pd.DataFrame,
    sampling: SamplingParams,
    person_y: Mapping[str, str],
    *,
    batch_size: int,
    cached_keys: Collection[str] = frozenset(),
    progress: Callable[[int, int], None] | None = None,
    steering: tuple[int, Mapping[str, torch.Tensor]] | None = None,
) -> pd.DataFrame:
    """The planned replies of ``conditions`` (one adapter attached, or none) not in
    ``cached_keys``. A condition whose system turn carries demonstrations gets a call of its
    own, so its long system turn is the shared prefix, prefilled once; the other conditions'
    prompts part after a few tokens, so their rows go ``batch_size`` a call across
    conditions and fill the batches. ``steering`` (layer, condition label -> vector): the
    conditions are steering ones on an unsteered transformers model, each row gets its
    condition's vector (``generate_steered``). A row's reply does not depend on the other
    rows of its call: it is sampled from its own seed. ``person_y``: scenario_id -> the
    replier's name (for cleaning stage directions). ``progress(done, total)`` counts calls."""
    labels = {c.label: c for c in conditions}
    todo = plan[plan.condition.isin(labels) & ~plan.cache_key.isin(cached_keys)].copy()
    if todo.empty:
        return todo[list(REPLY_COLUMNS)]
    engine = respondent_of(respondent)  # with_adapter yields a LoadedModel for transformers
    calls = _reply_calls(todo, labels, batch_size)
    results = {}
    for done, rows in enumerate(calls, start=1):
        conversations = [
            reply_messages(labels[c], o) for c, o in zip(rows.condition, rows._opener, strict=True)
        ]
        seeds = rows.row_seed.tolist()
        if steering is None:
            generated = engine.generate_with_shared_prefix(
                conversations, sampling, batch_size=batch_size, seeds=seeds
            )
        else:
            layer, vector_of = steering
            generated = generate_steered(
                respondent,
                [render_chat(engine.tokenizer, c, index=i) for i, c in enumerate(conversations)],
                [vector_of[c] for c in rows.condition],
                layer,
                sampling,
                seeds=seeds,
                batch_size=batch_size,
            )
        results.update(zip(rows.index, generated, strict=True))
        if progress is not None:
            progress(done, len(calls))
    results = [results[i] for i in todo.index]
    todo["raw_reply"] = [r.text for r in results]
    todo["reply"] = [
        clean_reply(r.text, person_y[s]) for r, s in zip(results, todo.scenario_id, strict=True)
    ]
    todo["n_new_tokens"] = [r.n_new_tokens for r in results]
    todo["finish_reason"] = [r.finish_reason for r in results]
    return todo[list(REPLY_COLUMNS)].reset_index(drop=True)


def _reply_calls(
    todo: pd.DataFrame, labels: Mapping[str, Condition], batch_size: int
) -> list[pd.DataFrame]:
    if any(labels[c].demonstrations for c in todo.condition.unique()):
        return [rows for _, rows in todo.groupby("condition", sort=False)]
    return [todo.iloc[i : i + batch_size] for i in range(0, len(todo), batch_size)]


def rated(replies: pd.DataFrame, predicted_high_probability: pd.DataFrame) -> pd.DataFrame:
    """``replies`` with one ``p_high_<trait>`` column per trait (the classifier's P(high))."""
    out = replies.reset_index(drop=True).copy()
    for trait in TRAITS:
        out[P_HIGH + trait] = predicted_high_probability[trait].to_numpy(dtype=float)
    return out


def _mean_ci(values: np.ndarray) -> tuple[float, float]:
    from scipy.stats import bootstrap

    if len(values) < 2 or np.ptp(values) == 0:
        return float(np.mean(values)), float(np.mean(values))
    result = bootstrap(
        (values,),
        np.mean,
        confidence_level=CI_LEVEL,
        n_resamples=BOOTSTRAP_RESAMPLES,
        method="percentile",
        random_state=0,
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _replicates(replies: pd.DataFrame) -> list[tuple[object, pd.DataFrame]]:
    """(adapter seed or None, rows) per replicate of a method: each training seed apart."""
    seeds = replies["adapter_seed"]
    if seeds.isna().all():
        return [(None, replies)]
    return [(int(s), g) for s, g in replies.groupby("adapter_seed")]


def accuracy_table(replies: pd.DataFrame, cutoff: float = 0.5) -> pd.DataFrame:
    """Per method, adapter seed and persona: n, target-trait accuracy (the classifier reads
    the persona's level; chance 0.5) with a one-sided binomial p, and the mean P(high) of the
    target trait with a 95% bootstrap CI over scenarios. Base (no persona) is scored
    against every persona with its one reply set."""
    from scipy.stats import binomtest

    rows = []
    for method, by_method in replies.groupby("method", sort=False):
        for seed, group in _replicates(by_method):
            for persona in PERSONAS:
                base = (group.persona == NO_PERSONA).all()
                own = group if base else group[group.persona == persona.key]
                if own.empty:
                    continue
                p_high = own[P_HIGH + persona.trait].to_numpy(dtype=float)
                high = p_high > cutoff
                hits = high if persona.level == "high" else ~high
                n, k = len(hits), int(hits.sum())
                low, high_ci = _mean_ci(p_high)
                rows.append(
                    {
                        "method": method,
                        "adapter_seed": seed,
                        "persona": persona.key,
                        "trait": persona.trait,
                        "level": persona.level,
                        "n": n,
                        "target_accuracy": k / n,
                        "binom_p": float(binomtest(k, n, 0.5, alternative="greater").pvalue),
                        "mean_p_high": float(p_high.mean()),
                        "p_high_ci_low": low,
                        "p_high_ci_high": high_ci,
                        "scored_against_every_persona": bool(base),
                    }
                )
    return pd.DataFrame(rows)


def separation_table(replies: pd.DataFrame) -> pd.DataFrame:
    """Per method, adapter seed and trait: mean P(high) of the trait's high persona minus
    its low persona, paired over scenarios, with a 95% bootstrap CI; and the Spearman
    correlation of the instructed level (high 1, low 0) with P(high) over both personas'
    replies, with its p-value. Methods without personas (base) have no rows."""
    from scipy.stats import spearmanr

    rows = []
    for method, by_method in replies.groupby("method", sort=False):
        if (by_method.persona == NO_PERSONA).all():
            continue
        for seed, group in _replicates(by_method):
            for trait in TRAITS:
                column = P_HIGH + trait
                high = group[group.persona == f"{trait}_high"].set_index("scenario_id")[column]
                low = group[group.persona == f"{trait}_low"].set_index("scenario_id")[column]
                common = high.index.intersection(low.index)
                if common.empty:
                    continue
                paired = (high[common] - low[common]).to_numpy(dtype=float)
                ci_low, ci_high = _mean_ci(paired)
                levels = np.r_[np.ones(len(high)), np.zeros(len(low))]
                scores = np.r_[high.to_numpy(dtype=float), low.to_numpy(dtype=float)]
                rho, p = spearmanr(levels, scores) if np.ptp(scores) > 0 else (np.nan, np.nan)
                rows.append(
                    {
                        "method": method,
                        "adapter_seed": seed,
                        "trait": trait,
                        "n_scenarios": len(common),
                        "mean_p_high_high": float(high.mean()),
                        "mean_p_high_low": float(low.mean()),
                        "difference": float(paired.mean()),
                        "diff_ci_low": ci_low,
                        "diff_ci_high": ci_high,
                        "spearman_rho": float(rho),
                        "spearman_p": float(p),
                    }
                )
    return pd.DataFrame(rows)
