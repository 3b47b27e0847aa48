"""The evaluation summaries over every method's answers: trait scores per respondent, the
independent units and the trait means and separations over them, reliability per
condition, trait intercorrelations beside a human matrix and the MTMM validity of two
inventories (bootstrap intervals over the units).

Every table is computed per inventory and scorer (one loop, :func:`by_inventory_and_scorer`);
failed answers stay missing, counted and never imputed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import combinations

import pandas as pd

from big5_dagster.lib.personality import correlations, reliability, scores, units
from big5_dagster.lib.personality.human_reference import HUMAN_TRAIT_CORRELATIONS_SOURCE
from big5_dagster.lib.personality.inventory import Inventory
from big5_dagster.lib.personality.methods import is_deterministic

RESPONDENT: tuple[str, ...] = ("method", "persona", "adapter_seed", "run", "option_order")
"""One respondent: a complete administration under one condition, run and option order."""
SUMMARY: tuple[str, ...] = ("scorer", "method", "persona", "inventory", "trait")
"""The groups of ``inventory_scores``: one condition's trait (adapter seeds pooled in two stages)."""
NO_ADAPTER_SEED = -1
"""adapter_seed of the conditions without an adapter (base, prompting), for grouping."""


def by_inventory_and_scorer(
    answers: pd.DataFrame, inventories: Sequence[Inventory]
) -> Iterator[tuple[Inventory, str, bool, pd.DataFrame]]:
    """(inventory, scorer, deterministic, its answer rows) with adapter_seed filled for grouping.

    A deterministic scorer's rows are read from one run only: a table written before
    deterministic answers were stored once holds identical copies in the other runs.
    """
    for inv in inventories:
        for scorer, rows in answers[answers.inventory == inv.name].groupby("scorer"):
            settings = (
                json.loads(rows["scorer_settings"].iloc[0])
                if "scorer_settings" in rows.columns
                else {}
            )
            deterministic = is_deterministic(str(scorer), settings)
            if deterministic:
                rows = rows[rows["run"] == rows["run"].min()]
            yield (
                inv,
                str(scorer),
                deterministic,
                rows.assign(adapter_seed=rows.adapter_seed.fillna(NO_ADAPTER_SEED)),
            )


@dataclass
class TraitTables:
    respondents: pd.DataFrame
    """Trait scores per respondent (``scores.score_table``) with scorer."""
    units: pd.DataFrame
    """The independent units (``personality.units``; adapter methods collapsed to seeds)."""


def trait_tables(
    answers: pd.DataFrame,
    inventories: Sequence[Inventory],
    min_answered_share: float = scores.DEFAULT_MIN_ANSWERED_SHARE,
) -> TraitTables:
    """Trait scores per respondent (method, persona, adapter seed, run, option order) and the
    independent units of every condition, per scorer and inventory: items for a
    deterministic scorer, runs for a sampling one, then seeds for sft/dpo."""
    respondent_frames, unit_frames = [], []
    for inv, scorer, deterministic, rows in by_inventory_and_scorer(answers, inventories):
        table = scores.score_table(
            rows, inv, respondent_columns=RESPONDENT, min_answered_share=min_answered_share
        )
        found = (
            units.item_units(rows, inv, table, RESPONDENT)
            if deterministic
            else units.run_units(table)
        )
        respondent_frames.append(table.assign(scorer=scorer))
        unit_frames.append(found.assign(scorer=scorer, inventory=inv.name))
    unit_table = pd.concat(unit_frames, ignore_index=True)[list(units.UNIT_COLUMNS)]
    return TraitTables(
        respondents=pd.concat(respondent_frames, ignore_index=True),
        units=units.seed_units(unit_table),
    )


def trait_means(tables: TraitTables) -> pd.DataFrame:
    """Per scorer, method, persona, inventory and trait: the mean with its 95% t-interval over
    the independent units, beside the counts of respondents, answers, parse failures,
    low-mass answers and scores below the answered-share minimum."""
    summary = scores.summarize_units(tables.units, by=SUMMARY)
    counts = scores.score_counts(tables.respondents, by=SUMMARY)
    merged = counts.merge(summary, on=list(SUMMARY), how="left")
    merged["n_units"] = merged["n_units"].fillna(0).astype("int64")
    return merged[
        [*SUMMARY, *summary.columns.drop(list(SUMMARY)), *counts.columns.drop(list(SUMMARY))]
    ]


def trait_separation(tables: TraitTables) -> pd.DataFrame:
    """High minus low persona of every trait, per scorer, method and inventory, paired over
    the units (``scores.separation``)."""
    return scores.separation(tables.units, by=("scorer", "method", "inventory"))


def reliability_by_condition(
    answers: pd.DataFrame, inventories: Sequence[Inventory]
) -> pd.DataFrame:
    """Cronbach's alpha and McDonald's omega per trait and condition (method, scorer,
    inventory), over the condition's respondents: every row is an independent answer
    vector, since a deterministic scorer answers each prompt once (so the omega gate
    n >= k + 1 counts no copies)."""
    frames = [
        reliability.reliability_table(
            rows, inv, by=("method",), respondent_columns=RESPONDENT
        ).assign(scorer=scorer, inventory=inv.name)
        for inv, scorer, _, rows in by_inventory_and_scorer(answers, inventories)
    ]
    return pd.concat(frames, ignore_index=True)


@dataclass
class CorrelationTables:
    matrices: pd.DataFrame
    """Long form: scorer, method, inventory, trait_a, trait_b, r."""
    distances: pd.DataFrame
    """Frobenius distance to the human matrix, bias-corrected, with its interval, per condition."""
    mtmm: pd.DataFrame
    """Convergent and discriminant validity of every pair of inventories, per method and scorer."""
    skipped: list[str] = field(default_factory=list)
    """Conditions with too few complete personas for a correlation matrix, and why."""


def trait_correlation_tables(
    unit_table: pd.DataFrame, reference: pd.DataFrame, n_boot: int, seed: int
) -> CorrelationTables:
    """The paper's 10-persona trait correlation matrix per method, inventory and scorer (sft
    and dpo: the seeds' mean); its Frobenius distance from ``reference`` with a bootstrap
    interval over the units (seeded); and the MTMM validity of each pair of inventories."""
    table = unit_table[unit_table.persona != scores.NO_PERSONA]
    citation = HUMAN_TRAIT_CORRELATIONS_SOURCE.citation
    matrices, distances, mtmm, skipped = [], [], [], []
    for (scorer, method, inventory), rows in table.groupby(["scorer", "method", "inventory"]):
        condition = {"scorer": scorer, "method": method, "inventory": inventory}
        complete = len(correlations.complete_personas(rows, [inventory]))
        if complete < correlations.MIN_PERSONAS:
            # Too many failed answers (e.g. nothing parsed): reported, not computed.
            skipped.append(
                f"{scorer}/{method}/{inventory}: {complete} personas with all five trait "
                "scores; no correlation matrix"
            )
            distances.append(
                {**condition, "n_valid": 0, "n_complete_personas": complete, "reference": citation}
            )
            continue
        matrix = correlations.persona_correlation_matrix(correlations.persona_trait_means(rows))
        long = matrix.stack(future_stack=True).rename("r").reset_index()
        long.columns = ["trait_a", "trait_b", "r"]
        matrices.append(long.assign(**condition))
        boot = correlations.bootstrap_frobenius(rows, reference, n_boot, seed)
        distances.append(
            {
                **condition,
                "frobenius": boot.distance,
                "frobenius_bias_corrected": boot.bias_corrected,
                "ci_low": boot.ci_low,
                "ci_high": boot.ci_high,
                "unit": boot.unit,
                "n_units": boot.n_units,
                "n_boot": boot.n_boot,
                "n_valid": boot.n_valid,
                "n_complete_personas": complete,
                "reference": citation,
            }
        )
    for (scorer, method), rows in table.groupby(["scorer", "method"]):
        for pair in combinations(sorted(rows["inventory"].unique()), 2):
            validity = correlations.mtmm_validity(rows, pair, n_boot, seed)
            mtmm.append(validity.assign(scorer=scorer, method=method))
    if not matrices:
        raise ValueError(
            "no method, inventory and scorer has 3 personas with all five trait scores: "
            "no trait correlations can be computed (see the failure rates in inventory_scores)"
        )
    mtmm_table = pd.concat(mtmm, ignore_index=True) if mtmm else pd.DataFrame()
    if len(mtmm_table):
        first = ["scorer", "method"]
        mtmm_table = mtmm_table[[*first, *mtmm_table.columns.drop(first)]]
    return CorrelationTables(
        matrices=pd.concat(matrices, ignore_index=True),
        distances=pd.DataFrame(distances),
        mtmm=mtmm_table,
        skipped=skipped,
    )
