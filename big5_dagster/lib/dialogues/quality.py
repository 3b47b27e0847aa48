"""Does each persona's reply carry its trait level? The trait classifier's target accuracy
beside chance, off-target drift, lengths and flag rates (``dialogue_quality_table``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from big5_dagster.lib.dialogues.schema import FLAG_NAMES, DialogueDataError, require_columns
from big5_dagster.lib.traits import PERSONAS, TRAITS

CHANCE_ACCURACY = 0.5  # binary high/low prediction


HIGH_PROBABILITY_CUTOFF = 0.5  # predicted 'high' when P(high) > this


DEFAULT_SCORED_EXCLUDE: tuple[str, ...] = ("refusal", "empty")


def _aligned_probabilities(dataset: pd.DataFrame, predicted: pd.DataFrame) -> pd.DataFrame:
    """P(high) per trait for each dataset row, in dataset order."""
    require_columns(predicted, TRAITS, "predicted_high_probability")
    if "record_id" in predicted.columns:
        require_columns(dataset, ("record_id",), "dataset")
        if not predicted["record_id"].is_unique:
            dup = predicted["record_id"][predicted["record_id"].duplicated()].iloc[0]
            raise DialogueDataError(f"predicted_high_probability: duplicate record_id {dup!r}")
        indexed = predicted.set_index("record_id")
        missing = dataset.loc[~dataset["record_id"].isin(indexed.index), "record_id"]
        if len(missing):
            raise DialogueDataError(
                f"predicted_high_probability: no prediction for record_id {missing.iloc[0]!r} "
                f"({len(missing)} missing)"
            )
        aligned = indexed.loc[dataset["record_id"], list(TRAITS)]
        aligned.index = dataset.index
    else:
        if not predicted.index.equals(dataset.index):
            raise DialogueDataError(
                "predicted_high_probability: without a record_id column its index must equal "
                "the dataset's index"
            )
        aligned = predicted[list(TRAITS)]
    aligned = aligned.astype(float)
    for trait in TRAITS:
        bad = aligned[trait].isna() | (aligned[trait] < 0) | (aligned[trait] > 1)
        if bad.any():
            label = aligned.index[bad.to_numpy()][0]
            ident = dataset.at[label, "record_id"] if "record_id" in dataset.columns else label
            raise DialogueDataError(
                f"predicted_high_probability row {ident!r}, column {trait!r}: expected a "
                f"probability in [0, 1], got {aligned.at[label, trait]!r}"
            )
    return aligned


def dialogue_quality_table(
    dataset: pd.DataFrame,
    predicted_high_probability: pd.DataFrame,
    scored_exclude: Sequence[str] = DEFAULT_SCORED_EXCLUDE,
    thresholds: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """One row per persona present in ``dataset``, in PERSONAS order.

    ``predicted_high_probability``: the trait classifier's P(high) per trait (columns
    openness..neuroticism) for each record, joined on a ``record_id`` column when it has
    one, else aligned on the dataset's index. A reply is predicted 'high' for a trait when
    P(high) > 0.5, or > ``thresholds[trait]`` when given (the classifier's own cut-offs,
    e.g. ``TraitClassifier.thresholds()`` for a regression score in [0, 1]).

    Replies flagged with any of ``scored_exclude`` (default refusal, empty) are not scored:
    their text is not the persona speaking. Rates and lengths use all replies.

    Columns: persona, trait, level, n_replies, n_scored, target_n_correct, target_accuracy
    (predicted level of the target trait == persona level), target_mean_p_high,
    target_binom_p (one-sided binomial test, accuracy > 0.5), for each trait
    ``offtarget_<trait>_mean_p_high`` and ``offtarget_<trait>_share_high`` (NaN for the
    persona's own trait; these should stay near the trait's base rate),
    words_mean/words_median/words_p90 (cleaned reply length in words), and
    refusal_rate, empty_rate, near_duplicate_rate, truncated_rate.
    """
    from scipy.stats import binomtest

    require_columns(dataset, ("persona", "trait", "level", "reply", *FLAG_NAMES), "dataset")
    unknown = sorted(set(scored_exclude) - set(FLAG_NAMES))
    if unknown:
        raise ValueError(f"scored_exclude: unknown flag(s) {unknown}; expected among {FLAG_NAMES}")
    probabilities = _aligned_probabilities(dataset, predicted_high_probability)
    cut = {trait: HIGH_PROBABILITY_CUTOFF for trait in TRAITS}
    if thresholds is not None:
        missing = [t for t in TRAITS if t not in thresholds]
        if missing:
            raise ValueError(f"thresholds: no cut-off for trait(s) {missing}")
        cut = {trait: float(thresholds[trait]) for trait in TRAITS}
    excluded = (
        dataset[list(scored_exclude)].any(axis=1)
        if scored_exclude
        else pd.Series(False, index=dataset.index)
    )
    words = dataset["reply"].map(lambda s: len(s.split()) if isinstance(s, str) else 0)

    rows: list[dict[str, Any]] = []
    present = set(dataset["persona"])
    for persona in (p for p in PERSONAS if p.key in present):
        members = dataset["persona"] == persona.key
        scored = members & ~excluded
        p_scored = probabilities.loc[scored]
        n_replies, n_scored = int(members.sum()), int(scored.sum())
        predicted_high = p_scored[persona.trait] > cut[persona.trait]
        correct = predicted_high if persona.level == "high" else ~predicted_high
        n_correct = int(correct.sum())
        row: dict[str, Any] = {
            "persona": persona.key,
            "trait": persona.trait,
            "level": persona.level,
            "n_replies": n_replies,
            "n_scored": n_scored,
            "target_n_correct": n_correct,
            "target_accuracy": n_correct / n_scored if n_scored else np.nan,
            "target_mean_p_high": float(p_scored[persona.trait].mean()) if n_scored else np.nan,
            "target_binom_p": (
                float(binomtest(n_correct, n_scored, CHANCE_ACCURACY, alternative="greater").pvalue)
                if n_scored
                else np.nan
            ),
        }
        for trait in TRAITS:
            off = trait != persona.trait and n_scored > 0
            row[f"offtarget_{trait}_mean_p_high"] = float(p_scored[trait].mean()) if off else np.nan
            row[f"offtarget_{trait}_share_high"] = (
                float((p_scored[trait] > cut[trait]).mean()) if off else np.nan
            )
        member_words = words[members]
        row["words_mean"] = float(member_words.mean())
        row["words_median"] = float(member_words.median())
        row["words_p90"] = float(member_words.quantile(0.9))
        for flag in FLAG_NAMES:
            row[f"{flag}_rate"] = float(dataset.loc[members, flag].astype(bool).mean())
        rows.append(row)
    return pd.DataFrame(rows)


def target_accuracy_vs_chance(
    table: pd.DataFrame, margin: float, max_p_value: float | None = None
) -> pd.DataFrame:
    """The personas whose target accuracy is not clearly above chance (0.5).

    A persona is at chance when its accuracy <= 0.5 + ``margin``, when it has no scored
    reply, or (only if ``max_p_value`` is given) when its one-sided binomial p-value is
    >= ``max_p_value``. Returns persona, target_accuracy, n_scored, target_binom_p and
    ``reason``; empty when every persona is above chance.
    """
    if not (isinstance(margin, int | float) and 0 <= margin < 0.5):
        raise ValueError(f"margin must be in [0, 0.5), got {margin!r}")
    bound = CHANCE_ACCURACY + margin
    return _failing_personas(table, lambda a: a <= bound, f"<= {bound:.3f}", max_p_value)


def personas_short_of(
    table: pd.DataFrame, min_accuracy: float, max_p_value: float | None = None
) -> pd.DataFrame:
    """The personas that do not reach ``min_accuracy`` (accuracy < it: reaching it passes),
    have no scored reply, or (if given) a one-sided binomial p-value >= ``max_p_value``.
    Same columns as :func:`target_accuracy_vs_chance`."""
    if not 0.5 < min_accuracy <= 1.0:
        raise ValueError(f"min_accuracy must be in (0.5, 1], got {min_accuracy!r}")
    return _failing_personas(
        table, lambda a: a < min_accuracy, f"< {min_accuracy:.3f}", max_p_value
    )


def _failing_personas(
    table: pd.DataFrame,
    fails: Callable[[float], bool],
    bound_text: str,
    max_p_value: float | None,
) -> pd.DataFrame:
    require_columns(
        table, ("persona", "target_accuracy", "n_scored", "target_binom_p"), "quality table"
    )
    reasons: list[str | None] = []
    for accuracy, p_value in zip(table["target_accuracy"], table["target_binom_p"], strict=True):
        if pd.isna(accuracy):
            reasons.append("no scored replies")
        elif fails(accuracy):
            reasons.append(f"accuracy {accuracy:.3f} {bound_text}")
        elif max_p_value is not None and p_value >= max_p_value:
            reasons.append(f"binomial p {p_value:.3g} >= {max_p_value}")
        else:
            reasons.append(None)
    out = table[["persona", "target_accuracy", "n_scored", "target_binom_p"]].copy()
    out["reason"] = reasons
    return out[out["reason"].notna()].reset_index(drop=True)


def target_readings(
    dataset: pd.DataFrame,
    predicted_high_probability: pd.DataFrame,
    thresholds: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """Per dataset row: ``target_p_high`` (the classifier's P(high) of the persona's own trait)
    and ``reads_target`` (it reads the persona's level: P(high) above the cut for a high
    persona, at or below it for a low one). The classifier filter keeps the rows that read
    as their target; the columns are kept for every row, filtered or not."""
    require_columns(dataset, ("trait", "level"), "dataset")
    probabilities = _aligned_probabilities(dataset, predicted_high_probability)
    cut = {t: HIGH_PROBABILITY_CUTOFF for t in TRAITS} if thresholds is None else dict(thresholds)
    own = np.array(
        [probabilities.at[i, t] for i, t in zip(dataset.index, dataset["trait"], strict=True)]
    )
    high = own > np.array([cut[t] for t in dataset["trait"]])
    reads = np.where(dataset["level"].to_numpy() == "high", high, ~high)
    return pd.DataFrame({"target_p_high": own, "reads_target": reads}, index=dataset.index)
