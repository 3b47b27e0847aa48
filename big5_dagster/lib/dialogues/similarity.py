"""Near-duplicates: replies of different personas to the same scenario that say (nearly)
the same thing, by weighted Jaccard similarity of character 3-grams."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from big5_dagster.lib.dialogues.schema import PERSONA_ORDER, DialogueDataError, require_columns


def _normalize_for_similarity(text: str) -> str:
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    text = re.sub(r"[^\w\s']", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def _trigram_multiset(text: str) -> frozenset[str]:
    """Character 3-grams of the normalized text, the k-th repeat of a gram tagged with k.

    The weighted Jaccard of gram counts, sum(min) / sum(max), equals the plain Jaccard of
    these sets, which Python intersects in C (several times faster than comparing Counters).
    """
    norm = _normalize_for_similarity(text)
    grams = [norm] if 0 < len(norm) < 3 else [norm[i : i + 3] for i in range(len(norm) - 2)]
    counts = Counter(grams)
    if len(counts) == len(grams):
        return frozenset(grams)
    # "\x00" never occurs in normalized text, so a tagged repeat cannot equal a gram.
    return frozenset(
        gram if occurrence == 1 else f"{gram}\x00{occurrence}"
        for gram, count in counts.items()
        for occurrence in range(1, count + 1)
    )


def _multiset_jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a or not b:
        return 0.0
    shared = len(a & b)
    return shared / (len(a) + len(b) - shared)


def reply_similarity(a: str, b: str) -> float:
    """Weighted Jaccard similarity of character 3-gram counts of the normalized texts.

    Normalized = lower case, punctuation dropped, whitespace collapsed, so "Sure!" and
    "sure." are identical. Why this measure: it is symmetric and deterministic (difflib's
    ratio is neither guaranteed symmetric nor stable past 200 characters, where its
    'autojunk' heuristic starts ignoring frequent characters), linear in the text length
    (10,000 scenarios x 45 persona pairs stays cheap), robust to small edits and word
    order changes, and 1.0 exactly for identical normalized texts. Counts (not sets) keep
    "ha ha" apart from "ha ha ha ha". An empty text has similarity 0 with anything: empty
    replies carry the 'empty' flag instead.
    """
    return _multiset_jaccard(_trigram_multiset(a), _trigram_multiset(b))


def check_threshold(threshold: float) -> None:
    if not (isinstance(threshold, int | float) and 0 < threshold <= 1):
        raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold!r}")


def near_duplicate_pairs(
    replies: pd.DataFrame, threshold: float, text_column: str = "reply"
) -> pd.DataFrame:
    """Pairs of replies to the same scenario, from different personas, with similarity >= threshold.

    Columns: scenario_id, persona_a, persona_b (persona_a first in PERSONAS order), row_a,
    row_b (index labels in ``replies``), similarity. Sorted by scenario, then personas.
    """
    check_threshold(threshold)
    require_columns(replies, ("scenario_id", "persona", text_column), "replies")
    if not replies.index.is_unique:
        raise DialogueDataError("replies: the index must be unique to name pair partners")
    rows: list[dict[str, Any]] = []
    for scenario_id, group in replies.groupby("scenario_id", sort=True):
        members = []
        for label, persona, text in zip(
            group.index, group["persona"], group[text_column], strict=True
        ):
            if not isinstance(text, str):
                raise DialogueDataError(
                    f"replies row {label!r} (scenario_id={scenario_id!r}, persona={persona!r}), "
                    f"column {text_column!r}: expected text, got {text!r}"
                )
            members.append((PERSONA_ORDER.get(persona, len(PERSONA_ORDER)), persona, label, text))
        members.sort(key=lambda m: (m[0], str(m[1])))
        grams = [_trigram_multiset(m[3]) for m in members]
        for i in range(len(members)):
            for j in range(i + 1, len(members)):
                if members[i][1] == members[j][1]:
                    continue  # the same persona twice is a data error, caught by build_dataset
                similarity = _multiset_jaccard(grams[i], grams[j])
                if similarity >= threshold:
                    rows.append(
                        {
                            "scenario_id": scenario_id,
                            "persona_a": members[i][1],
                            "persona_b": members[j][1],
                            "row_a": members[i][2],
                            "row_b": members[j][2],
                            "similarity": similarity,
                        }
                    )
    columns = ["scenario_id", "persona_a", "persona_b", "row_a", "row_b", "similarity"]
    return pd.DataFrame(rows, columns=columns)


def near_duplicate_partners(
    replies: pd.DataFrame, threshold: float, text_column: str = "reply"
) -> pd.DataFrame:
    """Per reply (same index as ``replies``): near_duplicate (bool), near_duplicate_of (the
    persona of its most similar partner, ties to the earlier persona; None without one) and
    near_duplicate_similarity (NaN without one). Every member of a pair is flagged."""
    pairs = near_duplicate_pairs(replies, threshold, text_column)
    best: dict[Any, tuple[float, int, str]] = {}
    for pair in pairs.itertuples(index=False):
        for row, partner in ((pair.row_a, pair.persona_b), (pair.row_b, pair.persona_a)):
            key = (-pair.similarity, PERSONA_ORDER.get(partner, len(PERSONA_ORDER)), partner)
            if row not in best or key < best[row]:
                best[row] = key
    flagged = [row in best for row in replies.index]
    partner = [best[row][2] if row in best else None for row in replies.index]
    similarity = [-best[row][0] if row in best else np.nan for row in replies.index]
    return pd.DataFrame(
        {
            "near_duplicate": pd.Series(flagged, index=replies.index, dtype=bool),
            "near_duplicate_of": pd.Series(partner, index=replies.index, dtype=object),
            "near_duplicate_similarity": pd.Series(similarity, index=replies.index, dtype=float),
        }
    )


def near_duplicate_flags(
    replies: pd.DataFrame, threshold: float, text_column: str = "reply"
) -> pd.Series:
    """Boolean per reply: it has a near-duplicate from another persona of its scenario."""
    return near_duplicate_partners(replies, threshold, text_column)["near_duplicate"]
