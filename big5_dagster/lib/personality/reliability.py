"""Internal consistency per trait and condition: Cronbach's alpha and McDonald's omega (one factor)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

from big5_dagster.lib.personality.inventory import Inventory, InventoryError
from big5_dagster.lib.personality.scores import (
    DEFAULT_RESPONDENT_COLUMNS,
    checked_responses,
    respondent_codes,
)

_OMEGA_MAX_ITER = 1000


def item_matrix(
    responses: pd.DataFrame,
    inv: Inventory,
    trait: str,
    respondent_columns: Sequence[str] = DEFAULT_RESPONDENT_COLUMNS,
    value_column: str = "value",
) -> pd.DataFrame:
    """Respondents x items of one trait, reverse-keyed items already reversed; NaN = no answer.

    Rows are indexed by the respondent columns, columns are the trait's item ids in
    inventory order (every item, asked or not).
    """
    respondent_columns = list(respondent_columns)
    if trait not in inv.categories:
        raise InventoryError(
            f"inventory {inv.name!r} has no trait {trait!r}: expected one of {list(inv.categories)}"
        )
    responses, values = checked_responses(responses, inv, respondent_columns, value_column)
    codes, respondents = respondent_codes(responses, respondent_columns)
    ids = list(inv.categories[trait])
    column_of = {item_id: k for k, item_id in enumerate(ids)}
    columns = responses["item_id"].map(column_of).to_numpy(dtype=np.float64, na_value=np.nan)
    mask = ~np.isnan(columns)
    keyed = np.array([inv.item(i).keyed for i in ids])[columns[mask].astype(np.int64)]
    v = values[mask]
    matrix = np.full((len(respondents), len(ids)), np.nan)
    matrix[codes[mask], columns[mask].astype(np.int64)] = np.where(
        keyed == -1, inv.scale_min + inv.scale_max - v, v
    )
    index = pd.MultiIndex.from_frame(respondents) if respondent_columns else pd.RangeIndex(1)
    return pd.DataFrame(matrix, index=index, columns=ids)


def _complete_rows(matrix: pd.DataFrame) -> np.ndarray:
    x = np.asarray(matrix, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 2:
        raise ValueError(f"an item matrix needs at least 2 item columns, got shape {x.shape}")
    return x[~np.isnan(x).any(axis=1)]


def cronbach_alpha(item_matrix: pd.DataFrame) -> float:
    """Cronbach's alpha, k / (k - 1) * (1 - sum of item variances / variance of the sum score).

    Rows are respondents, columns items (reverse-keyed items already reversed). Rows with
    any missing answer are dropped first (listwise deletion, as pingouin's
    nan_policy="listwise" and R psych's use="complete.obs"). Variances use n - 1. NaN when
    fewer than 2 complete rows remain or the sum score does not vary (alpha undefined).
    """
    x = _complete_rows(item_matrix)
    k = x.shape[1]
    if x.shape[0] < 2:
        return float("nan")
    cov = np.cov(x, rowvar=False, ddof=1)
    total = cov.sum()
    if total <= 0:
        return float("nan")
    return float(k / (k - 1) * (1 - np.trace(cov) / total))


class OmegaFit(NamedTuple):
    """A one-factor model of a trait's items and the omega total it implies."""

    omega: float
    loadings: np.ndarray
    unique_variances: np.ndarray
    converged: bool
    """False when the EM fit stopped at max_iter (typically items sharing no factor)."""


def mcdonald_omega_fit(item_matrix: pd.DataFrame) -> OmegaFit:
    """Fit the one-factor model behind ``mcdonald_omega`` and return it with the omega.

    NaN omega (empty loadings, converged False) when the model cannot be fitted: fewer than
    3 items, fewer than k + 1 complete rows, or an item that does not vary.
    """
    from sklearn.decomposition import FactorAnalysis
    from sklearn.exceptions import ConvergenceWarning

    x = _complete_rows(item_matrix)
    n, k = x.shape
    empty = np.array([], dtype=np.float64)
    if k < 3 or n < k + 1:
        return OmegaFit(float("nan"), empty, empty, False)
    sd = x.std(axis=0)
    if (sd == 0).any():
        return OmegaFit(float("nan"), empty, empty, False)
    z = (x - x.mean(axis=0)) / sd
    model = FactorAnalysis(n_components=1, svd_method="lapack", tol=1e-6, max_iter=_OMEGA_MAX_ITER)
    with warnings.catch_warnings():
        # Reported through ``converged`` instead of a warning nobody sees in a Dagster run.
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(z)
    loadings = model.components_[0].astype(np.float64)
    unique = model.noise_variance_.astype(np.float64)
    if loadings.sum() < 0:  # the factor's sign is arbitrary: orient it along the items
        loadings = -loadings
    loading_sum = float(loadings.sum())
    omega = loading_sum**2 / (loading_sum**2 + float(unique.sum()))
    return OmegaFit(omega, loadings, unique, bool(model.n_iter_ < _OMEGA_MAX_ITER))


def mcdonald_omega(item_matrix: pd.DataFrame) -> float:
    """McDonald's omega total from a one-factor model: (sum l)^2 / ((sum l)^2 + sum psi).

    The items (respondents x items, reverse-keyed items reversed, listwise deletion as in
    ``cronbach_alpha``) are standardized (population SD) and a one-factor maximum-likelihood
    factor analysis is fitted (sklearn FactorAnalysis, exact LAPACK SVD, so deterministic);
    l are its loadings and psi its unique variances. A one-factor model with fewer than 3
    items is not identified, so NaN is returned then, as when fewer than k + 1 complete rows
    remain or an item does not vary. When the items share no factor the fit may stop at
    its iteration limit with loadings near 0 (omega near 0); ``mcdonald_omega_fit`` says so.
    """
    return mcdonald_omega_fit(item_matrix).omega


MIN_RESPONDENTS = 3
"""Fewest complete respondents over which alpha is reported."""
MIN_ITEM_SD = 0.05
"""Scale points: below this median item SD across respondents the answers barely vary, and
alpha and omega are ratios of near-zero variances that swing to any value (a -4,964 was
seen for expected scores of a random-weight model varying by 0.005)."""


def not_estimable(item_matrix: pd.DataFrame, statistic: str = "alpha") -> str | None:
    """Why ``statistic`` ('alpha' or 'omega') of this item matrix cannot be estimated, or None.

    Both need at least MIN_RESPONDENTS complete respondents (rows left after listwise
    deletion), at least 2 items that vary, and answers that vary by at least MIN_ITEM_SD
    scale points (median item SD); alpha needs a sum score that varies; the one-factor model
    of omega needs at least 3 items, more complete respondents than items, every item
    varying, and a fit that converged.
    """
    x = _complete_rows(item_matrix)
    n, k = x.shape
    if n < MIN_RESPONDENTS:
        return f"{n} respondent(s) answered every item; at least {MIN_RESPONDENTS} needed"
    sd = x.std(axis=0, ddof=1)
    if (sd > 0).sum() < 2:
        return "fewer than 2 items vary across respondents"
    if float(np.median(sd)) < MIN_ITEM_SD:
        return (
            f"answers barely vary: median item SD {float(np.median(sd)):.3g} scale points "
            f"(below {MIN_ITEM_SD})"
        )
    if statistic == "alpha":
        return "the sum score does not vary" if x.sum(axis=1).var(ddof=1) <= 0 else None
    if k < 3:
        return f"{k} items: a one-factor model needs at least 3"
    if n < k + 1:
        return f"{n} complete respondents: a one-factor model of {k} items needs {k + 1}"
    if (sd == 0).any():
        return "an item does not vary across respondents"
    if not mcdonald_omega_fit(item_matrix).converged:
        return "the one-factor fit did not converge"
    return None


def reliability_table(
    responses: pd.DataFrame,
    inv: Inventory,
    by: Sequence[str] = ("method",),
    respondent_columns: Sequence[str] = DEFAULT_RESPONDENT_COLUMNS,
    value_column: str = "value",
) -> pd.DataFrame:
    """Alpha and omega per group of ``by`` and trait, over the group's respondents.

    With the default ``by=("method",)`` the respondents of all personas of a method are
    pooled, as in LLM psychometrics where simulated personas play the role of a sample of
    people: reliability then asks whether the items of a trait move together across them.
    Columns: by, inventory, trait, n_items, n_respondents, n_complete (rows left after
    listwise deletion), alpha, omega, omega_converged (see ``mcdonald_omega_fit``), and
    alpha_not_estimable / omega_not_estimable: the reason (see ``not_estimable``) where
    that statistic cannot be estimated, which is then NaN rather than a number; else None.
    """
    by = list(by)
    respondent_columns = list(respondent_columns)
    missing_keys = [c for c in by if c not in respondent_columns]
    if missing_keys:
        raise ValueError(
            f"reliability groups {missing_keys} must be among the respondent columns {respondent_columns}"
        )
    responses, _ = checked_responses(responses, inv, respondent_columns, value_column)
    rows = []
    groups = responses.groupby(by, dropna=False, sort=False) if by else [((), responses)]
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        for trait in inv.categories:
            matrix = item_matrix(group, inv, trait, respondent_columns, value_column)
            complete = int((~matrix.isna().any(axis=1)).sum())
            omega = mcdonald_omega_fit(matrix)
            alpha_reason = not_estimable(matrix, "alpha")
            omega_reason = not_estimable(matrix, "omega")
            rows.append(
                {
                    **dict(zip(by, key, strict=True)),
                    "inventory": inv.name,
                    "trait": trait,
                    "n_items": matrix.shape[1],
                    "n_respondents": matrix.shape[0],
                    "n_complete": complete,
                    "alpha": float("nan") if alpha_reason else cronbach_alpha(matrix),
                    "omega": float("nan") if omega_reason else omega.omega,
                    "omega_converged": omega.converged,
                    "alpha_not_estimable": alpha_reason,
                    "omega_not_estimable": omega_reason,
                }
            )
    return pd.DataFrame(rows)
