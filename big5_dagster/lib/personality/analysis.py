"""The evaluation summaries over every method's answers: trait scores per respondent,
reliability per condition, and trait intercorrelations beside a human matrix (bootstrap CIs).

Every table is computed per inventory and scorer (one loop, :func:`by_inventory_and_scorer`);
failed answers stay missing, counted and never imputed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pandas as pd

from big5_dagster.lib.personality import correlations, reliability, scores
from big5_dagster.lib.personality.human_reference import HUMAN_TRAIT_CORRELATIONS_SOURCE
from big5_dagster.lib.personality.inventory import Inventory
from big5_dagster.lib.traits import TRAITS

RESPONDENT: tuple[str, ...] = ("method", "persona", "adapter_seed", "run", "option_order")
"""One respondent: a complete administration under one condition, run and option order."""
MIN_PERSONAS_FOR_CORRELATIONS = 3
"""A correlation across fewer conditions is undefined."""
NO_ADAPTER_SEED = -1
"""adapter_seed of the conditions without an adapter (base, prompting), for grouping."""


def by_inventory_and_scorer(
    answers: pd.DataFrame, inventories: Sequence[Inventory]
) -> Iterator[tuple[Inventory, str, pd.DataFrame]]:
    """(inventory, scorer, its answer rows) with adapter_seed filled for grouping."""
    for inv in inventories:
        for scorer, rows in answers[answers.inventory == inv.name].groupby("scorer"):
            yield (
                inv,
                str(scorer),
                rows.assign(adapter_seed=rows.adapter_seed.fillna(NO_ADAPTER_SEED)),
            )


def respondent_scores(answers: pd.DataFrame, inventories: Sequence[Inventory]) -> pd.DataFrame:
    """Trait scores per respondent (method, persona, adapter seed, run, option order), per
    scorer and inventory."""
    frames = [
        scores.score_table(rows, inv, respondent_columns=RESPONDENT).assign(scorer=scorer)
        for inv, scorer, rows in by_inventory_and_scorer(answers, inventories)
    ]
    return pd.concat(frames, ignore_index=True)


def reliability_by_condition(
    answers: pd.DataFrame, inventories: Sequence[Inventory]
) -> pd.DataFrame:
    """Cronbach's alpha and McDonald's omega per trait and condition (method, scorer,
    inventory), over the condition's respondents."""
    frames = [
        reliability.reliability_table(
            rows, inv, by=("method",), respondent_columns=RESPONDENT
        ).assign(scorer=scorer, inventory=inv.name)
        for inv, scorer, rows in by_inventory_and_scorer(answers, inventories)
    ]
    return pd.concat(frames, ignore_index=True)


@dataclass
class CorrelationTables:
    matrices: pd.DataFrame
    """Long form: scorer, method, inventory, adapter_seed, trait_a, trait_b, r."""
    distances: pd.DataFrame
    """Frobenius distance to the human matrix with its bootstrap CI, per condition."""
    convergent: pd.DataFrame
    """BFI-44 vs IPIP-NEO-120 correlation of each trait across personas."""
    skipped: list[str] = field(default_factory=list)
    """Conditions with too few complete personas for a correlation matrix, and why."""


def trait_correlation_tables(
    respondent_table: pd.DataFrame, reference: pd.DataFrame, n_boot: int, seed: int
) -> CorrelationTables:
    """The paper's 10-persona trait correlation matrix per method, inventory, scorer and
    adapter seed; its Frobenius distance from ``reference`` with a bootstrap CI over
    respondents (seeded); and the BFI-IPIP convergent correlations."""
    table = respondent_table[respondent_table.persona != scores.NO_PERSONA]
    citation = HUMAN_TRAIT_CORRELATIONS_SOURCE.citation
    matrices, distances, convergent, skipped = [], [], [], []
    keys = ["scorer", "method", "inventory"]
    for (scorer, method, inventory), group in table.groupby(keys):
        for seed_value, rows in group.groupby("adapter_seed"):
            condition = {
                "scorer": scorer,
                "method": method,
                "inventory": inventory,
                "adapter_seed": seed_value,
            }
            means = correlations.persona_trait_means(rows)
            complete = int(means[list(TRAITS)].notna().all(axis=1).sum())
            if complete < MIN_PERSONAS_FOR_CORRELATIONS:
                # Too many failed answers (e.g. nothing parsed): reported, not computed.
                skipped.append(
                    f"{scorer}/{method}/{inventory}/seed {seed_value}: {complete} personas with "
                    "all five trait scores; no correlation matrix"
                )
                distances.append(
                    {**condition, "n_valid": 0, "n_complete_personas": complete,
                     "reference": citation}
                )  # fmt: skip
                continue
            matrix = correlations.persona_correlation_matrix(means)
            long = matrix.stack(future_stack=True).rename("r").reset_index()
            long.columns = ["trait_a", "trait_b", "r"]
            matrices.append(long.assign(**condition))
            respondents = correlations.wide_trait_scores(
                rows, respondent_columns=("persona", "run", "option_order")
            )
            boot = correlations.bootstrap_frobenius(respondents, reference, n_boot, seed)
            distances.append(
                {
                    **condition,
                    "frobenius": boot.distance,
                    "ci_low": boot.ci_low,
                    "ci_high": boot.ci_high,
                    "n_boot": boot.n_boot,
                    "n_valid": boot.n_valid,
                    "n_complete_personas": complete,
                    "reference": citation,
                }
            )
    for (scorer, method, seed_value), group in table.groupby(["scorer", "method", "adapter_seed"]):
        by_inventory = {
            inv: correlations.persona_trait_means(rows) for inv, rows in group.groupby("inventory")
        }
        if {"bfi44", "ipip_neo_120"} <= set(by_inventory):
            pair = correlations.convergent_correlations(
                by_inventory["bfi44"], by_inventory["ipip_neo_120"]
            )
            convergent.append(
                pair.reset_index().assign(scorer=scorer, method=method, adapter_seed=seed_value)
            )
    if not matrices:
        raise ValueError(
            "no method, inventory and scorer has 3 personas with all five trait scores: "
            "no trait correlations can be computed (see the parse-failure rates in inventory_scores)"
        )
    return CorrelationTables(
        matrices=pd.concat(matrices, ignore_index=True),
        distances=pd.DataFrame(distances),
        convergent=pd.concat(convergent, ignore_index=True) if convergent else pd.DataFrame(),
        skipped=skipped,
    )
