"""The trait classifier's settings: the one definition of its fields, defaults and checks
(``config.ClassifierSettings`` is generated from it). Light: imports nothing heavy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ClassifierKind = Literal["tfidf_logistic", "tfidf_char_logistic", "roberta_regression"]


KINDS: tuple[str, ...] = ("tfidf_logistic", "tfidf_char_logistic", "roberta_regression")
TFIDF_KINDS: tuple[str, ...] = ("tfidf_logistic", "tfidf_char_logistic")


class ClassifierError(ValueError):
    """Bad classifier input or an unusable saved classifier; the message names what and where."""


@dataclass(frozen=True)
class ClassifierSpec:
    """Settings of a trait classifier; config.ClassifierSettings is built from these fields."""

    kind: ClassifierKind = "tfidf_logistic"
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
