"""Trait scores of inventory answers: per respondent, summarized per condition, and the
high-minus-low separation of each trait.

Input is the long table of answers the administration produces: one row per (respondent,
item) with the scale value after mapping the option order back (``value``; NaN/NA when the
answer could not be parsed). A respondent is one complete administration of an inventory
under one condition: by default (method, persona, run, option_order).

Nothing here imputes. A failed answer is excluded from the trait mean and counted
(``n_failed``); an item that was never asked is counted as ``n_absent``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from big5_dagster.lib.personality.inventory import Inventory, InventoryError
from big5_dagster.lib.traits import TRAITS, Persona

DEFAULT_RESPONDENT_COLUMNS: tuple[str, ...] = ("method", "persona", "run", "option_order")


DEFAULT_SUMMARY_COLUMNS: tuple[str, ...] = ("method", "persona", "inventory", "trait")

# The persona value of a condition without a persona (the base model as is).
NO_PERSONA = "none"


_Z_975 = float(stats.norm.ppf(0.975))


def require_columns(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
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


def _membership(inv: Inventory) -> pd.DataFrame:
    rows = [
        (category, item_id, inv.item(item_id).keyed, t_index)
        for t_index, (category, ids) in enumerate(inv.categories.items())
        for item_id in ids
    ]
    return pd.DataFrame(rows, columns=["trait", "item_id", "keyed", "_trait_index"])


def checked_responses(
    responses: pd.DataFrame, inv: Inventory, respondent_columns: Sequence[str], value_column: str
) -> tuple[pd.DataFrame, np.ndarray]:
    """The inventory's rows of ``responses`` with validated item ids and values (as floats)."""
    what = f"responses for inventory {inv.name!r}"
    require_columns(responses, [*respondent_columns, "item_id", value_column], what)
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
    responses, values = checked_responses(responses, inv, respondent_columns, value_column)
    codes, respondents = respondent_codes(responses, respondent_columns)
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


def respondent_codes(
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
    require_columns(scores, [*by, score_column, "n_failed", "n_answered"], "scores")
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
    require_columns(scores, [*by, persona_column, "trait", score_column], "scores")
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
