"""Settings sections -> the lib specs they configure, one function each."""

from __future__ import annotations

import dataclasses

from big5_dagster.config import (
    DialogueSettings,
    ExpertSettings,
    LoraFields,
    PsychoBenchSettings,
    TrainingSettings,
)
from big5_dagster.lib.engine.sampling import SamplingParams
from big5_dagster.lib.experts.classifier_spec import ClassifierSpec
from big5_dagster.lib.personality.psychobench_results import PsychoBenchImport
from big5_dagster.lib.training.specs import LoraSpec, Precision, TrainSpec


def lora_spec(config: LoraFields) -> LoraSpec:
    return LoraSpec(
        r=config.lora_r,
        alpha=config.lora_alpha,
        dropout=config.lora_dropout,
        top_layers=config.lora_layers,
    )


def training_precision(model_dtype: str) -> Precision:
    """Training multiplies in the dtype the model runs in (``model.dtype``); float16 and auto
    leave it to the hardware (``TrainSpec.precision``)."""
    return model_dtype if model_dtype in ("float32", "bfloat16") else "auto"  # type: ignore[return-value]


def expert_train_spec(config: ExpertSettings, model_dtype: str) -> TrainSpec:
    return TrainSpec(
        epochs=config.epochs,
        learning_rate=config.learning_rate,
        batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        max_length=config.max_length,
        seed=config.seed,
        precision=training_precision(model_dtype),
    )


def sft_train_spec(config: TrainingSettings, seed: int, model_dtype: str) -> TrainSpec:
    return TrainSpec(
        epochs=config.epochs,
        learning_rate=config.learning_rate,
        batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        max_length=config.max_length,
        seed=seed,
        warmup_steps=config.warmup_steps,
        lr_scheduler=config.lr_scheduler,
        save_steps=config.save_steps,
        precision=training_precision(model_dtype),
    )


def dpo_train_spec(config: TrainingSettings, seed: int, model_dtype: str) -> TrainSpec:
    """The SFT schedule plus DPO's beta; mirrored couples train in their given order."""
    return dataclasses.replace(
        sft_train_spec(config, seed, model_dtype),
        beta=config.dpo_beta,
        shuffle=config.dpo_pair_order == "shuffled",
    )


def classifier_spec(config) -> ClassifierSpec:  # noqa: ANN001 - a ClassifierSettings
    return ClassifierSpec(**config.model_dump())


def dialogue_sampling(config: DialogueSettings, max_new_tokens: int, seed: int) -> SamplingParams:
    """The dialogues' decoding settings (openers and replies share them)."""
    return SamplingParams(
        max_new_tokens=max_new_tokens,
        do_sample=config.do_sample,
        temperature=config.temperature,
        top_p=config.top_p,
        repetition_penalty=config.repetition_penalty,
        seed=seed,
    )


def psychobench_imports(config: PsychoBenchSettings) -> list[PsychoBenchImport]:
    """The configured PsychoBench files (Dagster hands nested config over as dicts)."""
    return [
        PsychoBenchImport(**(f if isinstance(f, dict) else f.model_dump())) for f in config.imports
    ]
