"""High versus low personas per trait on every benchmark, and the paper's direction count."""

from __future__ import annotations

from collections.abc import Sequence

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


def _seed_key(seed: object) -> str:
    # 1, 1.0 (a column with NAs) and "1" are one seed.
    return "none" if pd.isna(seed) else str(int(float(seed)))


def _with_persona_parts(table: pd.DataFrame, what: str) -> pd.DataFrame:
    """The rows with a persona (None, '' and 'none' are the base model), with its trait and
    level, a seed key (adapter_seed, 'none' without one) and the filter filled."""
    frame = table.copy()
    if "adapter_seed" not in frame.columns:
        frame["adapter_seed"] = None
    no_persona = frame["persona"].isna() | frame["persona"].astype(str).str.lower().isin(
        ["", "none"]
    )
    frame = frame[~no_persona]
    traits, levels = [], []
    for index, key in frame["persona"].items():
        try:
            persona = Persona.parse(str(key))
        except ValueError as e:
            raise ReasoningError(f"{what} row {index}: field 'persona': {e}") from e
        traits.append(persona.trait)
        levels.append(persona.level)
    frame["trait"], frame["level"] = traits, levels
    frame["seed_key"] = frame["adapter_seed"].map(_seed_key)
    frame["filter"] = frame["filter"].fillna(NO_FILTER).astype(str)
    return frame


SAMPLE_KEYS: tuple[str, ...] = ("task", "doc_id")
"""One item of a benchmark in the per-sample logs: the lm-eval (leaf) task and its doc id."""


def _paired_item_differences(samples: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Per method, benchmark, metric, filter, trait, adapter seed and item: the high persona's
    per-item metric minus the low persona's, from the logged samples (``reasoning_samples``:
    benchmark, task, doc_id, filter, persona, one column per metric). Long form: method,
    benchmark, metric, filter, trait, seed_key, task, doc_id, d."""
    required = ["method", "persona", "benchmark", "task", "doc_id", "filter"]
    missing = [c for c in required if c not in samples.columns]
    if missing:
        raise ReasoningError(f"samples table is missing column(s) {missing}")
    frame = _with_persona_parts(samples, "samples table")
    metrics = [m for m in metrics if m in frame.columns]
    keys = ["method", "benchmark", "filter", "trait", "seed_key", *SAMPLE_KEYS]
    long = frame.melt(
        id_vars=[*keys, "level"], value_vars=metrics, var_name="metric", value_name="v"
    )
    long = long.dropna(subset=["v"])
    wide = long.pivot_table(
        index=[*keys, "metric"], columns="level", values="v", aggfunc="first"
    ).reindex(columns=["high", "low"])
    wide = wide.dropna()
    return (wide["high"] - wide["low"]).rename("d").reset_index()


def reasoning_by_trait(
    results_per_condition: pd.DataFrame, samples: pd.DataFrame | None = None
) -> pd.DataFrame:
    """High minus low per method, benchmark and trait, with a 95% confidence interval.

    Input: one row per condition and score with columns method, persona ('<trait>_<level>';
    rows without a persona (None, '' or 'none': the base model) are skipped), task, metric, value,
    stderr, n, and optionally adapter_seed, filter, higher_is_better. A benchmark is
    (task, metric, filter). ``samples``: the per-sample logs of the same runs
    (``reasoning_samples``: method, persona, adapter_seed, benchmark (= the results' task),
    task (lm-eval leaf task), doc_id, filter and one column per metric).

    Uncertainty: the high and low persona answer the same items, so the difference is
    paired. Per adapter seed s and item i (from ``samples``): d_is = metric of i under high
    minus under low; d_s = mean_i d_is. Item term: se_items = sd_i(dbar_i) / sqrt(n_items),
    with dbar_i the item's difference averaged over the seeds (with one seed, or none for the
    prompting methods, the paired standard error). Seed term (several seeds):
    se_seeds = sd_s(d_s) / sqrt(k), the spread between training seeds.
    se = sqrt(se_items^2 + se_seeds^2) (the item term does not shrink with more seeds, since
    every seed answers the same items). diff = mean_s d_s. CI = diff +- 1.96 se. Without
    per-sample values for a benchmark (no samples, or a metric that is not a per-item mean)
    the item term falls back to sqrt(mean_s (se_high,s^2 + se_low,s^2)), treating the two
    runs as independent (conservative when they share items); ``pairing`` says which.

    Output columns: method, benchmark, task, metric, filter, trait, preferred_level,
    high, low, diff, se, ci_low, ci_high, n_seeds, se_items, se_seeds, pairing, n_items,
    n_high, n_low, higher_is_better, in_preferred_direction (None for openness).
    """
    df = results_per_condition
    missing = [c for c in _BY_TRAIT_REQUIRED if c not in df.columns]
    if missing:
        raise ReasoningError(f"results table is missing column(s) {missing}")
    df = df.assign(filter=df["filter"] if "filter" in df.columns else NO_FILTER)
    if "higher_is_better" not in df.columns:
        df["higher_is_better"] = True
    df = _with_persona_parts(df, "results table")
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
    paired_items = (
        _paired_item_differences(samples, list(df["metric"].unique()))
        if samples is not None and len(samples)
        else pd.DataFrame(columns=["method", "benchmark", "metric", "filter", "trait", "seed_key"])
    )
    paired_groups = dict(
        iter(paired_items.groupby(["method", "benchmark", "metric", "filter", "trait"], sort=False))
    )
    rows = []
    for (method, task, metric, filter_name, trait), seeds in wide.groupby(
        level=["method", "task", "metric", "filter", "trait"]
    ):
        paired = seeds.dropna(subset=[("value", "high"), ("value", "low")])
        if paired.empty:
            continue
        d = paired[("value", "high")] - paired[("value", "low")]
        seeds_used = list(paired.index.get_level_values("seed_key"))
        items = paired_groups.get((method, task, metric, filter_name, trait))
        if items is not None:
            items = items[items["seed_key"].isin(seeds_used)]
        if items is not None and set(items["seed_key"]) == set(seeds_used):
            # Paired per-item differences; only items answered under every seed.
            by_item = items.pivot_table(
                index=list(SAMPLE_KEYS), columns="seed_key", values="d", aggfunc="first"
            ).dropna()
            d = by_item.mean(axis=0)
            item_means = by_item.mean(axis=1)
            n_items = len(item_means)
            se_items = float(item_means.std(ddof=1) / np.sqrt(n_items)) if n_items > 1 else np.nan
            pairing = "paired_items"
        else:
            item_var = paired[("stderr", "high")] ** 2 + paired[("stderr", "low")] ** 2
            se_items = float(np.sqrt(item_var.mean()))
            n_items = None
            pairing = "unpaired"
        k = len(d)
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
                "pairing": pairing,
                "n_items": n_items,
                "n_high": int(paired[("n", "high")].sum()),
                "n_low": int(paired[("n", "low")].sum()),
                "higher_is_better": higher_is_better,
                "in_preferred_direction": in_direction,
            }
        )
    columns = [
        "method", "benchmark", "task", "metric", "filter", "trait", "preferred_level", "high",
        "low", "diff", "se", "ci_low", "ci_high", "n_seeds", "se_items", "se_seeds", "pairing",
        "n_items", "n_high", "n_low", "higher_is_better", "in_preferred_direction",
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
