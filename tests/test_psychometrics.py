"""Scoring, summaries, separation, reliability and trait intercorrelations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pingouin
import pytest

from big5_dagster.lib.personality.correlations import (
    bootstrap_frobenius,
    frobenius_distance,
    mtmm_validity,
    persona_correlation_matrix,
    persona_trait_means,
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
from big5_dagster.lib.personality.scores import (
    score_counts,
    score_table,
    separation,
    summarize_units,
)
from big5_dagster.lib.personality.units import item_units, run_units, seed_units
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
    scores = score_table(responses, bfi, min_answered_share=0.1).set_index("trait")
    assert list(scores.index) == list(bfi.categories)
    e = scores.loc["extraversion"]
    assert e["mean"] == 4.5 and e["score"] == 4.5
    assert (e["n_items"], e["n_answered"], e["n_failed"], e["n_absent"]) == (8, 2, 1, 5)
    assert scores.loc["agreeableness", "score"] == 4.0
    # With the default minimum (0.8 of the items) 2 of 8 answered is no score at all.
    default = score_table(responses, bfi).set_index("trait")
    assert (
        np.isnan(default.loc["extraversion", "score"])
        and default.loc["extraversion", "below_min_share"]
    )
    # A trait with nothing answered has no score (NaN), not an imputed one.
    o = scores.loc["openness"]
    assert np.isnan(o["score"]) and (o["n_answered"], o["n_absent"]) == (0, 10)
    assert set(scores["inventory"]) == {"bfi44"}


def test_score_table_uses_only_its_inventory_rows(bfi) -> None:
    responses = _responses(
        [(0, "normal", "bfi_01", 5.0), (0, "normal", "ipip_001", 1.0)], method="sft", persona="none"
    ).assign(inventory=["bfi44", "ipip_neo_120"])
    scores = score_table(responses, bfi, min_answered_share=0.1)
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


def test_a_trait_score_needs_the_minimum_share_of_answered_items(bfi) -> None:
    """Below the share the score is missing and counted; above it, the mean of the answered
    items. The old scorer took the mean of whatever was answered (imputing the rest)."""
    extraversion = list(bfi.categories["extraversion"])  # 8 items
    rows = []
    for run, n_answered in ((0, 7), (1, 6)):
        for k, item_id in enumerate(extraversion):
            value = 5.0 if not bfi.item(item_id).reverse_keyed else 1.0
            rows.append((run, "normal", item_id, value if k < n_answered else np.nan))
    statuses = ["ok"] * 7 + ["low_mass"] + ["ok"] * 6 + ["no_number", "low_mass"]
    responses = _responses(rows, method="sft", persona="none").assign(parse_status=statuses)
    scores = score_table(responses, bfi).set_index(["run", "trait"])
    kept, dropped = scores.loc[(0, "extraversion")], scores.loc[(1, "extraversion")]
    assert kept["score"] == 5.0 and not kept["below_min_share"]
    assert kept["share_answered"] == 7 / 8 and kept["n_low_mass"] == 1
    assert np.isnan(dropped["score"]) and np.isnan(dropped["mean"]) and dropped["below_min_share"]
    assert (dropped["n_answered"], dropped["n_failed"], dropped["n_low_mass"]) == (6, 2, 1)
    counts = score_counts(scores.reset_index().assign(scorer="logprob"), by=["scorer", "trait"])
    e = counts.set_index("trait").loc["extraversion"]
    assert (e["n_respondents"], e["n_scored"], e["n_below_min_share"]) == (2, 1, 1)
    assert e["low_mass_rate"] == 2 / 16 and e["parse_failure_rate"] == 1 / 16
    with pytest.raises(ValueError, match="min_answered_share must be in"):
        score_table(responses, bfi, min_answered_share=0.0)


def test_score_table_requires_respondent_columns(bfi) -> None:
    responses = _responses([(0, "normal", "bfi_01", 4.0)], method="sft")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['persona'\]"):
        score_table(responses, bfi)


def _units(
    values: dict[tuple[str, str], list[float]], unit: str = "run", **condition
) -> pd.DataFrame:
    """A unit table: (persona, trait) -> one value per unit (unit ids 0, 1, ...)."""
    rows = [
        {
            "scorer": "logprob",
            "method": "sft",
            "adapter_seed": -1,
            "inventory": "bfi44",
            **condition,
            "persona": persona,
            "trait": trait,
            "unit": unit,
            "unit_id": str(k),
            "value": v,
        }
        for (persona, trait), unit_values in values.items()
        for k, v in enumerate(unit_values)
    ]
    return pd.DataFrame(rows)


def test_summarize_units_t_interval_over_the_units() -> None:
    units = _units({("openness_high", "openness"): [3.0, 4.0, 5.0, np.nan]}, unit="item")
    (row,) = summarize_units(units).to_dict("records")
    t_975_df2 = 4.302652729911275  # scipy.stats.t.ppf(0.975, 2), written out
    assert row["mean"] == 4.0 and row["sd"] == 1.0 and row["n_units"] == 3 and row["unit"] == "item"
    assert row["ci_low"] == pytest.approx(4.0 - t_975_df2 / np.sqrt(3))
    assert row["ci_high"] == pytest.approx(4.0 + t_975_df2 / np.sqrt(3))
    (single,) = summarize_units(units.iloc[:1]).to_dict("records")
    assert single["n_units"] == 1 and np.isnan(single["ci_low"])  # one unit: no interval


def _respondent_scores(bfi, values: dict[tuple[str, str, int], float]) -> pd.DataFrame:
    """score_table-like rows: (persona, option_order, run) -> the same score on every trait."""
    return pd.DataFrame(
        [
            {
                "method": "prompt_description",
                "persona": persona,
                "adapter_seed": -1,
                "run": run,
                "option_order": order,
                "trait": trait,
                "score": score,
            }
            for (persona, order, run), score in values.items()
            for trait in bfi.categories
        ]
    )


def test_run_units_average_the_option_orders_and_need_both(bfi) -> None:
    scores = _respondent_scores(
        bfi,
        {
            ("openness_high", "normal", 0): 5.0,
            ("openness_high", "reversed", 0): 3.0,
            ("openness_high", "normal", 1): 4.0,
            ("openness_high", "reversed", 1): np.nan,  # missing in one order: no unit
        },
    )
    units = run_units(scores)
    assert set(units["unit"]) == {"run"} and set(units["unit_id"]) == {"0"}
    assert (units["value"] == 4.0).all() and len(units) == 5


def test_item_units_are_items_averaged_over_orders(bfi) -> None:
    ids = list(bfi.categories["openness"])  # 10 items, bfi_35 and bfi_41 reverse-scored
    rows = []
    for order, shift in (("normal", 0.5), ("reversed", -0.5)):
        for item_id in ids:
            keyed = 4.0 + shift
            raw = 6 - keyed if bfi.item(item_id).reverse_keyed else keyed
            rows.append(
                (0, order, item_id, raw if item_id != "bfi_05" or order == "normal" else np.nan)
            )
    answers = _responses(rows, method="base", persona="none", adapter_seed=-1)
    respondents = ["method", "persona", "adapter_seed", "run", "option_order"]
    scores = score_table(answers, bfi, respondent_columns=respondents)
    units = item_units(answers, bfi, scores, respondents)
    # The order effect cancels within each item; bfi_05 (one order only) is not a unit.
    assert set(units["unit_id"]) == set(ids) - {"bfi_05"}
    assert units["value"].to_numpy() == pytest.approx(4.0)


def test_adapter_seeds_are_the_units_of_a_trained_method() -> None:
    """Two stages: within a seed, then across seeds. Three seeds answering 3, 4 and 5 on
    every item are three units, not 3 x 10 respondents: the interval is over the seeds."""
    rows = []
    for seed, level in ((1, 3.0), (2, 4.0), (3, 5.0)):
        rows.append(
            _units({("openness_high", "openness"): [level + e for e in np.linspace(-0.1, 0.1, 10)]},
                   unit="item", adapter_seed=seed)
        )  # fmt: skip
    seeds = seed_units(pd.concat(rows, ignore_index=True))
    assert set(seeds["unit"]) == {"adapter_seed"} and sorted(seeds["value"]) == pytest.approx(
        [3, 4, 5]
    )
    (row,) = summarize_units(seeds, by=["method", "persona", "trait"]).to_dict("records")
    t_975_df2 = 4.302652729911275
    assert row["n_units"] == 3 and row["mean"] == pytest.approx(4.0)
    assert row["ci_high"] - row["mean"] == pytest.approx(t_975_df2 * 1.0 / np.sqrt(3))
    # Other methods keep their units.
    prompt = _units({("openness_high", "openness"): [1.0, 2.0]}, method="prompt_description")
    assert seed_units(prompt).equals(prompt)


def test_separation_pairs_the_units_of_high_and_low() -> None:
    """Items differ a lot, but the high persona answers every item exactly 2 above the low one:
    paired over the items the difference is 2 with no uncertainty (unpaired it would be wide)."""
    item_effects = [1.0, 2.5, 0.5, 2.0]
    units = _units(
        {
            ("openness_high", "openness"): [2.0 + e for e in item_effects],
            ("openness_low", "openness"): [e for e in item_effects],
            ("openness_high", "extraversion"): [3.0, 3.0, 3.5, 3.5],
            ("openness_low", "extraversion"): [3.0, 3.0, 3.0, 3.0],
            ("none", "openness"): [3.0, 3.0, 3.0, 3.0],  # no persona: ignored
        },
        unit="item",
    )
    table = separation(units).set_index(["target_trait", "trait"])
    target = table.loc[("openness", "openness")]
    assert target["is_target"] and target["n_pairs"] == 4
    assert target["difference"] == 2.0
    assert target["diff_ci_low"] == pytest.approx(2.0) and target["diff_ci_high"] == pytest.approx(
        2.0
    )
    sd = np.std(item_effects, ddof=1)
    assert target["sd_pooled"] == pytest.approx(sd)
    assert target["cohens_d"] == pytest.approx(2.0 / sd)
    assert target["d_scaled_by"] == "SD across the trait's items"
    drift = table.loc[("openness", "extraversion")]
    t_975_df3 = 3.182446305284263
    assert drift["difference"] == 0.25
    assert drift["diff_ci_high"] == pytest.approx(
        0.25 + t_975_df3 * np.std([0, 0, 0.5, 0.5], ddof=1) / 2
    )
    assert set(table.reset_index()["target_trait"]) == {"openness"}
    runs = separation(units.assign(unit="run"))
    assert set(runs["d_scaled_by"]) == {"SD across sampled runs (decoding noise)"}
    with pytest.raises(ValueError, match="field 'persona'"):
        separation(units.assign(persona="openness_medium"))


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
    means = pd.DataFrame(rng.normal(3, 1, size=(10, 5)), columns=list(TRAITS))
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


TRUE_MEANS = np.random.default_rng(0).uniform(1.5, 4.5, size=(len(PERSONAS), 5))


def _sampled_run_units(bfi, rng, n_runs: int, noise: float, order_shift: float) -> pd.DataFrame:
    """Run units of a sampling scorer whose answers carry a strong option-order effect: every
    trait score is ``order_shift`` higher in normal than in reversed order."""
    persona, run, order, trait = np.meshgrid(
        np.arange(len(PERSONAS)), np.arange(n_runs), [0, 1], np.arange(5), indexing="ij"
    )
    shift = np.where(order == 0, order_shift, -order_shift)
    score = TRUE_MEANS[persona, trait] + shift + rng.normal(scale=noise, size=persona.shape)
    scores = pd.DataFrame(
        {
            "method": "prompt_description",
            "persona": np.array([p.key for p in PERSONAS])[persona.ravel()],
            "adapter_seed": -1,
            "run": run.ravel(),
            "option_order": np.array(["normal", "reversed"])[order.ravel()],
            "trait": np.array(TRAITS)[trait.ravel()],
            "score": score.ravel(),
        }
    )
    return run_units(scores).assign(scorer="generate", inventory="bfi44")


def _true_correlations() -> np.ndarray:
    return np.corrcoef(TRUE_MEANS, rowvar=False)


def test_frobenius_interval_covers_the_truth_and_its_point_under_a_strong_order_effect(bfi) -> None:
    """No true difference (the reference is the true persona correlation matrix, distance 0)
    and a strong option-order effect: the interval holds the reported distance every time and
    the true distance at (at least) the nominal rate. The old bootstrap (commit 2fbff9d),
    which resampled run x order respondents freely within a persona, put its interval wholly
    above its point in 91 of 100 simulations of this design and never covered 0."""
    rng = np.random.default_rng(11)
    truth = _true_correlations()
    covered = point_inside = 0
    n_sims = 40
    for sim in range(n_sims):
        units = _sampled_run_units(bfi, rng, n_runs=5, noise=0.5, order_shift=1.0)
        result = bootstrap_frobenius(units, truth, n_boot=200, seed=sim)
        assert result.unit == "run" and result.n_units == 50 and result.n_valid == 200
        covered += result.ci_low <= 0.0 <= result.ci_high
        point_inside += result.ci_low <= result.bias_corrected <= result.ci_high
        assert result.bias_corrected <= result.distance  # the noise's share is taken off
    assert point_inside == n_sims
    assert covered / n_sims >= 0.9


def test_frobenius_interval_covers_a_nonzero_distance_at_about_the_nominal_rate(bfi) -> None:
    truth = _true_correlations()
    reference = truth.copy()
    reference[0, 1] = reference[1, 0] = np.clip(truth[0, 1] + 0.5, -1, 1)
    reference[2, 3] = reference[3, 2] = truth[2, 3] - 0.4
    distance = frobenius_distance(truth, reference)
    rng = np.random.default_rng(12)
    n_sims = 40
    covered = 0
    for sim in range(n_sims):
        units = _sampled_run_units(bfi, rng, n_runs=5, noise=0.5, order_shift=1.0)
        result = bootstrap_frobenius(units, reference, n_boot=200, seed=sim)
        covered += result.ci_low <= distance <= result.ci_high
    # 95% nominal; 40 simulations: 0.8 is 3 binomial SDs below 0.95.
    assert covered / n_sims >= 0.8


def test_frobenius_bootstrap_resamples_items_once_for_all_personas() -> None:
    """Items are crossed with personas: an item effect shared by every persona moves all the
    persona means of a trait alike, so it cannot change a correlation. Resampling the items
    once per replicate for all personas keeps every replicate at the point estimate."""
    rng = np.random.default_rng(4)
    item_effects = {t: rng.normal(scale=1.0, size=8) for t in TRAITS}
    rows = [
        {"scorer": "logprob", "method": "base", "inventory": "bfi44", "persona": persona.key,
         "trait": t, "unit": "item", "unit_id": f"{t}_{k}", "value": TRUE_MEANS[p, j] + e}
        for p, persona in enumerate(PERSONAS)
        for j, t in enumerate(TRAITS)
        for k, e in enumerate(item_effects[t])
    ]  # fmt: skip
    units = pd.DataFrame(rows)
    result = bootstrap_frobenius(units, HUMAN_TRAIT_CORRELATIONS, n_boot=100, seed=1)
    expected = frobenius_distance(np.corrcoef(TRUE_MEANS, rowvar=False), HUMAN_TRAIT_CORRELATIONS)
    assert result.distance == pytest.approx(expected)
    assert result.ci_low == pytest.approx(expected) == pytest.approx(result.ci_high)
    assert result.unit == "item" and result.n_units == 40


def test_frobenius_bootstrap_is_seeded_and_needs_units_to_resample(bfi) -> None:
    units = _sampled_run_units(bfi, np.random.default_rng(5), n_runs=4, noise=0.3, order_shift=0.5)
    first = bootstrap_frobenius(units, HUMAN_TRAIT_CORRELATIONS, n_boot=100, seed=9)
    assert bootstrap_frobenius(units, HUMAN_TRAIT_CORRELATIONS, n_boot=100, seed=9) == first
    assert bootstrap_frobenius(units, HUMAN_TRAIT_CORRELATIONS, n_boot=100, seed=10) != first
    one_run = units[units["unit_id"] == "0"]
    single = bootstrap_frobenius(one_run, HUMAN_TRAIT_CORRELATIONS, n_boot=100, seed=9)
    assert np.isfinite(single.distance) and np.isnan(single.ci_low) and single.n_valid == 0
    constant = units.assign(value=3.0)
    flat = bootstrap_frobenius(constant, HUMAN_TRAIT_CORRELATIONS, n_boot=20, seed=1)
    assert np.isnan(flat.distance) and np.isnan(flat.ci_low) and flat.n_valid == 0


def test_persona_means_of_units() -> None:
    units = _units(
        {("openness_high", "openness"): [1.0, 3.0], ("none", "openness"): [5.0, 5.0]}, unit="item"
    )
    means = persona_trait_means(units)
    assert list(means.index) == ["openness_high"] and list(means.columns) == list(TRAITS)
    assert means.loc["openness_high", "openness"] == 2.0
    with pytest.raises(ValueError, match="filter to one condition"):
        persona_trait_means(pd.concat([units, units.assign(method="dpo")]))


def _two_inventory_item_units(rng, ipip_of, noise: float) -> pd.DataFrame:
    rows = []
    for inv, n_items in (("bfi44", 9), ("ipip_neo_120", 24)):
        for p, persona in enumerate(PERSONAS):
            for j, t in enumerate(TRAITS):
                true = TRUE_MEANS[p, j] if inv == "bfi44" else ipip_of(TRUE_MEANS[p], j)
                for k in range(n_items):
                    rows.append(
                        {"scorer": "logprob", "method": "sft", "inventory": inv,
                         "persona": persona.key, "trait": t, "unit": "item",
                         "unit_id": f"{inv}_{t}_{k}", "value": true + rng.normal(scale=noise)}
                    )  # fmt: skip
    return pd.DataFrame(rows)


def test_mtmm_convergent_and_discriminant_validity_with_intervals() -> None:
    rng = np.random.default_rng(6)
    # IPIP = 2 x BFI + 1 on every trait, but neuroticism reversed: convergent +1 except N.
    signs = np.array([1, 1, 1, 1, -1])
    units = _two_inventory_item_units(rng, lambda m, j: 1 + signs[j] * 2 * m[j], noise=0.05)
    table = mtmm_validity(units, ("bfi44", "ipip_neo_120"), n_boot=200, seed=3)
    convergent = table[table.measure == "convergent"].set_index("trait")
    assert convergent.loc["openness", "r"] == pytest.approx(1.0, abs=0.01)
    assert convergent.loc["neuroticism", "r"] == pytest.approx(-1.0, abs=0.01)
    cross = np.corrcoef(TRUE_MEANS, rowvar=False) * signs[None, :]
    off = cross[~np.eye(5, dtype=bool)]
    rows = table.set_index("measure")
    assert rows.loc["discriminant_mean_abs", "r"] == pytest.approx(np.abs(off).mean(), abs=0.02)
    assert rows.loc["discriminant_mean", "r"] == pytest.approx(off.mean(), abs=0.02)
    assert (table.ci_low <= table.r).all() and (table.r <= table.ci_high).all()
    assert (table.n_personas == 10).all() and set(table.unit) == {"item"}
    # Noisier items: the same structure, wider intervals.
    noisy = mtmm_validity(
        _two_inventory_item_units(np.random.default_rng(6), lambda m, j: 1 + signs[j] * 2 * m[j], 1.0),
        ("bfi44", "ipip_neo_120"), n_boot=200, seed=3,
    )  # fmt: skip
    assert ((noisy.ci_high - noisy.ci_low) > (table.ci_high - table.ci_low)).all()
    # Three adapter seeds allow 10 distinct resamples: no interval, but the correlations.
    seeds = units.assign(
        unit="adapter_seed", unit_id=units.unit_id.str[-1].map(lambda c: str(int(c) % 3))
    )
    by_seed = mtmm_validity(seeds, ("bfi44", "ipip_neo_120"), n_boot=50, seed=3)
    assert by_seed.r.notna().all() and by_seed.ci_low.isna().all()
