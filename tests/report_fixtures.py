"""A complete ReportData built from small synthetic tables with the warehouse's columns.

The numbers are chosen so that the findings are known: 6 of 10 personas' replies above
chance, prompt_description separating 3 of 5 BFI traits with intervals, sft separating none,
alpha not estimable where the answers barely vary, one seed per adapter.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import torch
from test_signal import sweep_replies

from big5_dagster.lib.dialogues.schema import FLAG_NAMES
from big5_dagster.lib.dialogues.sweep import sweep_curve, sweep_summary
from big5_dagster.lib.engine.steering import PersonaVectors
from big5_dagster.lib.personality import trait_directions
from big5_dagster.lib.personality.self_report import self_report_vs_behaviour
from big5_dagster.lib.reasoning.analysis import reasoning_by_trait, trait_direction_counts
from big5_dagster.lib.report.sections import ReportData
from big5_dagster.lib.traits import PERSONAS, TRAITS

INVENTORIES = ("bfi44", "ipip_neo_120")
METHODS_RUN = ("base", "prompt_description", "sft")
ABOVE_CHANCE = 6
BARELY_VARYING = "answers barely vary: median item SD 0.005 scale points (below 0.05)"


def _personas(method: str) -> list[str]:
    return ["none"] if method == "base" else [p.key for p in PERSONAS]


def dataset() -> pd.DataFrame:
    rows = []
    for n, persona in enumerate(PERSONAS):
        for k in range(4):
            rows.append(
                {
                    "record_id": f"{persona.key}-{k}",
                    "persona": persona.key,
                    "scenario_id": k,
                    "split": "test" if k == 3 else "train",
                    "reply": "I would love to come along " * (1 + n % 3),
                    **{flag: (k + n) % 5 == 0 for flag in FLAG_NAMES},
                }
            )
    return pd.DataFrame(rows)


def dialogue_quality() -> pd.DataFrame:
    accuracy = [0.9, 0.85, 0.8, 0.75, 0.7, 0.7, 0.5, 0.45, 0.4, 0.55]
    p_values = [0.001, 0.002, 0.01, 0.02, 0.03, 0.04, 0.5, 0.7, 0.8, 0.3]
    return pd.DataFrame(
        {
            "persona": [p.key for p in PERSONAS],
            "n_scored": 40,
            "target_n_correct": [round(40 * a) for a in accuracy],
            "target_accuracy": accuracy,
            "target_binom_p": p_values,
            "words_mean": 12.0,
            "refusal_rate": 0.0,
            "near_duplicate_rate": 0.05,
        }
    )


def inventory_scores() -> pd.DataFrame:
    rows = []
    for scorer in ("logprob", "generate"):
        for method in METHODS_RUN:
            for persona in _personas(method):
                for inventory in INVENTORIES:
                    for j, trait in enumerate(TRAITS):
                        shift = 0.6 if persona == f"{trait}_high" else 0.0
                        mean = 3.0 + shift - (0.6 if persona == f"{trait}_low" else 0.0)
                        rows.append(
                            {
                                "scorer": scorer,
                                "method": method,
                                "persona": persona,
                                "inventory": inventory,
                                "trait": trait,
                                "unit": "item" if scorer == "logprob" else "run",
                                "n_units": 8,
                                "mean": mean,
                                "sd": 0.4,
                                "ci_low": mean - 0.2,
                                "ci_high": mean + 0.2,
                                "n": 8,
                                "n_answered": 90 if scorer == "logprob" else 60,
                                "n_failed": 2 if scorer == "logprob" else 30,
                                "parse_failure_rate": 0.0 if scorer == "logprob" else 1 / 3,
                                "n_low_mass": 2 if scorer == "logprob" else 0,
                                "low_mass_rate": 2 / 92 if scorer == "logprob" else 0.0,
                                "n_below_min_share": 0,
                                "human_mean": 3.4 + 0.05 * j,
                                "human_sd": 0.7,
                            }
                        )
    return pd.DataFrame(rows)


def inventory_separation() -> pd.DataFrame:
    rows = []
    for scorer in ("logprob", "generate"):
        for method in METHODS_RUN[1:]:
            for inventory in INVENTORIES:
                for i, target in enumerate(TRAITS):
                    for trait in TRAITS:
                        separated = method == "prompt_description" and inventory == "bfi44"
                        diff = (0.5 if i < 3 else 0.1) if separated else 0.02 * (i - 2)
                        if trait != target:
                            diff = 0.01
                        half = 0.2 if separated and i < 3 else 0.3
                        rows.append(
                            {
                                "scorer": scorer,
                                "method": method,
                                "inventory": inventory,
                                "target_trait": target,
                                "trait": trait,
                                "is_target": trait == target,
                                "unit": "item" if scorer == "logprob" else "run",
                                "n_pairs": 8,
                                "mean_high": 3.0 + diff,
                                "mean_low": 3.0,
                                "difference": diff,
                                "diff_ci_low": diff - half,
                                "diff_ci_high": diff + half,
                                "cohens_d": np.nan if method == "sft" else diff / 0.4,
                                "d_scaled_by": "item spread"
                                if scorer == "logprob"
                                else "decoding noise",
                            }
                        )
    return pd.DataFrame(rows)


def psychometric_reliability() -> pd.DataFrame:
    rows = []
    for scorer in ("logprob", "generate"):
        for method in METHODS_RUN:
            for inventory in INVENTORIES:
                for j, trait in enumerate(TRAITS):
                    reason = None
                    if method == "base":
                        reason = "1 respondent(s) answered every item; at least 3 needed"
                    elif scorer == "logprob" and method == "sft":
                        reason = BARELY_VARYING
                    rows.append(
                        {
                            "method": method,
                            "inventory": inventory,
                            "trait": trait,
                            "n_items": 8,
                            "n_respondents": 1 if method == "base" else 20,
                            "n_complete": 1 if method == "base" else 20,
                            "alpha": np.nan if reason else 0.6 + 0.05 * j,
                            "omega": np.nan if reason else 0.65 + 0.05 * j,
                            "omega_converged": reason is None,
                            "alpha_not_estimable": reason,
                            "omega_not_estimable": reason,
                            "scorer": scorer,
                        }
                    )
    return pd.DataFrame(rows)


def trait_correlations() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(0)
    matrices, distances = [], []
    for scorer in ("logprob", "generate"):
        for method in METHODS_RUN[1:]:
            for inventory in INVENTORIES:
                values = rng.uniform(-0.5, 0.5, (5, 5))
                values = (values + values.T) / 2
                np.fill_diagonal(values, 1.0)
                for a, trait_a in enumerate(TRAITS):
                    for b, trait_b in enumerate(TRAITS):
                        matrices.append(
                            {
                                "scorer": scorer,
                                "method": method,
                                "inventory": inventory,
                                "adapter_seed": 1 if method == "sft" else None,
                                "trait_a": trait_a,
                                "trait_b": trait_b,
                                "r": values[a, b],
                            }
                        )
                d = 1.2 if method == "prompt_description" else 1.6
                distances.append(
                    {
                        "scorer": scorer,
                        "method": method,
                        "inventory": inventory,
                        "adapter_seed": 1 if method == "sft" else None,
                        "frobenius": d,
                        "ci_low": d - 0.3,
                        "ci_high": d + 0.3,
                        "n_boot": 20,
                        "n_valid": 20,
                        "n_complete_personas": 10,
                        "reference": "a published human matrix",
                    }
                )
    return pd.DataFrame(matrices), pd.DataFrame(distances)


def reasoning_results() -> pd.DataFrame:
    rows = []
    for method in METHODS_RUN:
        for persona in _personas(method):
            for task in ("social_mc", "arithmetic_word"):
                rows.append(
                    {
                        "method": method,
                        "persona": None if persona == "none" else persona,
                        "condition": f"{method}/{persona}",
                        "task": task,
                        "metric": "acc",
                        "filter": "none",
                        "value": 0.5 + (0.3 if persona == "conscientiousness_high" else 0.0),
                        "stderr": 0.05,
                        "n": 50,
                        "primary": True,
                        "higher_is_better": True,
                    }
                )
    return pd.DataFrame(rows)


def lineage() -> tuple[pd.DataFrame, pd.DataFrame]:
    start = datetime(2026, 12, 1, 12, 0)
    assets = ["psychgenerator_posts", "trait_experts", "inventory_responses", "inventory_scores"]
    rows = [
        {
            "materialization_id": f"run{n}/{asset}/",
            "asset": asset,
            "partition": None,
            "run_id": f"run{n:05d}",
            "code_version": "c" * 16,
            "data_version": f"{n:016x}",
            "row_count": 10 * (n + 1),
            "started_at": start + timedelta(minutes=2 * n),
            "ended_at": start + timedelta(minutes=2 * n + 1),
        }
        for n, asset in enumerate(assets)
    ]
    inputs = pd.DataFrame(
        {
            "materialization_id": [r["materialization_id"] for r in rows[1:]],
            "input_asset": assets[:-1],
            "input_partition": None,
            "input_data_version": [r["data_version"] for r in rows[:-1]],
        }
    )
    return pd.DataFrame(rows), inputs


def mtmm_validity() -> pd.DataFrame:
    rows = []
    for scorer in ("logprob", "generate"):
        for method in METHODS_RUN[1:]:
            measures = [("convergent", t) for t in TRAITS]
            measures += [("discriminant_mean_abs", None), ("discriminant_mean", None)]
            for j, (measure, trait) in enumerate(measures):
                r = 0.5 + 0.05 * j if measure == "convergent" else 0.2
                rows.append(
                    {
                        "scorer": scorer,
                        "method": method,
                        "inventory_a": "bfi44",
                        "inventory_b": "ipip_neo_120",
                        "measure": measure,
                        "trait": trait,
                        "r": r,
                        "ci_low": r - 0.3,
                        "ci_high": min(r + 0.3, 1.0),
                        "unit": "item" if scorer == "logprob" else "run",
                        "n_units": 8,
                        "n_personas": 10,
                        "n_boot": 20,
                    }
                )
    return pd.DataFrame(rows)


def expert_gate() -> pd.DataFrame:
    rows = []
    for j, trait in enumerate(TRAITS):
        for level in ("high", "low"):
            accuracy = 0.9 if j < 3 else 0.6
            rows.append(
                {
                    "trait": trait,
                    "requested_level": level,
                    "n": 48,
                    "on_target_accuracy": accuracy,
                    "binom_p": 1e-6 if j < 3 else 0.1,
                    "off_target_accuracy": 0.55,
                    "corpus_off_target_accuracy": 0.52,
                    "passed": j < 3,
                }
            )
    return pd.DataFrame(rows)


def dexperts_sweep() -> tuple[pd.DataFrame, pd.DataFrame]:
    """test_signal's sweep replies (plain and paper at alpha 1, two personas) through the
    sweep's own summary and curve."""
    summary = sweep_summary(sweep_replies())
    return summary, sweep_curve(summary)


def expressed_accuracy() -> pd.DataFrame:
    rows = []
    for method in METHODS_RUN:
        for persona in PERSONAS:
            accuracy = 0.5 if method == "base" else (0.8 if persona.trait == "openness" else 0.55)
            rows.append(
                {
                    "method": method,
                    "adapter_seed": 1 if method == "sft" else None,
                    "persona": persona.key,
                    "n": 20,
                    "target_accuracy": accuracy,
                    "binom_p": 0.006 if accuracy == 0.8 else 0.4,
                }
            )
    return pd.DataFrame(rows)


def expressed_separation() -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "method": method,
                "adapter_seed": 1 if method == "sft" else None,
                "trait": trait,
                "difference": 0.3 if trait == "openness" else 0.01,
                "diff_ci_low": 0.1 if trait == "openness" else -0.1,
                "diff_ci_high": 0.5 if trait == "openness" else 0.12,
            }
            for method in METHODS_RUN[1:]
            for trait in TRAITS
        ]
    )


def persona_vector_norms() -> pd.DataFrame:
    """A seeded set of persona vectors (2 layers, 8 dimensions) through its own summary."""
    rng = np.random.default_rng(3)
    vectors = PersonaVectors(
        traits=tuple(TRAITS),
        layers=(0, 1),
        directions={
            v: torch.tensor(rng.normal(size=(len(TRAITS), 2, 8)), dtype=torch.float32)
            for v in ("grounded", "prompted")
        },
        typical_norm=torch.tensor([3.0, 5.0]),
        n_scenarios=dict.fromkeys(TRAITS, 8),
    )
    return vectors.summary()


def steering_sweep_curve() -> pd.DataFrame:
    """The sweep fixture's curve under steering labels (coef in place of alpha)."""
    curve = dexperts_sweep()[1]
    return curve.assign(formula=curve.formula.replace({"paper": "grounded@L15"}))


def projection_correlations() -> pd.DataFrame:
    """Projections that track P(high) for sft and a base model with one prompt per scenario
    (constant projections: not estimable)."""
    rng = np.random.default_rng(4)
    rows = []
    for method in ("base", "sft"):
        for i in range(12):
            row = {"method": method}
            for trait in TRAITS:
                proj = 0.0 if method == "base" else float(i)
                row[f"proj_{trait}"] = proj
                row[f"p_high_{trait}"] = float(np.clip(0.05 * i + rng.normal(0, 0.05), 0, 1))
            rows.append(row)
    return trait_directions.projection_correlations(pd.DataFrame(rows))


def report_data() -> ReportData:
    matrices, distances = trait_correlations()
    sweep = dexperts_sweep()
    results = reasoning_results()
    by_trait = reasoning_by_trait(results)
    lineage_rows, lineage_inputs = lineage()
    return ReportData(
        tables={
            "big5_chat_dataset": dataset(),
            "trait_classifier_evaluation": pd.DataFrame(
                {
                    "trait": list(TRAITS),
                    "n": 30,
                    "n_high": 15,
                    "n_low": 15,
                    "accuracy": 0.8,
                    "majority_level": "high",
                    "majority_baseline": 0.5,
                }
            ),
            "expert_quality": pd.DataFrame(
                {
                    "trait": [t for t in TRAITS for _ in range(2)],
                    "on_target": [True, False] * 5,
                    "accuracy": 0.7,
                    "n": 12,
                }
            ),
            "dialogue_quality": dialogue_quality(),
            "inventory_scores": inventory_scores(),
            "inventory_separation": inventory_separation(),
            "psychometric_reliability": psychometric_reliability(),
            "trait_correlations": matrices,
            "trait_correlation_distance": distances,
            "mtmm_validity": mtmm_validity(),
            "expert_gate": expert_gate(),
            "dexperts_sweep": sweep[0],
            "dexperts_sweep_curve": sweep[1],
            "persona_vector_norms": persona_vector_norms(),
            "steering_sweep_curve": steering_sweep_curve(),
            "projection_correlations": projection_correlations(),
            "expressed_accuracy": expressed_accuracy(),
            "expressed_separation": expressed_separation(),
            "self_report_vs_behaviour": self_report_vs_behaviour(
                inventory_separation(), expressed_separation()
            ),
            "reasoning_results": results,
            "reasoning_by_trait": by_trait,
            "reasoning_direction_counts": trait_direction_counts(by_trait),
            "lineage": lineage_rows,
            "lineage_inputs": lineage_inputs,
        },
        training_reports={
            "sft_adapter": [{"seed": 1, "train_tokens": 1000, "loss_curve": [[1, 2.0], [2, 1.5]]}],
            "dpo_adapter": [{"seed": 1, "train_tokens": 800, "loss_curve": [[1, 0.7], [2, 0.6]]}],
        },
        run={"run id": "run00009", "profile": "tiny", "base model": "embedded"},
    )
