"""scripts/compare_statistics.py: old and new statistics of one warehouse's answers."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from big5_dagster.lib.personality.inventory import load_inventory
from big5_dagster.lib.traits import PERSONAS

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location(
        "compare_statistics", ROOT / "scripts" / "compare_statistics.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def synthetic_answers(seed: int = 0) -> pd.DataFrame:
    """BFI-44 answers of a model that follows its persona, with an option-order effect: one
    log-probability answer per prompt and three sampled runs, for a prompting method and a
    trained method with two adapter seeds."""
    rng = np.random.default_rng(seed)
    inv = load_inventory("bfi44")
    rows = []
    for method, seeds in (("prompt_description", [None]), ("sft", [1, 2])):
        for adapter_seed in seeds:
            for persona in PERSONAS:
                for scorer, runs in (("logprob", [0]), ("generate", [0, 1, 2])):
                    for run in runs:
                        for order, shift in (("normal", 0.4), ("reversed", -0.4)):
                            for item in inv.items:
                                target = 3.0
                                if item.trait == persona.trait:
                                    target = 4.2 if persona.level == "high" else 1.8
                                keyed = np.clip(target + shift + rng.normal(0, 0.6), 1, 5)
                                value = keyed if item.keyed == 1 else 6 - keyed
                                if scorer == "generate":
                                    value = float(np.round(value))
                                mass = rng.uniform(0.095, 0.6) if scorer == "logprob" else None
                                ok = scorer == "generate" or mass >= 0.1
                                rows.append(
                                    {
                                        "method": method,
                                        "persona": persona.key,
                                        "adapter_seed": adapter_seed,
                                        "inventory": inv.name,
                                        "item_id": item.id,
                                        "item_number": item.number,
                                        "run": run,
                                        "option_order": order,
                                        "scorer": scorer,
                                        "scorer_settings": json.dumps(
                                            {"do_sample": True} if scorer == "generate" else {}
                                        ),
                                        "value": value if ok else None,
                                        "expected_score": value if scorer == "logprob" else None,
                                        "option_mass": mass,
                                        "parse_status": "ok" if ok else "low_mass",
                                    }
                                )
    answers = pd.DataFrame(rows)
    return answers.astype({"adapter_seed": "Int64", "value": "Float64"})


def _has_commit(commit: str) -> bool:
    found = subprocess.run(
        ["git", "-C", str(ROOT), "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True
    )
    return found.returncode == 0


def test_compare_statistics_reports_old_and_new_figures(tmp_path, capsys):
    script = _script()
    if not _has_commit(script.OLD_COMMIT):
        pytest.skip(f"commit {script.OLD_COMMIT} is not in this clone (shallow?)")
    warehouse = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(warehouse)) as con:
        con.register("answers", synthetic_answers())
        con.execute("CREATE TABLE inventory_answers AS SELECT * FROM answers")
    out = tmp_path / "figures.json"
    code = script.main(
        [str(warehouse), "--n-boot", "60", "--repository", str(ROOT), "--json", str(out)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "## trait_mean_intervals" in printed and "## frobenius" in printed
    figures = json.loads(out.read_text())
    widths = pd.DataFrame(figures["trait_mean_intervals"]).set_index(["scorer", "method"])
    # Old: every scorer's intervals over respondents; new: over the units.
    assert widths.loc[("logprob", "prompt_description"), "new_unit"] == "item"
    assert widths.loc[("generate", "prompt_description"), "new_unit"] == "run"
    assert widths.loc[("logprob", "sft"), "new_unit"] == "adapter_seed"
    assert (widths["old_intervals"] > 0).all() and (widths["new_intervals"] > 0).all()
    # Two sft seeds: the old code pooled 2 x 2 respondents per persona, the new interval is
    # over 2 seeds (t with 1 df), so it is wider.
    sft = widths.loc[("logprob", "sft")]
    assert sft["new_median_width"] > sft["old_median_width"]
    distances = pd.DataFrame(figures["frobenius"])
    old = distances.dropna(subset=["old_distance"])
    assert set(old["old_adapter_seed"]) == {-1, 1, 2}  # the old code: one distance per seed
    new = distances.drop_duplicates(["scorer", "method", "inventory"])
    assert new["new_distance"].notna().all()
    with_interval = new.dropna(subset=["new_ci_low"])
    assert len(with_interval) and with_interval["new_point_in_ci"].all()
