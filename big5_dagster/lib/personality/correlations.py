"""Trait intercorrelations across personas, their distance from a human matrix (bootstrap CI)
and the convergent correlations of two inventories."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

from big5_dagster.lib.personality.scores import NO_PERSONA, require_columns
from big5_dagster.lib.traits import TRAITS


def _single_condition_check(scores: pd.DataFrame) -> None:
    for column in ("method", "inventory"):
        if column in scores.columns and scores[column].nunique(dropna=False) > 1:
            raise ValueError(
                f"scores hold several values of {column!r} ({sorted(map(str, scores[column].unique()))}): "
                "filter to one method and one inventory first"
            )


def _with_persona(scores: pd.DataFrame, persona_column: str) -> pd.DataFrame:
    keep = scores[persona_column].notna() & (scores[persona_column] != NO_PERSONA)
    return scores[keep]


def persona_trait_means(
    scores: pd.DataFrame, persona_column: str = "persona", score_column: str = "score"
) -> pd.DataFrame:
    """Rows = personas, columns = the five traits: mean respondent score (one method, inventory).

    Rows without a persona (NA or "none") are left out.
    """
    require_columns(scores, [persona_column, "trait", score_column], "scores")
    _single_condition_check(scores)
    frame = _with_persona(scores, persona_column)
    means = frame.pivot_table(
        index=persona_column, columns="trait", values=score_column, aggfunc="mean", dropna=False
    )
    return means.reindex(columns=list(TRAITS))


def wide_trait_scores(
    scores: pd.DataFrame,
    respondent_columns: Sequence[str] = ("persona", "run", "option_order"),
    score_column: str = "score",
) -> pd.DataFrame:
    """One row per respondent with a column per trait (one method and inventory), for bootstraps."""
    respondent_columns = list(respondent_columns)
    require_columns(scores, [*respondent_columns, "trait", score_column], "scores")
    _single_condition_check(scores)
    wide = scores.pivot_table(
        index=respondent_columns,
        columns="trait",
        values=score_column,
        aggfunc="first",
        dropna=False,
    )
    return wide.reindex(columns=list(TRAITS)).reset_index().rename_axis(columns=None)


def _correlations(x: np.ndarray) -> np.ndarray:
    """Pearson correlations between the columns of x (..., rows, cols); NaN for a constant column."""
    centered = x - x.mean(axis=-2, keepdims=True)
    cov = np.einsum("...ni,...nj->...ij", centered, centered)
    sd = np.sqrt(np.einsum("...ii->...i", cov))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = cov / (sd[..., :, None] * sd[..., None, :])
    constant = sd <= 1e-12 * np.maximum(1.0, np.abs(x).max(axis=-2))
    corr = np.where(constant[..., :, None] | constant[..., None, :], np.nan, corr)
    return np.clip(corr, -1.0, 1.0)


def _trait_columns(trait_means: pd.DataFrame, what: str) -> pd.DataFrame:
    require_columns(trait_means, list(TRAITS), what)
    return trait_means[list(TRAITS)].astype("float64")


def persona_correlation_matrix(trait_means: pd.DataFrame) -> pd.DataFrame:
    """The trait intercorrelation matrix across persona conditions (the paper's method).

    ``trait_means``: rows = persona conditions (10), columns include the five traits; the
    columns are correlated (Pearson) across the rows. Conditions with a missing trait mean
    are dropped (listwise; the number used is in ``.attrs["n_conditions"]``); at least 3
    must remain. A trait that is constant across conditions has undefined correlations:
    its row and column (diagonal included) are NaN, never 0.
    """
    means = _trait_columns(trait_means, "trait_means").dropna()
    if len(means) < 3:
        raise ValueError(
            f"trait_means: {len(means)} condition(s) with all five trait means; need at least 3"
        )
    matrix = pd.DataFrame(_correlations(means.to_numpy()), index=list(TRAITS), columns=list(TRAITS))
    matrix.attrs["n_conditions"] = len(means)
    return matrix


def _as_trait_matrix(matrix: pd.DataFrame | np.ndarray, what: str) -> np.ndarray:
    if isinstance(matrix, pd.DataFrame):
        labels = list(TRAITS)
        if set(matrix.index) != set(labels) or set(matrix.columns) != set(labels):
            raise ValueError(f"{what}: rows and columns must be the five traits {labels}")
        return matrix.loc[labels, labels].to_numpy(dtype=np.float64)
    array = np.asarray(matrix, dtype=np.float64)
    if array.shape != (len(TRAITS), len(TRAITS)):
        raise ValueError(
            f"{what}: expected a {len(TRAITS)}x{len(TRAITS)} matrix, got {array.shape}"
        )
    return array


def frobenius_distance(a: pd.DataFrame | np.ndarray, b: pd.DataFrame | np.ndarray) -> float:
    """sqrt(sum over all entries of (a - b)^2); labelled frames are aligned by label first.

    Both must be square and of the same shape. Any NaN entry (an undefined correlation)
    makes the distance NaN rather than being skipped, so a constant trait cannot look close.
    """
    if isinstance(a, pd.DataFrame) and isinstance(b, pd.DataFrame):
        if set(a.index) != set(b.index) or set(a.columns) != set(b.columns):
            raise ValueError("frobenius_distance: the two matrices have different labels")
        b = b.loc[a.index, a.columns]
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != x.shape[1] or x.shape != y.shape:
        raise ValueError(
            f"frobenius_distance: need two square matrices of one shape, got {x.shape} and {y.shape}"
        )
    return float(np.sqrt(((x - y) ** 2).sum()))


class FrobeniusBootstrap(NamedTuple):
    """Distance of the persona correlation matrix to a reference, with a bootstrap interval."""

    distance: float
    ci_low: float
    ci_high: float
    n_boot: int
    n_valid: int
    """Replicates with a defined distance; the others had a constant trait and are excluded."""


def bootstrap_frobenius(
    respondent_scores: pd.DataFrame,
    reference: pd.DataFrame | np.ndarray,
    n_boot: int,
    seed: int,
    condition_column: str = "persona",
    level: float = 0.95,
) -> FrobeniusBootstrap:
    """Frobenius distance between the persona correlation matrix and ``reference``, with a CI.

    ``respondent_scores``: one row per respondent (run x option order) with
    ``condition_column`` and the five trait columns (see ``wide_trait_scores``). The point
    estimate correlates the per-condition mean scores (``persona_correlation_matrix``).
    Bootstrap: in each replicate the respondents are resampled with replacement within each
    condition (so every condition keeps its size and every replicate has every condition),
    the condition means and the matrix are recomputed; the interval is the percentile
    interval of the replicate distances. Conditions without a mean for some trait are left
    out of point estimate and replicates alike. Replicates whose matrix has an undefined
    (constant-trait) correlation are excluded and counted (n_boot - n_valid); with none
    valid the interval is NaN. Deterministic given ``seed``.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    ref = _as_trait_matrix(reference, "reference")
    require_columns(respondent_scores, [condition_column], "respondent_scores")
    scores = _trait_columns(respondent_scores, "respondent_scores")
    conditions = respondent_scores[condition_column]
    with np.errstate(invalid="ignore"):
        means = scores.groupby(conditions.to_numpy(), sort=True).mean().dropna()
    point = frobenius_distance(persona_correlation_matrix(means).to_numpy(), ref)

    rng = np.random.default_rng(seed)
    values = scores.to_numpy()
    condition_values = conditions.to_numpy()
    replicate_means = []
    for condition in means.index:
        rows = values[condition_values == condition]
        draws = rng.integers(0, len(rows), size=(n_boot, len(rows)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: NaN, counted
            replicate_means.append(np.nanmean(rows[draws], axis=1))
    stacked = np.stack(replicate_means, axis=1)  # (n_boot, conditions, traits)
    corr = _correlations(stacked)
    distances = np.sqrt(((corr - ref) ** 2).sum(axis=(1, 2)))
    valid = distances[np.isfinite(distances)]
    if valid.size:
        tail = (1 - level) / 2 * 100
        low, high = np.percentile(valid, [tail, 100 - tail])
    else:
        low = high = float("nan")
    return FrobeniusBootstrap(point, float(low), float(high), n_boot, int(valid.size))


def convergent_correlations(bfi_means: pd.DataFrame, ipip_means: pd.DataFrame) -> pd.DataFrame:
    """BFI-IPIP convergent validity: per trait, the correlation across personas of the two scores.

    Both frames have rows = persona conditions (matched by index) and the five trait
    columns. Per trait, conditions missing either score are dropped. Columns: r (Pearson;
    NaN with fewer than 3 conditions or a constant score) and n_conditions; index = trait.
    """
    bfi = _trait_columns(bfi_means, "bfi_means")
    ipip = _trait_columns(ipip_means, "ipip_means")
    common = bfi.index.intersection(ipip.index)
    rows = []
    for trait in TRAITS:
        pair = pd.concat([bfi.loc[common, trait], ipip.loc[common, trait]], axis=1).dropna()
        n = len(pair)
        r = _correlations(pair.to_numpy())[0, 1] if n >= 3 else np.nan
        rows.append({"trait": trait, "r": float(r), "n_conditions": n})
    return pd.DataFrame(rows).set_index("trait")
