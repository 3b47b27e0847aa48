"""Trait intercorrelations across personas, their distance from a human matrix, and the
multitrait-multimethod (MTMM) validity of two inventories, with intervals over the
independent units (``personality.units``).

The persona trait means behind every matrix are the means of the units, so they equal the
trait means of ``inventory_scores``. Uncertainty comes from the units, with the personas
fixed (they are the ten designed conditions, not a sample): a bootstrap replicate resamples
the units the way they were drawn, stratified so that every replicate keeps the option
orders balanced (a unit carries all orders):

- run units are nested in a persona: resampled within each persona (per inventory);
- item units are crossed with the personas: the items of a trait are resampled once per
  replicate and that draw is used for every persona (per inventory);
- adapter seeds are crossed with personas, traits and inventories: one draw of seeds.

Replicates are drawn and the intervals computed by ``scipy.stats.bootstrap``; an interval
needs at least two units in every stratum and ``MIN_DISTINCT_RESAMPLES`` distinct resamples
(with one run there is none; with three adapter seeds neither, their bootstrap has 10 values).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from big5_dagster.lib.personality.scores import NO_PERSONA, require_columns
from big5_dagster.lib.personality.units import UNIT_ITEM, UNIT_RUN, UNIT_SEED
from big5_dagster.lib.traits import TRAITS

MIN_PERSONAS = 3
"""A correlation across fewer conditions is undefined."""
MIN_DISTINCT_RESAMPLES = 1000
"""Fewer distinct bootstrap resamples than this (3 adapter seeds allow 10) make a bootstrap
distribution too coarse for a 95% interval: then there is none."""

SERAPIO_GARCIA_MTMM_SOURCE = (
    "Serapio-García, G., Safdari, M., Crepy, C. et al. (2025). A psychometric framework for "
    "evaluating and shaping personality traits in large language models. Nature Machine "
    "Intelligence. https://doi.org/10.1038/s42256-025-01115-6 (IPIP-NEO against BFI)"
)
SERAPIO_GARCIA_MTMM: dict[str, tuple[float, float]] = {
    "their largest models": (0.90, 0.51),
    "Mistral-7B": (0.28, 0.09),
}
"""(mean convergent r, mean discriminant r) as reported by Serapio-García et al. 2025."""


def _single_condition_check(units: pd.DataFrame, columns: Sequence[str]) -> None:
    for column in columns:
        if column in units.columns and units[column].nunique(dropna=False) > 1:
            raise ValueError(
                f"units hold several values of {column!r} "
                f"({sorted(map(str, units[column].unique()))}): filter to one condition first"
            )


def _with_persona(units: pd.DataFrame) -> pd.DataFrame:
    keep = units["persona"].notna() & (units["persona"] != NO_PERSONA)
    return units[keep]


def persona_trait_means(units: pd.DataFrame) -> pd.DataFrame:
    """Rows = personas, columns = the five traits: the mean of the units (one method,
    inventory and scorer). Rows without a persona (NA or "none") are left out."""
    require_columns(units, ["persona", "trait", "value"], "units")
    _single_condition_check(units, ("scorer", "method", "inventory"))
    frame = _with_persona(units)
    means = frame.pivot_table(
        index="persona", columns="trait", values="value", aggfunc="mean", dropna=False
    )
    return means.reindex(columns=list(TRAITS)).rename_axis(columns=None)


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
    if len(means) < MIN_PERSONAS:
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


# --------------------------------------------------------------------------- unit resampling


class _UnitSample(NamedTuple):
    """One bootstrap stratum: the values its units give the cells they cover."""

    values: np.ndarray
    """(units, cells): NaN where a unit has no value for a cell."""
    cells: np.ndarray
    """Flat indices (persona * n_columns + column) of the cells this stratum covers."""


class _UnitDesign(NamedTuple):
    unit: str
    personas: list[str]
    n_columns: int
    samples: list[_UnitSample]

    @property
    def n_units(self) -> int:
        return sum(len(s.values) for s in self.samples)

    @property
    def resamplable(self) -> bool:
        """Whether every stratum has two units or more and the strata together allow at least
        ``MIN_DISTINCT_RESAMPLES`` distinct resamples (n units: C(2n - 1, n) multisets)."""
        sizes = [len(s.values) for s in self.samples]
        if min(sizes) < 2:
            return False
        log_distinct = sum(math.log(math.comb(2 * n - 1, n)) for n in sizes)
        return log_distinct >= math.log(MIN_DISTINCT_RESAMPLES)

    def means(self, *indices: np.ndarray) -> np.ndarray:
        """Persona x column means (..., personas, columns) of the units picked by ``indices``
        (one index array (..., n_units) per stratum)."""
        lead = indices[0].shape[:-1]
        out = np.full((*lead, len(self.personas) * self.n_columns), np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN draw stays NaN
            for sample, index in zip(self.samples, indices, strict=True):
                picked = sample.values[np.asarray(index, dtype=np.intp)]
                out[..., sample.cells] = np.nanmean(picked, axis=-2)
        return out.reshape(*lead, len(self.personas), self.n_columns)

    def full(self) -> tuple[np.ndarray, ...]:
        return tuple(np.arange(len(s.values)) for s in self.samples)


def _unit_design(
    units: pd.DataFrame, personas: Sequence[str], inventories: Sequence[str]
) -> _UnitDesign:
    """The strata of ``units`` (one method and scorer; one or more inventories) over the
    cells (persona, inventory, trait): runs per (inventory, persona), items per (inventory,
    trait), seeds in one stratum across everything."""
    kinds = units["unit"].unique()
    if len(kinds) != 1:
        raise ValueError(f"units mix unit kinds {sorted(kinds)}: one kind per condition")
    unit = str(kinds[0])
    personas = list(personas)
    columns = [(inv, trait) for inv in inventories for trait in TRAITS]
    column_of = {c: k for k, c in enumerate(columns)}
    persona_of = {p: k for k, p in enumerate(personas)}
    frame = units[units["persona"].isin(personas) & units["inventory"].isin(list(inventories))]
    cell = np.array(
        [
            persona_of[p] * len(columns) + column_of[(i, t)]
            for p, i, t in zip(frame["persona"], frame["inventory"], frame["trait"], strict=True)
        ],
        dtype=np.intp,
    )
    if unit == UNIT_RUN:
        strata = {
            (inv, p): [persona_of[p] * len(columns) + column_of[(inv, t)] for t in TRAITS]
            for inv in inventories
            for p in personas
        }
        keys = list(zip(frame["inventory"], frame["persona"], strict=True))
    elif unit == UNIT_ITEM:
        strata = {
            (inv, t): [persona_of[p] * len(columns) + column_of[(inv, t)] for p in personas]
            for inv in inventories
            for t in TRAITS
        }
        keys = list(zip(frame["inventory"], frame["trait"], strict=True))
    elif unit == UNIT_SEED:
        strata = {(): list(range(len(personas) * len(columns)))}
        keys = [()] * len(frame)
    else:
        raise ValueError(f"unknown unit kind {unit!r}")
    number_of = {key: k for k, key in enumerate(strata)}
    stratum = np.array([number_of[key] for key in keys], dtype=np.intp)
    unit_ids = frame["unit_id"].astype(str).to_numpy()
    values = frame["value"].to_numpy(dtype=np.float64)
    samples = []
    for k, cells in enumerate(strata.values()):
        mask = stratum == k
        ids, row = np.unique(unit_ids[mask], return_inverse=True)
        column = np.full(len(personas) * len(columns), -1, dtype=np.intp)
        column[cells] = np.arange(len(cells))
        table = np.full((len(ids), len(cells)), np.nan)
        table[row, column[cell[mask]]] = values[mask]
        samples.append(_UnitSample(table, np.asarray(cells, dtype=np.intp)))
    return _UnitDesign(unit, personas, len(columns), samples)


def _bootstrap(
    design: _UnitDesign,
    statistic: Callable[[np.ndarray], np.ndarray],
    n_boot: int,
    seed: int,
    level: float,
    method: str,
) -> Any:
    from scipy import stats

    def resampled(*indices: np.ndarray, axis: int = -1) -> np.ndarray:
        return statistic(design.means(*indices))

    with warnings.catch_warnings():
        # Reported through n_valid and NaN intervals instead of a warning nobody sees.
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        return stats.bootstrap(
            design.full(),
            resampled,
            n_resamples=n_boot,
            batch=max(1, min(n_boot, 200)),
            vectorized=True,
            paired=False,
            confidence_level=level,
            method=method,
            rng=np.random.default_rng(seed),
        )


def complete_personas(units: pd.DataFrame, inventories: Sequence[str]) -> list[str]:
    """Personas (not 'none') with a mean for all five traits in every one of ``inventories``."""
    frame = _with_persona(units)
    frame = frame[frame["inventory"].isin(list(inventories))]
    means = frame.groupby(["persona", "inventory", "trait"], dropna=False)["value"].mean()
    counts = means.dropna().groupby(level="persona").size()
    return sorted(counts[counts == len(TRAITS) * len(inventories)].index)


# --------------------------------------------------------------------------- distance


class FrobeniusBootstrap(NamedTuple):
    """Distance of the persona correlation matrix to a reference, with its bootstrap interval."""

    distance: float
    """The plug-in distance of the point estimate (biased upward by the units' noise)."""
    bias_corrected: float
    """sqrt(max(0, 2 D^2 - mean of the replicates' D^2)): the squared distance less its
    bootstrap bias, the noise's share of it."""
    ci_low: float
    ci_high: float
    """The basic bootstrap interval of D^2 (2 D^2 minus the replicate quantiles), floored at
    0 and square-rooted; it holds the bias-corrected distance."""
    unit: str
    n_units: int
    n_strata: int
    n_boot: int
    n_valid: int
    """Replicates with a defined distance; the others had a constant trait and are left out."""


def bootstrap_frobenius(
    units: pd.DataFrame,
    reference: pd.DataFrame | np.ndarray,
    n_boot: int,
    seed: int,
    level: float = 0.95,
) -> FrobeniusBootstrap:
    """Frobenius distance between the persona correlation matrix of ``units`` (one method,
    inventory and scorer) and ``reference``, bias-corrected, with a basic bootstrap interval.

    Why the squared distance and the basic interval: noise in the persona means adds to every
    squared entry of (R - reference), so D is biased upward and its replicates more so; the
    plain percentile interval then lies above the point estimate. The basic interval of D^2
    subtracts that bias (2 D^2 - quantiles) and, floored at 0, still covers a true distance
    of 0. Personas without all five trait means are left out (listwise). Replicates with an
    undefined correlation are left out and counted (n_boot - n_valid). Without enough units
    to resample (``_UnitDesign.resamplable``) the interval and the bias correction are NaN.
    Deterministic given ``seed``.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    ref = _as_trait_matrix(reference, "reference")
    require_columns(units, ["persona", "inventory", "trait", "unit", "unit_id", "value"], "units")
    _single_condition_check(units, ("scorer", "method", "inventory"))
    inventories = list(units["inventory"].unique())
    personas = complete_personas(units, inventories)
    if len(personas) < MIN_PERSONAS:
        raise ValueError(
            f"units: {len(personas)} persona(s) with all five trait means; need at least "
            f"{MIN_PERSONAS}"
        )
    design = _unit_design(units, personas, inventories)

    def squared(means: np.ndarray) -> np.ndarray:
        return ((_correlations(means) - ref) ** 2).sum(axis=(-2, -1))

    point = float(squared(design.means(*design.full())))
    nan = float("nan")
    shape = (design.unit, design.n_units, len(design.samples), n_boot)
    if not np.isfinite(point):
        return FrobeniusBootstrap(nan, nan, nan, nan, *shape, 0)
    if not design.resamplable:
        return FrobeniusBootstrap(float(np.sqrt(point)), nan, nan, nan, *shape, 0)
    result = _bootstrap(design, squared, n_boot, seed, level, "basic")
    replicates = result.bootstrap_distribution
    valid = replicates[np.isfinite(replicates)]
    if valid.size == 0:
        return FrobeniusBootstrap(float(np.sqrt(point)), nan, nan, nan, *shape, 0)
    low, high = result.confidence_interval
    if valid.size < replicates.size:  # scipy's quantiles propagate NaN: the same basic
        tail = (1 - level) / 2 * 100  # interval over the valid replicates
        q_low, q_high = np.percentile(valid, [tail, 100 - tail])
        low, high = 2 * point - q_high, 2 * point - q_low
    corrected = 2 * point - float(valid.mean())
    return FrobeniusBootstrap(
        float(np.sqrt(point)),
        float(np.sqrt(max(corrected, 0.0))),
        float(np.sqrt(max(low, 0.0))),
        float(np.sqrt(max(high, 0.0))),
        *shape,
        int(valid.size),
    )


# --------------------------------------------------------------------------- MTMM

MTMM_MEASURES: tuple[str, ...] = ("convergent", "discriminant_mean_abs", "discriminant_mean")


def _mtmm_statistic(means: np.ndarray) -> np.ndarray:
    """(..., personas, 10) -> (7, ...): the five convergent r (same trait, other inventory),
    the mean |r| and the mean r of the 20 heterotrait-heteromethod pairs."""
    k = len(TRAITS)
    cross = _correlations(means)[..., :k, k:]
    convergent = np.diagonal(cross, axis1=-2, axis2=-1)
    off = cross[..., ~np.eye(k, dtype=bool)]
    summary = np.stack([np.abs(off).mean(axis=-1), off.mean(axis=-1)], axis=-1)
    return np.moveaxis(np.concatenate([convergent, summary], axis=-1), -1, 0)


def mtmm_validity(
    units: pd.DataFrame,
    inventories: tuple[str, str],
    n_boot: int,
    seed: int,
    level: float = 0.95,
) -> pd.DataFrame:
    """Convergent and discriminant validity of two inventories under one method and scorer:
    the multitrait-multimethod correlations across personas of the persona trait means.

    Per trait, the convergent r (the trait's score on one inventory against the same trait
    on the other); over the 20 heterotrait-heteromethod pairs (trait A on one inventory
    against trait B on the other), the mean |r| and the mean r. Each with a BCa bootstrap
    interval over the units (items resampled within trait per inventory, runs within
    persona per inventory, adapter seeds jointly), NaN without enough units to resample
    (``_UnitDesign.resamplable``) or when the replicates leave a correlation undefined. Personas need all five trait
    means on both inventories. The reference figures are Serapio-García et al.'s
    (``SERAPIO_GARCIA_MTMM``): convergent 0.90 / discriminant 0.51 for their largest models,
    0.28 / 0.09 for Mistral-7B.

    Columns: inventory_a, inventory_b, measure (``MTMM_MEASURES``), trait (convergent rows),
    r, ci_low, ci_high, unit, n_units, n_personas, n_boot.
    """
    require_columns(units, ["persona", "inventory", "trait", "unit", "unit_id", "value"], "units")
    _single_condition_check(units, ("scorer", "method"))
    inventories = (str(inventories[0]), str(inventories[1]))
    personas = complete_personas(units, inventories)
    rows = [("convergent", t) for t in TRAITS] + [
        ("discriminant_mean_abs", None),
        ("discriminant_mean", None),
    ]
    nan = np.full(len(rows), np.nan)
    design = None
    point, low, high = nan, nan, nan
    if len(personas) >= MIN_PERSONAS:
        design = _unit_design(units, personas, inventories)
        point = _mtmm_statistic(design.means(*design.full()))
        if design.resamplable and np.isfinite(point).all():
            result = _bootstrap(design, _mtmm_statistic, n_boot, seed, level, "BCa")
            low, high = result.confidence_interval
    return pd.DataFrame(
        {
            "inventory_a": inventories[0],
            "inventory_b": inventories[1],
            "measure": [m for m, _ in rows],
            "trait": [t for _, t in rows],
            "r": point,
            "ci_low": low,
            "ci_high": high,
            "unit": design.unit if design is not None else None,
            "n_units": design.n_units if design is not None else 0,
            "n_personas": len(personas),
            "n_boot": n_boot,
        }
    )
