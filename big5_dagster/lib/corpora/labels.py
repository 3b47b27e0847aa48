"""Trait labels and splits of the posts (METHOD.md section 2): tertiles, 95/5 per trait."""

from __future__ import annotations

import numpy as np
import pandas as pd

from big5_dagster.lib.corpora.schema import POST_COLUMNS
from big5_dagster.lib.traits import TRAITS

LOW_QUANTILE = 1 / 3


HIGH_QUANTILE = 2 / 3


def label_and_split(posts: pd.DataFrame, split_seed: int, test_fraction: float) -> pd.DataFrame:
    """Add ``<trait>_level`` and ``<trait>_split`` for every trait; returns a new frame.

    level: 'low' at or below the trait's 33.3rd percentile, 'high' above its 66.7th,
    missing (NA) for the middle third, which is dropped. split: 'train'/'test' among the
    labelled rows of that trait (test_fraction of them, stratified by level, seeded),
    NA for unlabelled rows. Deterministic for a given frame, seed and fraction.
    """
    from sklearn.model_selection import train_test_split

    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    missing = [c for c in POST_COLUMNS if c not in posts.columns]
    if missing:
        raise ValueError(
            f"posts lack canonical columns {missing}; pass them through canonical_posts"
        )
    out = posts.copy()
    for trait in TRAITS:
        scores = out[trait].to_numpy(dtype=float)
        low_cut, high_cut = np.quantile(scores, [LOW_QUANTILE, HIGH_QUANTILE])
        level = np.full(len(out), None, dtype=object)
        level[scores <= low_cut] = "low"
        level[scores > high_cut] = "high"
        labelled = np.flatnonzero(pd.notna(level))
        split = np.full(len(out), None, dtype=object)
        if len(labelled) >= 2:
            labels = level[labelled]
            n_test = int(np.ceil(test_fraction * len(labelled)))
            # Stratify when each level can give the test set a row; tiny inputs cannot.
            counts = pd.Series(labels).value_counts()
            stratify = labels if n_test >= len(counts) and counts.min() >= 2 else None
            train_idx, test_idx = train_test_split(
                labelled, test_size=test_fraction, random_state=split_seed, stratify=stratify
            )
            split[train_idx] = "train"
            split[test_idx] = "test"
        elif len(labelled) == 1:
            split[labelled] = "train"
        out[f"{trait}_level"] = pd.array(level, dtype="string")
        out[f"{trait}_split"] = pd.array(split, dtype="string")
    return out
