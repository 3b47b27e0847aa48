"""Persona vectors from the BIG5-CHAT dialogues: per trait, the high and the low reply of the
same train scenarios (the pairs DPO learns from), read two ways (see lib.engine.steering)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

from big5_dagster.lib.dialogues.dataset import usable
from big5_dagster.lib.engine.loading import LoadedModel
from big5_dagster.lib.engine.steering import PersonaVectors, reply_states, steering_layers
from big5_dagster.lib.prompts import persona_instruction
from big5_dagster.lib.traits import TRAITS, Persona

if TYPE_CHECKING:
    import torch


def contrast_replies(
    dataset: pd.DataFrame,
    trait: str,
    max_scenarios: int | None,
    seed: int,
    classifier_filter: bool = False,
) -> pd.DataFrame:
    """The usable train-split replies of ``trait`` from scenarios that have both a high and a
    low one: a seeded sample of at most ``max_scenarios`` scenarios, two rows each, sorted."""
    rows = dataset[
        (dataset["split"] == "train")
        & (dataset["trait"] == trait)
        & usable(dataset, classifier_filter)
    ]
    levels = rows.groupby("scenario_id")["level"].agg(lambda s: set(s))
    paired = sorted(s for s, lv in levels.items() if {"high", "low"} <= lv)
    if not paired:
        raise ValueError(f"trait {trait!r}: no train scenario has both a high and a low reply")
    if max_scenarios is not None and len(paired) > max_scenarios:
        paired = sorted(pd.Series(paired).sample(n=max_scenarios, random_state=seed))
    picked = rows[rows["scenario_id"].isin(paired)].drop_duplicates(["scenario_id", "level"])
    return picked.sort_values(["scenario_id", "level"]).reset_index(drop=True)


def _user(opener: str) -> dict[str, str]:
    return {"role": "user", "content": opener}


def compute_persona_vectors(
    loaded: LoadedModel,
    dataset: pd.DataFrame,
    *,
    max_scenarios: int | None,
    seed: int,
    classifier_filter: bool = False,
    batch_size: int = 16,
    traits: Sequence[str] = TRAITS,
) -> PersonaVectors:
    """Per trait and steering layer the grounded and the prompted direction, and the typical
    residual norm per layer over every reply token the model read without an instruction.

    grounded: mean state over the high replies minus over the low ones, each after PersonX's
    line with no persona instruction (the steered model's prompt). prompted: the same replies,
    all of them, under the high minus under the low persona instruction.
    """
    import torch

    layers = steering_layers(loaded.model)
    grounded, prompted, norms, counts = [], [], [], {}
    for trait in traits:
        rows = contrast_replies(dataset, trait, max_scenarios, seed, classifier_filter)
        counts[trait] = int(rows["scenario_id"].nunique())
        replies = rows["reply"].tolist()
        plain, plain_norms = reply_states(
            loaded, [[_user(o)] for o in rows["opener"]], replies, batch_size=batch_size
        )
        high = torch.tensor((rows["level"] == "high").to_numpy())
        grounded.append(plain[high].mean(0) - plain[~high].mean(0))
        norms.append(plain_norms)
        under = {}
        for level in ("high", "low"):
            system = {"role": "system", "content": persona_instruction(Persona(trait, level))}
            under[level], _ = reply_states(
                loaded, [[system, _user(o)] for o in rows["opener"]], replies, batch_size=batch_size
            )
        prompted.append(under["high"].mean(0) - under["low"].mean(0))
    return PersonaVectors(
        traits=tuple(traits),
        layers=layers,
        directions={"grounded": torch.stack(grounded), "prompted": torch.stack(prompted)},
        typical_norm=torch.cat(norms).mean(0),
        n_scenarios=counts,
    )


def projections(
    states: torch.Tensor, vectors: PersonaVectors, layer: int, variant: str = "grounded"
) -> pd.DataFrame:
    """Each row's hidden state at ``layer`` ([rows, hidden]) projected onto every trait's unit
    direction, in units of the layer's typical residual norm: columns proj_<trait>."""
    scale = float(vectors.typical_norm[vectors.layers.index(layer)])
    return pd.DataFrame(
        {
            f"proj_{trait}": (states @ vectors.direction(variant, trait, layer)).numpy() / scale
            for trait in vectors.traits
        }
    )


def projection_correlations(rows: pd.DataFrame, traits: Sequence[str] = TRAITS) -> pd.DataFrame:
    """Per method and trait: the Spearman correlation, over the method's replies, of the
    prompt's projection on the trait direction (proj_<trait>) with the classifier's P(high)
    of the reply (p_high_<trait>), with its p-value and n. NaN (not estimable) when either
    side is constant, e.g. the base model's replies under one prompt per scenario."""
    from scipy.stats import spearmanr

    out = []
    for method, group in rows.groupby("method", sort=False):
        for trait in traits:
            x, y = group[f"proj_{trait}"], group[f"p_high_{trait}"]
            constant = x.nunique() < 2 or y.nunique() < 2
            r, p = (float("nan"), float("nan")) if constant else spearmanr(x, y)
            out.append(
                {
                    "method": method,
                    "trait": trait,
                    "n": len(group),
                    "spearman_r": float(r),
                    "p_value": float(p),
                    "mean_projection": float(x.mean()),
                }
            )
    return pd.DataFrame(out)
