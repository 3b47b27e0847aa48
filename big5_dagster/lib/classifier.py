"""The trait classifier: does a text carry a high or a low level of each Big Five trait?

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

Pure logic (no Dagster).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import datasets
import joblib
import numpy as np
import pandas as pd
import sklearn
import torch
import transformers
from scipy.stats import norm
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PrinterCallback,
    Trainer,
    TrainingArguments,
)

from big5_dagster.lib.storage import atomic_dir
from big5_dagster.lib.traits import LEVELS, TRAITS

log = logging.getLogger(__name__)

ClassifierKind = Literal["tfidf_logistic", "roberta_regression"]
KINDS: tuple[str, ...] = ("tfidf_logistic", "roberta_regression")
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


class ClassifierError(ValueError):
    """Bad classifier input or an unusable saved classifier; the message names what and where."""


@dataclass(frozen=True)
class ClassifierSpec:
    """Settings of a trait classifier (the fields of config.ClassifierSettings)."""

    kind: str = "tfidf_logistic"
    model: str = "roberta-large"
    """roberta_regression: the encoder to fine-tune (hub id or local folder)."""
    max_features: int = 20000
    regularization_c: float = 4.0
    epochs: float = 1.0
    learning_rate: float = 1e-5
    batch_size: int = 16
    max_length: int = 128
    seed: int = 42

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ClassifierError(f"classifier kind {self.kind!r} is not one of {list(KINDS)}")
        for name in ("max_features", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ClassifierError(f"classifier {name} must be >= 1, got {getattr(self, name)}")
        for name in ("regularization_c", "epochs", "learning_rate"):
            if getattr(self, name) <= 0:
                raise ClassifierError(f"classifier {name} must be > 0, got {getattr(self, name)}")


# --------------------------------------------------------------------------------------
# Input checks shared by both kinds
# --------------------------------------------------------------------------------------


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise ClassifierError("texts must be a sequence of strings, not one string")
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise ClassifierError(f"text {i}: expected a string, got {text!r}")
    return out


def _check_posts(posts: pd.DataFrame, *, need_scores: bool = False) -> None:
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


# --------------------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------------------


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
        _check_posts(posts)
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


# --------------------------------------------------------------------------------------
# TF-IDF + logistic regression
# --------------------------------------------------------------------------------------


class TfidfLogisticClassifier(TraitClassifier):
    """Per trait: TF-IDF (word 1-2 grams, sublinear tf) -> logistic regression, high vs low."""

    kind = "tfidf_logistic"

    def __init__(self, spec: ClassifierSpec) -> None:
        super().__init__(spec)
        self.models: dict[str, Pipeline] = {}

    def _pipeline(self) -> Pipeline:
        return Pipeline(
            [
                (
                    "tfidf",
                    TfidfVectorizer(
                        ngram_range=(1, 2),
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
        _check_posts(posts)
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
        texts = _check_texts(texts)
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


# --------------------------------------------------------------------------------------
# RoBERTa-style regression on the normal CDF of the z-scores
# --------------------------------------------------------------------------------------


def cdf_targets(posts: pd.DataFrame) -> np.ndarray:
    """float32 (n_posts, 5): the standard normal CDF of each trait's z-score, in TRAITS order."""
    missing = [t for t in TRAITS if t not in posts.columns]
    if missing:
        raise ClassifierError(f"posts lack trait score columns {missing}")
    scores = posts[list(TRAITS)].to_numpy(dtype=float)
    bad = np.argwhere(~np.isfinite(scores))
    if len(bad):
        row, col = bad[0]
        raise ClassifierError(
            f"posts row {posts.index[row]}, field {TRAITS[col]!r}: z-score is not a finite number"
        )
    return norm.cdf(scores).astype(np.float32)


def regression_training_rows(posts: pd.DataFrame) -> pd.DataFrame:
    """Posts in no trait's test split (so every trait's test split stays unseen)."""
    in_test = np.zeros(len(posts), dtype=bool)
    for trait in TRAITS:
        in_test |= (posts[f"{trait}_split"] == "test").fillna(False).to_numpy(dtype=bool)
    return posts[~in_test]


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ClassifierError("device='cuda' was requested but torch sees no CUDA GPU")
    if device not in ("cpu", "cuda"):
        raise ClassifierError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    return device


def _location(model: str | Path) -> tuple[str, dict[str, Any]]:
    path = Path(model)
    return (str(path), {"local_files_only": True}) if path.is_dir() else (str(model), {})


class RobertaRegressionClassifier(TraitClassifier):
    """One encoder, five regression outputs, MSE on the normal CDF of the z-scores."""

    kind = "roberta_regression"

    def __init__(
        self, spec: ClassifierSpec, *, device: str = "auto", work_dir: Path | None = None
    ) -> None:
        super().__init__(spec)
        self.device = _resolve_device(device)
        self.work_dir = Path(work_dir) if work_dir is not None else None
        self.model: PreTrainedModel | None = None
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self._thresholds: dict[str, float] = {}

    def _load_pretrained(self, location: str | Path, *, new_head: bool = False) -> None:
        """Tokenizer + 5-output regression model; ``new_head``: a checkpoint's own head is replaced."""
        where, kwargs = _location(location)
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForSequenceClassification.from_pretrained(
            where,
            num_labels=len(TRAITS),
            problem_type="regression",
            ignore_mismatched_sizes=new_head,
            **kwargs,
        )
        if model.config.pad_token_id is None:
            # Decoder-style encoders find each row's last token through the pad id.
            model.config.pad_token_id = tokenizer.pad_token_id
        self.tokenizer, self.model = tokenizer, model.to(self.device)

    def _encode(self, texts: list[str], targets: np.ndarray | None = None) -> datasets.Dataset:
        assert self.tokenizer is not None
        encoded = self.tokenizer(texts, truncation=True, max_length=self.spec.max_length)
        columns: dict[str, Any] = {
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
        }
        if targets is not None:
            columns["labels"] = targets.tolist()
        return datasets.Dataset.from_dict(columns)

    def fit(self, posts: pd.DataFrame) -> RobertaRegressionClassifier:
        _check_posts(posts, need_scores=True)
        rows = regression_training_rows(posts)
        if len(rows) < 2:
            raise ClassifierError(f"only {len(rows)} posts are outside every test split; need >= 2")
        targets = cdf_targets(rows)
        transformers.set_seed(self.spec.seed)  # before the regression head is initialised
        self._load_pretrained(self.spec.model, new_head=True)
        assert self.model is not None
        dataset = self._encode(rows["text"].tolist(), targets)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="trait-classifier-") as scratch:
            output_dir = self.work_dir or Path(scratch)
            args = TrainingArguments(
                output_dir=str(output_dir),
                num_train_epochs=self.spec.epochs,
                learning_rate=self.spec.learning_rate,
                per_device_train_batch_size=self.spec.batch_size,
                seed=self.spec.seed,
                data_seed=self.spec.seed,
                save_strategy="no",
                logging_strategy="steps",
                logging_steps=1,
                report_to="none",
                disable_tqdm=True,
                use_cpu=self.device == "cpu",
                bf16=self.device == "cuda" and torch.cuda.is_bf16_supported(),
            )
            trainer = Trainer(
                model=self.model,
                args=args,
                train_dataset=dataset,
                data_collator=DataCollatorWithPadding(self.tokenizer),
                processing_class=self.tokenizer,
            )
            trainer.remove_callback(PrinterCallback)  # fit_report keeps the loss curve
            trainer.train()
        losses = [
            (int(e["step"]), float(e["loss"])) for e in trainer.state.log_history if "loss" in e
        ]
        self.model.eval()
        # High and low are the upper and lower thirds: cut at the training median of the target.
        self._thresholds = {
            trait: float(np.median(targets[:, j])) for j, trait in enumerate(TRAITS)
        }
        self.fit_report = {
            "n_train": len(rows),
            "seconds": time.perf_counter() - started,
            "steps": trainer.state.global_step,
            "loss_curve": losses,
            "final_loss": losses[-1][1] if losses else None,
            "loss": "mse on norm.cdf(z)",
        }
        return self

    @torch.inference_mode()
    def predict_scores(self, texts: Sequence[str], *, batch_size: int | None = None) -> np.ndarray:
        """float (n_texts, 5): the raw regression outputs (predicted CDF values, unclipped)."""
        if self.model is None or self.tokenizer is None or not self._thresholds:
            raise ClassifierError(
                "the classifier is not fitted: call fit(posts) or load_classifier"
            )
        texts = _check_texts(texts)
        size = batch_size or self.spec.batch_size
        out = np.zeros((len(texts), len(TRAITS)), dtype=np.float64)
        self.model.eval()
        for start in range(0, len(texts), size):
            chunk = texts[start : start + size]
            inputs = self.tokenizer(
                chunk,
                truncation=True,
                max_length=self.spec.max_length,
                padding=True,
                return_tensors="pt",
            ).to(self.device)
            logits = self.model(**inputs).logits
            out[start : start + len(chunk)] = logits.float().cpu().numpy()
        return out

    def predict_high_probability(self, texts: Sequence[str]) -> pd.DataFrame:
        scores = np.clip(self.predict_scores(texts), 0.0, 1.0)
        return pd.DataFrame(scores, columns=list(TRAITS))

    def thresholds(self) -> dict[str, float]:
        return dict(self._thresholds)

    def _save_model(self, folder: Path) -> None:
        if self.model is None or self.tokenizer is None:
            raise ClassifierError("the classifier is not fitted: nothing to save")
        self.model.save_pretrained(str(folder / ENCODER_FOLDER))
        self.tokenizer.save_pretrained(str(folder / ENCODER_FOLDER))


# --------------------------------------------------------------------------------------
# Construction and loading
# --------------------------------------------------------------------------------------


def make_classifier(
    spec: ClassifierSpec, *, device: str = "auto", work_dir: Path | None = None
) -> TraitClassifier:
    """An unfitted classifier of ``spec.kind`` (device and work_dir apply to roberta only)."""
    if spec.kind == "tfidf_logistic":
        return TfidfLogisticClassifier(spec)
    return RobertaRegressionClassifier(spec, device=device, work_dir=work_dir)


def load_classifier(folder: Path, *, device: str = "auto") -> TraitClassifier:
    """A classifier saved by :meth:`TraitClassifier.save` (only load folders this pipeline wrote)."""
    folder = Path(folder)
    record_file = folder / CLASSIFIER_FILE
    try:
        record = json.loads(record_file.read_text())
    except FileNotFoundError:
        raise ClassifierError(
            f"{record_file} does not exist: not a saved trait classifier"
        ) from None
    except json.JSONDecodeError as e:
        raise ClassifierError(f"{record_file} is not valid JSON: {e}") from None
    try:
        spec = ClassifierSpec(**record["spec"])
    except (KeyError, TypeError) as e:
        raise ClassifierError(f"{record_file}, field 'spec': unusable ({e})") from None
    classifier: TraitClassifier
    if spec.kind == "tfidf_logistic":
        models = joblib.load(folder / SKLEARN_FILE)
        if not isinstance(models, dict) or set(models) != set(TRAITS):
            raise ClassifierError(
                f"{folder / SKLEARN_FILE}: expected one model per trait {list(TRAITS)}"
            )
        tfidf = TfidfLogisticClassifier(spec)
        tfidf.models = models
        classifier = tfidf
    else:
        roberta = RobertaRegressionClassifier(spec, device=device)
        roberta._load_pretrained(folder / ENCODER_FOLDER)
        assert roberta.model is not None
        roberta.model.eval()
        thresholds = record.get("thresholds") or {}
        if set(thresholds) != set(TRAITS):
            raise ClassifierError(f"{record_file}, field 'thresholds': expected one per trait")
        roberta._thresholds = {t: float(v) for t, v in thresholds.items()}
        classifier = roberta
    classifier.fit_report = record.get("fit_report") or {}
    return classifier
