"""DPO (sigmoid loss) on prompt/chosen/rejected rows, from the base or an SFT adapter; resumable.

datasets, transformers, peft and trl are imported where used: the definitions load without
them.
"""

from __future__ import annotations

import functools
import json
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
    TRAINED_ADAPTER,
    run_training,
    settings_of_run,
    training_arguments,
)
from big5_dagster.lib.training.specs import (
    DPO_COLUMNS,
    Device,
    LoraSpec,
    Progress,
    TrainingError,
    TrainingReport,
    TrainSpec,
)

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel, TrainerCallback
    from trl import DPOTrainer


def _check_init_adapter(init_adapter: Path, lora: LoraSpec | None) -> None:
    config_file = Path(init_adapter) / "adapter_config.json"
    if not config_file.is_file():
        raise TrainingError(
            f"init_adapter {init_adapter} is not a peft adapter folder (no adapter_config.json)"
        )
    if lora is None:
        return
    config = json.loads(config_file.read_text())
    for ours, theirs in (("r", "r"), ("alpha", "lora_alpha")):
        if config.get(theirs) != getattr(lora, ours):
            raise TrainingError(
                f"init_adapter {init_adapter} has {theirs}={config.get(theirs)!r} but the LoRA spec "
                f"asks for {ours}={getattr(lora, ours)!r}: DPO continues training the given "
                "adapter, so pass lora=None or a matching spec"
            )


def make_dpo_trainer(
    model_path: str | Path,
    pairs: pd.DataFrame,
    *,
    lora: LoraSpec | None,
    spec: TrainSpec,
    work_dir: Path,
    init_adapter: Path | None = None,
    device: Device = "auto",
    callbacks: Sequence[TrainerCallback] = (),
    eval_pairs: pd.DataFrame | None = None,
) -> DPOTrainer:
    """A ``DPOTrainer`` (sigmoid loss, ``beta`` from the spec), not yet trained.

    The reference is the frozen starting point: the base model (new LoRA: adapters disabled;
    full fine-tune: a second frozen copy trl loads), or, with ``init_adapter``, the SFT model.

    With ``init_adapter`` (DPO after SFT) the SFT adapter is loaded *trainable* and passed to
    trl *without* a ``peft_config``: trl keeps a frozen copy of it as the reference adapter and
    keeps training the same adapter. We chose this over merging the SFT adapter and adding a
    fresh LoRA because the result stays one small adapter on the original base model, which
    every later stage (evaluation, lm-eval, DExperts-style batching) loads the same way as the
    SFT adapter; a merged start would make the DPO artifact depend on a full merged checkpoint.
    """
    import datasets
    import transformers
    from peft import PeftModel
    from transformers import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    data = check_frame(pairs, DPO_COLUMNS, "DPO pairs")
    eval_data = prepared_eval(eval_pairs, DPO_COLUMNS, "DPO validation pairs", model_path)
    target = resolve_device(device)
    transformers.set_seed(spec.seed)
    tokenizer = load_tokenizer(model_path)
    data["prompt"] = normalize_prompts(tokenizer, data["prompt"].tolist())
    model: PreTrainedModel | PeftModel = load_causal_lm(
        model_path, target, spec.precision, trains_base=lora is None and init_adapter is None
    )
    peft_config = None
    if init_adapter is not None:
        _check_init_adapter(Path(init_adapter), lora)
        model = PeftModel.from_pretrained(
            model, str(init_adapter), adapter_name=TRAINED_ADAPTER, is_trainable=True
        )
    elif lora is not None:
        peft_config = lora.peft_config(model)
    config = DPOConfig(
        **training_arguments(spec, Path(work_dir), target),
        beta=spec.beta,
        loss_type=["sigmoid"],
    )
    with quiet_datasets():
        trainer = DPOTrainer(
            model=model,
            args=config,
            train_dataset=datasets.Dataset.from_pandas(data, preserve_index=False),
            eval_dataset=eval_data,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=list(callbacks),
        )
    trainer.remove_callback(PrinterCallback)
    return trainer


def train_dpo(
    model_path: str | Path,
    pairs: pd.DataFrame,
    output_dir: Path,
    lora: LoraSpec | None,
    spec: TrainSpec,
    work_dir: Path,
    init_adapter: Path | None = None,
    progress: Progress | None = None,
    device: Device = "auto",
    eval_pairs: pd.DataFrame | None = None,
) -> TrainingReport:
    """DPO (sigmoid loss, beta = ``spec.beta``) on prompt/chosen/rejected rows; resumable, atomic.

    ``init_adapter``: start from this SFT adapter and keep training it (see
    :func:`make_dpo_trainer` for why). ``metrics`` holds the final and per-step
    rewards/accuracies and rewards/margins (and chosen/rejected rewards).
    """
    from big5_dagster.lib.training.progress_lines import ProgressLines

    data = check_frame(pairs, DPO_COLUMNS, "DPO pairs")
    target = resolve_device(device)
    work_dir = Path(work_dir)
    run_settings = settings_of_run("dpo", model_path, data, lora, spec, init_adapter, target)
    callbacks = [ProgressLines(progress, "dpo")]
    make_trainer = functools.partial(
        make_dpo_trainer,
        model_path,
        data,
        lora=lora,
        spec=spec,
        work_dir=work_dir,
        init_adapter=init_adapter,
        device=target,
        callbacks=callbacks,
        eval_pairs=eval_pairs,
    )
    return run_training(
        make_trainer,
        method="dpo",
        run_settings=run_settings,
        output_dir=Path(output_dir),
        work_dir=work_dir,
        target=target,
    )
