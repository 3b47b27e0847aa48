"""High versus low personas per trait on every benchmark, and the paper's direction count."""

from __future__ import annotations

import numpy as np
import pandas as pd

from big5_dagster.lib.reasoning.tasks import NO_FILTER, ReasoningError
from big5_dagster.lib.traits import TRAITS, Persona

# The paper's finding (METHOD.md section 6): models trained for high C, high A, low E and
# low N do better on most benchmarks. Openness has no stated direction.
PREFERRED_LEVEL: dict[str, str] = {
    "conscientiousness": "high",
    "agreeableness": "high",
    "extraversion": "low",
    "neuroticism": "low",
}


_Z_975 = 1.959963984540054


_BY_TRAIT_REQUIRED = ("method", "persona", "task", "metric", "value", "stderr", "n")


def _benchmark_label(task: str, metric: str, filter_name: str) -> str:
    return (
        f"{task}:{metric}" if filter_name in ("", NO_FILTER) else f"{task}:{metric}:{filter_name}"
    )


def reasoning_by_trait(results_per_condition: pd.DataFrame) -> pd.DataFrame:
    """High minus low per method, benchmark and trait, with a 95% confidence interval.

    Input: one row per condition and score with columns method, persona ('<trait>_<level>';
    rows without a persona (None, '' or 'none': the base model) are skipped), task, metric, value,
    stderr, n, and optionally adapter_seed, filter, higher_is_better. A benchmark is
    (task, metric, filter).

    Uncertainty: per adapter seed s the difference is d_s = v_high,s - v_low,s with item
    variance se_s^2 = se_high,s^2 + se_low,s^2 (treating the two runs as independent,
    which is conservative when they share items). One seed (or none: prompting methods):
    se = se_s. Several seeds: diff = mean_s d_s and
    se = sqrt(var_s(d_s) / k + mean_s se_s^2): the first term is the spread between
    training seeds, the second the item sampling variance, which does not shrink with more
    seeds because every seed answers the same items. CI = diff +- 1.96 se.

    Output columns: method, benchmark, task, metric, filter, trait, preferred_level,
    high, low, diff, se, ci_low, ci_high, n_seeds, se_items, se_seeds, n_high, n_low,
    higher_is_better, in_preferred_direction (None for openness).
    """
    df = results_per_condition
    missing = [c for c in _BY_TRAIT_REQUIRED if c not in df.columns]
    if missing:
        raise ReasoningError(f"results table is missing column(s) {missing}")
    df = df.copy()
    if "filter" not in df.columns:
        df["filter"] = NO_FILTER
    if "adapter_seed" not in df.columns:
        df["adapter_seed"] = None
    if "higher_is_better" not in df.columns:
        df["higher_is_better"] = True
    no_persona = df["persona"].isna() | df["persona"].astype(str).str.lower().isin(["", "none"])
    df = df[~no_persona]
    traits, levels = [], []
    for index, key in df["persona"].items():
        try:
            persona = Persona.parse(str(key))
        except ValueError as e:
            raise ReasoningError(f"results table row {index}: field 'persona': {e}") from e
        traits.append(persona.trait)
        levels.append(persona.level)
    df["trait"], df["level"] = traits, levels
    df["seed_key"] = df["adapter_seed"].map(lambda s: "none" if pd.isna(s) else str(s))
    df["filter"] = df["filter"].fillna(NO_FILTER).astype(str)
    keys = ["method", "task", "metric", "filter", "trait", "seed_key", "level"]
    duplicated = df.duplicated(keys, keep=False)
    if duplicated.any():
        first = df[duplicated].iloc[0]
        raise ReasoningError(
            f"results table row {df[duplicated].index[0]}: more than one row for "
            + ", ".join(f"{k}={first[k]!r}" for k in keys if k != "seed_key")
            + f", adapter_seed={first['adapter_seed']!r}"
        )
    for column in ("value", "stderr", "n"):
        bad = pd.to_numeric(df[column], errors="coerce").isna() & df[column].notna()
        if bad.any():
            raise ReasoningError(
                f"results table row {df[bad].index[0]}: field {column!r} is not numeric "
                f"({df.loc[df[bad].index[0], column]!r})"
            )
        df[column] = pd.to_numeric(df[column], errors="coerce")

    wide = df.pivot_table(
        index=["method", "task", "metric", "filter", "trait", "seed_key"],
        columns="level",
        values=["value", "stderr", "n"],
        aggfunc="first",
        dropna=False,
    )
    higher = df.groupby(["method", "task", "metric", "filter"])["higher_is_better"].first()
    rows = []
    for (method, task, metric, filter_name, trait), seeds in wide.groupby(
        level=["method", "task", "metric", "filter", "trait"]
    ):
        paired = seeds.dropna(subset=[("value", "high"), ("value", "low")])
        if paired.empty:
            continue
        d = paired[("value", "high")] - paired[("value", "low")]
        item_var = paired[("stderr", "high")] ** 2 + paired[("stderr", "low")] ** 2
        k = len(paired)
        se_items = float(np.sqrt(item_var.mean()))
        se_seeds = float(d.std(ddof=1) / np.sqrt(k)) if k > 1 else 0.0
        se = float(np.sqrt(se_seeds**2 + se_items**2))
        diff = float(d.mean())
        preferred = PREFERRED_LEVEL.get(trait)
        higher_is_better = bool(higher.loc[(method, task, metric, filter_name)])
        if preferred is None:
            in_direction = None
        else:
            better_high = diff > 0 if higher_is_better else diff < 0
            better_low = diff < 0 if higher_is_better else diff > 0
            in_direction = better_high if preferred == "high" else better_low
        rows.append(
            {
                "method": method,
                "benchmark": _benchmark_label(task, metric, filter_name),
                "task": task,
                "metric": metric,
                "filter": filter_name,
                "trait": trait,
                "preferred_level": preferred,
                "high": float(paired[("value", "high")].mean()),
                "low": float(paired[("value", "low")].mean()),
                "diff": diff,
                "se": se,
                "ci_low": diff - _Z_975 * se,
                "ci_high": diff + _Z_975 * se,
                "n_seeds": k,
                "se_items": se_items,
                "se_seeds": se_seeds,
                "n_high": int(paired[("n", "high")].sum()),
                "n_low": int(paired[("n", "low")].sum()),
                "higher_is_better": higher_is_better,
                "in_preferred_direction": in_direction,
            }
        )
    columns = [
        "method", "benchmark", "task", "metric", "filter", "trait", "preferred_level", "high",
        "low", "diff", "se", "ci_low", "ci_high", "n_seeds", "se_items", "se_seeds", "n_high",
        "n_low", "higher_is_better", "in_preferred_direction",
    ]  # fmt: skip
    out = pd.DataFrame(rows, columns=columns)
    trait_order = {t: i for i, t in enumerate(TRAITS)}
    return (
        out.assign(_t=out["trait"].map(trait_order))
        .sort_values(["method", "_t", "benchmark"])
        .drop(columns="_t")
        .reset_index(drop=True)
    )


def trait_direction_counts(by_trait: pd.DataFrame) -> pd.DataFrame:
    """The paper's count per method: on how many benchmarks high C, high A, low E and low N
    score better (METHOD.md: SFT 7 of 9 each).

    Input: :func:`reasoning_by_trait`'s table (filter it to the primary benchmarks first).
    Output: method, trait, preferred_level, n_benchmarks, n_in_preferred_direction,
    n_significant (the 95% CI excludes 0 on the preferred side), n_ties (diff exactly 0).
    """
    required = ("method", "trait", "benchmark", "diff", "ci_low", "ci_high", "higher_is_better")
    missing = [c for c in required if c not in by_trait.columns]
    if missing:
        raise ReasoningError(f"by-trait table is missing column(s) {missing}")
    rows = []
    for method in sorted(by_trait["method"].unique()):
        for trait, preferred in PREFERRED_LEVEL.items():
            part = by_trait[(by_trait["method"] == method) & (by_trait["trait"] == trait)]
            sign = np.where(part["higher_is_better"].astype(bool), 1.0, -1.0)
            if preferred == "low":
                sign = -sign
            better = part["diff"].to_numpy() * sign  # > 0: the preferred level scores better
            significant = np.where(sign > 0, part["ci_low"] > 0, part["ci_high"] < 0)
            rows.append(
                {
                    "method": method,
                    "trait": trait,
                    "preferred_level": preferred,
                    "n_benchmarks": int(part["benchmark"].nunique()),
                    "n_in_preferred_direction": int((better > 0).sum()),
                    "n_significant": int(significant.sum()),
                    "n_ties": int((better == 0).sum()),
                }
            )
    return pd.DataFrame(rows)
