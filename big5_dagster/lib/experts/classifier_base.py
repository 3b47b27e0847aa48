"""The trait classifier's interface, settings and input checks: does a text carry a high or a
low level of each Big Five trait?

It measures the experts (target-trait accuracy on held-out prefixes, METHOD.md section 3) and
the generated dialogues. Two kinds behind one interface (:class:`TraitClassifier`):

``tfidf_logistic`` (the tiny profile's default): per trait, TF-IDF over word 1-2 grams with
sublinear term frequency, then a binary logistic regression (high vs low), trained on that
trait's TRAIN split labelled posts. Why this is the right light model here: it trains in about
a second on a 2-core CPU and is deterministic; it needs no weights, so it runs offline with
nothing to download; and trait signal in posts is largely lexical (open-vocabulary n-gram
studies of personality, e.g. Schwartz et al. 2013, PLoS ONE 8(9) e73791, find word and phrase
use strongly trait-linked; the synthetic corpus carries its trait signal in marker phrases too),
which n-grams capture directly. Its coefficients are also inspectable.

``roberta_regression`` (the paper profile, METHOD.md section 3): one encoder
(``AutoModelForSequenceClassification``, ``num_labels=5``, ``problem_type="regression"``)
with five outputs trained by MSE against the normal CDF of each trait's z-score
(``scipy.stats.norm.cdf``), fine-tuned with the transformers ``Trainer``. One encoder sees all
five traits, so it trains on the posts that are in NO trait's test split (a post can be test
for one trait and train for another); every trait's test split is thus unseen. The CDF targets
include the unlabelled middle third (regression needs no level). A trait is predicted 'high'
when its output exceeds the median of that trait's CDF target over the training posts: high
and low are the upper and lower thirds, symmetric around the median, so the median is the
natural cut and needs no held-out tuning. Its score in [0, 1] is the output clipped to [0, 1]
(a predicted CDF value, i.e. a percentile, not a calibrated probability).

Saved folders hold ``classifier.json`` (kind, settings, thresholds) plus ``models.joblib``
(scikit-learn pipelines; joblib unpickles, so load only folders this pipeline wrote) or an
``encoder/`` folder (``save_pretrained``). Folders are written atomically.

Pure logic (no Dagster). scikit-learn, transformers and torch are imported where used: the
definitions load without them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from big5_dagster.lib.common.files import atomic_dir
from big5_dagster.lib.experts.classifier_spec import ClassifierError, ClassifierSpec
from big5_dagster.lib.traits import LEVELS, TRAITS

log = logging.getLogger(__name__)


CLASSIFIER_FILE = "classifier.json"


SKLEARN_FILE = "models.joblib"


ENCODER_FOLDER = "encoder"


EVALUATION_COLUMNS: tuple[str, ...] = (
    "trait",
    "n",
    "n_high",
    "n_low",
    "accuracy",
    "majority_level",
    "majority_baseline",
)


def check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise ClassifierError("texts must be a sequence of strings, not one string")
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise ClassifierError(f"text {i}: expected a string, got {text!r}")
    return out


def check_posts(posts: pd.DataFrame, *, need_scores: bool = False) -> None:
    needed = ["text"]
    for trait in TRAITS:
        needed += [f"{trait}_level", f"{trait}_split"]
        if need_scores:
            needed.append(trait)
    missing = [c for c in needed if c not in posts.columns]
    if missing:
        raise ClassifierError(
            f"posts lack columns {missing}: pass them through corpora.label_and_split first"
        )
    for row, text in zip(posts.index, posts["text"], strict=True):
        if not isinstance(text, str):
            raise ClassifierError(f"posts row {row}, field 'text': expected a string, got {text!r}")
    for trait in TRAITS:
        column = f"{trait}_level"
        levels = posts[column].dropna()
        bad = levels[~levels.isin(LEVELS)]
        if len(bad):
            raise ClassifierError(
                f"posts row {bad.index[0]}, field {column!r}: expected 'high' or 'low', "
                f"got {bad.iloc[0]!r}"
            )


def labelled_rows(posts: pd.DataFrame, trait: str, split: str) -> pd.DataFrame:
    """The rows of ``split`` ('train'/'test') that carry a level for ``trait``."""
    mask = (posts[f"{trait}_split"] == split).fillna(False) & posts[f"{trait}_level"].notna()
    return posts[mask.to_numpy(dtype=bool)]


def majority_level(levels: pd.Series) -> str:
    """The more frequent level ('high' on a tie, or when there is none)."""
    counts = levels.value_counts()
    return max(LEVELS, key=lambda level: (int(counts.get(level, 0)), level == "high"))


class TraitClassifier(ABC):
    """Predicts each trait's level from text. Fit once; predict, evaluate, save."""

    kind: str

    def __init__(self, spec: ClassifierSpec) -> None:
        if spec.kind != self.kind:
            raise ClassifierError(
                f"{type(self).__name__} needs kind {self.kind!r}, got {spec.kind!r}"
            )
        self.spec = spec
        self.fit_report: dict[str, Any] = {}

    @abstractmethod
    def fit(self, posts: pd.DataFrame) -> TraitClassifier:
        """Train on labelled posts (the corpora schema with levels and splits); never on test rows."""

    @abstractmethod
    def predict_high_probability(self, texts: Sequence[str]) -> pd.DataFrame:
        """One row per text, one column per trait: P(high) (tfidf) or a [0, 1] score (roberta)."""

    @abstractmethod
    def thresholds(self) -> dict[str, float]:
        """Per trait, the score above which a text is predicted 'high'."""

    @abstractmethod
    def _save_model(self, folder: Path) -> None: ...

    def predict_levels(self, texts: Sequence[str]) -> pd.DataFrame:
        """One row per text, one column per trait: 'high' or 'low'."""
        scores = self.predict_high_probability(texts)
        cut = self.thresholds()
        return pd.DataFrame(
            {
                trait: np.where(scores[trait].to_numpy() > cut[trait], "high", "low")
                for trait in TRAITS
            },
            index=scores.index,
        )

    def evaluate(self, posts: pd.DataFrame) -> pd.DataFrame:
        """Per trait, accuracy on that trait's TEST split, beside the majority-class baseline.

        The baseline predicts the level that is more frequent in the trait's TRAIN split for
        every test post (what a classifier that learned nothing from text would score).
        """
        check_posts(posts)
        test_rows = {trait: labelled_rows(posts, trait, "test") for trait in TRAITS}
        union = sorted(
            set().union(*(rows.index for rows in test_rows.values())), key=posts.index.get_loc
        )
        predicted = self.predict_levels(posts.loc[union, "text"].tolist()) if union else None
        if predicted is not None:
            predicted.index = pd.Index(union)
        records = []
        for trait in TRAITS:
            rows = test_rows[trait]
            truth = rows[f"{trait}_level"].astype(str)
            majority = majority_level(labelled_rows(posts, trait, "train")[f"{trait}_level"])
            n = len(rows)
            accuracy = (
                float((predicted.loc[rows.index, trait] == truth).mean())
                if n and predicted is not None
                else float("nan")
            )
            records.append(
                {
                    "trait": trait,
                    "n": n,
                    "n_high": int((truth == "high").sum()),
                    "n_low": int((truth == "low").sum()),
                    "accuracy": accuracy,
                    "majority_level": majority,
                    "majority_baseline": float((truth == majority).mean()) if n else float("nan"),
                }
            )
        return pd.DataFrame(records, columns=list(EVALUATION_COLUMNS))

    def save(self, folder: Path) -> Path:
        """Write the classifier to ``folder`` atomically (replacing what was there)."""
        import sklearn
        import torch
        import transformers

        folder = Path(folder)
        record = {
            "kind": self.kind,
            "spec": dataclasses.asdict(self.spec),
            "thresholds": self.thresholds(),
            "fit_report": self.fit_report,
            "versions": {
                "scikit-learn": sklearn.__version__,
                "transformers": transformers.__version__,
                "torch": torch.__version__,
            },
        }
        with atomic_dir(folder) as tmp:
            self._save_model(tmp)
            (tmp / CLASSIFIER_FILE).write_text(json.dumps(record, indent=2, sort_keys=True))
        return folder
