"""The posts of the configured source, in the canonical schema (not yet labelled)."""

from __future__ import annotations

import pandas as pd

from big5_dagster.lib.corpora import hub
from big5_dagster.lib.corpora.sources import location
from big5_dagster.lib.corpora.synthetic_posts import generate_posts


def posts_from_source(
    source: str,
    *,
    n_posts: int,
    seed: int,
    hub_dataset: str,
    hub_split: str,
    local_path: str | None,
    max_posts: int | None,
    cache_dir: str,
) -> tuple[pd.DataFrame, str]:
    """Posts in the canonical schema (not yet labelled) and where they came from."""
    if source == "synthetic":
        return generate_posts(n_posts, seed), f"synthetic posts (n={n_posts}, seed={seed})"
    return hub.load_posts(
        source,  # type: ignore[arg-type]
        location("posts", source, local_path, hub_dataset),
        split=hub_split,
        max_posts=max_posts,
        seed=seed,
        cache_dir=cache_dir,
    )
