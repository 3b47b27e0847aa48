"""The seed corpora's canonical schemas and their validation.

Canonical posts schema (what the pipeline stores):
    post_id (str), text (str), openness, conscientiousness, extraversion, agreeableness,
    neuroticism (float z-scores of the author)
Canonical scenarios schema:
    scenario_id (str), narrative (str), person_x (str, opens the dialogue),
    person_y (str, the replier whose personality is steered)

Source schemas mapped onto them (where each was found is cited inline):
- PsychAdapter (``huvucode/PsychAdapter`` on the Hugging Face hub, CSV files, splits
  ``train`` and ``validation``). Its dataset card lists ``message_id``, ``message`` and
  one z-score column per construct (Big Five plus depression and life satisfaction); the
  authors' code (github.com/humanlab/psychadapter, src/inference_psychadapter.py) names
  the Big Five columns ``ope_z, con_z, ext_z, agr_z, neu_z`` and the others
  ``dep_score`` and ``swl``. Their trainer reads the scores by position; we map by name.
- SODA (``allenai/soda``, files train/valid/test.parquet, which `datasets` names the
  splits ``train``, ``validation``, ``test``). Columns: head,
  relation, tail, literal, narrative, dialogue, speakers, PersonX, PersonY, PersonZ,
  original_index, split, head_answer, pmi_head_answer, relation_tail_answer,
  pmi_relation_tail_answer. BIG5-CHAT uses only narrative, PersonX and PersonY.

Trait score columns are recognised, case-insensitively, by full name (``openness``),
trait code (``O``) or PsychAdapter name (``ope_z``). A column that looks like a trait
score but names no Big Five trait (a single letter such as ``H``, or ``<abbr>_z`` such
as ``hon_z``) is an unknown trait code and an error, so a mislabelled file cannot load
with a trait silently missing. PsychAdapter's own non-Big-Five columns are ignored.

Every problem raises ``CorpusError`` naming the file (or hub dataset and split), the row
(1-based data row of that file or split, with the post's id where known; "header" for
column problems) and the column.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from big5_dagster.lib.traits import TRAIT_CODES, TRAITS

POST_COLUMNS: tuple[str, ...] = ("post_id", "text", *TRAITS)


SCENARIO_COLUMNS: tuple[str, ...] = ("scenario_id", "narrative", "person_x", "person_y")

PSYCHADAPTER_DATASET = "huvucode/PsychAdapter"


SODA_DATASET = "allenai/soda"

# Accepted names, in order of preference, for the id and text of a post.
POST_ID_COLUMNS: tuple[str, ...] = ("post_id", "message_id")


POST_TEXT_COLUMNS: tuple[str, ...] = ("text", "message")


# PsychAdapter's abbreviations, as in the authors' code: openness -> ope_z, ...
PSYCHADAPTER_TRAIT_COLUMNS: dict[str, str] = {trait: f"{trait[:3]}_z" for trait in TRAITS}


# PsychAdapter also carries depression and life-satisfaction scores: not Big Five codes.
PSYCHADAPTER_OTHER_SCORES: frozenset[str] = frozenset({"dep_score", "swl", "dep_z", "swl_z"})


# SODA column -> canonical scenario column.
SODA_COLUMNS: dict[str, str] = {
    "narrative": "narrative",
    "PersonX": "person_x",
    "PersonY": "person_y",
}

_TRAIT_ALIASES: dict[str, str] = {}
for _trait in TRAITS:
    for _alias in (_trait, TRAIT_CODES[_trait], PSYCHADAPTER_TRAIT_COLUMNS[_trait]):
        _TRAIT_ALIASES[_alias.lower()] = _trait
# Looks like a trait score column: a single-letter trait code or a PsychAdapter-style "<abbr>_z".
_SCORE_LIKE = re.compile(r"[a-z]|[a-z]+_z", re.IGNORECASE)

RowRef = int | str | None


class CorpusError(ValueError):
    """A corpus file or row is unusable. The message names the source, row and column."""

    def __init__(self, source: str, row: RowRef, column: str | None, problem: str) -> None:
        self.source = source
        self.row = row
        self.column = column
        self.problem = problem
        where = [source]
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(f"{', '.join(where)}: {problem}")


# --- posts ------------------------------------------------------------------------------


def resolve_post_columns(columns: Sequence[str], source: str) -> dict[str, str]:
    """Map canonical post column -> source column; raise on missing, duplicate or unknown traits."""
    by_lower: dict[str, list[str]] = {}
    for column in columns:
        by_lower.setdefault(str(column).lower(), []).append(str(column))
    mapping: dict[str, str] = {}
    for canonical, accepted in (("post_id", POST_ID_COLUMNS), ("text", POST_TEXT_COLUMNS)):
        found = [c for name in accepted for c in by_lower.get(name, [])]
        if not found:
            raise CorpusError(
                source, "header", canonical, f"missing column: expected one of {list(accepted)}"
            )
        mapping[canonical] = found[0]
    trait_columns: dict[str, list[str]] = {trait: [] for trait in TRAITS}
    for column in columns:
        name = str(column)
        trait = _TRAIT_ALIASES.get(name.lower())
        if trait is not None:
            trait_columns[trait].append(name)
        elif (
            _SCORE_LIKE.fullmatch(name)
            and name.lower() not in PSYCHADAPTER_OTHER_SCORES
            and name.lower() not in {c.lower() for c in (*POST_ID_COLUMNS, *POST_TEXT_COLUMNS)}
        ):
            allowed = ", ".join(
                f"{TRAIT_CODES[t]}/{t}/{PSYCHADAPTER_TRAIT_COLUMNS[t]}" for t in TRAITS
            )
            raise CorpusError(
                source, "header", name, f"unknown trait code {name!r}: expected one of {allowed}"
            )
    for trait, found in trait_columns.items():
        if not found:
            raise CorpusError(
                source,
                "header",
                trait,
                f"missing trait score column: expected one of "
                f"{[trait, TRAIT_CODES[trait], PSYCHADAPTER_TRAIT_COLUMNS[trait]]}",
            )
        if len(found) > 1:
            raise CorpusError(
                source, "header", found[1], f"{trait} is given twice (columns {found})"
            )
        mapping[trait] = found[0]
    return mapping


def _row_ref(row_number: int, id_column: str | None = None, id_value: object = None) -> str:
    if (
        id_column is None
        or id_value is None
        or (isinstance(id_value, float) and np.isnan(id_value))
    ):
        return str(row_number)
    return f"{row_number} ({id_column} {str(id_value)!r})"


def _first_bad(mask: np.ndarray) -> int | None:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if hits.size else None


def _is_blank_text(value: object) -> bool:
    return not isinstance(value, str) or not value.strip()


def canonical_posts(
    frame: pd.DataFrame, source: str, row_numbers: Sequence[int] | None = None
) -> pd.DataFrame:
    """Validate a posts table in any accepted schema and return it in the canonical schema.

    ``row_numbers`` are the 1-based rows of ``frame`` in the original file or split
    (default 1..len(frame)); errors cite them.
    """
    mapping = resolve_post_columns(list(frame.columns), source)
    rows = np.arange(1, len(frame) + 1) if row_numbers is None else np.asarray(row_numbers)
    if len(rows) != len(frame):
        raise ValueError(f"row_numbers has {len(rows)} entries for {len(frame)} rows")
    id_col, text_col = mapping["post_id"], mapping["text"]
    ids = frame[id_col].to_numpy(dtype=object)

    def ref(i: int) -> str:
        return _row_ref(int(rows[i]), id_col, ids[i])

    missing_id = _first_bad(pd.isna(frame[id_col]).to_numpy())
    if missing_id is not None:
        raise CorpusError(source, _row_ref(int(rows[missing_id])), id_col, "missing post id")
    texts = frame[text_col].to_numpy(dtype=object)
    bad_text = _first_bad(np.fromiter((_is_blank_text(t) for t in texts), bool, len(texts)))
    if bad_text is not None:
        raise CorpusError(
            source, ref(bad_text), text_col, f"empty or non-text post: {texts[bad_text]!r}"
        )

    out = pd.DataFrame({"post_id": [str(v) for v in ids], "text": list(texts)})
    duplicated = _first_bad(out["post_id"].duplicated().to_numpy())
    if duplicated is not None:
        raise CorpusError(source, ref(duplicated), id_col, "duplicate post id")
    for trait in TRAITS:
        column = mapping[trait]
        raw = frame[column]
        values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        bad = _first_bad(~np.isfinite(values))
        if bad is not None:
            raise CorpusError(
                source,
                ref(bad),
                column,
                f"{trait} score is not a finite number: {raw.iloc[bad]!r}",
            )
        out[trait] = values
    return out


def validate_scenarios(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Check a table in the canonical scenarios schema; return it with exactly those columns."""
    missing = [c for c in SCENARIO_COLUMNS if c not in frame.columns]
    if missing:
        raise CorpusError(
            source, "header", missing[0], f"missing column (need {list(SCENARIO_COLUMNS)})"
        )
    ids = frame["scenario_id"].to_numpy(dtype=object)
    for column in SCENARIO_COLUMNS:
        values = frame[column].to_numpy(dtype=object)
        bad = _first_bad(np.fromiter((_is_blank_text(v) for v in values), bool, len(values)))
        if bad is not None:
            raise CorpusError(
                source,
                _row_ref(bad + 1, "scenario_id", ids[bad]),
                column,
                f"empty or non-text value: {values[bad]!r}",
            )
    same = _first_bad(
        (
            frame["person_x"].str.strip().str.casefold()
            == frame["person_y"].str.strip().str.casefold()
        ).to_numpy()
    )
    if same is not None:
        raise CorpusError(
            source,
            _row_ref(same + 1, "scenario_id", ids[same]),
            "person_y",
            "PersonY is the same person as PersonX",
        )
    dup = _first_bad(frame["scenario_id"].duplicated().to_numpy())
    if dup is not None:
        raise CorpusError(
            source,
            _row_ref(dup + 1, "scenario_id", ids[dup]),
            "scenario_id",
            "duplicate scenario id",
        )
    return frame.loc[:, list(SCENARIO_COLUMNS)].reset_index(drop=True)


def check_soda_columns(columns: Sequence[str], source: str) -> None:
    for column in SODA_COLUMNS:
        if column not in columns:
            raise CorpusError(
                source, "header", column, f"missing column (need {list(SODA_COLUMNS)})"
            )


def usable_soda_rows(frame: pd.DataFrame, source: str, row_numbers: Sequence[int]) -> np.ndarray:
    """Boolean mask of SODA rows that can host a two-person dialogue.

    A row is usable when narrative, PersonX and PersonY are non-blank and PersonX and
    PersonY differ. A non-null value that is not text is a malformed file: CorpusError.
    """
    check_soda_columns(list(frame.columns), source)
    usable = np.ones(len(frame), dtype=bool)
    for column in SODA_COLUMNS:
        values = frame[column].to_numpy(dtype=object)
        for i, value in enumerate(values):
            if value is None or (isinstance(value, float) and np.isnan(value)):
                usable[i] = False
            elif not isinstance(value, str):
                raise CorpusError(source, int(row_numbers[i]), column, f"not text: {value!r}")
            elif not value.strip():
                usable[i] = False
    same = (
        frame["PersonX"].astype(str).str.strip().str.casefold()
        == frame["PersonY"].astype(str).str.strip().str.casefold()
    ).to_numpy()
    return usable & ~same


def canonical_scenarios(
    frame: pd.DataFrame, source: str, row_numbers: Sequence[int], id_prefix: str
) -> pd.DataFrame:
    """SODA rows (already known usable) -> canonical scenarios; ids are ``<prefix>-<row>``."""
    check_soda_columns(list(frame.columns), source)
    out = pd.DataFrame(
        {
            "scenario_id": [f"{id_prefix}-{int(r)}" for r in row_numbers],
            "narrative": frame["narrative"].str.strip().to_list(),
            "person_x": frame["PersonX"].str.strip().to_list(),
            "person_y": frame["PersonY"].str.strip().to_list(),
        }
    )
    return validate_scenarios(out, source)
