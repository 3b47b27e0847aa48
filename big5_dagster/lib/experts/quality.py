"""The expert quality gate: does the classifier read the requested level in the experts'
completions (on-target) and not in the other traits (off-target)?

The gate is decided per requested level, never on a pooled mean: a trait passes only when
the completions written at high AND those written at low each reach the accuracy threshold
with a one-sided binomial test against chance (0.5). Off-target accuracy (the share of
completions read at the requested level on the other four traits) is reported beside the
same share in the real held-out posts of that level: the corpus's traits are correlated as in
people (low neuroticism comes with high agreeableness, ...), so a perfect imitator of a level's
posts drifts off-target exactly as much as the posts themselves do.
"""

from __future__ import annotations

import pandas as pd

from big5_dagster.lib.traits import LEVELS, TRAITS

CHANCE = 0.5

GATE_LEVEL_COLUMNS: tuple[str, ...] = (
    "trait",
    "requested_level",
    "n",
    "on_target_accuracy",
    "binom_p",
    "off_target_accuracy",
    "corpus_off_target_accuracy",
    "passed",
)


def binomial_p(hits: int, n: int) -> float:
    """One-sided binomial test of ``hits`` of ``n`` against chance (accuracy > 0.5)."""
    from scipy.stats import binomtest

    return float(binomtest(hits, n, CHANCE, alternative="greater").pvalue) if n else float("nan")


def gate_table(
    predicted: pd.DataFrame,
    completions: pd.DataFrame,
    trait: str,
    corpus_predicted: pd.DataFrame | None = None,
    corpus_levels: pd.Series | None = None,
) -> pd.DataFrame:
    """Per measured trait and requested level: completions and the share read as requested.

    ``predicted``: the classifier's level per trait for each completion (same order as
    ``completions``, which has ``target_level``). ``corpus_predicted`` / ``corpus_levels``:
    the classifier's levels for the real held-out posts and their authors' levels; they give
    ``corpus_accuracy``, the same share for real posts of that level (NaN without them).
    On-target rows carry the binomial p-value of their accuracy against chance.
    """
    rows = []
    for measured in TRAITS:
        hits = predicted[measured].to_numpy() == completions.target_level.to_numpy()
        for level in LEVELS:
            mask = (completions.target_level == level).to_numpy()
            n, n_hits = int(mask.sum()), int(hits[mask].sum())
            corpus = float("nan")
            if corpus_predicted is not None and corpus_levels is not None:
                real = (corpus_levels == level).to_numpy()
                corpus = float((corpus_predicted[measured].to_numpy()[real] == level).mean())
            rows.append(
                {
                    "measured_trait": measured,
                    "on_target": measured == trait,
                    "requested_level": level,
                    "n": n,
                    "accuracy": n_hits / n if n else float("nan"),
                    "binom_p": binomial_p(n_hits, n) if measured == trait else float("nan"),
                    "corpus_accuracy": corpus,
                }
            )
    return pd.DataFrame(rows)


def gate_levels(
    table: pd.DataFrame, trait: str, min_accuracy: float, max_p_value: float
) -> pd.DataFrame:
    """One row per requested level of ``table`` (a :func:`gate_table`): on-target accuracy and
    its binomial p, mean off-target accuracy beside the corpus's, and whether it passed
    (accuracy >= ``min_accuracy`` and p < ``max_p_value``)."""
    rows = []
    for level in LEVELS:
        at = table[table.requested_level == level]
        on = at[at.on_target].iloc[0]
        off = at[~at.on_target]
        rows.append(
            {
                "trait": trait,
                "requested_level": level,
                "n": int(on.n),
                "on_target_accuracy": float(on.accuracy),
                "binom_p": float(on.binom_p),
                "off_target_accuracy": float(off.accuracy.mean()),
                "corpus_off_target_accuracy": float(off.corpus_accuracy.mean()),
                "passed": bool(on.accuracy >= min_accuracy and on.binom_p < max_p_value),
            }
        )
    return pd.DataFrame(rows, columns=list(GATE_LEVEL_COLUMNS))
