"""What a training run is: LoRA shape, schedule and report (SFT and DPO with trl + peft).

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
- CPU: ``use_cpu=True``, no gradient checkpointing (trl's configs default to it, and it
  crawls there; PITFALLS.md). With bf16 precision (``TrainSpec.precision``, by default where
  the CPU has bf16 arithmetic, and on a CUDA GPU that has it) the frozen base weights are
  bf16 and the matmuls autocast to bf16, while peft keeps the LoRA weights fp32, so the
  optimizer still updates fp32 LoRA weights; fp32 precision keeps everything fp32. CUDA:
  gradient checkpointing on.

Tokens per second are computed one way everywhere (:func:`count_training_tokens`): the
non-padding tokens of one pass over the trainer's prepared (tokenized, EOS-appended,
truncated) train dataset, times the epochs run. A plain trl script that builds its trainer
the same way can call the same function, so the two throughputs compare like for like.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

# trl 1.16 calls a transformers method deprecated in 5.x on every training step.
from big5_dagster.lib.common.jsonable import jsonable

if TYPE_CHECKING:
    from peft import LoraConfig
    from transformers import PreTrainedModel

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "float32", "bfloat16"]


Progress = Callable[[str], None]

SFT_COLUMNS: tuple[str, ...] = ("prompt", "completion")


DPO_COLUMNS: tuple[str, ...] = ("prompt", "chosen", "rejected")


class TrainingError(RuntimeError):
    """Training could not start or finish; the message says which input is wrong."""


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA adapter's shape (METHOD.md section 5: r 8, alpha 16, dropout 0, all linear)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: str | tuple[str, ...] = "all-linear"
    top_layers: int | None = None
    """Adapt only the top this many decoder layers (None: all). Autograd then stops at the
    lowest adapted layer, so a step skips the backward pass through the frozen ones."""

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"LoraSpec.r must be >= 1, got {self.r}")
        if self.top_layers is not None and self.top_layers < 1:
            raise ValueError(f"LoraSpec.top_layers must be >= 1 or None, got {self.top_layers}")
        if self.alpha <= 0:
            raise ValueError(f"LoraSpec.alpha must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoraSpec.dropout must be in [0, 1), got {self.dropout}")

    def peft_config(self, model: PreTrainedModel | None = None) -> LoraConfig:
        """peft's config; ``model`` (the model to adapt) is needed when ``top_layers`` is set."""
        import torch
        from peft import LoraConfig

        modules = (
            self.target_modules
            if isinstance(self.target_modules, str)
            else list(self.target_modules)
        )
        layers = None
        n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
        if self.top_layers is not None:
            if model is None or n_layers is None:
                raise ValueError("LoraSpec.top_layers needs the model (with num_hidden_layers)")
            if self.top_layers < n_layers:
                layers = list(range(n_layers - self.top_layers, n_layers))
        if layers is not None and modules == "all-linear":
            # peft picks layers only by module names: every linear but the output head.
            head = model.get_output_embeddings()
            modules = sorted(
                {
                    name.rsplit(".", 1)[-1]
                    for name, module in model.named_modules()
                    if isinstance(module, torch.nn.Linear) and module is not head
                }
            )
        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=modules,
            layers_to_transform=layers,
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
    shuffle: bool = True
    """Shuffle the training rows each epoch (False: train in the given order, e.g. DPO's
    mirrored couples, which must share an optimizer step)."""
    precision: Precision = "auto"
    """bfloat16: bf16 base weights and matmuls, fp32 LoRA weights;
    float32: fp32 throughout; auto: bf16 where the hardware multiplies it natively
    (``engine.hardware.auto_dtype``)."""

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
        return json.loads(json.dumps(jsonable(data), default=str))


def reward_row(report: dict) -> dict:
    """A DPO training report's final and validation reward accuracy and margin, per seed."""
    metrics = report["metrics"]
    validation = metrics.get("validation", {})
    return {
        "seed": report["seed"],
        "reward_accuracy": metrics.get("rewards/accuracies"),
        "reward_margin": metrics.get("rewards/margins"),
        "validation_reward_accuracy": validation.get("eval_rewards/accuracies"),
        "validation_reward_margin": validation.get("eval_rewards/margins"),
    }
