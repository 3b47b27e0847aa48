"""One resumable training run: arguments, checkpoints, progress lines, the report, the atomic result.

Tokens per second are computed one way everywhere (:func:`count_training_tokens`). torch,
transformers, peft and trl are imported where used: the definitions load without them.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import re
import resource
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from big5_dagster.lib.common.files import atomic_dir
from big5_dagster.lib.common.hashing import hash_dataframe, hash_dir

# trl 1.16 calls a transformers method deprecated in 5.x on every training step.
from big5_dagster.lib.common.jsonable import jsonable
from big5_dagster.lib.training.inputs import model_identity, use_bf16
from big5_dagster.lib.training.specs import (
    LoraSpec,
    TrainingError,
    TrainingReport,
    TrainSpec,
)

if TYPE_CHECKING:
    from trl import DPOTrainer, SFTTrainer

log = logging.getLogger(__name__)
# trl 1.16 calls a transformers method deprecated in 5.x on every training step.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


RUN_SETTINGS_FILE = "run_settings.json"
"""Written in work_dir (to decide whether a checkpoint may be resumed) and in output_dir."""


_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


# Written last in a transformers checkpoint: its presence marks the checkpoint complete.
_TRAINER_STATE = "trainer_state.json"


# The adapter trl trains; DPO from an SFT adapter adds a frozen copy named "ref".
TRAINED_ADAPTER = "default"


def training_arguments(spec: TrainSpec, work_dir: Path, target: str) -> dict[str, Any]:
    on_cuda = target == "cuda"
    return {
        "output_dir": str(work_dir),
        "num_train_epochs": float(spec.epochs),
        "learning_rate": spec.learning_rate,
        "per_device_train_batch_size": spec.batch_size,
        "gradient_accumulation_steps": spec.gradient_accumulation_steps,
        "lr_scheduler_type": spec.lr_scheduler,
        "warmup_steps": spec.warmup_steps,
        "max_length": spec.max_length,
        "seed": spec.seed,
        "data_seed": spec.seed,
        "train_sampling_strategy": "random" if spec.shuffle else "sequential",
        "save_strategy": "steps",
        "save_steps": spec.save_steps,
        # Two kept: when the newest was cut off mid-write the one before still resumes.
        "save_total_limit": 2,
        "logging_strategy": "steps",
        "logging_steps": 1,
        "report_to": "none",
        "disable_tqdm": True,
        "use_cpu": not on_cuda,
        "bf16": use_bf16(spec.precision, target),
        "fp16": False,
        # transformers 5 renamed gradient_checkpointing (trl defaults it to True).
        "activation_checkpointing": on_cuda,
        # Optimizer and scheduler state are needed to resume exactly where a run stopped.
        "save_only_model": False,
        "dataloader_num_workers": 0,
    } | ({"activation_checkpointing_kwargs": {"use_reentrant": False}} if on_cuda else {})


def count_training_tokens(trainer: SFTTrainer | DPOTrainer) -> int:
    """Non-padding tokens in one pass over a trainer's prepared train dataset.

    SFT: each example's prompt + completion + EOS, truncated to ``max_length``. DPO: prompt +
    chosen and prompt + rejected (both forwarded), each truncated to ``max_length``. These are
    the tokens the model runs forward and backward on; padding is not counted. Multiply by the
    epochs for a schedule's total.
    """
    dataset = trainer.train_dataset
    max_length = trainer.args.max_length
    cap = (lambda n: min(n, max_length)) if max_length is not None else (lambda n: n)
    columns = set(dataset.column_names)
    if "input_ids" in columns:
        return int(sum(cap(len(ids)) for ids in dataset["input_ids"]))
    if {"prompt_ids", "chosen_ids", "rejected_ids"} <= columns:
        total = 0
        for p, c, r in zip(
            dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"], strict=True
        ):
            total += cap(len(p) + len(c)) + cap(len(p) + len(r))
        return int(total)
    raise TrainingError(
        f"cannot count tokens: the trainer's dataset has columns {sorted(columns)}, "
        "expected prepared SFT (input_ids) or DPO (prompt_ids, chosen_ids, rejected_ids) data"
    )


def _checkpoints(work_dir: Path) -> list[tuple[int, Path]]:
    if not work_dir.is_dir():
        return []
    found = []
    for child in work_dir.iterdir():
        match = _CHECKPOINT.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


def last_complete_checkpoint(work_dir: Path) -> Path | None:
    """The newest checkpoint whose trainer state was written (the last file transformers writes)."""
    complete = [
        path for _, path in _checkpoints(Path(work_dir)) if (path / _TRAINER_STATE).is_file()
    ]
    return complete[-1] if complete else None


def _clear_checkpoints(work_dir: Path) -> None:
    for _, path in _checkpoints(work_dir):
        shutil.rmtree(path, ignore_errors=True)
    (work_dir / RUN_SETTINGS_FILE).unlink(missing_ok=True)


def _prepare_work_dir(work_dir: Path, run_settings: dict[str, Any]) -> Path | None:
    """The checkpoint to resume from (same settings), after discarding unusable ones."""
    work_dir.mkdir(parents=True, exist_ok=True)
    settings_file = work_dir / RUN_SETTINGS_FILE
    try:
        previous = json.loads(settings_file.read_text())
    except (OSError, json.JSONDecodeError):
        previous = None
    if previous != run_settings:
        if _checkpoints(work_dir):
            log.info("discarding checkpoints in %s: they were made with other settings", work_dir)
        _clear_checkpoints(work_dir)
        settings_file.write_text(json.dumps(run_settings, indent=2, sort_keys=True))
        return None
    resume = last_complete_checkpoint(work_dir)
    if resume is None:
        _clear_checkpoints(work_dir)
        settings_file.write_text(json.dumps(run_settings, indent=2, sort_keys=True))
        return None
    resume_step = int(_CHECKPOINT.match(resume.name).group(1))  # type: ignore[union-attr]
    for step, path in _checkpoints(work_dir):
        if step > resume_step:  # cut off while being written
            shutil.rmtree(path, ignore_errors=True)
    return resume


def settings_of_run(
    method: str,
    model_path: str | Path,
    data: pd.DataFrame,
    lora: LoraSpec | None,
    spec: TrainSpec,
    init_adapter: Path | None,
    target: str,
) -> dict[str, Any]:
    """Everything that decides the trained weights; equal settings may share checkpoints.

    Returned as it reads back from JSON (lists, not tuples) so it compares with a saved copy.
    """
    import peft
    import torch
    import transformers
    import trl

    settings = {
        "method": method,
        "model": model_identity(model_path),
        "data_hash": hash_dataframe(data.reset_index(drop=True)),
        "rows": len(data),
        "lora": dataclasses.asdict(lora) if lora is not None else None,
        "spec": dataclasses.asdict(spec),
        "init_adapter_hash": hash_dir(Path(init_adapter)) if init_adapter is not None else None,
        "device": target,
        "bf16": use_bf16(spec.precision, target),
        "versions": {
            "trl": trl.__version__,
            "peft": peft.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
    }
    return json.loads(json.dumps(jsonable(settings), sort_keys=True, default=str))


_DPO_CURVES = ("rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected")


def _curve(history: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    return [(int(e["step"]), float(e[key])) for e in history if key in e and "step" in e]


def _peak_memory_mb(target: str) -> float:
    if target == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_training(
    make_trainer: Callable[[], SFTTrainer | DPOTrainer],
    *,
    method: Literal["sft", "dpo"],
    run_settings: dict[str, Any],
    output_dir: Path,
    work_dir: Path,
    target: str,
) -> TrainingReport:
    """Build the trainer, train it (resuming a checkpoint of the same settings), save the
    result atomically and report. The trainer is built and dropped here: trl's trainer holds
    its model in reference cycles, so it is collected before returning, not at some later
    collection, and the next training or asset does not load on top of this model."""
    trainer = make_trainer()
    try:
        resume = _prepare_work_dir(work_dir, run_settings)
        resume_step = 0
        if resume is not None:
            resume_step = int(json.loads((resume / _TRAINER_STATE).read_text())["global_step"])
            log.info("resuming %s from %s", method, resume)
        if target == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
        tokens_per_epoch = count_training_tokens(trainer)
        before = None
        if method == "sft" and trainer.eval_dataset is not None:
            # The untrained model's loss on the same held-out replies: the trained loss is only
            # meaningful beside it. Before train() even a resumed run holds the initial weights.
            before = {
                k: float(v) for k, v in trainer.evaluate().items() if isinstance(v, int | float)
            }
        started = time.perf_counter()
        trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
        seconds = time.perf_counter() - started

        state = trainer.state
        history = list(state.log_history)
        loss_curve = _curve(history, "loss")
        epochs = trainer.args.num_train_epochs
        train_tokens = int(round(tokens_per_epoch * epochs))
        steps_this_run = state.global_step - resume_step
        share = steps_this_run / state.global_step if state.global_step else 0.0
        metrics: dict[str, Any] = {
            "tokens_per_epoch": tokens_per_epoch,
            "train_loss": next(
                (float(e["train_loss"]) for e in reversed(history) if "train_loss" in e), None
            ),
            "trl_num_tokens_this_run": next(
                (int(e["num_tokens"]) for e in reversed(history) if "num_tokens" in e), None
            ),
        }
        if trainer.eval_dataset is not None:
            # Held-out validation metrics of the final weights (eval_loss; DPO: eval_rewards/*).
            metrics["validation"] = {
                k: float(v) for k, v in trainer.evaluate().items() if isinstance(v, int | float)
            }
        if before is not None:
            metrics["validation_before"] = before
        if method == "dpo":
            for key in _DPO_CURVES:
                curve = _curve(history, key)
                metrics[key] = curve[-1][1] if curve else None
                metrics[f"{key}_curve"] = curve
        report = TrainingReport(
            method=method,
            examples=len(trainer.train_dataset),
            steps=state.global_step,
            steps_this_run=steps_this_run,
            seconds=seconds,
            train_tokens=train_tokens,
            tokens_per_second=(train_tokens * share / seconds) if seconds > 0 else 0.0,
            loss_curve=loss_curve,
            final_loss=loss_curve[-1][1] if loss_curve else None,
            metrics=metrics,
            resumed_from=resume.name if resume is not None else None,
            device=target,
            peak_memory_mb=_peak_memory_mb(target),
        )
        _save_result(trainer, output_dir, run_settings)
        _clear_checkpoints(work_dir)
        # trl also writes a model card into its output_dir (our work_dir) at the end.
        (work_dir / "README.md").unlink(missing_ok=True)
        if work_dir.is_dir() and not any(work_dir.iterdir()):
            work_dir.rmdir()
        return report
    finally:
        del trainer
        gc.collect()


def _save_result(
    trainer: SFTTrainer | DPOTrainer, output_dir: Path, run_settings: dict[str, Any]
) -> None:
    """The adapter (only the trained one, not DPO's reference copy) or full model + tokenizer."""
    from peft import PeftModel

    model = trainer.accelerator.unwrap_model(trainer.model)
    with atomic_dir(Path(output_dir)) as tmp:
        if isinstance(model, PeftModel):
            model.save_pretrained(str(tmp), selected_adapters=[TRAINED_ADAPTER])
        else:
            model.save_pretrained(str(tmp))
        trainer.processing_class.save_pretrained(str(tmp))
        (tmp / RUN_SETTINGS_FILE).write_text(json.dumps(run_settings, indent=2, sort_keys=True))
