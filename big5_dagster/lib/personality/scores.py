"""Trait scores of inventory answers: per respondent, summarized over the independent units
of a condition, and the high-minus-low separation of each trait.

Input is the long table of answers the administration produces: one row per (respondent,
item) with the scale value after mapping the option order back (``value``; NaN/NA when the
answer could not be used). A respondent is one complete administration of an inventory
under one condition: by default (method, persona, run, option_order).

Nothing here imputes. A failed answer is excluded from the trait mean and counted
(``n_failed``, of which ``n_low_mass`` had too little option mass); an item that was never
asked is counted as ``n_absent``. A trait score needs ``min_answered_share`` of the trait's
items answered: below that it is missing (``below_min_share``), never a mean of the few
items that were answered (which would impute the missing ones with that mean).

Summaries and separations are computed over the independent units of a condition (see
``personality.units``: items, runs or adapter seeds), never over respondents that are copies
or mixtures of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from big5_dagster.lib.personality.inventory import Inventory, InventoryError
from big5_dagster.lib.traits import TRAITS, Persona

DEFAULT_RESPONDENT_COLUMNS: tuple[str, ...] = ("method", "persona", "run", "option_order")


DEFAULT_SUMMARY_COLUMNS: tuple[str, ...] = ("method", "persona", "inventory", "trait")

DEFAULT_MIN_ANSWERED_SHARE = 0.8
"""A trait score needs at least this share of the trait's items answered."""

LOW_MASS_STATUS = "low_mass"
"""The answer status of a log-probability answer with too little option mass."""

# The persona value of a condition without a persona (the base model as is).
NO_PERSONA = "none"


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
    min_answered_share: float = DEFAULT_MIN_ANSWERED_SHARE,
    status_column: str = "parse_status",
) -> pd.DataFrame:
    """Trait scores per respondent: one row per (respondent, trait).

    ``responses`` has ``respondent_columns``, ``item_id`` and ``value_column`` (scale value
    after mapping back the option order; NaN/NA for a failed answer), and optionally
    ``status_column`` (answer statuses; 'low_mass' ones are counted apart). When it has an
    ``inventory`` column only the rows of ``inv`` are used. Reverse-keyed items count as
    scale_min + scale_max - value.

    Columns: respondent columns, inventory, trait, mean (of the answered items), score (the
    mean for AVG categories; for SUM categories the sum, NaN unless every item was
    answered), n_items, n_answered, n_failed (asked, no usable answer), n_low_mass (of
    n_failed: log-probability answers below the option-mass minimum), n_absent (not
    asked), share_answered (n_answered / n_items) and below_min_share: when fewer than
    ``min_answered_share`` of the items were answered, mean and score are NaN. Rows follow
    the respondents' first appearance, traits in inventory order.
    """
    if not 0.0 < min_answered_share <= 1.0:
        raise ValueError(f"min_answered_share must be in (0, 1], got {min_answered_share!r}")
    respondent_columns = list(respondent_columns)
    responses, values = checked_responses(responses, inv, respondent_columns, value_column)
    codes, respondents = respondent_codes(responses, respondent_columns)
    low_mass = (
        (responses[status_column].astype(object) == LOW_MASS_STATUS).to_numpy(dtype=bool)
        if status_column in responses.columns
        else np.zeros(len(responses), dtype=bool)
    )
    rows = pd.DataFrame(
        {
            "_respondent": codes,
            "item_id": responses["item_id"].astype(str).to_numpy(),
            "_value": values,
            "_low_mass": low_mass,
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
    n_low_mass = np.bincount(
        cells, weights=merged["_low_mass"].to_numpy(dtype=np.float64), minlength=size
    ).astype(np.int64)
    total = np.bincount(cells, weights=np.where(answered, keyed_value, 0.0), minlength=size)
    n_items = np.tile([len(inv.categories[c]) for c in categories], n_respondents)
    share = n_answered / n_items
    # A small tolerance: 0.8 of 10 items must accept 8 answered ones despite float rounding.
    enough = (n_answered > 0) & (share >= min_answered_share - 1e-12)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(enough, total / np.maximum(n_answered, 1), np.nan)
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
    out["n_low_mass"] = n_low_mass
    out["n_absent"] = n_items - n_rows
    out["share_answered"] = share
    out["below_min_share"] = ~enough
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
    from scipy import stats

    df = np.asarray(df, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        t = np.where(df >= 1, stats.t.ppf(0.5 + level / 2, np.maximum(df, 1)), np.nan)
    half = t * se
    return mean - half, mean + half


def summarize_units(
    units: pd.DataFrame, by: Sequence[str] = DEFAULT_SUMMARY_COLUMNS
) -> pd.DataFrame:
    """Per group (default method, persona, inventory, trait): mean and 95% t-interval over
    the group's independent units (``personality.units``), one value per unit.

    Columns: the ``by`` columns, unit (what the units are: item, run or adapter_seed),
    n_units (units with a value), mean, sd (n-1), se = sd / sqrt(n), df = n - 1, ci_low,
    ci_high (mean +- t(0.975, df) se; NaN with fewer than 2 units: one unit says nothing
    about the spread).
    """
    by = list(by)
    require_columns(units, [*by, "unit", "unit_id", "value"], "units")
    _one_unit_kind(units, by)
    grouped = units.groupby(by, dropna=False, sort=False)
    summary = grouped.agg(
        unit=("unit", "first"),
        n_units=("value", "count"),
        mean=("value", "mean"),
        sd=("value", "std"),
    ).reset_index()
    n = summary["n_units"].to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        se = summary["sd"].to_numpy(dtype=np.float64) / np.sqrt(n)
    summary["se"] = se
    summary["df"] = n - 1
    summary["ci_low"], summary["ci_high"] = _t_interval(summary["mean"].to_numpy(), se, n - 1)
    return summary[[*by, "unit", "n_units", "mean", "sd", "se", "df", "ci_low", "ci_high"]]


def _one_unit_kind(units: pd.DataFrame, by: Sequence[str]) -> None:
    kinds = units.groupby(list(by), dropna=False, sort=False)["unit"].nunique()
    if (kinds > 1).any():
        key = kinds[kinds > 1].index[0]
        raise ValueError(f"units: group {key!r} mixes unit kinds; one kind per condition")


def score_counts(scores: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Per group of respondent scores (``score_table`` rows): respondents, those with a score,
    those below the answered-share minimum, answers used, failed, low-mass, and the rates
    parse_failure_rate = (failed - low-mass) / given and low_mass_rate = low-mass / given."""
    by = list(by)
    require_columns(
        scores, [*by, "score", "n_answered", "n_failed", "n_low_mass", "below_min_share"], "scores"
    )
    counts = (
        scores.groupby(by, dropna=False, sort=False)
        .agg(
            n_respondents=("score", "size"),
            n_scored=("score", "count"),
            n_below_min_share=("below_min_share", "sum"),
            n_answered=("n_answered", "sum"),
            n_failed=("n_failed", "sum"),
            n_low_mass=("n_low_mass", "sum"),
        )
        .reset_index()
    )
    given = (counts["n_answered"] + counts["n_failed"]).to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        counts["parse_failure_rate"] = np.where(
            given > 0, (counts["n_failed"] - counts["n_low_mass"]) / given, np.nan
        )
        counts["low_mass_rate"] = np.where(given > 0, counts["n_low_mass"] / given, np.nan)
    counts["n_below_min_share"] = counts["n_below_min_share"].astype(np.int64)
    return counts


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


D_SCALED_BY: dict[str, str] = {
    "run": "SD across sampled runs (decoding noise)",
    "item": "SD across the trait's items",
    "adapter_seed": "SD across adapter training seeds",
}
"""What the SD dividing each ``cohens_d`` is: never a person-level SD, so a d here is not
comparable to a human effect size; the raw difference on the scale stands beside it."""


def separation(
    units: pd.DataFrame,
    by: Sequence[str] = ("method", "inventory"),
    persona_column: str = "persona",
) -> pd.DataFrame:
    """How far each persona pair moves every trait: high-minus-low, target and off-target,
    as paired differences over the independent units.

    ``units``: one row per (by..., persona, trait, unit) with the unit's ``value``
    (``personality.units``). The high and low persona of a trait answer the same items,
    under the same runs' call seeds and with the same adapter seeds, so their units pair up
    by ``unit_id``: for each group of ``by``, targeted trait t (personas t_high and t_low)
    and measured trait u, d_k = value of unit k under t_high minus under t_low, over the
    units present in both. difference = mean d_k (the raw difference on the scale);
    diff_ci_low/high: paired t interval, se = sd(d) / sqrt(n_pairs), df = n_pairs - 1.
    Rows with u == t (``is_target``) are the target separation; rows with u != t are the
    off-target drift. Drift is measured between the two poles of the same target rather
    than against the base model because the base condition lives in another method
    partition, and because a perfectly selective steering then shows exactly 0 on every
    other trait whatever the model's default personality is.

    Also: mean_high, mean_low (over the paired units), sd_pooled = sqrt of the mean of the
    two personas' unit variances, cohens_d = difference / sd_pooled with d_scaled_by
    naming that SD (``D_SCALED_BY``: decoding noise for runs, item spread for items,
    seed-to-seed spread for adapter seeds; never a person-level SD), d_ci_low/high (the
    difference's interval divided by sd_pooled). d is NaN when sd_pooled is 0. Rows without
    a persona (NA or "none") are ignored.
    """
    by = list(by)
    require_columns(units, [*by, persona_column, "trait", "unit", "unit_id", "value"], "units")
    target, level = _persona_parts(units[persona_column])
    frame = units[[*by, "trait", "unit", "unit_id", "value"]].copy()
    frame["target_trait"] = target.to_numpy()
    frame["_level"] = level.to_numpy()
    frame = frame[frame["_level"].notna()]
    keys = [*by, "target_trait", "trait"]
    columns = [
        *keys, "is_target", "unit", "n_pairs", "mean_high", "mean_low", "difference",
        "diff_ci_low", "diff_ci_high", "sd_pooled", "cohens_d", "d_scaled_by", "d_ci_low",
        "d_ci_high",
    ]  # fmt: skip
    if frame.empty:
        return pd.DataFrame(columns=columns)
    wide = frame.pivot_table(
        index=[*keys, "unit", "unit_id"], columns="_level", values="value", aggfunc="first"
    )
    wide = wide.reindex(columns=["high", "low"]).dropna()
    wide["d"] = wide["high"] - wide["low"]
    grouped = wide.groupby(level=[*keys, "unit"], sort=False)
    out = grouped.agg(
        n_pairs=("d", "size"),
        mean_high=("high", "mean"),
        mean_low=("low", "mean"),
        difference=("d", "mean"),
        sd_d=("d", "std"),
        var_high=("high", "var"),
        var_low=("low", "var"),
    ).reset_index()
    n = out["n_pairs"].to_numpy(dtype=np.float64)
    diff = out["difference"].to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        se = out["sd_d"].to_numpy(dtype=np.float64) / np.sqrt(n)
        sd_pooled = np.sqrt((out["var_high"] + out["var_low"]).to_numpy(dtype=np.float64) / 2)
        d = np.where(sd_pooled > 0, diff / sd_pooled, np.nan)
        diff_low, diff_high = _t_interval(diff, se, n - 1)
        d_low = np.where(sd_pooled > 0, diff_low / sd_pooled, np.nan)
        d_high = np.where(sd_pooled > 0, diff_high / sd_pooled, np.nan)
    out["is_target"] = out["trait"] == out["target_trait"]
    out["diff_ci_low"] = diff_low
    out["diff_ci_high"] = diff_high
    out["sd_pooled"] = sd_pooled
    out["cohens_d"] = d
    out["d_scaled_by"] = out["unit"].map(D_SCALED_BY)
    out["d_ci_low"] = d_low
    out["d_ci_high"] = d_high
    out["n_pairs"] = out["n_pairs"].astype(np.int64)
    order = {t: i for i, t in enumerate(TRAITS)}
    out = out[columns].sort_values(
        [*by, "target_trait", "trait"],
        key=lambda s: s.map(order).fillna(len(order)) if s.name in ("target_trait", "trait") else s,
        kind="stable",
    )
    return out.reset_index(drop=True)
