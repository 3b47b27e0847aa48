"""Supervised fine-tuning and DPO of causal LMs with trl + peft (LoRA or full), resumable.

Pure logic (no Dagster). Used for the expert generators (METHOD.md section 3) and for the
SFT and DPO adapters trained on BIG5-CHAT (section 5). Nothing here writes a training loop:
trl's ``SFTTrainer``/``DPOTrainer`` train, peft's ``LoraConfig`` makes the adapters.

Behaviour every caller relies on:

- Data are prompt/completion strings (SFT) or prompt/chosen/rejected strings (DPO); prompts
  are already chat-rendered. trl appends the tokenizer's EOS to each completion and, for
  prompt/completion data, puts the loss on the completion tokens only (``completion_only_loss``;
  we pass it explicitly rather than rely on trl's default).
- trl tokenizes the rendered prompt with ``add_special_tokens=True``. A template that writes
  the BOS token itself (Llama-3) would then start with two BOS tokens, so a leading BOS
  *text* is removed from prompts when the tokenizer adds BOS on its own (SmolLM2 adds none).
- Seeded: the LoRA initialisation, data order and dropout follow ``TrainSpec.seed``.
- Checkpoints go to ``work_dir`` every ``save_steps``; a later call with the same settings
  (same model, data, LoRA, schedule) resumes from the last complete checkpoint. Different
  settings discard the old checkpoints. The result is written atomically to ``output_dir``
  (a temporary folder beside it is renamed into place), then the checkpoints are removed.
- CPU: fp32, ``bf16=False``, ``use_cpu=True``, no gradient checkpointing (trl's configs
  default to bf16 and gradient checkpointing, which fail or crawl there; PITFALLS.md).
  CUDA: bf16 weights and mixed precision when the GPU supports it, gradient checkpointing on.

Tokens per second are computed one way everywhere (:func:`count_training_tokens`): the
non-padding tokens of one pass over the trainer's prepared (tokenized, EOS-appended,
truncated) train dataset, times the epochs run. A plain trl script that builds its trainer
the same way can call the same function, so the two throughputs compare like for like.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import resource
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import datasets
import pandas as pd
import peft
import torch
import transformers
import trl
from peft import LoraConfig, PeftModel
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PrinterCallback,
    TrainerCallback,
    TrainerControl,
    TrainerState,
)
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

from big5_dagster.lib.model import LoadedModel, folder_fingerprint_parts
from big5_dagster.lib.storage import atomic_dir, hash_dataframe, hash_dir, hash_json

log = logging.getLogger(__name__)
# trl 1.16 calls a transformers method deprecated in 5.x on every training step.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

Device = Literal["auto", "cpu", "cuda"]
Progress = Callable[[str], None]

SFT_COLUMNS: tuple[str, ...] = ("prompt", "completion")
DPO_COLUMNS: tuple[str, ...] = ("prompt", "chosen", "rejected")
RUN_SETTINGS_FILE = "run_settings.json"
"""Written in work_dir (to decide whether a checkpoint may be resumed) and in output_dir."""
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Written last in a transformers checkpoint: its presence marks the checkpoint complete.
_TRAINER_STATE = "trainer_state.json"
# The adapter trl trains; DPO from an SFT adapter adds a frozen copy named "ref".
_TRAINED_ADAPTER = "default"


class TrainingError(RuntimeError):
    """Training could not start or finish; the message says which input is wrong."""


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA adapter's shape (METHOD.md section 5: r 8, alpha 16, dropout 0, all linear)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: str | tuple[str, ...] = "all-linear"

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"LoraSpec.r must be >= 1, got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"LoraSpec.alpha must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoraSpec.dropout must be in [0, 1), got {self.dropout}")

    def peft_config(self) -> LoraConfig:
        modules = (
            self.target_modules
            if isinstance(self.target_modules, str)
            else list(self.target_modules)
        )
        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=modules,
            bias="none",
            task_type="CAUSAL_LM",
        )


@dataclass(frozen=True, kw_only=True)
class TrainSpec:
    """The optimisation schedule of one training run."""

    epochs: float
    learning_rate: float
    batch_size: int
    """Examples (SFT) or preference pairs (DPO) per device per step."""
    gradient_accumulation_steps: int = 1
    max_length: int
    """Token cutoff of prompt + completion; longer sequences keep their start."""
    seed: int
    warmup_steps: int = 0
    lr_scheduler: str = "linear"
    """A transformers scheduler name: linear, cosine, constant, constant_with_warmup, ..."""
    save_steps: int = 50
    """Checkpoint every this many optimizer steps (resume point after an interruption)."""
    beta: float = 0.1
    """DPO only: the KL strength of the sigmoid loss."""

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs > 0,
            "learning_rate": self.learning_rate > 0,
            "batch_size": self.batch_size >= 1,
            "gradient_accumulation_steps": self.gradient_accumulation_steps >= 1,
            "max_length": self.max_length >= 2,
            "warmup_steps": self.warmup_steps >= 0,
            "save_steps": self.save_steps >= 1,
            "beta": self.beta > 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"TrainSpec.{name} is out of range: {getattr(self, name)!r}")


@dataclass
class TrainingReport:
    """What one training call did; ``to_dict()`` is JSON-able (for asset metadata)."""

    method: Literal["sft", "dpo"]
    examples: int
    """Training rows after trl's preparation (rows whose prompt fills max_length are dropped)."""
    steps: int
    """Optimizer steps of the whole schedule (also counting those done before a resume)."""
    steps_this_run: int
    seconds: float
    """Wall time of this call's ``trainer.train()`` (a resumed run counts only its own part)."""
    train_tokens: int
    """Non-padding tokens of the whole schedule (:func:`count_training_tokens` x epochs)."""
    tokens_per_second: float
    """Tokens this call processed (its share of the steps) per second of ``seconds``."""
    loss_curve: list[tuple[int, float]]
    final_loss: float | None
    metrics: dict[str, Any] = field(default_factory=dict)
    resumed_from: str | None = None
    """The checkpoint folder name this call resumed from (e.g. 'checkpoint-50'), or None."""
    device: str = "cpu"
    peak_memory_mb: float | None = None
    """CUDA: peak allocated GPU memory; CPU: the process's peak resident set size."""

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["loss_curve"] = [[int(s), float(v)] for s, v in self.loss_curve]
        return json.loads(json.dumps(data, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    if hasattr(value, "item"):
        return value.item()
    return str(value)


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------


def _check_frame(frame: pd.DataFrame, columns: Sequence[str], what: str) -> pd.DataFrame:
    """Only the needed string columns, with a clear error naming the row and field."""
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{what} must be a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing} (has {list(frame.columns)})")
    if frame.empty:
        raise ValueError(f"{what} has no rows")
    out = frame[list(columns)].reset_index(drop=True)
    for column in columns:
        values = out[column].tolist()
        for row, value in enumerate(values):
            if not isinstance(value, str):
                raise ValueError(
                    f"{what} row {row}, field {column!r}: expected a string, got {value!r}"
                )
        if column != "prompt":
            for row, value in enumerate(values):
                if not value.strip():
                    raise ValueError(f"{what} row {row}, field {column!r}: empty text")
    return out.astype(str)


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No per-map progress bars from trl's dataset preparation (they flood run logs)."""
    was_enabled = datasets.utils.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def _tokenizer_adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


def normalize_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> list[str]:
    """Prompts as trl should receive them: without a leading BOS text when the tokenizer adds one.

    trl tokenizes non-conversational prompts with the tokenizer's special tokens; a rendered
    Llama-3 prompt already starts with ``<|begin_of_text|>`` and would get it twice.
    """
    if not _tokenizer_adds_bos(tokenizer) or not tokenizer.bos_token:
        return list(prompts)
    bos = tokenizer.bos_token
    return [p[len(bos) :] if p.startswith(bos) else p for p in prompts]


def resolve_device(device: Device) -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("device='cuda' was requested but torch sees no CUDA GPU")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _use_bf16(target: str) -> bool:
    return target == "cuda" and torch.cuda.is_bf16_supported()


def _model_location(model_path: str | Path) -> tuple[str, dict[str, Any]]:
    path = Path(model_path)
    if path.is_dir():
        return str(path), {"local_files_only": True}
    return str(model_path), {}


def load_tokenizer(model_path: str | Path) -> PreTrainedTokenizerBase:
    """The model's tokenizer with a pad token (pad = eos when the model defines none)."""
    location, kwargs = _model_location(model_path)
    tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_causal_lm(model_path: str | Path, target: str) -> PreTrainedModel:
    location, kwargs = _model_location(model_path)
    dtype = torch.bfloat16 if _use_bf16(target) else torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **kwargs)
    except OSError as e:
        raise TrainingError(f"could not load the model to train from {model_path}: {e}") from e
    return model.to(target)


def _model_identity(model_path: str | Path) -> dict[str, Any]:
    path = Path(model_path)
    if path.is_dir():
        # Content, not location: the same weights in another folder are the same model.
        return {"content": folder_fingerprint_parts(path)}
    return {"hub_id": str(model_path)}


# --------------------------------------------------------------------------------------
# Trainer construction (public so a plain-trl benchmark builds exactly the same trainer)
# --------------------------------------------------------------------------------------


def _training_arguments(spec: TrainSpec, work_dir: Path, target: str) -> dict[str, Any]:
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
        "save_strategy": "steps",
        "save_steps": spec.save_steps,
        # Two kept: when the newest was cut off mid-write the one before still resumes.
        "save_total_limit": 2,
        "logging_strategy": "steps",
        "logging_steps": 1,
        "report_to": "none",
        "disable_tqdm": True,
        "use_cpu": not on_cuda,
        "bf16": _use_bf16(target),
        "fp16": False,
        # transformers 5 renamed gradient_checkpointing (trl defaults it to True).
        "activation_checkpointing": on_cuda,
        # Optimizer and scheduler state are needed to resume exactly where a run stopped.
        "save_only_model": False,
        "dataloader_num_workers": 0,
    } | ({"activation_checkpointing_kwargs": {"use_reentrant": False}} if on_cuda else {})


def _prepared_eval(
    frame: pd.DataFrame | None, columns: Sequence[str], what: str, model_path: str | Path
) -> datasets.Dataset | None:
    if frame is None or frame.empty:
        return None
    data = _check_frame(frame, columns, what)
    data["prompt"] = normalize_prompts(load_tokenizer(model_path), data["prompt"].tolist())
    return datasets.Dataset.from_pandas(data, preserve_index=False)


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
    data = _check_frame(examples, SFT_COLUMNS, "SFT examples")
    eval_data = _prepared_eval(eval_examples, SFT_COLUMNS, "SFT validation examples", model_path)
    target = resolve_device(device)
    # Seed before the model and the LoRA matrices are created (trl wraps before Trainer seeds).
    transformers.set_seed(spec.seed)
    tokenizer = load_tokenizer(model_path)
    data["prompt"] = normalize_prompts(tokenizer, data["prompt"].tolist())
    model = _load_causal_lm(model_path, target)
    config = SFTConfig(
        **_training_arguments(spec, Path(work_dir), target),
        completion_only_loss=True,
        packing=False,
    )
    with _quiet_datasets():
        trainer = SFTTrainer(
            model=model,
            args=config,
            train_dataset=datasets.Dataset.from_pandas(data, preserve_index=False),
            eval_dataset=eval_data,
            processing_class=tokenizer,
            peft_config=lora.peft_config() if lora is not None else None,
            callbacks=list(callbacks),
        )
    # Our progress callback reports steps; the default printer would print every log dict.
    trainer.remove_callback(PrinterCallback)
    return trainer


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
    data = _check_frame(pairs, DPO_COLUMNS, "DPO pairs")
    eval_data = _prepared_eval(eval_pairs, DPO_COLUMNS, "DPO validation pairs", model_path)
    target = resolve_device(device)
    transformers.set_seed(spec.seed)
    tokenizer = load_tokenizer(model_path)
    data["prompt"] = normalize_prompts(tokenizer, data["prompt"].tolist())
    model: PreTrainedModel | PeftModel = _load_causal_lm(model_path, target)
    peft_config = None
    if init_adapter is not None:
        _check_init_adapter(Path(init_adapter), lora)
        model = PeftModel.from_pretrained(
            model, str(init_adapter), adapter_name=_TRAINED_ADAPTER, is_trainable=True
        )
    elif lora is not None:
        peft_config = lora.peft_config()
    config = DPOConfig(
        **_training_arguments(spec, Path(work_dir), target),
        beta=spec.beta,
        loss_type=["sigmoid"],
    )
    with _quiet_datasets():
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


# --------------------------------------------------------------------------------------
# Checkpoints and resume
# --------------------------------------------------------------------------------------


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


def _run_settings(
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
    settings = {
        "method": method,
        "model": _model_identity(model_path),
        "data_hash": hash_dataframe(data.reset_index(drop=True)),
        "rows": len(data),
        "lora": dataclasses.asdict(lora) if lora is not None else None,
        "spec": dataclasses.asdict(spec),
        "init_adapter_hash": hash_dir(Path(init_adapter)) if init_adapter is not None else None,
        "device": target,
        "versions": {
            "trl": trl.__version__,
            "peft": peft.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
    }
    return json.loads(json.dumps(settings, sort_keys=True, default=_jsonable))


# --------------------------------------------------------------------------------------
# Progress and reports
# --------------------------------------------------------------------------------------


class _ProgressCallback(TrainerCallback):
    """Feeds human-readable lines (step, loss, DPO rewards, checkpoints) to ``progress``."""

    def __init__(self, progress: Progress | None, method: str) -> None:
        self.progress = progress or log.info
        self.method = method

    def on_train_begin(self, args, state: TrainerState, control: TrainerControl, **kwargs):
        self.progress(f"{self.method}: training for {state.max_steps} steps")

    def on_log(self, args, state: TrainerState, control: TrainerControl, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        parts = [
            f"{self.method} step {state.global_step}/{state.max_steps}",
            f"loss {logs['loss']:.4f}",
        ]
        for key in ("rewards/accuracies", "rewards/margins"):
            if key in logs:
                parts.append(f"{key} {logs[key]:.3f}")
        if "learning_rate" in logs:
            parts.append(f"lr {logs['learning_rate']:.2e}")
        self.progress(", ".join(parts))

    def on_save(self, args, state: TrainerState, control: TrainerControl, **kwargs):
        self.progress(f"{self.method}: saved checkpoint-{state.global_step}")


_DPO_CURVES = ("rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected")


def _curve(history: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    return [(int(e["step"]), float(e[key])) for e in history if key in e and "step" in e]


def _peak_memory_mb(target: str) -> float:
    if target == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _run(
    trainer: SFTTrainer | DPOTrainer,
    *,
    method: Literal["sft", "dpo"],
    run_settings: dict[str, Any],
    output_dir: Path,
    work_dir: Path,
    target: str,
) -> TrainingReport:
    resume = _prepare_work_dir(work_dir, run_settings)
    resume_step = 0
    if resume is not None:
        resume_step = int(json.loads((resume / _TRAINER_STATE).read_text())["global_step"])
        log.info("resuming %s from %s", method, resume)
    if target == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tokens_per_epoch = count_training_tokens(trainer)
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


def _save_result(
    trainer: SFTTrainer | DPOTrainer, output_dir: Path, run_settings: dict[str, Any]
) -> None:
    """The adapter (only the trained one, not DPO's reference copy) or full model + tokenizer."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    with atomic_dir(Path(output_dir)) as tmp:
        if isinstance(model, PeftModel):
            model.save_pretrained(str(tmp), selected_adapters=[_TRAINED_ADAPTER])
        else:
            model.save_pretrained(str(tmp))
        trainer.processing_class.save_pretrained(str(tmp))
        (tmp / RUN_SETTINGS_FILE).write_text(json.dumps(run_settings, indent=2, sort_keys=True))


# --------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------


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
    data = _check_frame(examples, SFT_COLUMNS, "SFT examples")
    target = resolve_device(device)
    work_dir = Path(work_dir)
    run_settings = _run_settings("sft", model_path, data, lora, spec, None, target)
    callbacks = [_ProgressCallback(progress, "sft")]
    trainer = make_sft_trainer(
        model_path,
        data,
        lora=lora,
        spec=spec,
        work_dir=work_dir,
        device=target,
        callbacks=callbacks,
        eval_examples=eval_examples,
    )
    return _run(
        trainer,
        method="sft",
        run_settings=run_settings,
        output_dir=Path(output_dir),
        work_dir=work_dir,
        target=target,
    )


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
    data = _check_frame(pairs, DPO_COLUMNS, "DPO pairs")
    target = resolve_device(device)
    work_dir = Path(work_dir)
    run_settings = _run_settings("dpo", model_path, data, lora, spec, init_adapter, target)
    callbacks = [_ProgressCallback(progress, "dpo")]
    trainer = make_dpo_trainer(
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
    return _run(
        trainer,
        method="dpo",
        run_settings=run_settings,
        output_dir=Path(output_dir),
        work_dir=work_dir,
        target=target,
    )


def load_adapted_model(
    model_path: str | Path,
    adapter_path: Path,
    device: Device = "auto",
    *,
    merge: bool = False,
) -> LoadedModel:
    """Base model + a trained adapter, in eval mode, as a :class:`LoadedModel` for generation.

    The tokenizer is the one saved with the adapter (left padding, pad token set), so
    ``lib.model.generate_chat``/``score_options`` work on it. ``merge=True`` folds the adapter
    into the weights (faster; the result is no longer a ``PeftModel``).
    """
    adapter_path = Path(adapter_path)
    if not (adapter_path / "adapter_config.json").is_file():
        raise TrainingError(f"{adapter_path} is not a peft adapter folder (no adapter_config.json)")
    target = resolve_device(device)
    base = _load_causal_lm(model_path, target)
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_path), local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model: Any = PeftModel.from_pretrained(base, str(adapter_path))
    if merge:
        model = model.merge_and_unload()
    model.eval()
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    parts = {
        "base": _model_identity(model_path),
        "adapter": hash_dir(adapter_path),
        "merged": merge,
    }
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        model_id=f"{model_path}+{adapter_path.name}",
        source="local",
        revision=None,
        dtype="bfloat16" if _use_bf16(target) else "float32",
        device=str(next(model.parameters()).device),
        fingerprint=hash_json(parts),
        path=adapter_path,
        fingerprint_parts=parts,
    )


__all__ = [
    "LoraSpec",
    "TrainSpec",
    "TrainingReport",
    "TrainingError",
    "count_training_tokens",
    "last_complete_checkpoint",
    "load_adapted_model",
    "load_tokenizer",
    "make_dpo_trainer",
    "make_sft_trainer",
    "normalize_prompts",
    "resolve_device",
    "train_dpo",
    "train_sft",
]
