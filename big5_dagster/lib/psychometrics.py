"""Scores, summaries, reliability and trait intercorrelations of inventory answers.

Input is the long table of answers the administration produces: one row per (respondent,
item) with the scale value after mapping the option order back (``value``; NaN/NA when the
answer could not be parsed). A respondent is one complete administration of an inventory
under one condition: by default (method, persona, run, option_order).

Nothing here imputes. A failed answer is excluded from the trait mean and counted
(``n_failed``); an item that was never asked is counted as ``n_absent``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.decomposition import FactorAnalysis
from sklearn.exceptions import ConvergenceWarning

from big5_dagster.lib.inventories import Inventory, InventoryError
from big5_dagster.lib.traits import TRAITS, Persona

DEFAULT_RESPONDENT_COLUMNS: tuple[str, ...] = ("method", "persona", "run", "option_order")
DEFAULT_SUMMARY_COLUMNS: tuple[str, ...] = ("method", "persona", "inventory", "trait")
# The persona value of a condition without a persona (the base model as is).
NO_PERSONA = "none"
_Z_975 = float(stats.norm.ppf(0.975))


def _require_columns(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; has {list(df.columns)}")


def _float_column(df: pd.DataFrame, column: str, what: str) -> np.ndarray:
    values = pd.to_numeric(df[column], errors="coerce")
    bad = values.isna() & df[column].notna()
    if bad.any():
        row = bad.to_numpy().nonzero()[0][0]
        raise ValueError(
            f"{what}: row {df.index[row]!r}, field {column!r}: {df[column].iloc[row]!r} is not a number"
        )
    return values.to_numpy(dtype=np.float64, na_value=np.nan)


# --------------------------------------------------------------------------- scoring


def _membership(inv: Inventory) -> pd.DataFrame:
    rows = [
        (category, item_id, inv.item(item_id).keyed, t_index)
        for t_index, (category, ids) in enumerate(inv.categories.items())
        for item_id in ids
    ]
    return pd.DataFrame(rows, columns=["trait", "item_id", "keyed", "_trait_index"])


def _checked_responses(
    responses: pd.DataFrame, inv: Inventory, respondent_columns: Sequence[str], value_column: str
) -> tuple[pd.DataFrame, np.ndarray]:
    """The inventory's rows of ``responses`` with validated item ids and values (as floats)."""
    what = f"responses for inventory {inv.name!r}"
    _require_columns(responses, [*respondent_columns, "item_id", value_column], what)
    if "inventory" in responses.columns:
        responses = responses[responses["inventory"] == inv.name]
        if responses.empty:
            raise ValueError(f"{what}: no row has inventory == {inv.name!r}")
    known = set(inv.item_ids)
    unknown = ~responses["item_id"].isin(known)
    if unknown.any():
        row = unknown.to_numpy().nonzero()[0][0]
        raise InventoryError(
            f"{what}: row {responses.index[row]!r}, field 'item_id': "
            f"{responses['item_id'].iloc[row]!r} is not an item of the inventory"
        )
    values = _float_column(responses, value_column, what)
    off_scale = ~np.isnan(values) & ((values < inv.scale_min) | (values > inv.scale_max))
    if off_scale.any():
        row = off_scale.nonzero()[0][0]
        raise InventoryError(
            f"{what}: row {responses.index[row]!r}, field {value_column!r}: {values[row]} is "
            f"outside the scale {inv.scale_min}..{inv.scale_max}"
        )
    duplicated = responses.duplicated([*respondent_columns, "item_id"])
    if duplicated.any():
        row = duplicated.to_numpy().nonzero()[0][0]
        key = responses[[*respondent_columns, "item_id"]].iloc[row].to_dict()
        raise ValueError(
            f"{what}: row {responses.index[row]!r} repeats respondent and item {key}: "
            "each respondent answers each item once"
        )
    return responses, values


def score_table(
    responses: pd.DataFrame,
    inv: Inventory,
    respondent_columns: Sequence[str] = DEFAULT_RESPONDENT_COLUMNS,
    value_column: str = "value",
) -> pd.DataFrame:
    """Trait scores per respondent: one row per (respondent, trait).

    ``responses`` has ``respondent_columns``, ``item_id`` and ``value_column`` (scale value
    after mapping back the option order; NaN/NA for a failed answer). When it has an
    ``inventory`` column only the rows of ``inv`` are used. Reverse-keyed items count as
    scale_min + scale_max - value.

    Columns: respondent columns, inventory, trait, mean (of answered items; NaN when none),
    score (the mean for AVG categories; for SUM categories the sum, NaN unless every item
    was answered), n_items, n_answered, n_failed (asked, no usable answer), n_absent (not
    asked). Rows follow the respondents' first appearance, traits in inventory order.
    """
    respondent_columns = list(respondent_columns)
    responses, values = _checked_responses(responses, inv, respondent_columns, value_column)
    codes, respondents = _respondent_codes(responses, respondent_columns)
    rows = pd.DataFrame(
        {
            "_respondent": codes,
            "item_id": responses["item_id"].astype(str).to_numpy(),
            "_value": values,
        }
    )
    merged = rows.merge(_membership(inv), on="item_id", how="inner")
    value = merged["_value"].to_numpy()
    keyed_value = np.where(
        merged["keyed"].to_numpy() == -1, inv.scale_min + inv.scale_max - value, value
    )
    answered = ~np.isnan(keyed_value)

    # Every respondent gets a row for every trait, even one with no item of it answered:
    # cell = respondent * n_traits + trait, counted with bincount.
    categories = list(inv.categories)
    n_traits, n_respondents = len(categories), len(respondents)
    cells = merged["_respondent"].to_numpy() * n_traits + merged["_trait_index"].to_numpy()
    size = n_respondents * n_traits
    n_rows = np.bincount(cells, minlength=size).astype(np.int64)
    n_answered = np.bincount(cells, weights=answered, minlength=size).astype(np.int64)
    total = np.bincount(cells, weights=np.where(answered, keyed_value, 0.0), minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n_answered > 0, total / np.maximum(n_answered, 1), np.nan)
    n_items = np.tile([len(inv.categories[c]) for c in categories], n_respondents)
    sum_mode = np.tile([inv.compute_mode(c) == "SUM" for c in categories], n_respondents)
    score = np.where(sum_mode, np.where(n_answered == n_items, total, np.nan), mean)

    out = respondents.iloc[np.repeat(np.arange(n_respondents), n_traits)].reset_index(drop=True)
    out["inventory"] = inv.name
    out["trait"] = np.tile(np.array(categories, dtype=object), n_respondents)
    out["mean"] = mean
    out["score"] = score
    out["n_items"] = n_items.astype(np.int64)
    out["n_answered"] = n_answered
    out["n_failed"] = n_rows - n_answered
    out["n_absent"] = n_items - n_rows
    return out


def _respondent_codes(
    responses: pd.DataFrame, respondent_columns: list[str]
) -> tuple[np.ndarray, pd.DataFrame]:
    """A 0-based respondent code per row (first-appearance order) and one row per respondent.

    Codes avoid merging on the respondent columns, whose dtypes (e.g. an all-None persona
    of the base condition) pandas may change while grouping.
    """
    if not respondent_columns:
        return np.zeros(len(responses), dtype=np.int64), pd.DataFrame(index=range(1))
    codes = (
        responses.groupby(respondent_columns, dropna=False, sort=False).ngroup().to_numpy(np.int64)
    )
    _, first = np.unique(codes, return_index=True)
    respondents = responses[respondent_columns].iloc[first].reset_index(drop=True)
    return codes, respondents


def _t_interval(
    mean: np.ndarray, se: np.ndarray, df: np.ndarray, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    df = np.asarray(df, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        t = np.where(df >= 1, stats.t.ppf(0.5 + level / 2, np.maximum(df, 1)), np.nan)
    half = t * se
    return mean - half, mean + half


def summarize_scores(
    scores: pd.DataFrame,
    by: Sequence[str] = DEFAULT_SUMMARY_COLUMNS,
    score_column: str = "score",
) -> pd.DataFrame:
    """Per group (default method, persona, inventory, trait): the distribution of respondent scores.

    Columns: the ``by`` columns, mean, sd (n-1), ci_low/ci_high (95%, t-based: mean +-
    t(0.975, n-1) * sd / sqrt(n); NaN when n < 2), n (respondents with a score),
    n_respondents, n_failed, n_answered, parse_failure_rate = n_failed / (n_failed +
    n_answered) over all answers given in the group.
    """
    by = list(by)
    _require_columns(scores, [*by, score_column, "n_failed", "n_answered"], "scores")
    grouped = scores.groupby(by, dropna=False, sort=False)
    summary = grouped.agg(
        mean=(score_column, "mean"),
        sd=(score_column, "std"),
        n=(score_column, "count"),
        n_respondents=(score_column, "size"),
        n_failed=("n_failed", "sum"),
        n_answered=("n_answered", "sum"),
    ).reset_index()
    n = summary["n"].to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        se = summary["sd"].to_numpy(dtype=np.float64) / np.sqrt(n)
        given = (summary["n_failed"] + summary["n_answered"]).to_numpy(dtype=np.float64)
        summary["parse_failure_rate"] = np.where(
            given > 0, summary["n_failed"].to_numpy() / np.where(given > 0, given, 1), np.nan
        )
    summary["ci_low"], summary["ci_high"] = _t_interval(summary["mean"].to_numpy(), se, n - 1)
    return summary[
        [
            *by,
            "mean",
            "sd",
            "ci_low",
            "ci_high",
            "n",
            "n_respondents",
            "n_failed",
            "n_answered",
            "parse_failure_rate",
        ]
    ]


def _persona_parts(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(trait, level) per row; NA for rows without a persona (NA or NO_PERSONA)."""
    parsed: dict[str, tuple[str, str]] = {}
    for key in values.dropna().unique():
        if key == NO_PERSONA:
            continue
        try:
            persona = Persona.parse(str(key))
        except ValueError as err:
            raise ValueError(f"scores: field 'persona': {err}") from err
        parsed[key] = (persona.trait, persona.level)
    trait = values.map(lambda k: parsed[k][0] if k in parsed else None)
    level = values.map(lambda k: parsed[k][1] if k in parsed else None)
    return trait, level


def separation(
    scores: pd.DataFrame,
    by: Sequence[str] = ("method", "inventory"),
    persona_column: str = "persona",
    score_column: str = "score",
) -> pd.DataFrame:
    """How far each persona pair moves every trait: high-minus-low, target and off-target.

    For each group of ``by``, each targeted trait t (personas t_high and t_low) and each
    measured trait u: difference = mean score on u of the t_high respondents minus that of
    the t_low respondents. Rows with u == t (``is_target``) are the target separation;
    rows with u != t are the off-target drift: how much steering t also moves u.

    Drift is measured between the two poles of the same target rather than against the
    base model because the base condition lives in another method partition, and because a
    perfectly selective steering then shows exactly 0 on every other trait whatever the
    model's default personality is.

    Also: sd_pooled (pooled within-persona SD, n-1), cohens_d = difference / sd_pooled (NaN
    when sd_pooled is 0: every respondent of both personas scored the same, a d is
    undefined though the difference is not), diff_ci_low/high (95% pooled-variance t
    interval, df = n_high + n_low - 2), d_ci_low/high (95% normal approximation,
    se = sqrt((n1 + n2) / (n1 n2) + d^2 / (2 (n1 + n2))), Hedges & Olkin 1985).
    Rows without a persona (NA or "none") are ignored.
    """
    by = list(by)
    _require_columns(scores, [*by, persona_column, "trait", score_column], "scores")
    target, level = _persona_parts(scores[persona_column])
    frame = scores[[*by, "trait", score_column]].copy()
    frame["target_trait"] = target.to_numpy()
    frame["_level"] = level.to_numpy()
    frame = frame[frame["_level"].notna()]
    keys = [*by, "target_trait", "trait"]
    grouped = frame.groupby([*keys, "_level"], dropna=False, sort=False)[score_column].agg(
        ["mean", "var", "count"]
    )
    wide = grouped.unstack("_level")
    out = pd.DataFrame(index=wide.index)
    for lv in ("high", "low"):
        for stat in ("mean", "var", "count"):
            out[f"{stat}_{lv}"] = wide[(stat, lv)] if (stat, lv) in wide.columns else np.nan
    out = out.reset_index()
    n_h = out["count_high"].fillna(0).to_numpy(dtype=np.float64)
    n_l = out["count_low"].fillna(0).to_numpy(dtype=np.float64)
    diff = (out["mean_high"] - out["mean_low"]).to_numpy(dtype=np.float64)
    df = n_h + n_l - 2
    with np.errstate(invalid="ignore", divide="ignore"):
        pooled_var = (
            (n_h - 1) * out["var_high"].fillna(0).to_numpy()
            + (n_l - 1) * out["var_low"].fillna(0).to_numpy()
        ) / df
        pooled_var = np.where(df >= 1, pooled_var, np.nan)
        sd_pooled = np.sqrt(pooled_var)
        d = np.where(sd_pooled > 0, diff / sd_pooled, np.nan)
        se_diff = sd_pooled * np.sqrt(1 / n_h + 1 / n_l)
        se_d = np.sqrt((n_h + n_l) / (n_h * n_l) + d**2 / (2 * (n_h + n_l)))
    diff_low, diff_high = _t_interval(diff, se_diff, df)
    result = out[keys].copy()
    result["is_target"] = result["trait"] == result["target_trait"]
    result["mean_high"] = out["mean_high"].to_numpy(dtype=np.float64)
    result["mean_low"] = out["mean_low"].to_numpy(dtype=np.float64)
    result["n_high"] = n_h.astype(np.int64)
    result["n_low"] = n_l.astype(np.int64)
    result["difference"] = diff
    result["diff_ci_low"] = diff_low
    result["diff_ci_high"] = diff_high
    result["sd_pooled"] = sd_pooled
    result["cohens_d"] = d
    result["d_ci_low"] = d - _Z_975 * se_d
    result["d_ci_high"] = d + _Z_975 * se_d
    order = {t: i for i, t in enumerate(TRAITS)}
    result = result.sort_values(
        [*by, "target_trait", "trait"],
        key=lambda s: s.map(order).fillna(len(order)) if s.name in ("target_trait", "trait") else s,
        kind="stable",
    )
    return result.reset_index(drop=True)


# --------------------------------------------------------------------------- reliability


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
    responses, values = _checked_responses(responses, inv, respondent_columns, value_column)
    codes, respondents = _respondent_codes(responses, respondent_columns)
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


_OMEGA_MAX_ITER = 1000


def mcdonald_omega_fit(item_matrix: pd.DataFrame) -> OmegaFit:
    """Fit the one-factor model behind ``mcdonald_omega`` and return it with the omega.

    NaN omega (empty loadings, converged False) when the model cannot be fitted: fewer than
    3 items, fewer than k + 1 complete rows, or an item that does not vary.
    """
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
    listwise deletion), alpha, omega, omega_converged (see
    ``mcdonald_omega_fit``).
    """
    by = list(by)
    respondent_columns = list(respondent_columns)
    missing_keys = [c for c in by if c not in respondent_columns]
    if missing_keys:
        raise ValueError(
            f"reliability groups {missing_keys} must be among the respondent columns {respondent_columns}"
        )
    responses, _ = _checked_responses(responses, inv, respondent_columns, value_column)
    rows = []
    groups = responses.groupby(by, dropna=False, sort=False) if by else [((), responses)]
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        for trait in inv.categories:
            matrix = item_matrix(group, inv, trait, respondent_columns, value_column)
            complete = int((~matrix.isna().any(axis=1)).sum())
            omega = mcdonald_omega_fit(matrix)
            rows.append(
                {
                    **dict(zip(by, key, strict=True)),
                    "inventory": inv.name,
                    "trait": trait,
                    "n_items": matrix.shape[1],
                    "n_respondents": matrix.shape[0],
                    "n_complete": complete,
                    "alpha": cronbach_alpha(matrix),
                    "omega": omega.omega,
                    "omega_converged": omega.converged,
                }
            )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- correlations


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
    _require_columns(scores, [persona_column, "trait", score_column], "scores")
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
    _require_columns(scores, [*respondent_columns, "trait", score_column], "scores")
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
    _require_columns(trait_means, list(TRAITS), what)
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
    _require_columns(respondent_scores, [condition_column], "respondent_scores")
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
