"""Supervised fine-tuning on prompt/completion rows (completion-only loss), resumable, atomic.

datasets, transformers and trl are imported where used: the definitions load without them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

# trl 1.16 calls a transformers method deprecated in 5.x on every training step.
from big5_dagster.lib.training.inputs import (
    check_frame,
    load_causal_lm,
    load_tokenizer,
    normalize_prompts,
    prepared_eval,
    quiet_datasets,
    resolve_device,
)
from big5_dagster.lib.training.runs import (
    run_training,
    settings_of_run,
    training_arguments,
)
from big5_dagster.lib.training.specs import (
    SFT_COLUMNS,
    Device,
    LoraSpec,
    Progress,
    TrainingReport,
    TrainSpec,
)

if TYPE_CHECKING:
    from transformers import TrainerCallback
    from trl import SFTTrainer


@functools.cache
def model_loss_sft_trainer() -> type[SFTTrainer]:
    """trl's ``SFTTrainer`` with the model's own loss (transformers' ``Trainer.compute_loss``).

    trl computes the loss through a fused LM head that tiles the vocabulary so the logits are
    never materialized: a Triton kernel on a GPU, and elsewhere a torch fallback of about
    twenty full-tile fp32 passes forward and again backward, every position scored. On a CPU
    that fallback took two thirds of an expert's training step (1.2 of 1.8 s at batch 8 x
    64 tokens). The model's own loss is the same token-mean NLL over the same labels (trl's
    collator sets the prompt and padding labels to -100), from logits of a few hundred MB at
    these sizes; trl's token count is kept, its entropy and token-accuracy metrics are not.
    """
    import transformers
    from trl import SFTTrainer

    class ModelLossSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[no-untyped-def]
            inputs["use_cache"] = False
            if self.model.training:  # trl's running count of the tokens trained on, as trl keeps it
                self._total_train_tokens += int(inputs["attention_mask"].sum())
                self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
            return transformers.Trainer.compute_loss(
                self, model, inputs, return_outputs=return_outputs,
                num_items_in_batch=num_items_in_batch,
            )  # fmt: skip

    return ModelLossSFTTrainer


def make_sft_trainer(
    model_path: str | Path,
    examples: pd.DataFrame,
    *,
    lora: LoraSpec | None,
    spec: TrainSpec,
    work_dir: Path,
    device: Device = "auto",
    callbacks: Sequence[TrainerCallback] = (),
    eval_examples: pd.DataFrame | None = None,
) -> SFTTrainer:
    """An ``SFTTrainer`` on prompt/completion data with completion-only loss (not yet trained).

    ``eval_examples`` (same columns) become the evaluation set scored after training."""
    import datasets
    import transformers
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    data = check_frame(examples, SFT_COLUMNS, "SFT examples")
    eval_data = prepared_eval(eval_examples, SFT_COLUMNS, "SFT validation examples", model_path)
    target = resolve_device(device)
    # Seed before the model and the LoRA matrices are created (trl wraps before Trainer seeds).
    transformers.set_seed(spec.seed)
    tokenizer = load_tokenizer(model_path)
    data["prompt"] = normalize_prompts(tokenizer, data["prompt"].tolist())
    model = load_causal_lm(model_path, target, spec.precision, trains_base=lora is None)
    config = SFTConfig(
        **training_arguments(spec, Path(work_dir), target),
        completion_only_loss=True,
        packing=False,
    )
    with quiet_datasets():
        trainer = (SFTTrainer if target == "cuda" else model_loss_sft_trainer())(
            model=model,
            args=config,
            train_dataset=datasets.Dataset.from_pandas(data, preserve_index=False),
            eval_dataset=eval_data,
            processing_class=tokenizer,
            peft_config=lora.peft_config(model) if lora is not None else None,
            callbacks=list(callbacks),
        )
    # Our progress callback reports steps; the default printer would print every log dict.
    trainer.remove_callback(PrinterCallback)
    return trainer


def train_sft(
    model_path: str | Path,
    examples: pd.DataFrame,
    output_dir: Path,
    lora: LoraSpec | None,
    spec: TrainSpec,
    work_dir: Path,
    progress: Progress | None = None,
    device: Device = "auto",
    eval_examples: pd.DataFrame | None = None,
) -> TrainingReport:
    """Fine-tune on prompt/completion rows (loss on the completion + EOS); resumable, atomic.

    ``lora=None`` fine-tunes every weight and writes a full model; otherwise a LoRA adapter.
    ``output_dir`` receives the adapter (or model), the tokenizer and run_settings.json.
    """
    from big5_dagster.lib.training.progress_lines import ProgressLines

    data = check_frame(examples, SFT_COLUMNS, "SFT examples")
    target = resolve_device(device)
    work_dir = Path(work_dir)
    run_settings = settings_of_run("sft", model_path, data, lora, spec, None, target)
    callbacks = [ProgressLines(progress, "sft")]
    make_trainer = functools.partial(
        make_sft_trainer,
        model_path,
        data,
        lora=lora,
        spec=spec,
        work_dir=work_dir,
        device=target,
        callbacks=callbacks,
        eval_examples=eval_examples,
    )
    return run_training(
        make_trainer,
        method="sft",
        run_settings=run_settings,
        output_dir=Path(output_dir),
        work_dir=work_dir,
        target=target,
    )
