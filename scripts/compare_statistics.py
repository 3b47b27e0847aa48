"""Before/after figures of the evaluation's statistics on one warehouse's answers.

From the ``inventory_answers`` table of a warehouse this computes the trait-mean intervals
and the Frobenius distance to the human matrix twice:

- OLD: with the code of an earlier commit (default 2fbff9d, before issue 11), checked out
  with ``git archive`` into a temporary folder and run there in a subprocess (its package
  has the same name). It sees the answers as that code wrote them: a log-probability
  answer copied into every run's row, and no low_mass status (those answers had a value).
- NEW: with this checkout's code (intervals over the independent units).

Printed as markdown tables; ``--json`` writes them too. Run from the repository root:

    python scripts/compare_statistics.py assets_data/warehouse.duckdb --json figures.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from big5_dagster.lib.personality import analysis, human_reference
from big5_dagster.lib.personality.inventory import (
    Inventory,
    inventory_from_dict,
    inventory_to_dict,
    load_inventory,
)

OLD_COMMIT = "2fbff9d"
KEYS = ["scorer", "method", "inventory"]

# Run inside the old checkout: the lines of its defs/evaluation.py (respondent_scores,
# inventory_scores, trait_correlations) that produced the trait-mean intervals and the
# distances, calling its lib (its defs module reads settings at import, so it is not imported).
OLD_CODE = """
import json, sys
from pathlib import Path
import pandas as pd
from big5_dagster.lib import human_reference, psychometrics
from big5_dagster.lib.inventories import load_inventory_file

folder, n_boot, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
answers = pd.read_parquet(folder / "answers.parquet")
inventories = [load_inventory_file(p) for p in sorted((folder / "inventories").glob("*.json"))]
RESPONDENT = ("method", "persona", "adapter_seed", "run", "option_order")
frames = []
for inv in inventories:
    for scorer, rows in answers[answers.inventory == inv.name].groupby("scorer"):
        rows = rows.assign(adapter_seed=rows.adapter_seed.fillna(-1))
        scores = psychometrics.score_table(rows, inv, respondent_columns=RESPONDENT)
        frames.append(scores.assign(scorer=scorer))
scores = pd.concat(frames, ignore_index=True)
summary = psychometrics.summarize_scores(
    scores, by=("scorer", "method", "persona", "inventory", "trait")
)
summary.to_parquet(folder / "old_scores.parquet")
reference = human_reference.human_trait_correlations()
scores = scores[scores.persona != "none"]
distances = []
for (scorer, method, inventory), group in scores.groupby(["scorer", "method", "inventory"]):
    for adapter_seed, rows in group.groupby("adapter_seed"):
        means = psychometrics.persona_trait_means(rows)
        if int(means.notna().all(axis=1).sum()) < 3:
            continue
        respondents = psychometrics.wide_trait_scores(
            rows, respondent_columns=("persona", "run", "option_order")
        )
        boot = psychometrics.bootstrap_frobenius(respondents, reference, n_boot, seed)
        distances.append(
            {"scorer": scorer, "method": method, "inventory": inventory,
             "adapter_seed": int(adapter_seed), "distance": boot.distance,
             "ci_low": boot.ci_low, "ci_high": boot.ci_high}
        )
pd.DataFrame(distances).to_parquet(folder / "old_distances.parquet")
"""


def read_answers(warehouse: Path) -> pd.DataFrame:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return con.execute("SELECT * FROM inventory_answers").df()


def read_inventories(answers: pd.DataFrame, path: Path | None) -> list[Inventory]:
    """The inventories the answers are to: a ``personality_inventories`` JSON document, or
    the packaged ones by name."""
    names = sorted(answers["inventory"].unique())
    if path is None:
        return [load_inventory(name) for name in names]
    document = json.loads(path.read_text())
    missing = [n for n in names if n not in document]
    if missing:
        raise SystemExit(f"{path} holds no inventory {missing}")
    return [inventory_from_dict(document[n], f"{path}[{n}]") for n in names]


def as_old_code_wrote_them(answers: pd.DataFrame) -> pd.DataFrame:
    """The answers as the old administration stored them: a deterministic (log-probability)
    answer in every run's row, with a value whatever its option mass."""
    logprob = answers["scorer"] == "logprob"
    scored = answers[logprob].copy()
    scored["value"] = scored["expected_score"]
    scored["parse_status"] = "ok"
    runs = sorted(answers.loc[~logprob, "run"].unique()) or [0]
    copies = [scored.assign(run=run) for run in runs]
    old = pd.concat([answers[~logprob], *copies], ignore_index=True)
    return old[["method", "persona", "adapter_seed", "inventory", "item_id", "run",
                "option_order", "scorer", "value"]]  # fmt: skip


def old_statistics(
    answers: pd.DataFrame,
    inventories: Sequence[Inventory],
    *,
    commit: str,
    n_boot: int,
    seed: int,
    repository: Path,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trait-mean summary, distances) computed by the code of ``commit``."""
    archive = subprocess.run(
        ["git", "-C", str(repository), "archive", commit, "big5_dagster"],
        check=True,
        capture_output=True,
    ).stdout
    with tempfile.TemporaryDirectory(prefix="old-statistics-") as tmp:
        folder = Path(tmp)
        with tarfile.open(fileobj=BytesIO(archive)) as tar:
            tar.extractall(folder / "code", filter="data")
        as_old_code_wrote_them(answers).to_parquet(folder / "answers.parquet")
        (folder / "inventories").mkdir()
        for inv in inventories:
            (folder / "inventories" / f"{inv.name}.json").write_text(
                json.dumps(inventory_to_dict(inv))
            )
        subprocess.run(
            [sys.executable, "-c", OLD_CODE, str(folder), str(n_boot), str(seed)],
            check=True,
            cwd=folder,  # "python -c" puts the working directory first on sys.path
            env={**os.environ, "PYTHONPATH": str(folder / "code")},
        )
        return (
            pd.read_parquet(folder / "old_scores.parquet"),
            pd.read_parquet(folder / "old_distances.parquet"),
        )


def new_statistics(
    answers: pd.DataFrame,
    inventories: Sequence[Inventory],
    *,
    n_boot: int,
    seed: int,
    min_answered_share: float,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trait-mean summary, distances) computed by this checkout's code."""
    tables = analysis.trait_tables(answers, inventories, min_answered_share)
    correlations = analysis.trait_correlation_tables(
        tables.units, human_reference.human_trait_correlations(), n_boot, seed
    )
    return analysis.trait_means(tables), correlations.distances


def interval_widths(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Per scorer, method and inventory: median width of the persona x trait intervals."""

    def widths(summary: pd.DataFrame, name: str) -> pd.DataFrame:
        width = summary["ci_high"] - summary["ci_low"]
        grouped = summary.assign(width=width).groupby(KEYS)
        return pd.DataFrame(
            {
                f"{name}_median_width": grouped["width"].median(),
                f"{name}_intervals": grouped["width"].count(),
            }
        )

    table = widths(old, "old").join(widths(new, "new"), how="outer")
    table["cells"] = new.groupby(KEYS).size()
    unit = new.groupby(KEYS)["unit"].first()
    return table.assign(new_unit=unit).reset_index()


def _inside(point: pd.Series, low: pd.Series, high: pd.Series) -> pd.Series:
    inside = (low <= point) & (point <= high)
    return inside.where(low.notna() & high.notna())


def frobenius_figures(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Old (per adapter seed, as it was computed) and new distances side by side, with
    whether each interval holds its reported point."""
    old = old.assign(old_point_in_ci=_inside(old["distance"], old["ci_low"], old["ci_high"]))
    old = old.rename(
        columns={"distance": "old_distance", "ci_low": "old_ci_low", "ci_high": "old_ci_high",
                 "adapter_seed": "old_adapter_seed"}
    )  # fmt: skip
    new = new.assign(
        new_point_in_ci=_inside(new["frobenius_bias_corrected"], new["ci_low"], new["ci_high"])
    ).rename(
        columns={"frobenius": "new_distance", "frobenius_bias_corrected": "new_bias_corrected",
                 "ci_low": "new_ci_low", "ci_high": "new_ci_high", "unit": "new_unit"}
    )  # fmt: skip
    columns = ["new_distance", "new_bias_corrected", "new_ci_low", "new_ci_high",
               "new_point_in_ci", "new_unit"]  # fmt: skip
    return old.merge(new[[*KEYS, *[c for c in columns if c in new]]], on=KEYS, how="outer")


def compare(
    warehouse: Path,
    *,
    inventories_file: Path | None = None,
    commit: str = OLD_COMMIT,
    n_boot: int = 500,
    seed: int = 42,
    min_answered_share: float = 0.8,
    repository: Path = Path("."),
) -> dict[str, pd.DataFrame]:
    answers = read_answers(warehouse)
    inventories = read_inventories(answers, inventories_file)
    old_scores, old_distances = old_statistics(
        answers, inventories, commit=commit, n_boot=n_boot, seed=seed, repository=repository
    )
    new_scores, new_distances = new_statistics(
        answers, inventories, n_boot=n_boot, seed=seed, min_answered_share=min_answered_share
    )
    return {
        "trait_mean_intervals": interval_widths(old_scores, new_scores),
        "frobenius": frobenius_figures(old_distances, new_distances),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("warehouse", type=Path, help="the run's warehouse.duckdb")
    parser.add_argument(
        "--inventories",
        type=Path,
        help="personality_inventories' inventories.json (default: beside the warehouse, "
        "else the packaged inventories)",
    )
    parser.add_argument("--commit", default=OLD_COMMIT, help="the old code (default %(default)s)")
    parser.add_argument("--n-boot", type=int, default=500)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--min-answered-share", type=float, default=0.8)
    parser.add_argument("--repository", type=Path, default=Path("."))
    parser.add_argument("--json", type=Path, help="also write the tables here")
    args = parser.parse_args(argv)
    inventories = args.inventories
    if inventories is None:
        beside = args.warehouse.parent / "personality_inventories" / "all" / "inventories.json"
        inventories = beside if beside.exists() else None
    tables = compare(
        args.warehouse,
        inventories_file=inventories,
        commit=args.commit,
        n_boot=args.n_boot,
        seed=args.seed,
        min_answered_share=args.min_answered_share,
        repository=args.repository,
    )
    for name, table in tables.items():
        print(f"## {name}\n\n{table.round(3).to_markdown(index=False)}\n")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    name: json.loads(table.replace({np.nan: None}).to_json(orient="records"))
                    for name, table in tables.items()
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
