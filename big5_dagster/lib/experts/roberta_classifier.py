"""RoBERTa regression on the normal CDF of the z-scores: the paper profile's trait classifier.

torch, transformers, datasets and scipy are imported where used: the definitions load without
them.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from big5_dagster.lib.engine.inference import inference_mode
from big5_dagster.lib.experts.classifier_base import (
    ENCODER_FOLDER,
    TraitClassifier,
    check_posts,
    check_texts,
)
from big5_dagster.lib.experts.classifier_spec import ClassifierError, ClassifierSpec
from big5_dagster.lib.training.specs import Progress
from big5_dagster.lib.traits import TRAITS

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)
PROGRESS_LINES = 20


def cdf_targets(posts: pd.DataFrame) -> np.ndarray:
    """float32 (n_posts, 5): the standard normal CDF of each trait's z-score, in TRAITS order."""
    from scipy.stats import norm

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
    import torch

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
        self,
        spec: ClassifierSpec,
        *,
        device: str = "auto",
        work_dir: Path | None = None,
        progress: Progress | None = None,
    ) -> None:
        """``progress`` receives a line at the start and about every 5% of the steps."""
        super().__init__(spec)
        self.device = _resolve_device(device)
        self.work_dir = Path(work_dir) if work_dir is not None else None
        self.progress = progress
        self.model: PreTrainedModel | None = None
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self._thresholds: dict[str, float] = {}

    def _load_pretrained(self, location: str | Path, *, new_head: bool = False) -> None:
        """Tokenizer + 5-output regression model; ``new_head``: a checkpoint's own head is replaced."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

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
        import datasets

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
        import torch
        import transformers
        from transformers import (
            DataCollatorWithPadding,
            PrinterCallback,
            Trainer,
            TrainingArguments,
        )

        from big5_dagster.lib.training.progress_lines import ProgressLines

        check_posts(posts, need_scores=True)
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
                callbacks=[ProgressLines(self.progress, "trait classifier", lines=PROGRESS_LINES)],
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

    @inference_mode
    def predict_scores(self, texts: Sequence[str], *, batch_size: int | None = None) -> np.ndarray:
        """float (n_texts, 5): the raw regression outputs (predicted CDF values, unclipped)."""
        if self.model is None or self.tokenizer is None or not self._thresholds:
            raise ClassifierError(
                "the classifier is not fitted: call fit(posts) or load_classifier"
            )
        texts = check_texts(texts)
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
