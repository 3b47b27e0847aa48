"""The trait classifier: TF-IDF + logistic (tiny profile) and RoBERTa-style regression (paper)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import norm
from transformers import AutoTokenizer, RobertaConfig, RobertaForSequenceClassification

from big5_dagster.lib.corpora.labels import label_and_split
from big5_dagster.lib.corpora.synthetic_posts import generate_posts
from big5_dagster.lib.experts.classifier import load_classifier, make_classifier
from big5_dagster.lib.experts.classifier_spec import ClassifierError, ClassifierSpec
from big5_dagster.lib.experts.roberta_classifier import (
    RobertaRegressionClassifier,
    cdf_targets,
    regression_training_rows,
)
from big5_dagster.lib.experts.tfidf_classifier import TfidfLogisticClassifier
from big5_dagster.lib.traits import TRAITS


@pytest.fixture(scope="module")
def posts() -> pd.DataFrame:
    return label_and_split(generate_posts(1500, seed=11), split_seed=42, test_fraction=0.1)


@pytest.fixture(scope="module")
def tfidf(posts: pd.DataFrame) -> TfidfLogisticClassifier:
    classifier = make_classifier(ClassifierSpec(kind="tfidf_logistic", seed=0))
    assert isinstance(classifier, TfidfLogisticClassifier)
    return classifier.fit(posts)


def test_tfidf_beats_chance_on_held_out_synthetic_posts(
    tfidf: TfidfLogisticClassifier, posts: pd.DataFrame
) -> None:
    result = tfidf.evaluate(posts).set_index("trait")
    assert list(result.index) == list(TRAITS)
    for trait in TRAITS:
        test = posts[posts[f"{trait}_split"] == "test"]
        assert result.loc[trait, "n"] == len(test) > 0
        assert result.loc[trait, "n_high"] + result.loc[trait, "n_low"] == len(test)
        assert result.loc[trait, "accuracy"] >= 0.7, result
        assert result.loc[trait, "accuracy"] > result.loc[trait, "majority_baseline"] + 0.15


def test_tfidf_trains_only_on_each_traits_train_split(
    tfidf: TfidfLogisticClassifier, posts: pd.DataFrame
) -> None:
    for trait in TRAITS:
        train = posts[(posts[f"{trait}_split"] == "train") & posts[f"{trait}_level"].notna()]
        assert tfidf.fit_report["n_train"][trait] == len(train)


def test_evaluate_scores_test_rows_only(
    tfidf: TfidfLogisticClassifier, posts: pd.DataFrame
) -> None:
    # Flipping every TRAIN label changes nothing in evaluate() (it reads only test rows and
    # the train majority, which a balanced split keeps); flipping TEST labels inverts accuracy.
    flip = {"high": "low", "low": "high"}
    before = tfidf.evaluate(posts).set_index("trait")["accuracy"]
    flipped_train, flipped_test = posts.copy(), posts.copy()
    for trait in TRAITS:
        level, split = f"{trait}_level", f"{trait}_split"
        train = (posts[split] == "train").fillna(False)
        test = (posts[split] == "test").fillna(False)
        flipped_train.loc[train, level] = posts.loc[train, level].map(flip)
        flipped_test.loc[test, level] = posts.loc[test, level].map(flip)
    after_train = tfidf.evaluate(flipped_train).set_index("trait")["accuracy"]
    after_test = tfidf.evaluate(flipped_test).set_index("trait")["accuracy"]
    pd.testing.assert_series_equal(before, after_train)
    np.testing.assert_allclose(after_test.to_numpy(), 1 - before.to_numpy())


def test_predictions_have_one_column_per_trait(tfidf: TfidfLogisticClassifier) -> None:
    texts = ["I love parties and meeting new people!", "I stayed home alone again."]
    probabilities = tfidf.predict_high_probability(texts)
    assert list(probabilities.columns) == list(TRAITS) and len(probabilities) == 2
    assert ((probabilities >= 0) & (probabilities <= 1)).all().all()
    levels = tfidf.predict_levels(texts)
    assert set(levels.to_numpy().ravel()) <= {"high", "low"}
    assert (levels == np.where(probabilities > 0.5, "high", "low")).all().all()
    with pytest.raises(ClassifierError, match="text 1"):
        tfidf.predict_high_probability(["fine", 3])


def test_tfidf_save_load_round_trip(
    tfidf: TfidfLogisticClassifier, posts: pd.DataFrame, tmp_path: Path
) -> None:
    folder = tfidf.save(tmp_path / "classifier")
    assert not list(tmp_path.glob(".classifier.tmp-*"))
    loaded = load_classifier(folder)
    texts = posts["text"].head(50).tolist()
    pd.testing.assert_frame_equal(
        loaded.predict_high_probability(texts), tfidf.predict_high_probability(texts)
    )
    pd.testing.assert_frame_equal(loaded.evaluate(posts), tfidf.evaluate(posts))


def test_load_classifier_explains_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ClassifierError, match="classifier.json does not exist"):
        load_classifier(tmp_path)


def test_fit_needs_labelled_posts(posts: pd.DataFrame) -> None:
    with pytest.raises(ClassifierError, match="openness_split"):
        make_classifier(ClassifierSpec()).fit(posts.drop(columns="openness_split"))


@pytest.fixture(scope="module")
def tiny_encoder_dir(smollm2_tokenizer_dir: Path, tmp_path_factory) -> Path:
    """A random 2-layer RoBERTa (hidden 32) with the SmolLM2 tokenizer and a 2-label head,
    so fitting must replace the head with five regression outputs."""
    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=130,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_encoder")
    RobertaForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_cdf_targets_are_the_normal_cdf_of_the_z_scores(posts: pd.DataFrame) -> None:
    targets = cdf_targets(posts)
    assert targets.shape == (len(posts), 5) and targets.dtype == np.float32
    np.testing.assert_allclose(targets[:, 2], norm.cdf(posts["extraversion"]), rtol=1e-6)
    bad = posts.head(3).copy()
    bad.loc[bad.index[1], "neuroticism"] = np.nan
    with pytest.raises(ClassifierError, match="'neuroticism'"):
        cdf_targets(bad)


def test_roberta_regression_trains_with_mse_on_cdf_targets_and_round_trips(
    tiny_encoder_dir: Path, tmp_path: Path
) -> None:
    posts = label_and_split(generate_posts(120, seed=5), split_seed=42, test_fraction=0.1)
    spec = ClassifierSpec(
        kind="roberta_regression",
        model=str(tiny_encoder_dir),
        epochs=1,
        learning_rate=1e-3,
        batch_size=32,
        max_length=48,
        seed=0,
    )
    lines: list[str] = []
    classifier = make_classifier(spec, device="cpu", progress=lines.append)
    assert isinstance(classifier, RobertaRegressionClassifier)
    classifier.fit(posts)
    # Training reports its progress as the other training steps do (the asset's run log).
    steps = classifier.fit_report["steps"]
    assert steps >= 2 and lines[0] == f"trait classifier: training for {steps} steps"
    step_lines = [line for line in lines if line.startswith("trait classifier step ")]
    assert step_lines[-1].startswith(f"trait classifier step {steps}/{steps}, loss ")
    train = regression_training_rows(posts)
    for trait in TRAITS:  # no trait's test post is seen in training
        assert not (train[f"{trait}_split"] == "test").fillna(False).any()
    assert classifier.fit_report["n_train"] == len(train)
    model = classifier.model
    assert model.config.num_labels == 5 and model.config.problem_type == "regression"

    # The training loss is MSE between the five outputs and the CDF targets.
    batch = classifier.tokenizer(
        train["text"].head(4).tolist(), padding=True, truncation=True, max_length=48,
        return_tensors="pt",
    )  # fmt: skip
    targets = torch.tensor(cdf_targets(train.head(4)))
    with torch.no_grad():
        out = model(**batch, labels=targets)
    torch.testing.assert_close(out.loss, torch.nn.functional.mse_loss(out.logits, targets))

    thresholds = classifier.thresholds()
    for j, trait in enumerate(TRAITS):
        assert thresholds[trait] == pytest.approx(float(np.median(cdf_targets(train)[:, j])))
    texts = posts["text"].head(6).tolist()
    scores = classifier.predict_high_probability(texts)
    assert scores.shape == (6, 5) and ((scores >= 0) & (scores <= 1)).all().all()
    result = classifier.evaluate(posts)
    assert list(result["trait"]) == list(TRAITS) and result["accuracy"].between(0, 1).all()

    loaded = load_classifier(classifier.save(tmp_path / "roberta"), device="cpu")
    np.testing.assert_allclose(
        loaded.predict_scores(texts), classifier.predict_scores(texts), rtol=1e-5, atol=1e-6
    )
    pd.testing.assert_frame_equal(loaded.predict_levels(texts), classifier.predict_levels(texts))
