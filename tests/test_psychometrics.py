"""Scoring, summaries, separation, reliability and trait intercorrelations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pingouin
import pytest

from big5_dagster.lib.personality.correlations import (
    bootstrap_frobenius,
    convergent_correlations,
    frobenius_distance,
    persona_correlation_matrix,
    persona_trait_means,
    wide_trait_scores,
)
from big5_dagster.lib.personality.human_reference import (
    HUMAN_TRAIT_CORRELATIONS,
    human_trait_correlations,
)
from big5_dagster.lib.personality.inventory import InventoryError, load_inventory
from big5_dagster.lib.personality.reliability import (
    cronbach_alpha,
    item_matrix,
    mcdonald_omega,
    mcdonald_omega_fit,
    reliability_table,
)
from big5_dagster.lib.personality.scores import score_table, separation, summarize_scores
from big5_dagster.lib.traits import PERSONAS, TRAITS


@pytest.fixture(scope="module")
def bfi():
    return load_inventory("bfi44")


def _responses(rows: list[tuple], **constant) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["run", "option_order", "item_id", "value"])
    return frame.assign(**constant)


# --------------------------------------------------------------------------- scoring


def test_score_table_reverse_keys_counts_failures_and_absences(bfi) -> None:
    # Extraversion: bfi_01 (+), bfi_06 (-), bfi_11 (+), ... 8 items.
    responses = _responses(
        [
            (0, "normal", "bfi_01", 4.0),
            (0, "normal", "bfi_06", 1.0),  # reverse-keyed: counts as 5
            (0, "normal", "bfi_11", np.nan),  # asked, unparsable
            (0, "normal", "bfi_02", 2.0),  # agreeableness, reverse-keyed: 4
        ],
        method="dpo",
        persona="extraversion_high",
    )
    scores = score_table(responses, bfi).set_index("trait")
    assert list(scores.index) == list(bfi.categories)
    e = scores.loc["extraversion"]
    assert e["mean"] == 4.5 and e["score"] == 4.5
    assert (e["n_items"], e["n_answered"], e["n_failed"], e["n_absent"]) == (8, 2, 1, 5)
    assert scores.loc["agreeableness", "score"] == 4.0
    # A trait with nothing answered has no score (NaN), not an imputed one.
    o = scores.loc["openness"]
    assert np.isnan(o["score"]) and (o["n_answered"], o["n_absent"]) == (0, 10)
    assert set(scores["inventory"]) == {"bfi44"}


def test_score_table_uses_only_its_inventory_rows(bfi) -> None:
    responses = _responses(
        [(0, "normal", "bfi_01", 5.0), (0, "normal", "ipip_001", 1.0)], method="sft", persona="none"
    ).assign(inventory=["bfi44", "ipip_neo_120"])
    scores = score_table(responses, bfi)
    assert scores.set_index("trait").loc["extraversion", "score"] == 5.0
    with pytest.raises(ValueError, match="no row has inventory == 'bfi44'"):
        score_table(responses.assign(inventory="ipip_neo_120"), bfi)


@pytest.mark.parametrize(
    ("row", "error", "message"),
    [
        ((0, "normal", "bfi_99", 3.0), InventoryError, r"row 1, field 'item_id': 'bfi_99'"),
        ((0, "normal", "bfi_02", 6.0), InventoryError, r"row 1, field 'value': 6.0 is outside"),
        (
            (0, "normal", "bfi_02", "lots"),
            ValueError,
            r"row 1, field 'value': 'lots' is not a number",
        ),
        ((0, "normal", "bfi_01", 3.0), ValueError, r"row 1 repeats respondent and item"),
    ],
)
def test_score_table_bad_input_names_row_and_field(bfi, row, error, message) -> None:
    responses = _responses([(0, "normal", "bfi_01", 4.0), row], method="sft", persona="none")
    with pytest.raises(error, match=message):
        score_table(responses, bfi)


def test_base_condition_without_persona_is_scored_and_summarized(bfi) -> None:
    responses = _responses(
        [(0, "normal", "bfi_01", 2.0), (1, "normal", "bfi_01", 4.0)], method="base", persona=None
    )
    scores = score_table(responses, bfi)
    assert scores["persona"].isna().all() and len(scores) == 2 * 5
    summary = summarize_scores(scores).set_index("trait")
    assert summary.loc["extraversion", "mean"] == 3.0 and summary.loc["extraversion", "n"] == 2
    # No persona, so nothing to separate.
    assert separation(scores).empty


def test_score_table_requires_respondent_columns(bfi) -> None:
    responses = _responses([(0, "normal", "bfi_01", 4.0)], method="sft")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['persona'\]"):
        score_table(responses, bfi)


def test_summarize_scores_t_interval_and_failure_rate() -> None:
    scores = pd.DataFrame(
        {
            "method": "sft",
            "persona": "openness_high",
            "inventory": "bfi44",
            "trait": "openness",
            "score": [3.0, 4.0, 5.0, np.nan],
            "n_answered": [10, 9, 8, 0],
            "n_failed": [0, 1, 2, 10],
        }
    )
    (row,) = summarize_scores(scores).to_dict("records")
    t_975_df2 = 4.302652729911275  # scipy.stats.t.ppf(0.975, 2), written out
    assert row["mean"] == 4.0 and row["sd"] == 1.0 and row["n"] == 3
    assert row["n_respondents"] == 4
    assert row["ci_low"] == pytest.approx(4.0 - t_975_df2 / np.sqrt(3))
    assert row["ci_high"] == pytest.approx(4.0 + t_975_df2 / np.sqrt(3))
    assert row["parse_failure_rate"] == pytest.approx(13 / 40)


def _persona_scores(
    values: dict[tuple[str, str], list[float]], method: str = "sft"
) -> pd.DataFrame:
    rows = [
        {
            "method": method,
            "inventory": "bfi44",
            "persona": persona,
            "run": run,
            "trait": trait,
            "score": s,
        }
        for (persona, trait), scores in values.items()
        for run, s in enumerate(scores)
    ]
    return pd.DataFrame(rows)


def test_separation_target_and_off_target_with_effect_sizes() -> None:
    scores = _persona_scores(
        {
            ("openness_high", "openness"): [5.0, 4.0],
            ("openness_low", "openness"): [1.0, 2.0],
            ("openness_high", "conscientiousness"): [3.0, 3.0],
            ("openness_low", "conscientiousness"): [3.0, 3.0],
            ("openness_high", "extraversion"): [4.0, 4.0],
            ("openness_low", "extraversion"): [3.0, 3.0],
            ("none", "openness"): [3.0, 3.0],  # a condition without persona is ignored
        }
    )
    table = separation(scores).set_index(["target_trait", "trait"])
    target = table.loc[("openness", "openness")]
    assert target["is_target"]
    assert target["difference"] == 3.0
    assert target["sd_pooled"] == pytest.approx(np.sqrt(0.5))
    assert target["cohens_d"] == pytest.approx(3.0 / np.sqrt(0.5))
    t_975_df2 = 4.302652729911275
    assert target["diff_ci_low"] == pytest.approx(3.0 - t_975_df2 * np.sqrt(0.5))
    assert target["diff_ci_high"] == pytest.approx(3.0 + t_975_df2 * np.sqrt(0.5))
    assert target["d_ci_low"] < target["cohens_d"] < target["d_ci_high"]
    drift_c = table.loc[("openness", "conscientiousness")]
    assert not drift_c["is_target"] and drift_c["difference"] == 0.0
    assert np.isnan(drift_c["cohens_d"])  # no variance at all: d undefined, not 0 or inf
    drift_e = table.loc[("openness", "extraversion")]
    assert drift_e["difference"] == 1.0 and drift_e["diff_ci_low"] == drift_e["diff_ci_high"] == 1.0
    assert set(table.reset_index()["target_trait"]) == {"openness"}
    with pytest.raises(ValueError, match="field 'persona'"):
        separation(scores.assign(persona="openness_medium"))


# --------------------------------------------------------------------------- reliability


def test_cronbach_alpha_matches_pingouin() -> None:
    rng = np.random.default_rng(0)
    latent = rng.normal(size=(60, 1))
    data = pd.DataFrame(np.round(3 + latent + rng.normal(scale=0.8, size=(60, 6))).clip(1, 5))
    assert cronbach_alpha(data) == pytest.approx(pingouin.cronbach_alpha(data)[0], abs=1e-6)
    with_gaps = data.copy()
    with_gaps.iloc[[3, 10, 22], [0, 2, 5]] = np.nan
    expected = pingouin.cronbach_alpha(with_gaps, nan_policy="listwise")[0]
    assert cronbach_alpha(with_gaps) == pytest.approx(expected, abs=1e-6)


def test_cronbach_alpha_degenerate_cases() -> None:
    assert np.isnan(cronbach_alpha(pd.DataFrame({"a": [3.0, 3.0], "b": [3.0, 3.0]})))
    assert np.isnan(cronbach_alpha(pd.DataFrame({"a": [1.0, np.nan], "b": [2.0, 3.0]})))
    with pytest.raises(ValueError, match="at least 2 item columns"):
        cronbach_alpha(pd.DataFrame({"a": [1.0, 2.0, 3.0]}))


def _one_factor(loadings: np.ndarray, n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    factor = rng.normal(size=(n, 1))
    unique = rng.normal(size=(n, len(loadings))) * np.sqrt(1 - loadings**2)
    return pd.DataFrame(factor * loadings + unique)


def test_omega_recovers_the_theoretical_value() -> None:
    loadings = np.array([0.8, 0.7, 0.6, 0.5, 0.4, 0.7])
    theoretical = loadings.sum() ** 2 / (loadings.sum() ** 2 + (1 - loadings**2).sum())
    data = _one_factor(loadings, n=4000, seed=1)
    fit = mcdonald_omega_fit(data)
    assert fit.converged and fit.loadings == pytest.approx(loadings, abs=0.05)
    assert fit.omega == pytest.approx(theoretical, abs=0.015)
    assert mcdonald_omega(data) == fit.omega  # deterministic
    # Congeneric items (unequal loadings): alpha is a lower bound of omega.
    assert cronbach_alpha(data) < fit.omega


def test_omega_of_items_without_a_common_factor_is_near_zero() -> None:
    noise = pd.DataFrame(np.random.default_rng(7).normal(size=(40, 5)))
    fit = mcdonald_omega_fit(noise)
    assert fit.omega < 0.3


def test_omega_equals_alpha_for_tau_equivalent_items() -> None:
    data = _one_factor(np.full(6, 0.6), n=4000, seed=2)
    assert mcdonald_omega(data) == pytest.approx(cronbach_alpha(data), abs=0.01)
    assert np.isnan(mcdonald_omega(data.iloc[:, :2]))  # two items: one factor not identified
    constant = data.assign(extra=1.0)
    assert np.isnan(mcdonald_omega(constant))


def test_item_matrix_and_reliability_table(bfi) -> None:
    rng = np.random.default_rng(5)
    ids = list(bfi.categories["neuroticism"])
    rows = []
    for respondent in range(30):
        level = rng.normal()
        for item_id in ids:
            raw = 3 + level + rng.normal(scale=0.5)
            if bfi.item(item_id).reverse_keyed:
                raw = 6 - raw
            rows.append((respondent, "normal", item_id, float(np.clip(np.round(raw), 1, 5))))
    responses = _responses(rows, method="base", persona="none")
    matrix = item_matrix(responses, bfi, "neuroticism")
    assert list(matrix.columns) == ids and matrix.shape == (30, 8)
    first = responses[(responses["run"] == 0) & (responses["item_id"] == "bfi_09")]["value"].iloc[0]
    assert bfi.item("bfi_09").reverse_keyed and matrix.iloc[0]["bfi_09"] == 6 - first
    table = reliability_table(responses, bfi)
    n_row = table.set_index("trait").loc["neuroticism"]
    assert n_row["alpha"] == pytest.approx(cronbach_alpha(matrix))
    assert n_row["alpha"] > 0.8 and n_row["omega"] > 0.8 and n_row["omega_converged"]
    assert (n_row["n_respondents"], n_row["n_complete"], n_row["n_items"]) == (30, 30, 8)
    assert np.isnan(table.set_index("trait").loc["openness", "alpha"])  # nothing asked


# --------------------------------------------------------------------------- correlations


def test_human_reference_has_neuroticism_negative_with_c_a_e() -> None:
    n = TRAITS.index("neuroticism")
    for other in ("conscientiousness", "agreeableness", "extraversion"):
        assert HUMAN_TRAIT_CORRELATIONS[n, TRAITS.index(other)] < 0
    assert frobenius_distance(human_trait_correlations(), HUMAN_TRAIT_CORRELATIONS) == 0.0


def test_persona_correlation_matrix_and_constant_traits() -> None:
    rng = np.random.default_rng(3)
    means = pd.DataFrame(rng.uniform(1, 5, size=(10, 5)), columns=list(TRAITS))
    matrix = persona_correlation_matrix(means)
    np.testing.assert_allclose(matrix.to_numpy(), np.corrcoef(means.to_numpy(), rowvar=False))
    assert matrix.attrs["n_conditions"] == 10
    flat = means.assign(agreeableness=3.0)
    flat_matrix = persona_correlation_matrix(flat)
    assert flat_matrix.loc["agreeableness"].isna().all()
    assert flat_matrix.loc[:, "agreeableness"].isna().all()
    assert flat_matrix.loc["openness", "openness"] == pytest.approx(1.0)
    assert np.isnan(frobenius_distance(flat_matrix, HUMAN_TRAIT_CORRELATIONS))
    with pytest.raises(ValueError, match="need at least 3"):
        persona_correlation_matrix(means.iloc[:2])


def test_frobenius_distance() -> None:
    ref = human_trait_correlations()
    assert frobenius_distance(ref, ref.copy()) == 0.0
    other = np.eye(5)
    other[0, 1] = other[1, 0] = 0.5
    assert frobenius_distance(np.eye(5), other) == pytest.approx(np.sqrt(0.5))
    # Labelled matrices are compared label by label, whatever their row order.
    shuffled = ref.loc[list(reversed(TRAITS)), list(reversed(TRAITS))]
    assert frobenius_distance(ref, shuffled) == 0.0
    with pytest.raises(ValueError, match="square"):
        frobenius_distance(np.eye(5), np.eye(4))


def _respondent_scores(noise: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    centers = rng.uniform(1.5, 4.5, size=(len(PERSONAS), 5))
    rows = []
    for p, persona in enumerate(PERSONAS):
        for run in range(6):
            values = centers[p] + rng.normal(scale=noise, size=5)
            rows.append(
                {"persona": persona.key, "run": run, **dict(zip(TRAITS, values, strict=True))}
            )
    return pd.DataFrame(rows)


def test_bootstrap_frobenius_is_seeded_and_centred_on_the_point_estimate() -> None:
    data = _respondent_scores(noise=0.3, seed=4)
    means = data.groupby("persona")[list(TRAITS)].mean()
    expected = frobenius_distance(persona_correlation_matrix(means), HUMAN_TRAIT_CORRELATIONS)
    result = bootstrap_frobenius(data, HUMAN_TRAIT_CORRELATIONS, n_boot=300, seed=9)
    assert result.distance == pytest.approx(expected)
    assert result.ci_low < result.ci_high and result.n_valid == result.n_boot == 300
    assert result.ci_low < expected + 0.5 and result.ci_high > expected - 0.5
    assert bootstrap_frobenius(data, HUMAN_TRAIT_CORRELATIONS, n_boot=300, seed=9) == result
    assert bootstrap_frobenius(data, HUMAN_TRAIT_CORRELATIONS, n_boot=300, seed=10) != result
    # Without within-condition variation every replicate equals the point estimate.
    exact = _respondent_scores(noise=0.0, seed=4)
    fixed = bootstrap_frobenius(exact, HUMAN_TRAIT_CORRELATIONS, n_boot=50, seed=1)
    assert fixed.ci_low == pytest.approx(fixed.distance) == pytest.approx(fixed.ci_high)


def test_bootstrap_frobenius_reports_constant_traits() -> None:
    data = _respondent_scores(noise=0.0, seed=4).assign(openness=3.0)
    result = bootstrap_frobenius(data, HUMAN_TRAIT_CORRELATIONS, n_boot=20, seed=1)
    assert np.isnan(result.distance) and np.isnan(result.ci_low) and result.n_valid == 0


def test_persona_means_wide_scores_and_convergent_validity() -> None:
    rows = []
    for p, persona in enumerate(PERSONAS):
        for t, trait in enumerate(TRAITS):
            for run in range(2):
                rows.append(
                    {
                        "method": "sft",
                        "inventory": "bfi44",
                        "persona": persona.key,
                        "run": run,
                        "option_order": "normal",
                        "trait": trait,
                        "score": 1 + (p * 7 + t * 3 + run) % 5,
                    }
                )
    scores = pd.DataFrame(rows)
    means = persona_trait_means(scores)
    assert means.shape == (10, 5) and list(means.columns) == list(TRAITS)
    assert means.loc["openness_high", "openness"] == pytest.approx((1 + 2) / 2)
    wide = wide_trait_scores(scores)
    assert len(wide) == 20 and set(TRAITS) <= set(wide.columns)
    with pytest.raises(ValueError, match="filter to one method"):
        persona_trait_means(pd.concat([scores, scores.assign(method="dpo")]))

    ipip = 2 * means + 1
    ipip["neuroticism"] = -means["neuroticism"]
    ipip["openness"] = 3.0
    validity = convergent_correlations(means, ipip.iloc[::-1])  # matched by persona, not row
    assert validity.loc["extraversion", "r"] == pytest.approx(1.0)
    assert validity.loc["neuroticism", "r"] == pytest.approx(-1.0)
    assert np.isnan(validity.loc["openness", "r"])
    assert (validity["n_conditions"] == 10).all()
