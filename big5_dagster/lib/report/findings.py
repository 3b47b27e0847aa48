"""The report's findings: plain sentences computed from the run's tables, what the run
shows and what it does not show. Nothing here is fixed text about results."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from big5_dagster.lib.personality.methods import ADAPTER_METHODS, METHODS
from big5_dagster.lib.report.blocks import ReportData, Section
from big5_dagster.lib.report.figures import PRIMARY_SCORER

Finding = tuple[list[str], list[str]]
"""(what the run shows, what it does not show), in plain sentences computed from its tables."""


def _interval(low: float, high: float) -> str:
    return f"95% interval {low:.2f} to {high:.2f}"


def _dialogue_finding(data: ReportData) -> Finding:
    quality = data.table("dialogue_quality")
    if quality is None:
        return [], []
    significant = quality.target_accuracy > 0.5
    if "target_binom_p" in quality:
        significant &= quality.target_binom_p < 0.05
    shows = [
        f"The trait classifier reads the intended trait level in the replies of "
        f"{int(significant.sum())} of {len(quality)} personas above chance (one-sided binomial "
        f"test, p < 0.05); mean target accuracy {quality.target_accuracy.mean():.2f}, chance 0.50."
    ]
    weak = quality.persona[~significant].tolist()
    if not weak:
        return shows, []
    return shows, [
        f"The replies of {len(weak)} personas do not carry their trait level detectably: "
        f"{', '.join(weak)}."
    ]


def _separation_finding(data: ReportData) -> Finding:
    separation = data.table("inventory_separation")
    if separation is None:
        return [], []
    target = separation[separation.is_target & (separation.scorer == PRIMARY_SCORER)]
    target = target[np.isfinite(target.difference.astype(float))]
    if not len(target):
        return [], [f"No high-low persona difference could be computed ({PRIMARY_SCORER} answers)."]
    with_ci = {"diff_ci_low", "diff_ci_high"} <= set(target.columns)
    shows, limits = [], []
    for method, rows in target.groupby("method", sort=False):
        n = len(rows)
        higher = int((rows.difference > 0).sum())
        best = rows.loc[rows.difference.idxmax()]
        sentence = (
            f"{method}: the high persona scores above the low one on {higher} of {n} trait "
            f"scales ({', '.join(sorted(rows.inventory.unique()))}, {PRIMARY_SCORER} answers); "
            f"largest {best.difference:+.2f} scale points ({best.trait}, {best.inventory})"
        )
        if with_ci:
            above = int((rows.diff_ci_low > 0).sum())
            sentence += f"; its 95% interval is above 0 on {above or 'none'} of them."
            if above == 0:
                limits.append(f"{method}: no high-low difference distinguishable from 0.")
        else:
            sentence += " (direction only: this table has no intervals)."
        shows.append(sentence)
    return shows, limits


def _reliability_finding(data: ReportData) -> Finding:
    reliability = data.table("psychometric_reliability")
    if reliability is None:
        return [], []
    estimable = reliability.alpha.notna()
    shows, limits = [], []
    if estimable.any():
        shows.append(
            f"Cronbach's alpha: median {reliability.alpha[estimable].median():.2f} over the "
            f"{int(estimable.sum())} trait × condition cells where it can be estimated."
        )
    if (~estimable).any():
        reasons = reliability.get("alpha_not_estimable")
        kinds = (
            reasons[~estimable].fillna("no reason recorded").str.split(":").str[0]
            if reasons is not None
            else pd.Series(["no reason recorded"] * int((~estimable).sum()))
        )
        counted = "; ".join(f"{reason} ({n})" for reason, n in kinds.value_counts().items())
        limits.append(
            f"Cronbach's alpha is not estimable for {int((~estimable).sum())} of "
            f"{len(reliability)} trait × condition cells: {counted}."
        )
    return shows, limits


def _correlation_finding(data: ReportData) -> Finding:
    distance = data.table("trait_correlation_distance")
    if distance is None or "frobenius" not in distance:
        return [], []
    rows = distance[(distance.scorer == PRIMARY_SCORER) & distance.frobenius.notna()]
    if not len(rows):
        return [], ["No trait correlation matrix could be computed (too few complete personas)."]
    by_method = rows.groupby("method").agg(
        d=("frobenius", "mean"), low=("ci_low", "min"), high=("ci_high", "max")
    )
    closest, farthest = by_method.d.idxmin(), by_method.d.idxmax()
    shows = [
        f"Trait intercorrelations are closest to the human matrix under {closest} (Frobenius "
        f"distance {by_method.d[closest]:.2f}) and farthest under {farthest} "
        f"({by_method.d[farthest]:.2f}), {PRIMARY_SCORER} answers."
    ]
    limits = []
    if closest != farthest:
        a, b = by_method.loc[closest], by_method.loc[farthest]
        if not (np.isfinite([a.high, b.low]).all() and a.high < b.low):
            limits.append(
                "The methods' correlation distances are not distinguishable: their intervals "
                "overlap or could not be computed."
            )
    if "n_complete_personas" in rows:
        limits.append(
            f"Each correlation rests on {int(rows.n_complete_personas.max())} personas' trait "
            "means, so a single r is uncertain."
        )
    return shows, limits


def _reasoning_finding(data: ReportData) -> Finding:
    by_trait = data.table("reasoning_by_trait")
    if by_trait is None:
        return [], []
    n = len(by_trait)
    excluding = int(((by_trait.ci_low > 0) | (by_trait.ci_high < 0)).sum())
    shows = [
        f"Reasoning: {excluding} of {n} high-minus-low differences (method × benchmark × trait) "
        "have a 95% interval excluding 0."
    ]
    limits = [] if excluding else ["No persona changes reasoning scores detectably."]
    return shows, limits


def _failure_finding(data: ReportData) -> Finding:
    scores = data.table("inventory_scores")
    if scores is None or not {"n_failed", "n_answered"} <= set(scores.columns):
        return [], []
    totals = scores.groupby("scorer")[["n_failed", "n_answered"]].sum()
    rates = totals.n_failed / (totals.n_failed + totals.n_answered)
    shows = [
        "Unusable answers, counted and left out (never imputed): "
        + ", ".join(f"{scorer} {rate:.0%}" for scorer, rate in rates.items())
        + "."
    ]
    evaluated = set(scores.method)
    absent = [m for m in METHODS if m not in evaluated]
    limits = [f"Not evaluated in this run: {', '.join(absent)}."] if absent else []
    return shows, limits


def _seed_finding(data: ReportData) -> Finding:
    single = [a for a, reports in data.training_reports.items() if len(reports) == 1]
    if not single:
        return [], []
    methods = [
        a.removesuffix("_adapter") for a in single if a.removesuffix("_adapter") in ADAPTER_METHODS
    ]
    return [], [
        f"{' and '.join(methods)} {'were' if len(methods) > 1 else 'was'} trained with one "
        "seed: how much the results vary from one training seed to another is not measured."
    ]


FINDINGS: tuple[Callable[[ReportData], Finding], ...] = (
    _dialogue_finding,
    _separation_finding,
    _reliability_finding,
    _correlation_finding,
    _reasoning_finding,
    _failure_finding,
    _seed_finding,
)
FINDING_TABLES = (
    "dialogue_quality",
    "inventory_separation",
    "psychometric_reliability",
    "trait_correlation_distance",
    "reasoning_by_trait",
)


def findings_section(data: ReportData) -> Section:
    section = Section("findings", "What this run shows")
    facts = ", ".join(f"{k} {v}" for k, v in data.run.items() if k != "data directory")
    if facts:
        section.text(f"This run: {facts}.")
    shows, limits = [], []
    for finding in FINDINGS:
        more_shows, more_limits = finding(data)
        shows += more_shows
        limits += more_limits
    absent = [t for t in FINDING_TABLES if data.table(t) is None]
    if absent:
        limits.append(f"Not in this run's warehouse, so not summarized: {', '.join(absent)}.")
    if not shows:
        section.missing.extend(absent)
        section.text("No results to summarize yet: materialize the evaluation first.")
    section.bullets("What it shows", shows)
    section.bullets("What it does not show", limits)
    section.text(
        "Every sentence above is computed from this run's tables; the sections below hold "
        "the evidence, then time and lineage."
    )
    return section
