"""The signal ledger: stage by stage, per persona, does the trait signal survive?

One row per stage, method (and adapter seed) and persona, from the warehouse tables the
stages write:

1. ``expert gate`` (expert_gate): on-target accuracy of the experts' completions at the
   persona's level;
2. ``dialogue data`` (dialogue_quality): target-trait accuracy of the persona's BIG5-CHAT
   replies;
3. ``expressed`` (expressed_accuracy): target-trait accuracy of the method's replies to the
   held-out evaluation scenarios (base: its one reply set read against each persona);
4. ``self-report`` (inventory_scores): the persona's inventory score on its own trait minus
   the base model's, signed so that positive is the instructed direction.

Accuracies carry an exact (Clopper-Pearson) 95% interval and a one-sided binomial p against
chance 0.5; the self-report effect carries a normal interval from the two scores' intervals
and a one-sided p for an effect in the instructed direction. ``significant``: p < 0.05.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from big5_dagster.lib.personality.methods import METHODS
from big5_dagster.lib.traits import PERSONAS, Persona

COLUMNS: tuple[str, ...] = (
    "stage",
    "method",
    "adapter_seed",
    "persona",
    "measure",
    "value",
    "ci_low",
    "ci_high",
    "n",
    "p_value",
    "significant",
)
ALPHA = 0.05
SOURCES: tuple[str, ...] = (
    "expert_gate",
    "dialogue_quality",
    "expressed_accuracy",
    "inventory_scores",
)
"""The warehouse tables the ledger reads."""
SELF_REPORT_SCORER = "logprob"


def _accuracy_row(
    stage: str, method: str, seed: object, persona: str, hits: int, n: int, measure: str
) -> dict:
    from scipy.stats import binomtest

    test = binomtest(int(hits), int(n), 0.5, alternative="greater")
    interval = binomtest(int(hits), int(n)).proportion_ci(confidence_level=0.95)
    return {
        "stage": stage,
        "method": method,
        "adapter_seed": seed,
        "persona": persona,
        "measure": measure,
        "value": hits / n,
        "ci_low": float(interval.low),
        "ci_high": float(interval.high),
        "n": int(n),
        "p_value": float(test.pvalue),
    }


def _gate_rows(gate: pd.DataFrame) -> list[dict]:
    return [
        _accuracy_row(
            "expert gate",
            "experts",
            None,
            f"{r.trait}_{r.requested_level}",
            round(r.on_target_accuracy * r.n),
            r.n,
            "on-target accuracy",
        )
        for r in gate.itertuples()
    ]


def _dialogue_rows(quality: pd.DataFrame) -> list[dict]:
    return [
        _accuracy_row(
            "dialogue data",
            "dexperts",
            None,
            r.persona,
            r.target_n_correct,
            r.n_scored,
            "target-trait accuracy",
        )
        for r in quality.itertuples()
        if r.n_scored
    ]


def _expressed_rows(accuracy: pd.DataFrame) -> list[dict]:
    return [
        _accuracy_row(
            "expressed",
            r.method,
            None if pd.isna(r.adapter_seed) else int(r.adapter_seed),
            r.persona,
            round(r.target_accuracy * r.n),
            r.n,
            "target-trait accuracy of replies",
        )
        for r in accuracy.itertuples()
    ]


def _self_report_rows(scores: pd.DataFrame) -> list[dict]:
    from scipy.stats import norm

    primary = scores[scores.scorer == SELF_REPORT_SCORER]
    base = primary[primary.method == "base"].set_index(["inventory", "trait"])
    rows = []
    for r in primary[primary.method != "base"].itertuples():
        persona = Persona.parse(r.persona)
        if r.trait != persona.trait or (r.inventory, r.trait) not in base.index:
            continue
        reference = base.loc[(r.inventory, r.trait)]
        sign = 1.0 if persona.level == "high" else -1.0
        effect = sign * (r.mean - reference["mean"])
        se = np.hypot((r.ci_high - r.ci_low) / 3.92, (reference.ci_high - reference.ci_low) / 3.92)
        p = float(norm.sf(effect / se)) if se > 0 else float("nan")
        rows.append(
            {
                "stage": f"self-report ({r.inventory})",
                "method": r.method,
                "adapter_seed": None,
                "persona": r.persona,
                "measure": "score minus base, instructed direction",
                "value": float(effect),
                "ci_low": float(effect - 1.96 * se) if se > 0 else float("nan"),
                "ci_high": float(effect + 1.96 * se) if se > 0 else float("nan"),
                "n": int(r.n_units),
                "p_value": p,
            }
        )
    return rows


def signal_ledger(tables: Mapping[str, pd.DataFrame | None]) -> pd.DataFrame:
    """The ledger from the tables present (expert_gate, dialogue_quality, expressed_accuracy,
    inventory_scores); a missing table leaves its stage out."""
    rows: list[dict] = []
    if tables.get("expert_gate") is not None:
        rows += _gate_rows(tables["expert_gate"])
    if tables.get("dialogue_quality") is not None:
        rows += _dialogue_rows(tables["dialogue_quality"])
    if tables.get("expressed_accuracy") is not None:
        rows += _expressed_rows(tables["expressed_accuracy"])
    if tables.get("inventory_scores") is not None:
        rows += _self_report_rows(tables["inventory_scores"])
    ledger = pd.DataFrame(rows, columns=list(COLUMNS))
    ledger["significant"] = ledger.p_value < ALPHA
    order = {p.key: i for i, p in enumerate(PERSONAS)}
    ledger["_persona"] = ledger.persona.map(order)
    ledger["_stage"] = ledger.stage.map(_stage_rank)
    ledger["_method"] = ledger.method.map(lambda m: METHODS.index(m) if m in METHODS else -1)
    keys = ["_stage", "stage", "_method", "adapter_seed", "_persona"]
    ledger = ledger.sort_values(keys, kind="stable")
    return ledger.drop(columns=["_persona", "_stage", "_method"]).reset_index(drop=True)


def _stage_rank(stage: str) -> int:
    for rank, prefix in enumerate(("expert gate", "dialogue data", "expressed", "self-report")):
        if stage.startswith(prefix):
            return rank
    return 99


def ledger_overview(ledger: pd.DataFrame) -> pd.DataFrame:
    """Personas as rows, one column per stage and method (seeds apart): the value with a
    '*' when significant, so a reader sees at a glance where the signal lives."""
    if ledger.empty:
        return pd.DataFrame()
    frame = ledger.copy()
    seed = frame.adapter_seed.map(lambda s: "" if pd.isna(s) else f" s{int(s)}")
    frame["column"] = frame.stage + ": " + frame.method + seed
    frame["cell"] = frame.value.map(lambda v: f"{v:.2f}") + np.where(frame.significant, "*", "")
    columns = list(dict.fromkeys(frame.column))
    wide = frame.pivot_table(index="persona", columns="column", values="cell", aggfunc="first")
    wide = wide.reindex(index=[p.key for p in PERSONAS if p.key in wide.index], columns=columns)
    return wide.reset_index()
