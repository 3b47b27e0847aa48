"""The BIG5-CHAT dataset: a seeded split by scenario, one validated and flagged record per
reply (``build_dataset``), flag counts and the JSONL file."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from big5_dagster.lib.common.files import atomic_file
from big5_dagster.lib.common.jsonable import jsonable
from big5_dagster.lib.dialogues.cleaning import clean_opener, clean_reply
from big5_dagster.lib.dialogues.refusals import refusal_reason
from big5_dagster.lib.dialogues.schema import (
    DATASET_COLUMNS,
    FLAG_NAMES,
    OPENER_COLUMNS,
    PERSONA_ORDER,
    REPLY_COLUMNS,
    SCENARIO_COLUMNS,
    SPLITS,
    DialogueDataError,
    is_missing,
    is_whole_number,
    require_columns,
    row_error,
)
from big5_dagster.lib.dialogues.similarity import check_threshold, near_duplicate_partners
from big5_dagster.lib.traits import Persona


def split_by_scenario(
    scenario_ids: Iterable[str], test_fraction: float, seed: int
) -> dict[str, str]:
    """Scenario id -> 'train' | 'test'; every reply of a scenario follows its scenario.

    Each id is ranked by sha256(seed, id) and the lowest round(n * test_fraction) go to
    test, so the result depends only on the set of ids and the seed (not on input order
    or duplicates), and adding scenarios moves few existing ones. With two or more
    scenarios each split gets at least one; a single scenario goes to train.
    """
    if not (isinstance(test_fraction, int | float) and 0 < test_fraction < 1):
        raise ValueError(f"test_fraction must be strictly between 0 and 1, got {test_fraction!r}")
    unique: set[str] = set()
    for scenario_id in scenario_ids:
        if is_missing(scenario_id) or str(scenario_id).strip() == "":
            raise DialogueDataError(f"split_by_scenario: missing scenario id {scenario_id!r}")
        unique.add(scenario_id)
    n = len(unique)
    if n == 0:
        return {}
    if n == 1:
        return {next(iter(unique)): "train"}
    n_test = min(n - 1, max(1, math.floor(n * test_fraction + 0.5)))

    def rank(scenario_id: str) -> tuple[str, str]:
        digest = hashlib.sha256(f"{seed}\x00{scenario_id}".encode()).hexdigest()
        return digest, str(scenario_id)

    ordered = sorted(unique, key=rank)
    test = set(ordered[:n_test])
    return {sid: ("test" if sid in test else "train") for sid in sorted(unique, key=str)}


def generation_json(
    *,
    formula: str,
    alpha: float,
    warmup_tokens: int,
    sampling: Mapping[str, Any],
    seed: int,
    base_model: str,
    expert_model: str,
    anti_expert_model: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """The ``generation`` JSON of a reply: DExperts formula and alpha, warm-up, sampling
    parameters, seed and model ids (with adapter hashes where the caller has them)."""
    record: dict[str, Any] = {
        "formula": formula,
        "alpha": alpha,
        "warmup_tokens": warmup_tokens,
        "sampling": dict(sampling),
        "seed": seed,
        "base_model": base_model,
        "expert_model": expert_model,
        "anti_expert_model": anti_expert_model,
    }
    if extra:
        clash = sorted(set(extra) & set(record))
        if clash:
            raise ValueError(f"generation_json: extra keys {clash} would overwrite settings")
        record.update(extra)
    return json.dumps(record, sort_keys=True, default=str)


def _validated_scenarios(scenarios: pd.DataFrame) -> dict[str, dict[str, str]]:
    require_columns(scenarios, SCENARIO_COLUMNS, "scenarios")
    table: dict[str, dict[str, str]] = {}
    for i, row in enumerate(scenarios[list(SCENARIO_COLUMNS)].itertuples(index=False), start=1):
        ident = f"scenario_id={row.scenario_id!r}"
        for column in SCENARIO_COLUMNS:
            value = getattr(row, column)
            if is_missing(value) or not isinstance(value, str) or not value.strip():
                raise row_error("scenarios", i, ident, column, f"expected text, got {value!r}")
        if row.scenario_id in table:
            raise row_error("scenarios", i, ident, "scenario_id", "duplicate scenario id")
        table[row.scenario_id] = {c: getattr(row, c) for c in SCENARIO_COLUMNS[1:]}
    return table


def _validated_openers(openers: pd.DataFrame) -> dict[str, str]:
    require_columns(openers, OPENER_COLUMNS, "openers")
    table: dict[str, str] = {}
    for i, (scenario_id, opener) in enumerate(
        zip(openers["scenario_id"], openers["opener"], strict=True), start=1
    ):
        ident = f"scenario_id={scenario_id!r}"
        if is_missing(scenario_id):
            raise row_error("openers", i, ident, "scenario_id", "missing scenario id")
        if is_missing(opener) or not isinstance(opener, str):
            raise row_error("openers", i, ident, "opener", f"expected text, got {opener!r}")
        if scenario_id in table:
            raise row_error(
                "openers",
                i,
                ident,
                "scenario_id",
                "a second opener for this scenario; one opener is shared by all 10 personas",
            )
        table[scenario_id] = opener
    return table


def build_dataset(
    replies: pd.DataFrame,
    scenarios: pd.DataFrame,
    openers: pd.DataFrame,
    split_map: Mapping[str, str],
    near_duplicate_threshold: float = 0.9,
) -> pd.DataFrame:
    """One BIG5-CHAT record per reply, cleaned and flagged, never filtered.

    ``replies``: scenario_id, persona ('openness_high'), trait, level, raw_reply,
    n_new_tokens, finish_reason ('length' = cut by the token limit), generation (a JSON
    object string). ``scenarios``: scenario_id, narrative, person_x, person_y.
    ``openers``: scenario_id, opener (one per scenario). ``split_map``: scenario_id ->
    'train'|'test' (see ``split_by_scenario``).

    Columns: ``DATASET_COLUMNS``. ``flags`` lists the raised flags in ``FLAG_NAMES`` order;
    each flag is also a bool column. Refusal, empty and near-duplicate are judged on the
    cleaned reply. Rows are sorted by scenario_id, then persona in PERSONAS order.
    Raises DialogueDataError naming the table, row (1-based) and column of bad input.
    """
    check_threshold(near_duplicate_threshold)
    require_columns(replies, REPLY_COLUMNS, "replies")
    scenario_table = _validated_scenarios(scenarios)
    opener_table = _validated_openers(openers)

    records: list[dict[str, Any]] = []
    seen: dict[tuple[str, str], int] = {}
    for i, row in enumerate(replies[list(REPLY_COLUMNS)].itertuples(index=False), start=1):
        ident = f"scenario_id={row.scenario_id!r}, persona={row.persona!r}"

        def fail(column: str, problem: str, i: int = i, ident: str = ident) -> DialogueDataError:
            return row_error("replies", i, ident, column, problem)

        try:
            persona = Persona.parse(str(row.persona))
        except ValueError as e:
            raise fail("persona", str(e)) from None
        if row.trait != persona.trait:
            raise fail("trait", f"{row.trait!r} does not match persona {persona.key!r}")
        if row.level != persona.level:
            raise fail("level", f"{row.level!r} does not match persona {persona.key!r}")
        scenario_id = row.scenario_id
        if scenario_id not in scenario_table:
            raise fail("scenario_id", f"scenario {scenario_id!r} is not in the scenarios table")
        if scenario_id not in opener_table:
            raise fail("scenario_id", f"scenario {scenario_id!r} has no opener")
        if scenario_id not in split_map:
            raise fail("scenario_id", f"scenario {scenario_id!r} is not in the split map")
        split = split_map[scenario_id]
        if split not in SPLITS:
            raise fail("scenario_id", f"split map gives {split!r}; expected one of {SPLITS}")
        if (scenario_id, persona.key) in seen:
            raise fail(
                "persona",
                f"a second reply for this scenario and persona (first at row "
                f"{seen[(scenario_id, persona.key)]})",
            )
        seen[(scenario_id, persona.key)] = i
        if is_missing(row.raw_reply) or not isinstance(row.raw_reply, str):
            raise fail("raw_reply", f"expected text (possibly empty), got {row.raw_reply!r}")
        if is_missing(row.finish_reason) or not isinstance(row.finish_reason, str):
            raise fail("finish_reason", f"expected a string, got {row.finish_reason!r}")
        if not is_whole_number(row.n_new_tokens):
            raise fail("n_new_tokens", f"expected an integer, got {row.n_new_tokens!r}")
        try:
            generation = json.loads(row.generation)
        except (TypeError, json.JSONDecodeError) as e:
            raise fail("generation", f"not valid JSON ({e}): {row.generation!r}") from None
        if not isinstance(generation, dict):
            raise fail("generation", f"expected a JSON object, got {row.generation!r}")

        scenario = scenario_table[scenario_id]
        reply = clean_reply(row.raw_reply, speaker=scenario["person_y"])
        pattern = refusal_reason(reply) if reply else None
        records.append(
            {
                "record_id": f"{scenario_id}/{persona.key}",
                "scenario_id": scenario_id,
                "persona": persona.key,
                "trait": persona.trait,
                "level": persona.level,
                "split": split,
                **scenario,
                "opener": clean_opener(opener_table[scenario_id], scenario["person_x"]),
                "raw_opener": opener_table[scenario_id],
                "reply": reply,
                "raw_reply": row.raw_reply,
                "n_new_tokens": int(row.n_new_tokens),
                "finish_reason": row.finish_reason,
                "refusal": pattern is not None,
                "empty": reply == "",
                "truncated": row.finish_reason == "length",
                "refusal_pattern": pattern,
                "generation": json.dumps(generation, sort_keys=True),
                "_order": (str(scenario_id), PERSONA_ORDER[persona.key]),
            }
        )

    if not records:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in DATASET_COLUMNS})
    records.sort(key=lambda r: r.pop("_order"))
    dataset = pd.DataFrame.from_records(records)
    partners = near_duplicate_partners(dataset, near_duplicate_threshold, text_column="reply")
    dataset = dataset.join(partners)
    dataset["flags"] = [
        [flag for flag in FLAG_NAMES if row[flag]]
        for row in dataset[list(FLAG_NAMES)].to_dict("records")
    ]
    for flag in FLAG_NAMES:
        dataset[flag] = dataset[flag].astype(bool)
    dataset["n_new_tokens"] = dataset["n_new_tokens"].astype("int64")
    # Same text dtype as the other optional text column (pandas 3: missing = NaN).
    dataset["near_duplicate_of"] = dataset["near_duplicate_of"].astype("str")
    dataset["refusal_pattern"] = dataset["refusal_pattern"].astype("str")
    return dataset[list(DATASET_COLUMNS)].reset_index(drop=True)


def flag_counts(dataset: pd.DataFrame) -> dict[str, int]:
    """How many records carry each flag, plus 'any' and 'total'."""
    require_columns(dataset, FLAG_NAMES, "dataset")
    counts = {flag: int(dataset[flag].sum()) for flag in FLAG_NAMES}
    counts["any"] = int(dataset[list(FLAG_NAMES)].any(axis=1).sum())
    counts["total"] = len(dataset)
    return counts


def write_jsonl(df: pd.DataFrame, path: Path) -> Path:
    """Write one JSON object per row (UTF-8, lists stay lists, NaN -> null), atomically."""
    with atomic_file(Path(path)) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for record in df.to_dict(orient="records"):
            clean = jsonable(record)
            out.write(json.dumps(clean, ensure_ascii=False, allow_nan=False) + "\n")
    return Path(path)


# Flags that make a reply unusable as a training target; truncated replies are kept
# (the tiny profile's token limit cuts many), and counted in the dataset's metadata.
EXCLUDING_FLAGS: tuple[str, ...] = ("refusal", "empty", "near_duplicate")
FILTERED = "off_target"
"""The count of replies the classifier filter (dialogues.filter = classifier) dropped: the
trait classifier read the opposite level of the persona's trait (column ``reads_target``)."""


def usable(dataset: pd.DataFrame, classifier_filter: bool = False) -> pd.Series:
    """Rows whose reply can be a training target: no excluding flag and, with the classifier
    filter, read at the persona's level by the trait classifier (``reads_target``)."""
    bad = pd.Series(False, index=dataset.index)
    for flag in EXCLUDING_FLAGS:
        bad |= dataset[flag].astype(bool)
    if classifier_filter:
        if "reads_target" not in dataset.columns:
            raise ValueError("the classifier filter needs the dataset's reads_target column")
        bad |= ~dataset["reads_target"].astype(bool)
    return ~bad


def dropped_counts(dataset: pd.DataFrame, classifier_filter: bool) -> dict[str, int]:
    """How many rows each reason excludes (a row can have several), and the total."""
    counts = {flag: int(dataset[flag].astype(bool).sum()) for flag in EXCLUDING_FLAGS}
    if classifier_filter:
        counts[FILTERED] = int((~dataset["reads_target"].astype(bool)).sum())
    counts["total"] = int((~usable(dataset, classifier_filter)).sum())
    return counts
