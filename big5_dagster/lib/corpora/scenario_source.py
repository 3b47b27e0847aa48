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


def held_out_scenarios(
    training: pd.DataFrame,
    source: str,
    *,
    n_scenarios: int,
    seed: int,
    hub_dataset: str,
    hub_split: str,
    local_path: str | None,
    cache_dir: str,
) -> tuple[pd.DataFrame, str]:
    """Evaluation scenarios that share no id and no narrative with ``training``.

    synthetic: the generator's next scenarios after as many as ``training`` holds (the same
    seed continues the same stream), ids ``eval-<n>``; hub/local: a seeded sample of the
    given split or file (the SODA test split in the paper profile). Raises when the source
    cannot give ``n_scenarios`` disjoint ones.
    """
    if source == "synthetic":
        pool = generate_scenarios(len(training) + n_scenarios, seed)
        pool = pool[~pool.narrative.isin(training.narrative)].tail(n_scenarios)
        pool = pool.assign(scenario_id=[f"eval-{i:05d}" for i in range(len(pool))])
        name = f"synthetic scenarios after the first {len(training)} (seed={seed})"
    else:
        pool, name = hub.load_scenarios(
            source,  # type: ignore[arg-type]
            location("expressed", source, local_path, hub_dataset),
            split=hub_split,
            n_scenarios=n_scenarios,
            seed=seed,
            cache_dir=cache_dir,
        )
    clash = pool.scenario_id.isin(training.scenario_id) | pool.narrative.isin(training.narrative)
    pool = pool[~clash].reset_index(drop=True)
    if len(pool) < n_scenarios:
        raise ValueError(
            f"{name}: only {len(pool)} scenarios are disjoint from the training scenarios, "
            f"{n_scenarios} requested"
        )
    return pool, name
