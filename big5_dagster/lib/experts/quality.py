"""The expert quality gate: does the classifier read the requested level in the experts'
completions (on-target) and not in the other traits (off-target, chance 0.5)?"""

from __future__ import annotations

import pandas as pd

from big5_dagster.lib.traits import LEVELS, TRAITS


def gate_table(predicted: pd.DataFrame, completions: pd.DataFrame, trait: str) -> pd.DataFrame:
    """Per measured trait and requested level: completions and the share read as requested.

    ``predicted``: the classifier's level per trait for each completion (same order as
    ``completions``, which has ``target_level``).
    """
    rows = []
    for measured in TRAITS:
        hits = predicted[measured].to_numpy() == completions.target_level.to_numpy()
        for level in LEVELS:
            mask = (completions.target_level == level).to_numpy()
            rows.append(
                {
                    "measured_trait": measured,
                    "on_target": measured == trait,
                    "requested_level": level,
                    "n": int(mask.sum()),
                    "accuracy": float(hits[mask].mean()),
                }
            )
    return pd.DataFrame(rows)


def pooled_accuracy(table: pd.DataFrame, on_target: bool) -> float:
    """Accuracy over the on-target (or off-target) rows, weighted by their completions."""
    rows = table[table.on_target == on_target]
    return float(rows.eval("accuracy * n").sum() / rows.n.sum())
