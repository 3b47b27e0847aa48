"""The independent units of inventory answers (METHOD.md section 7, "Statistical units").

Every interval of the evaluation is over units that are independent given the condition:

- ``item``, for a deterministic scorer (option log-probabilities, or generation without
  sampling): it answers each prompt once, so the only thing that could have come out
  otherwise is which items the inventory holds. A unit is an item of the trait; its value
  is the item's keyed answer averaged over the option orders, so both orders of an item
  travel together and every resample keeps the orders balanced.
- ``run``, for a sampling scorer: a unit is a run; its value is the run's trait score
  averaged over the option orders (a run holds one respondent per order).
- ``adapter_seed``, for sft and dpo: the training seeds are the replicates of a training
  method. Stage one: a seed's value is the mean of its item or run units; stage two: every
  interval is over seeds (with one seed there is no interval). Seed-to-seed variance is
  what several seeds are trained to show, so it is never pooled away.

A unit counts only when it has a value in every option order of the table: an item answered
in one order only, or a run scored in one order only, would move the mean by half the
option-order effect. A respondent whose trait score is missing (too few items answered,
``scores.score_table``) contributes no unit to that trait.

A unit table has the columns ``UNIT_COLUMNS``: the condition (scorer, method, persona,
adapter_seed, inventory), trait, unit (the kind), unit_id (the item id, run number or seed)
and value.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from big5_dagster.lib.personality.inventory import Inventory
from big5_dagster.lib.personality.methods import ADAPTER_METHODS
from big5_dagster.lib.personality.scores import checked_responses, require_columns

UNIT_ITEM = "item"
UNIT_RUN = "run"
UNIT_SEED = "adapter_seed"

CONDITION_COLUMNS: tuple[str, ...] = ("method", "persona", "adapter_seed")
"""A condition within one inventory and scorer (adapter_seed filled for unseeded methods)."""

UNIT_COLUMNS: tuple[str, ...] = (
    "scorer",
    "method",
    "persona",
    "adapter_seed",
    "inventory",
    "trait",
    "unit",
    "unit_id",
    "value",
)


def _complete_over_orders(
    frame: pd.DataFrame, keys: Sequence[str], n_orders: int, unit: str, unit_id: str
) -> pd.DataFrame:
    """The mean over option orders per unit, for units with a value in all ``n_orders``."""
    grouped = frame.groupby(list(keys), dropna=False, sort=False)["value"]
    out = grouped.agg(["mean", "count"]).reset_index()
    out = out[out["count"] == n_orders]
    return pd.DataFrame(
        {
            **{c: out[c].to_numpy() for c in CONDITION_COLUMNS},
            "trait": out["trait"].to_numpy(),
            "unit": unit,
            "unit_id": out[unit_id].astype(str).to_numpy(),
            "value": out["mean"].to_numpy(dtype=np.float64),
        }
    )


def item_units(
    rows: pd.DataFrame,
    inv: Inventory,
    scores: pd.DataFrame,
    respondent_columns: Sequence[str],
) -> pd.DataFrame:
    """Item units of one inventory and deterministic scorer: per condition, trait and item,
    the keyed answer averaged over the option orders.

    ``rows``: the answer rows (respondent columns, item_id, value); ``scores``: their
    ``score_table`` (only respondents with a trait score contribute that trait's items).
    """
    respondent_columns = list(respondent_columns)
    require_columns(scores, [*respondent_columns, "trait", "score"], "scores")
    responses, values = checked_responses(rows, inv, respondent_columns, "value")
    trait_of = {item_id: trait for trait, ids in inv.categories.items() for item_id in ids}
    keyed = np.array([inv.item(i).keyed for i in responses["item_id"]], dtype=np.int64)
    frame = responses[[*respondent_columns, "item_id"]].copy()
    frame["trait"] = responses["item_id"].map(trait_of).to_numpy()
    frame["value"] = np.where(keyed == -1, inv.scale_min + inv.scale_max - values, values)
    scored = scores.loc[scores["score"].notna(), [*respondent_columns, "trait"]]
    frame = frame.merge(scored, on=[*respondent_columns, "trait"], how="inner")
    n_orders = int(rows["option_order"].nunique())
    return _complete_over_orders(
        frame, [*CONDITION_COLUMNS, "trait", "item_id"], n_orders, UNIT_ITEM, "item_id"
    )


def run_units(scores: pd.DataFrame) -> pd.DataFrame:
    """Run units of one inventory and sampling scorer: per condition, trait and run, the
    trait score averaged over the option orders (``scores``: ``score_table`` rows)."""
    require_columns(scores, [*CONDITION_COLUMNS, "run", "option_order", "trait", "score"], "scores")
    frame = scores.rename(columns={"score": "value"})
    n_orders = int(scores["option_order"].nunique())
    return _complete_over_orders(
        frame, [*CONDITION_COLUMNS, "trait", "run"], n_orders, UNIT_RUN, "run"
    )


def seed_units(
    units: pd.DataFrame, adapter_methods: Sequence[str] = ADAPTER_METHODS
) -> pd.DataFrame:
    """Stage one of the two-stage aggregation: the units of an adapter method collapse to one
    unit per training seed (the mean of that seed's item or run units); other methods' units
    are kept as they are."""
    require_columns(units, list(UNIT_COLUMNS), "units")
    adapted = units["method"].isin(list(adapter_methods))
    keys = ["scorer", "method", "persona", "adapter_seed", "inventory", "trait"]
    seeds = units[adapted].groupby(keys, dropna=False, sort=False)["value"].mean().reset_index()
    seeds["unit"] = UNIT_SEED
    seeds["unit_id"] = seeds["adapter_seed"].astype(str)
    return pd.concat([units[~adapted], seeds[list(UNIT_COLUMNS)]], ignore_index=True)
