"""Answering personality inventories under many conditions, cached item by item (METHOD.md 6).

A *condition* is one way of setting the model up: the base model, a prompting baseline
(trait description, or 10 example replies) for one persona, or a LoRA adapter (SFT/DPO,
one training seed) selected by the persona instruction it was trained with. Every item of
every inventory is asked in every option order (``administration_plan``) and read by two
scorers side by side:

- ``logprob``: the next-token probabilities of the presented numbers '1'..'5' right after
  the assistant header, mapped back to scale values and renormalized over the options.
  ``value`` is the expected score (sum of v * p_v; it uses the whole distribution, so it
  does not collapse onto the model's favourite digit); ``argmax_score`` is kept beside it
  and ``option_mass`` records how much probability fell on the options at all. An answer
  whose option mass is below the minimum has status ``low_mass`` and no value
  (``apply_min_option_mass``). When the same prompt is also generated from, the
  log-probabilities are read off the generation's first step (the same forward pass; equal
  to a separate ``score_options`` call up to float rounding), so both scorers cost one
  prefill.
- ``generate``: a sampled reply of at most ``max_new_tokens`` tokens, read with the
  first-integer rule of ``answer_reading.parse_answer``. A reply that cannot be read keeps
  its raw text, ``value`` NA and a ``parse_status`` saying why; nothing is ever imputed.
  Each reply is sampled with its own random stream seeded by the row's call seed
  (``generation_seed``), so it does not depend on the batch it ran in. The call seed comes
  from (seed, run, option order, item), not from the condition: conditions are compared
  under common random numbers.

Statistical units (METHOD.md section 7): a deterministic scorer (``logprob``, or
``generate`` without sampling) gives one answer per prompt however many runs are asked for,
so it gets exactly one row per (condition, item, option order), with ``run`` 0 and no call
seed; runs are replicates only of sampled answers. Nothing downstream can then count copies
of one answer as independent respondents.

Caching: every answer row has a ``cache_key``, a hash of everything its value depends on
(model fingerprint, adapter version, the exact prompt via ``messages_hash``, scorer, scorer
settings including a hash of the scoring code, and the call seed of a sampled answer).
``administer`` computes only rows whose key the caller does not already hold, so a rerun
after a change (another system text, another adapter, new generation settings) recomputes
exactly the affected rows. ``plan_answers`` lists every row a setting asks for, with its
key, without a model: the current answer set is the caller's stored rows whose keys it
lists. The minimum option mass is not in the key: it only sets statuses from the stored
option mass, so changing it recomputes nothing.

Adapters: the caller attaches the adapter of an SFT/DPO condition to the model (peft) and
calls ``administer`` once per adapter with that adapter's conditions; one call never mixes
conditions that need different adapters (it raises), so an attached adapter cannot leak into
another condition's answers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
import pandas as pd

from big5_dagster.lib.common.code_version import code_reach
from big5_dagster.lib.common.hashing import hash_json
from big5_dagster.lib.engine.generation import GenerationResult
from big5_dagster.lib.engine.loading import LoadedModel
from big5_dagster.lib.engine.respondent import respondent_of
from big5_dagster.lib.engine.sampling import SamplingParams
from big5_dagster.lib.engine.scoring import score_options
from big5_dagster.lib.engine.shared_prefix import (
    generate_and_score_with_shared_prefix,
    generate_with_shared_prefix,
)
from big5_dagster.lib.personality.administration import (
    OPTION_ORDERS,
    administration_plan,
    map_back,
    messages_hash,
    prompt_template_hash,
    scale_values,
)
from big5_dagster.lib.personality.answer_reading import (
    ANSWER_STATUSES,
    DEFAULT_MIN_OPTION_MASS,
    LOW_MASS,
    PARSE_STATUSES,
    answer_decided,
    logprob_answers,
    option_mass_status,
    parse_answer,
    parse_answers,
)
from big5_dagster.lib.personality.conditions import Condition
from big5_dagster.lib.personality.inventory import Inventory
from big5_dagster.lib.personality.methods import SCORERS, is_deterministic

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding of the generate-and-parse scorer (paper: temperature 0.6, 128 new tokens)."""

    temperature: float = 0.6
    max_new_tokens: int = 128
    stop_when_decided: bool = True
    """End a reply as soon as ``answer_decided`` says its number is complete: the parsed
    answer is the one the whole reply would give (same seed, same tokens up to there); only
    the stored text is shorter, and generation costs what the answer needs."""
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    """1.0: the option digits all occur in the prompt, so a penalty would push answers off them."""
    do_sample: bool = True

    def sampling_params(self, seed: int = 0) -> SamplingParams:
        # Validates the values (SamplingParams raises naming the bad field).
        return SamplingParams(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            repetition_penalty=self.repetition_penalty,
            do_sample=self.do_sample,
            seed=seed,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "max_new_tokens": self.max_new_tokens,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "repetition_penalty": self.repetition_penalty,
            "do_sample": self.do_sample,
            "stop_when_decided": self.stop_when_decided,
        }


@dataclass(frozen=True)
class AdministrationSettings:
    """What besides the prompt decides an answer: the model and the scorers' settings."""

    model_fingerprint: str
    generation: GenerationSettings = field(default_factory=GenerationSettings)

    def scorer_settings(self, scorer: str, inv: Inventory) -> dict[str, Any]:
        """The settings that enter the cache key of ``scorer``'s answers."""
        check_scorer(scorer)
        if scorer == "logprob":
            return {"options": option_strings(inv), "code": scoring_code_hash()}
        return {**self.generation.as_dict(), "code": scoring_code_hash()}


def check_scorer(scorer: str) -> str:
    if scorer not in SCORERS:
        raise ValueError(f"unknown scorer {scorer!r}: expected one of {list(SCORERS)}")
    return scorer


def option_strings(inv: Inventory) -> list[str]:
    """The presented answer tokens: '1'..'5' on a 1-5 scale."""
    return [str(v) for v in scale_values(inv)]


@cache
def scoring_code_hash() -> str:
    """Version of the code that turns a prompt into an answer (generation, option scoring,
    parsing: the modules they reach, see lib.common.code_version); part of every cache key,
    so a change there never reuses answers computed by older code."""
    return code_reach(
        generate_with_shared_prefix,
        generate_and_score_with_shared_prefix,
        score_options,
        logprob_answers,
        parse_answer,
        answer_decided,
    ).version()


def cache_key(
    model_fingerprint: str,
    model_version: str | None,
    prompt_hash: str,
    scorer: str,
    scorer_settings: Mapping[str, Any],
    call_seed: int | None,
) -> str:
    """Content key of one answer: everything its value depends on (no call seed for a
    deterministic scorer, whose answer does not depend on one). ``model_version``: what
    changes the model (``Condition.model_version``: adapter weights or steering vector)."""
    return hash_json(
        {
            "model": model_fingerprint,
            "adapter": model_version,
            "messages": prompt_hash,
            "scorer": scorer,
            "settings": dict(scorer_settings),
            "call_seed": None if call_seed is None else int(call_seed),
        }
    )


# The columns of administration_plan() that answer rows copy.
PLAN_COLUMNS: tuple[str, ...] = (
    "inventory",
    "item_id",
    "item_number",
    "run",
    "option_order",
    "call_seed",
)


# Row identity and provenance, in this order, then the answer columns.
PROVENANCE_COLUMNS: tuple[str, ...] = (
    "cache_key",
    "condition",
    "method",
    "persona",
    "adapter_seed",
    "adapter_version",
    "model_fingerprint",
    "prompt_template_hash",
    "messages_hash",
    "inventory",
    "item_id",
    "item_number",
    "run",
    "option_order",
    "call_seed",
    "scorer",
    "scorer_settings",
)


ANSWER_COLUMNS: tuple[str, ...] = (
    "raw_text",
    "presented_value",
    "value",
    "parse_status",
    "expected_score",
    "argmax_score",
    "option_mass",
    "top_token",
    "temperature",
    "max_new_tokens",
    "generation_seed",
    "n_new_tokens",
    "finish_reason",
)


_DTYPES: dict[str, str] = {
    "cache_key": "string",
    "condition": "string",
    "method": "string",
    "persona": "string",
    "adapter_seed": "Int64",
    "adapter_version": "string",
    "model_fingerprint": "string",
    "prompt_template_hash": "string",
    "messages_hash": "string",
    "inventory": "string",
    "item_id": "string",
    "item_number": "int64",
    "run": "int64",
    "option_order": "string",
    "call_seed": "Int64",
    "scorer": "string",
    "scorer_settings": "string",
    "raw_text": "string",
    "presented_value": "Int64",
    "value": "Float64",
    "parse_status": "string",
    "expected_score": "Float64",
    "argmax_score": "Float64",
    "option_mass": "Float64",
    "top_token": "string",
    "temperature": "Float64",
    "max_new_tokens": "Int64",
    "generation_seed": "Int64",
    "n_new_tokens": "Int64",
    "finish_reason": "string",
}


def probability_columns(inv: Inventory) -> list[str]:
    """'p_1'..'p_5': the renormalized probability of each scale value (logprob scorer)."""
    return [f"p_{v}" for v in scale_values(inv)]


def answer_rows(
    condition: Condition,
    inventory: Inventory,
    plan: pd.DataFrame,
    scorers: Sequence[str],
    settings: AdministrationSettings,
) -> pd.DataFrame:
    """Every answer row ``plan`` asks for under ``condition``, with provenance and cache key.

    One row per (run, option order, item) of the plan and sampling scorer; a deterministic
    scorer (``is_deterministic``) gets one row per (option order, item): the plan's first
    run, with no call seed. The answer columns (raw_text, value, parse_status, p_*, ...) are
    empty until ``administer`` fills them.
    """
    if not scorers:
        raise ValueError("scorers must name at least one scorer")
    for scorer in scorers:
        check_scorer(scorer)
    if len(set(scorers)) != len(scorers):
        raise ValueError(f"scorers lists a scorer twice: {list(scorers)}")
    missing = set(PLAN_COLUMNS) - set(plan.columns)
    if missing:
        raise ValueError(f"plan lacks columns {sorted(missing)} (make it with administration_plan)")
    if plan.empty:
        raise ValueError("plan has no rows")
    names = set(plan["inventory"].unique())
    if names != {inventory.name}:
        raise ValueError(f"plan is for inventory {sorted(names)}, not {inventory.name!r}")

    prompt_hashes = {
        (item_id, order): messages_hash(condition.messages(inventory, item_id, order))
        for item_id, order in plan[["item_id", "option_order"]]
        .drop_duplicates()
        .itertuples(index=False)
    }
    template_hash = prompt_template_hash()
    frames = []
    for scorer in scorers:
        scorer_settings = settings.scorer_settings(scorer, inventory)
        settings_text = json.dumps(scorer_settings, sort_keys=True)
        frame = plan[list(PLAN_COLUMNS)].copy()
        if is_deterministic(scorer, scorer_settings):
            frame = frame[frame["run"] == frame["run"].min()].copy()
            frame["call_seed"] = pd.NA
        frame["call_seed"] = frame["call_seed"].astype("Int64")
        frame["messages_hash"] = [
            prompt_hashes[(i, o)]
            for i, o in zip(frame["item_id"], frame["option_order"], strict=True)
        ]
        frame["cache_key"] = [
            cache_key(
                settings.model_fingerprint,
                condition.model_version,
                h,
                scorer,
                scorer_settings,
                None if s is pd.NA else s,
            )
            for h, s in zip(frame["messages_hash"], frame["call_seed"].astype(object), strict=True)
        ]
        frame["condition"] = condition.label
        frame["method"] = condition.method
        frame["persona"] = condition.persona
        frame["adapter_seed"] = condition.adapter_seed
        frame["adapter_version"] = condition.model_version
        frame["model_fingerprint"] = settings.model_fingerprint
        frame["prompt_template_hash"] = template_hash
        frame["scorer"] = scorer
        frame["scorer_settings"] = settings_text
        frames.append(frame)
    rows = pd.concat(frames, ignore_index=True)
    for column in ANSWER_COLUMNS:
        rows[column] = None
    for column in probability_columns(inventory):
        rows[column] = None
    return _typed(rows)


def _typed(rows: pd.DataFrame) -> pd.DataFrame:
    columns = list(PROVENANCE_COLUMNS) + list(ANSWER_COLUMNS)
    p_columns = [c for c in rows.columns if c.startswith("p_")]
    dtypes = {**_DTYPES, **{c: "Float64" for c in p_columns}}
    rows = rows[columns + p_columns]
    return rows.astype({c: dtypes[c] for c in rows.columns})


def plan_answers(
    model_fingerprint: str,
    conditions: Sequence[Condition],
    inventories: Sequence[Inventory],
    *,
    n_runs: int,
    seed: int,
    scorers: Sequence[str] = SCORERS,
    generation: GenerationSettings | None = None,
    orders: Sequence[str] = OPTION_ORDERS,
) -> pd.DataFrame:
    """Every answer row these settings ask for (answer columns empty), with cache keys.

    Needs no model. The same ``seed`` gives every condition the same plan (item orders and
    call seeds), so conditions differ only in the condition.
    """
    if not conditions:
        raise ValueError("conditions is empty")
    if not inventories:
        raise ValueError("inventories is empty")
    labels = [c.label for c in conditions]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ValueError(f"conditions repeat {duplicates}")
    settings = AdministrationSettings(model_fingerprint, generation or GenerationSettings())
    settings.generation.sampling_params()  # validate before any work
    frames = []
    for inv in inventories:
        plan = administration_plan(inv, n_runs, seed, orders)
        for condition in conditions:
            frames.append(answer_rows(condition, inv, plan, scorers, settings))
    return pd.concat(frames, ignore_index=True)


def administer(
    loaded: LoadedModel,
    conditions: Sequence[Condition],
    inventories: Sequence[Inventory],
    *,
    n_runs: int,
    seed: int,
    scorers: Sequence[str] = SCORERS,
    generation: GenerationSettings | None = None,
    batch_size: int = 16,
    cached_keys: Collection[str] = frozenset(),
    orders: Sequence[str] = OPTION_ORDERS,
    min_option_mass: float = DEFAULT_MIN_OPTION_MASS,
    progress: ProgressCallback | None = None,
) -> pd.DataFrame:
    """Answer every planned item under every condition, computing only uncached rows.

    Returns the newly computed rows (``cached_keys`` excluded), provenance columns first
    (``PROVENANCE_COLUMNS``, ``ANSWER_COLUMNS``, then p_1..p_5); an empty frame with those
    columns when everything is cached. The rows of one condition, inventory and option order
    share their prompt prefix (system turn, instructions, options, 'Statement:'), so they go
    through ``score_options`` and ``generate_with_shared_prefix`` together, which compute that
    prefix's KV cache once. A log-probability answer with an option mass below
    ``min_option_mass`` gets status ``low_mass`` and no value. ``progress(done, total)``
    counts model prompts.

    The caller attaches the adapter of sft/dpo conditions before calling; all conditions of
    one call must need the same adapter (none for base and prompting), else ValueError.
    """
    generation = generation or GenerationSettings()
    identities = {c.adapter_identity for c in conditions}
    if len(identities) > 1:
        raise ValueError(
            "administer() got conditions needing different adapters "
            f"{sorted(identities, key=str)}: call it once per adapter with that adapter attached"
        )
    planned = plan_answers(
        loaded.fingerprint,
        conditions,
        inventories,
        n_runs=n_runs,
        seed=seed,
        scorers=scorers,
        generation=generation,
        orders=orders,
    )
    pending = planned[~planned["cache_key"].isin(set(cached_keys))]
    if pending.empty:
        return pending.reset_index(drop=True)
    by_label = {c.label: c for c in conditions}
    by_name = {inv.name: inv for inv in inventories}

    groups = list(
        pending.groupby(["condition", "inventory", "option_order"], sort=False).groups.items()
    )
    total = sum(_n_model_prompts(pending.loc[index]) for _, index in groups)
    done = 0
    answered = []
    for (label, inv_name, _order), index in groups:
        rows = pending.loc[index]
        filled = _answer_group(
            loaded, by_label[label], by_name[inv_name], rows, generation, batch_size
        )
        filled = apply_min_option_mass(filled, min_option_mass)
        answered.append(filled)
        done += _n_model_prompts(rows)
        if progress is not None:
            progress(done, total)
    result = pd.concat(answered).loc[pending.index]  # back to plan order
    return _typed(result.reset_index(drop=True))


def _n_model_prompts(rows: pd.DataFrame) -> int:
    """Prompts run through the model: one per row to generate, plus one per distinct logprob
    prompt that no generated row shares (those come from the generation's first step)."""
    generate = rows["scorer"] == "generate"
    logprob_only = set(rows.loc[~generate, "messages_hash"]) - set(
        rows.loc[generate, "messages_hash"]
    )
    return int(generate.sum()) + len(logprob_only)


def _answer_group(
    loaded: LoadedModel,
    condition: Condition,
    inv: Inventory,
    rows: pd.DataFrame,
    generation: GenerationSettings,
    batch_size: int,
) -> pd.DataFrame:
    """Fill the answers of one (condition, inventory, option order): prompts sharing a prefix.

    When rows of both scorers are pending, the log-probability answers are read off the
    generation's first step (same forward, see ``generate_and_score_with_shared_prefix``);
    only logprob prompts that no pending generated row shares are scored on their own.
    """
    options = option_strings(inv)
    engine = respondent_of(loaded)
    filled = rows.copy()
    to_generate = rows[rows["scorer"] == "generate"]
    to_score = rows[rows["scorer"] == "logprob"]
    scores_by_prompt: dict[str, tuple[np.ndarray, int]] = {}
    if not to_generate.empty:
        conversations = _conversations(condition, inv, to_generate)
        seeds = [int(s) for s in to_generate["call_seed"]]
        params = generation.sampling_params()
        stop = answer_decided if generation.stop_when_decided else None
        if to_score.empty:
            results = engine.generate_with_shared_prefix(
                conversations, params, batch_size=batch_size, seeds=seeds, stop=stop
            )
        else:
            results, first_step = engine.generate_and_score_with_shared_prefix(
                conversations, params, options, batch_size=batch_size, seeds=seeds, stop=stop
            )
            for k, prompt_hash in enumerate(to_generate["messages_hash"]):
                scores_by_prompt.setdefault(
                    prompt_hash, (first_step.logprobs[k], int(first_step.argmax_token_ids[k]))
                )
        _fill_generated(filled, to_generate.index, inv, results, seeds, generation)
    if not to_score.empty:
        missing = to_score[~to_score["messages_hash"].isin(scores_by_prompt)]
        missing = missing.drop_duplicates("messages_hash")
        if not missing.empty:
            scored = engine.score_options(
                _conversations(condition, inv, missing), options, batch_size=batch_size
            )
            for k, prompt_hash in enumerate(missing["messages_hash"]):
                scores_by_prompt[prompt_hash] = (
                    scored.logprobs[k],
                    int(scored.argmax_token_ids[k]),
                )
        _fill_logprob(filled, to_score, inv, scores_by_prompt, loaded)
    return filled


def _conversations(
    condition: Condition, inv: Inventory, rows: pd.DataFrame
) -> list[list[dict[str, str]]]:
    return [
        condition.messages(inv, item_id, order)
        for item_id, order in zip(rows["item_id"], rows["option_order"], strict=True)
    ]


def _fill_logprob(
    filled: pd.DataFrame,
    rows: pd.DataFrame,
    inv: Inventory,
    scores_by_prompt: Mapping[str, tuple[np.ndarray, int]],
    loaded: LoadedModel,
) -> None:
    hashes = list(rows["messages_hash"])
    logprobs = np.stack([scores_by_prompt[h][0] for h in hashes])
    answers = logprob_answers(logprobs, list(rows["option_order"]), inv)
    answers.index = rows.index
    for column in ["expected_score", "argmax_score", "option_mass", *probability_columns(inv)]:
        filled.loc[rows.index, column] = answers[column]
    filled.loc[rows.index, "top_token"] = loaded.tokenizer.convert_ids_to_tokens(
        [scores_by_prompt[h][1] for h in hashes]
    )
    # The number the model would most likely write, as presented (before mapping back).
    filled.loc[rows.index, "presented_value"] = [
        int(map_back(int(v), o, inv))
        for v, o in zip(answers["argmax_score"], rows["option_order"], strict=True)
    ]


def apply_min_option_mass(rows: pd.DataFrame, min_option_mass: float) -> pd.DataFrame:
    """The log-probability rows' status and value from their stored option mass: 'ok' with
    value = expected score at or above ``min_option_mass``, else 'low_mass' with no value.
    Other scorers' rows are returned unchanged. Pure: stored answers can be re-read under
    another minimum without a model."""
    logprob = (rows["scorer"] == "logprob").to_numpy(dtype=bool)
    if not logprob.any():
        return rows
    out = rows.copy()
    status = option_mass_status(out.loc[logprob, "option_mass"].to_numpy(float), min_option_mass)
    out.loc[logprob, "parse_status"] = status
    out.loc[logprob, "value"] = out.loc[logprob, "expected_score"].where(status == "ok")
    return out


def _fill_generated(
    filled: pd.DataFrame,
    index: pd.Index,
    inv: Inventory,
    results: Sequence[GenerationResult],
    seeds: Sequence[int],
    generation: GenerationSettings,
) -> None:
    texts = [r.text for r in results]
    parsed = parse_answers(texts, list(filled.loc[index, "option_order"]), inv)
    parsed.index = index
    filled.loc[index, "raw_text"] = texts
    filled.loc[index, "presented_value"] = parsed["presented_value"]
    filled.loc[index, "value"] = parsed["value"]
    filled.loc[index, "parse_status"] = parsed["parse_status"]
    filled.loc[index, "temperature"] = generation.temperature if generation.do_sample else None
    filled.loc[index, "max_new_tokens"] = generation.max_new_tokens
    filled.loc[index, "generation_seed"] = list(seeds) if generation.do_sample else None
    filled.loc[index, "n_new_tokens"] = [r.n_new_tokens for r in results]
    filled.loc[index, "finish_reason"] = [r.finish_reason for r in results]


def answer_quality(
    rows: pd.DataFrame, by: Sequence[str] = ("condition", "inventory", "scorer")
) -> pd.DataFrame:
    """Per group: answers, failed parses, low-mass answers (log-probability), their rates,
    the mean value and the mean option mass: the figures the report must show beside any
    score. Every answer without a value is one of these two kinds of failure."""
    if rows.empty:
        raise ValueError("answer_quality got no rows")
    status = rows["parse_status"].astype(object)
    unknown = sorted(set(status.dropna()) - set(ANSWER_STATUSES))
    if unknown:
        raise ValueError(f"answer rows hold unknown statuses {unknown}: expected {ANSWER_STATUSES}")
    frame = rows.assign(
        _parse_failed=(status.isin(PARSE_STATUSES) & (status != "ok")).astype(int),
        _low_mass=(status == LOW_MASS).astype(int),
    )
    grouped = frame.groupby(list(by), sort=True)
    summary = pd.DataFrame(
        {
            "n_answers": grouped.size(),
            "n_failed": grouped["_parse_failed"].sum(),
            "n_low_mass": grouped["_low_mass"].sum(),
            "mean_value": grouped["value"].mean(),
            "mean_option_mass": grouped["option_mass"].mean(),
        }
    ).reset_index()
    summary["failure_rate"] = summary["n_failed"] / summary["n_answers"]
    summary["low_mass_rate"] = summary["n_low_mass"] / summary["n_answers"]
    return summary


def sorted_answers(rows: pd.DataFrame) -> pd.DataFrame:
    """Answer rows in their stored order: condition, inventory, scorer, run, order, item."""
    keys = ["condition", "inventory", "scorer", "run", "option_order", "item_number"]
    return rows.sort_values(keys, kind="stable").reset_index(drop=True)
