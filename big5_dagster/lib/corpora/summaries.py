"""What a reader checks first in the posts: labels and splits per trait, the most extreme
posts of each pole."""

from __future__ import annotations

import pandas as pd

from big5_dagster.lib.traits import LEVELS, TRAITS


def label_counts(posts: pd.DataFrame) -> pd.DataFrame:
    """Per trait: posts labelled high and low, and in its train and test split."""
    return pd.DataFrame(
        [
            {
                "trait": t,
                "high": int((posts[f"{t}_level"] == "high").sum()),
                "low": int((posts[f"{t}_level"] == "low").sum()),
                "train": int((posts[f"{t}_split"] == "train").sum()),
                "test": int((posts[f"{t}_split"] == "test").sum()),
            }
            for t in TRAITS
        ]
    )


def most_extreme_posts(posts: pd.DataFrame) -> pd.DataFrame:
    """The post with the highest and the lowest score of each trait."""
    return pd.DataFrame(
        [
            {
                "persona": f"{t} {level}",
                "text": posts.loc[
                    posts[t].idxmax() if level == "high" else posts[t].idxmin(), "text"
                ],
            }
            for t in TRAITS
            for level in LEVELS
        ]
    )
