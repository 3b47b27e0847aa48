"""Self-report against behaviour: per method and trait, the inventory's high-low separation
beside the expressed one (what the model writes), and whether they agree.

A separation "shows" when its 95% interval excludes 0. The verdict says plainly which of the
two a method moves: both in the same direction, only what it writes ("writes it, does not
report it"), only what it answers ("reports it, does not write it"), neither, or both in
opposite directions.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

VERDICTS: dict[tuple[bool, bool], str] = {
    (True, True): "both",
    (True, False): "writes it, does not report it",
    (False, True): "reports it, does not write it",
    (False, False): "neither",
}
COLUMNS: tuple[str, ...] = (
    "method",
    "trait",
    "scorer",
    "inventory",
    "self_report_difference",
    "self_report_ci_low",
    "self_report_ci_high",
    "expressed_difference",
    "expressed_ci_low",
    "expressed_ci_high",
    "expressed_seeds",
    "same_sign",
    "verdict",
)


def _shows(low: float, high: float) -> bool:
    return bool(np.isfinite(low) and np.isfinite(high) and (low > 0 or high < 0))


def expressed_by_method(separation: pd.DataFrame) -> pd.DataFrame:
    """The expressed high-low difference per method and trait over its adapter seeds: one
    seed keeps its own bootstrap interval; several give the mean and a t interval over seeds
    (the seeds are the replicates of a training method)."""
    from scipy import stats

    rows = []
    for (method, trait), group in separation.groupby(["method", "trait"], sort=False):
        values = group.difference.to_numpy(dtype=float)
        if len(values) == 1:
            low, high = float(group.diff_ci_low.iloc[0]), float(group.diff_ci_high.iloc[0])
        else:
            half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
            low, high = values.mean() - half, values.mean() + half
        rows.append(
            {
                "method": method,
                "trait": trait,
                "expressed_difference": float(values.mean()),
                "expressed_ci_low": float(low),
                "expressed_ci_high": float(high),
                "expressed_seeds": len(values),
            }
        )
    return pd.DataFrame(rows)


def self_report_vs_behaviour(
    inventory_separation: pd.DataFrame, expressed_separation: pd.DataFrame
) -> pd.DataFrame:
    """One row per method, trait, scorer and inventory present in both tables.

    ``inventory_separation``: the inventory_scores asset's separation (scorer, method,
    inventory, target_trait, is_target, difference, diff_ci_low, diff_ci_high).
    ``expressed_separation``: the expressed_personality separation (method, adapter_seed,
    trait, difference, diff_ci_low, diff_ci_high). The two differences are on different
    scales (inventory points against classifier P(high)); compare signs and intervals.
    """
    target = inventory_separation[inventory_separation.is_target.astype(bool)]
    inventory = target.drop(columns=["trait"]).rename(
        columns={
            "target_trait": "trait",
            "difference": "self_report_difference",
            "diff_ci_low": "self_report_ci_low",
            "diff_ci_high": "self_report_ci_high",
        }
    )[["method", "trait", "scorer", "inventory", *COLUMNS[4:7]]]
    merged = inventory.merge(expressed_by_method(expressed_separation), on=["method", "trait"])
    merged["same_sign"] = np.sign(merged.self_report_difference) == np.sign(
        merged.expressed_difference
    )
    verdicts = []
    for row in merged.itertuples():
        writes = _shows(row.expressed_ci_low, row.expressed_ci_high)
        reports = _shows(row.self_report_ci_low, row.self_report_ci_high)
        if writes and reports and not row.same_sign:
            verdicts.append("both, in opposite directions")
        else:
            verdicts.append(VERDICTS[(writes, reports)])
    merged["verdict"] = verdicts
    return merged[list(COLUMNS)].reset_index(drop=True)
