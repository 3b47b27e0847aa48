"""The scenarios of the configured source, in the canonical schema."""

from __future__ import annotations

import pandas as pd

from big5_dagster.lib.corpora import hub
from big5_dagster.lib.corpora.sources import location
from big5_dagster.lib.corpora.synthetic_scenarios import generate_scenarios


def scenarios_from_source(
    source: str,
    *,
    n_scenarios: int,
    seed: int,
    hub_dataset: str,
    hub_split: str,
    local_path: str | None,
    cache_dir: str,
) -> tuple[pd.DataFrame, str]:
    """Scenarios in the canonical schema and where they came from."""
    if source == "synthetic":
        name = f"synthetic scenarios (n={n_scenarios}, seed={seed})"
        return generate_scenarios(n_scenarios, seed), name
    return hub.load_scenarios(
        source,  # type: ignore[arg-type]
        location("scenarios", source, local_path, hub_dataset),
        split=hub_split,
        n_scenarios=n_scenarios,
        seed=seed,
        cache_dir=cache_dir,
    )
