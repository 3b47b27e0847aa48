"""TF-IDF + logistic regression per trait: the tiny profile's trait classifier (see classifier_base)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import joblib
import pandas as pd

from big5_dagster.lib.experts.classifier_base import (
    SKLEARN_FILE,
    TraitClassifier,
    check_posts,
    check_texts,
    labelled_rows,
)
from big5_dagster.lib.experts.classifier_spec import ClassifierError, ClassifierSpec
from big5_dagster.lib.traits import TRAITS

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline


class TfidfLogisticClassifier(TraitClassifier):
    """Per trait: TF-IDF (word 1-2 grams, sublinear tf) -> logistic regression, high vs low."""

    kind = "tfidf_logistic"
    analyzer, ngram_range = "word", (1, 2)

    def __init__(self, spec: ClassifierSpec) -> None:
        super().__init__(spec)
        self.models: dict[str, Pipeline] = {}

    def _pipeline(self) -> Pipeline:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import Pipeline

        return Pipeline(
            [
                (
                    "tfidf",
                    TfidfVectorizer(
                        analyzer=self.analyzer,
                        ngram_range=self.ngram_range,
                        sublinear_tf=True,
                        max_features=self.spec.max_features,
                        strip_accents="unicode",
                    ),
                ),
                (
                    "logistic",
                    LogisticRegression(
                        C=self.spec.regularization_c,
                        max_iter=2000,
                        random_state=self.spec.seed,
                    ),
                ),
            ]
        )

    def fit(self, posts: pd.DataFrame) -> TfidfLogisticClassifier:
        check_posts(posts)
        started = time.perf_counter()
        models, n_train = {}, {}
        for trait in TRAITS:
            rows = labelled_rows(posts, trait, "train")
            labels = rows[f"{trait}_level"].astype(str)
            if labels.nunique() < 2:
                raise ClassifierError(
                    f"trait {trait!r}: the train split needs posts of both levels, got "
                    f"{labels.value_counts().to_dict()}"
                )
            # Binary target 1 = high, so predict_proba[:, 1] is P(high) whatever the class order.
            model = self._pipeline()
            model.fit(rows["text"].tolist(), (labels == "high").astype(int).to_numpy())
            models[trait] = model
            n_train[trait] = len(rows)
        self.models = models
        self.fit_report = {"n_train": n_train, "seconds": time.perf_counter() - started}
        return self

    def _require_fitted(self) -> None:
        if set(self.models) != set(TRAITS):
            raise ClassifierError(
                "the classifier is not fitted: call fit(posts) or load_classifier"
            )

    def predict_high_probability(self, texts: Sequence[str]) -> pd.DataFrame:
        self._require_fitted()
        texts = check_texts(texts)
        if not texts:
            return pd.DataFrame({trait: pd.Series(dtype=float) for trait in TRAITS})
        return pd.DataFrame(
            {trait: self.models[trait].predict_proba(texts)[:, 1] for trait in TRAITS}
        )

    def thresholds(self) -> dict[str, float]:
        return dict.fromkeys(TRAITS, 0.5)

    def _save_model(self, folder: Path) -> None:
        self._require_fitted()
        joblib.dump(self.models, folder / SKLEARN_FILE)


class TfidfCharLogisticClassifier(TfidfLogisticClassifier):
    """The same model over character 2-5 grams within word boundaries: a second rater that
    shares no feature with the word model, so agreement between the two is not an artefact
    of one vocabulary (``scripts/second_rater.py`` re-rates every figure with it)."""

    kind = "tfidf_char_logistic"
    analyzer, ngram_range = "char_wb", (2, 5)
