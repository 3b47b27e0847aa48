"""Making and loading trait classifiers of either kind."""

from __future__ import annotations

import json
from pathlib import Path

import joblib

from big5_dagster.lib.experts.classifier_base import (
    CLASSIFIER_FILE,
    ENCODER_FOLDER,
    SKLEARN_FILE,
    TraitClassifier,
)
from big5_dagster.lib.experts.classifier_spec import ClassifierError, ClassifierSpec
from big5_dagster.lib.experts.roberta_classifier import RobertaRegressionClassifier
from big5_dagster.lib.experts.tfidf_classifier import (
    TfidfCharLogisticClassifier,
    TfidfLogisticClassifier,
)
from big5_dagster.lib.training.specs import Progress
from big5_dagster.lib.traits import TRAITS

TFIDF_CLASSES: dict[str, type[TfidfLogisticClassifier]] = {
    cls.kind: cls for cls in (TfidfLogisticClassifier, TfidfCharLogisticClassifier)
}


def make_classifier(
    spec: ClassifierSpec,
    *,
    device: str = "auto",
    work_dir: Path | None = None,
    progress: Progress | None = None,
) -> TraitClassifier:
    """An unfitted classifier of ``spec.kind`` (device, work_dir and the training progress
    lines apply to roberta only: tf-idf fits in about a second)."""
    if spec.kind in TFIDF_CLASSES:
        return TFIDF_CLASSES[spec.kind](spec)
    return RobertaRegressionClassifier(spec, device=device, work_dir=work_dir, progress=progress)


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
    if spec.kind in TFIDF_CLASSES:
        models = joblib.load(folder / SKLEARN_FILE)
        if not isinstance(models, dict) or set(models) != set(TRAITS):
            raise ClassifierError(
                f"{folder / SKLEARN_FILE}: expected one model per trait {list(TRAITS)}"
            )
        tfidf = TFIDF_CLASSES[spec.kind](spec)
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
