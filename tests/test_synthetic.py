"""Synthetic seed corpora: determinism, human-like trait correlations, a learnable signal."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from big5_dagster.lib.corpora.schema import POST_COLUMNS, canonical_posts, validate_scenarios
from big5_dagster.lib.corpora.synthetic_posts import (
    MAX_POST_WORDS,
    MIN_POST_WORDS,
    generate_posts,
    marker_clause_probability,
    marker_tag_probability,
    post_phrases,
)
from big5_dagster.lib.corpora.synthetic_scenarios import generate_scenarios
from big5_dagster.lib.personality.human_reference import (
    HUMAN_TRAIT_CORRELATIONS,
    HUMAN_TRAIT_CORRELATIONS_OBSERVED,
    HUMAN_TRAIT_CORRELATIONS_SOURCE,
    check_reference_matrix,
    human_trait_correlations,
)
from big5_dagster.lib.traits import TRAITS

N_POSTS = 6000


@pytest.fixture(scope="module")
def posts() -> pd.DataFrame:
    return generate_posts(N_POSTS, seed=11)


def _tertile_labels(scores: pd.Series) -> np.ndarray:
    low, high = np.quantile(scores, [1 / 3, 2 / 3])
    return np.where(scores <= low, 0, np.where(scores > high, 1, -1))


def _per_trait_accuracy(train_texts, test_texts, train, test) -> dict[str, float]:
    vectorizer = TfidfVectorizer(sublinear_tf=True)
    x_train = vectorizer.fit_transform(train_texts)
    x_test = vectorizer.transform(test_texts)
    accuracy = {}
    for trait in TRAITS:
        both = pd.concat([train[trait], test[trait]])
        labels = _tertile_labels(both)
        y_train, y_test = labels[: len(train)], labels[len(train) :]
        keep_train, keep_test = y_train >= 0, y_test >= 0
        model = LogisticRegression(max_iter=1000).fit(x_train[keep_train], y_train[keep_train])
        accuracy[trait] = float((model.predict(x_test[keep_test]) == y_test[keep_test]).mean())
    return accuracy


# --- human reference ---------------------------------------------------------------------


def test_reference_matrices_are_valid_and_keyed_as_neuroticism():
    for matrix in (HUMAN_TRAIT_CORRELATIONS, HUMAN_TRAIT_CORRELATIONS_OBSERVED):
        check_reference_matrix(matrix)
        n = TRAITS.index("neuroticism")
        assert all(matrix[n, TRAITS.index(t)] < 0 for t in TRAITS if t != "neuroticism")
    # Disattenuated correlations are at least as strong as the observed ones.
    assert np.all(np.abs(HUMAN_TRAIT_CORRELATIONS) >= np.abs(HUMAN_TRAIT_CORRELATIONS_OBSERVED))
    frame = human_trait_correlations()
    assert list(frame.index) == list(TRAITS) == list(frame.columns)
    frame.iloc[0, 1] = 0.99  # a copy: the shared constant stays untouched
    assert HUMAN_TRAIT_CORRELATIONS[0, 1] == 0.20
    with pytest.raises(ValueError):
        HUMAN_TRAIT_CORRELATIONS[0, 1] = 0.5
    source = HUMAN_TRAIT_CORRELATIONS_SOURCE
    assert (source.year, source.volume, source.n_participants) == (2010, 44, 144_117)
    assert "van der Linden" in source.citation and "10.1016/j.jrp.2010.03.003" in source.citation


def test_check_reference_matrix_rejects_emotional_stability_keying():
    flipped = np.array(HUMAN_TRAIT_CORRELATIONS)
    n = TRAITS.index("neuroticism")
    flipped[n, :] *= -1
    flipped[:, n] *= -1  # diagonal flips twice and stays 1
    with pytest.raises(ValueError, match="neuroticism must correlate negatively"):
        check_reference_matrix(flipped)


# --- posts ---------------------------------------------------------------------------------


def test_posts_are_deterministic_and_seed_dependent():
    first = generate_posts(300, seed=5)
    pd.testing.assert_frame_equal(first, generate_posts(300, seed=5))
    other = generate_posts(300, seed=6)
    assert (first["text"] != other["text"]).mean() > 0.9
    assert not np.allclose(first[list(TRAITS)], other[list(TRAITS)])


def test_posts_follow_the_canonical_schema(posts):
    assert tuple(posts.columns) == POST_COLUMNS
    assert posts["post_id"].is_unique
    # The canonical validator accepts the frame unchanged.
    pd.testing.assert_frame_equal(
        canonical_posts(posts, "synthetic"), posts, check_dtype=False, check_index_type=False
    )
    words = posts["text"].str.split().str.len()
    assert words.between(MIN_POST_WORDS, MAX_POST_WORDS).all()
    assert posts["text"].nunique() > 0.97 * len(posts)


def test_score_correlations_match_the_human_reference(posts):
    observed = np.corrcoef(posts[list(TRAITS)].to_numpy(), rowvar=False)
    assert np.abs(observed - HUMAN_TRAIT_CORRELATIONS).max() < 0.06
    assert np.abs(posts[list(TRAITS)].mean()).max() < 0.06
    assert np.abs(posts[list(TRAITS)].std() - 1).max() < 0.06


def test_trait_level_is_learnable_from_text_for_every_trait(posts):
    train, test = posts.iloc[:5000], posts.iloc[5000:]
    accuracy = _per_trait_accuracy(train["text"], test["text"], train, test)
    print("held-out high/low accuracy per trait:", {t: round(a, 3) for t, a in accuracy.items()})
    assert all(a >= 0.7 for a in accuracy.values()), accuracy


def test_signal_is_in_the_continuation_not_the_first_five_words(posts):
    # Experts learn "first 5 words -> rest": the prefix should be mostly neutral.
    train, test = posts.iloc[:5000], posts.iloc[5000:]
    first5 = posts["text"].str.split().str[:5].str.join(" ")
    accuracy = _per_trait_accuracy(first5.iloc[:5000], first5.iloc[5000:], train, test)
    assert np.mean(list(accuracy.values())) < 0.62, accuracy
    openers = tuple(o.lower() for o in post_phrases().openers)
    assert posts["text"].str.lower().str.startswith(openers).mean() > 0.6


@pytest.fixture(scope="module")
def pole_use(posts) -> dict[tuple[str, str], np.ndarray]:
    """Which posts use each trait pole's phrases (after the casual-style normalisation)."""
    texts = posts["text"].str.lower().str.replace("'", "", regex=False).tolist()
    # Single-word tags must match whole tokens ("ugh" is not in "laughed"); phrases as substrings.
    tokens = [set(re.findall(r"[\w#^>]+", text)) for text in texts]
    use = {}
    for (trait, level), bank in post_phrases().markers.items():
        phrases = {p.lower().replace("'", "") for p in (*bank.clauses, *bank.tags)}
        words = {p for p in phrases if " " not in p}
        multi = [p for p in phrases if " " in p]
        use[trait, level] = np.array(
            [
                bool(words & toks) or any(p in text for p in multi)
                for text, toks in zip(texts, tokens, strict=True)
            ]
        )
    return use


@pytest.mark.parametrize("trait", TRAITS)
def test_marker_use_grows_with_trait_strength(posts, pole_use, trait):
    z = posts[trait].to_numpy()
    strong_high, neutral, strong_low = z > 1.2, np.abs(z) < 0.2, z < -1.2
    high_use, low_use = pole_use[trait, "high"], pole_use[trait, "low"]
    # A strongly high author reads high, a strongly low one reads low, an average one rarely either.
    assert high_use[strong_high].mean() > 0.6
    assert low_use[strong_low].mean() > 0.6
    assert high_use[strong_low].mean() < 0.02 and low_use[strong_high].mean() < 0.02
    assert (high_use | low_use)[neutral].mean() < 0.4
    assert (
        marker_clause_probability(0.0)
        < marker_clause_probability(1.0)
        < marker_clause_probability(2.0)
    )
    assert marker_tag_probability(0.0) < marker_tag_probability(1.0) < marker_tag_probability(2.0)


def test_posts_mix_several_traits(pole_use):
    traits_per_post = sum(used.astype(int) for used in pole_use.values())
    assert traits_per_post.mean() > 1.5
    assert (traits_per_post >= 2).mean() > 0.5


# --- scenarios -----------------------------------------------------------------------------


def test_scenarios_are_deterministic_and_seed_dependent():
    first = generate_scenarios(50, seed=3)
    pd.testing.assert_frame_equal(first, generate_scenarios(50, seed=3))
    assert (first["narrative"] != generate_scenarios(50, seed=4)["narrative"]).mean() > 0.9


def test_scenarios_are_varied_valid_and_name_both_people():
    scenarios = generate_scenarios(400, seed=1)
    validate_scenarios(scenarios, "synthetic")  # canonical schema, distinct people, unique ids
    assert scenarios["narrative"].is_unique
    assert (scenarios["person_x"] != scenarios["person_y"]).all()
    for row in scenarios.itertuples():
        assert row.person_x in row.narrative and row.person_y in row.narrative
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", row.narrative) if s]
        assert 1 <= len(sentences) <= 3, row.narrative
    names = set(scenarios["person_x"]) | set(scenarios["person_y"])
    assert len(names) > 150
    # Many distinct situations: the narrative skeletons (names masked) differ widely.
    skeletons = {
        " ".join(n.replace(x, "X").replace(y, "Y").split()[:6])
        for n, x, y in scenarios[["narrative", "person_x", "person_y"]].itertuples(index=False)
    }
    assert len(skeletons) >= 40
