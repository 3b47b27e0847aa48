"""The signal measures: the expert gate per level, the DExperts sweep's summary, the dialogue
filter and the signal ledger."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from big5_dagster.lib.dialogues.dataset import dropped_counts, usable
from big5_dagster.lib.dialogues.quality import target_readings
from big5_dagster.lib.dialogues.sweep import (
    PLAIN,
    distinct_2,
    off_target_drift,
    sweep_curve,
    sweep_grid,
    sweep_summary,
)
from big5_dagster.lib.experts.quality import gate_levels, gate_table
from big5_dagster.lib.report.ledger import ledger_overview, signal_ledger
from big5_dagster.lib.training.specs import LoraSpec
from big5_dagster.lib.traits import PERSONAS, TRAITS


def completions_reading(trait: str, hits: dict[str, int], n: int = 48) -> tuple:
    """Completions at both levels with ``hits[level]`` of them read at the requested level on
    ``trait``; every other trait is read 'high'."""
    rows, levels = [], []
    for level in ("high", "low"):
        for i in range(n):
            rows.append({"target_level": level})
            right = i < hits[level]
            wrong = "low" if level == "high" else "high"
            levels.append(
                {t: (level if right else wrong) if t == trait else "high" for t in TRAITS}
            )
    return pd.DataFrame(levels), pd.DataFrame(rows)


def test_the_gate_needs_each_level_not_the_pooled_mean():
    # high 46/48 and low 26/48: pooled 0.75 would pass, the low level does not
    predicted, completions = completions_reading("openness", {"high": 46, "low": 26})
    table = gate_table(predicted, completions, "openness")
    levels = gate_levels(table, "openness", 0.75, 0.01).set_index("requested_level")
    pooled = table[table.on_target].eval("accuracy * n").sum() / 96
    assert pooled == pytest.approx(0.75)
    assert levels.loc["high", "passed"] and not levels.loc["low", "passed"]
    assert levels.loc["low", "binom_p"] > 0.2 and levels.loc["high", "binom_p"] < 1e-9
    # off-target: completions at 'low' are never read low elsewhere, at 'high' always high
    assert levels.loc["low", "off_target_accuracy"] == 0.0
    assert levels.loc["high", "off_target_accuracy"] == 1.0
    # 36/48 = 0.75 passes the threshold only with its p-value below the limit
    predicted, completions = completions_reading("openness", {"high": 36, "low": 36})
    strict = gate_levels(gate_table(predicted, completions, "openness"), "openness", 0.75, 1e-4)
    assert not strict.passed.any()


def test_gate_reports_the_corpus_off_target_beside():
    predicted, completions = completions_reading("openness", {"high": 40, "low": 40}, n=4)
    corpus = pd.DataFrame([{t: "low" for t in TRAITS}] * 4)
    levels = pd.Series(["high", "high", "low", "low"])
    table = gate_table(predicted, completions, "openness", corpus, levels)
    gate = gate_levels(table, "openness", 0.75, 0.01).set_index("requested_level")
    assert gate.loc["high", "corpus_off_target_accuracy"] == 0.0
    assert gate.loc["low", "corpus_off_target_accuracy"] == 1.0


def sweep_replies() -> pd.DataFrame:
    rows = []
    for persona in PERSONAS[:2]:  # openness high and low
        for formula, alpha in [(PLAIN, 0.0), ("paper", 1.0)]:
            for s in range(4):
                target = 0.5 if formula == PLAIN else (0.9 if persona.level == "high" else 0.1)
                rows.append(
                    {
                        "formula": formula,
                        "alpha": alpha,
                        "persona": persona.key,
                        "trait": persona.trait,
                        "level": persona.level,
                        "scenario_id": f"s{s}",
                        "reply": f"reply number {s} here" if formula == PLAIN else "a a a a",
                        "finish_reason": "length" if s == 0 else "eos",
                        "perplexity": 10.0 + alpha * 5,
                        **{f"p_high_{t}": target if t == "openness" else 0.4 for t in TRAITS},
                    }
                )
                if formula != PLAIN:
                    rows[-1]["p_high_neuroticism"] = 0.6
    return pd.DataFrame(rows)


def test_sweep_grid_and_summary():
    assert sweep_grid([0, 1, 0.5], ["paper", "dexperts"]) == [
        (PLAIN, 0.0),
        ("paper", 0.5),
        ("paper", 1.0),
        ("dexperts", 0.5),
        ("dexperts", 1.0),
    ]
    with pytest.raises(ValueError, match="formulas"):
        sweep_grid([1], ["classic"])
    assert distinct_2(["a b c", "a b d"]) == pytest.approx(3 / 4)
    assert np.isnan(distinct_2(["one"]))
    replies = sweep_replies()
    drift = off_target_drift(replies)
    # plain replies drift 0 from themselves; steered ones moved neuroticism by 0.2 (of 4 traits)
    assert (drift[replies.formula == PLAIN] == 0).all()
    assert drift[replies.formula == "paper"].to_numpy() == pytest.approx(0.05)
    summary = sweep_summary(replies).set_index(["formula", "persona"])
    steered = summary.loc[("paper", "openness_low")]
    assert steered.target_accuracy == 1.0 and steered.truncation_rate == 0.25
    assert steered.distinct_2 == pytest.approx(1 / 12)  # one distinct bigram of 12
    assert summary.loc[(PLAIN, "openness_high")].target_accuracy == 0.0  # 0.5 is not > 0.5
    curve = sweep_curve(summary.reset_index()).set_index(["formula", "alpha"])
    assert curve.loc[("paper", 0.0), "target_accuracy"] == 0.5  # plain starts each curve
    assert curve.loc[("paper", 1.0), "perplexity_median"] == 15.0


def test_classifier_filter_is_counted_never_silent():
    dataset = pd.DataFrame(
        {
            "trait": ["openness"] * 4,
            "level": ["high", "high", "low", "low"],
            "refusal": [False, False, False, True],
            "empty": False,
            "near_duplicate": False,
        }
    )
    p_high = pd.DataFrame({t: [0.9, 0.2, 0.3, 0.8] for t in TRAITS}, index=dataset.index)
    dataset = dataset.join(target_readings(dataset, p_high))
    assert dataset.reads_target.tolist() == [True, False, True, False]
    assert usable(dataset).tolist() == [True, True, True, False]
    assert usable(dataset, classifier_filter=True).tolist() == [True, False, True, False]
    assert dropped_counts(dataset, True) == {
        "refusal": 1,
        "empty": 0,
        "near_duplicate": 0,
        "off_target": 2,
        "total": 2,
    }


def test_lora_on_the_top_layers_only(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    top = LoraSpec(top_layers=1).peft_config(model)
    assert top.layers_to_transform == [1]  # the tiny model has 2 layers
    assert "q_proj" in top.target_modules and "lm_head" not in top.target_modules
    assert LoraSpec(top_layers=5).peft_config(model).layers_to_transform is None  # all
    assert LoraSpec().peft_config(model).target_modules == "all-linear"
    with pytest.raises(ValueError, match="top_layers"):
        LoraSpec(top_layers=0)


def test_ledger_reads_every_stage_in_order():
    gate = pd.DataFrame(
        {
            "trait": "openness",
            "requested_level": ["high", "low"],
            "n": 48,
            "on_target_accuracy": [0.9, 0.5],
        }
    )
    quality = pd.DataFrame(
        {"persona": ["openness_high"], "target_n_correct": [30], "n_scored": [32]}
    )
    accuracy = pd.DataFrame(
        {
            "method": ["sft", "base"],
            "adapter_seed": [42, None],
            "persona": ["openness_low", "openness_low"],
            "target_accuracy": [0.75, 0.5],
            "n": [24, 24],
        }
    )
    scores = pd.DataFrame(
        {
            "scorer": "logprob",
            "method": ["base", "sft", "sft"],
            "persona": ["none", "openness_low", "openness_low"],
            "inventory": "bfi44",
            "trait": ["openness", "openness", "extraversion"],
            "mean": [3.0, 2.5, 3.0],
            "ci_low": [2.9, 2.4, 2.9],
            "ci_high": [3.1, 2.6, 3.1],
            "unit": "item",
            "n_units": [10, 10, 10],
        }
    )
    ledger = signal_ledger(
        {
            "expert_gate": gate,
            "dialogue_quality": quality,
            "expressed_accuracy": accuracy,
            "inventory_scores": scores,
        }
    )
    assert list(ledger.stage) == [
        "expert gate",
        "expert gate",
        "dialogue data",
        "expressed",
        "expressed",
        "self-report (bfi44)",
    ]
    # methods in their evaluation order: base before sft
    assert ledger.method.tolist()[3:5] == ["base", "sft"]
    assert ledger.significant.tolist() == [True, False, True, False, True, True]
    # low persona 0.5 below base: +0.5 in the instructed direction
    assert ledger.iloc[-1].value == pytest.approx(0.5)
    row = ledger.iloc[0]
    assert row.ci_low < 0.9 < row.ci_high and row.n == 48
    overview = ledger_overview(ledger)
    assert overview.set_index("persona").loc["openness_high", "expert gate: experts"] == "0.90*"
    assert signal_ledger({}).empty
