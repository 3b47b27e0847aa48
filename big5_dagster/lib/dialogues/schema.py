"""The BIG5-CHAT record schema: column names, flags, and errors naming table, row and column.

Flagged replies are never dropped: the original data had about 2% refusals and about 3%
near-duplicates across personas, and the point is to count them and let the consumers
(SFT/DPO example builders) filter with the flag columns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from big5_dagster.lib.traits import PERSONAS

FLAG_NAMES: tuple[str, ...] = ("refusal", "empty", "near_duplicate", "truncated")


SPLITS: tuple[str, ...] = ("train", "test")

REPLY_COLUMNS: tuple[str, ...] = (
    "scenario_id",
    "persona",
    "trait",
    "level",
    "raw_reply",
    "n_new_tokens",
    "finish_reason",
    "generation",
)


SCENARIO_COLUMNS: tuple[str, ...] = ("scenario_id", "narrative", "person_x", "person_y")


OPENER_COLUMNS: tuple[str, ...] = ("scenario_id", "opener")

DATASET_COLUMNS: tuple[str, ...] = (
    "record_id",
    "scenario_id",
    "persona",
    "trait",
    "level",
    "split",
    "narrative",
    "person_x",
    "person_y",
    "opener",
    "raw_opener",
    "reply",
    "raw_reply",
    "n_new_tokens",
    "finish_reason",
    "flags",
    *FLAG_NAMES,
    "refusal_pattern",
    "near_duplicate_of",
    "near_duplicate_similarity",
    "generation",
)

PERSONA_ORDER: dict[str, int] = {p.key: i for i, p in enumerate(PERSONAS)}


class DialogueDataError(ValueError):
    """A reply, scenario or opener table is unusable; the message names table, row and column."""


def row_error(table: str, row: int, ident: str, column: str, problem: str) -> DialogueDataError:
    return DialogueDataError(f"{table} row {row} ({ident}), column {column!r}: {problem}")


def require_columns(frame: pd.DataFrame, columns: Sequence[str], table: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DialogueDataError(
            f"{table}: missing column(s) {missing}; it has {list(map(str, frame.columns))}"
        )


def is_whole_number(value: object) -> bool:
    return (
        isinstance(value, int | float | np.integer | np.floating)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and int(value) == value
    )


def is_missing(value: object) -> bool:
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))
