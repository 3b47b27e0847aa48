"""Training progress as human-readable lines, fed to a progress callback.

A transformers ``TrainerCallback``, so this module needs transformers: the training
functions import it when they run.
"""

from __future__ import annotations

import logging
import time

from transformers import TrainerCallback, TrainerControl, TrainerState

from big5_dagster.lib.common.progress import format_seconds
from big5_dagster.lib.training.specs import Progress

log = logging.getLogger(__name__)


class ProgressLines(TrainerCallback):
    """Feeds human-readable lines (step, loss, DPO rewards, checkpoints) to ``progress``."""

    def __init__(self, progress: Progress | None, method: str, lines: int | None = None) -> None:
        """``lines``: report about that many steps (and the last) instead of every log."""
        self.progress = progress or log.info
        self.method = method
        self.lines = lines
        self.every = 1
        self._started = time.monotonic()
        self._first_step = 0

    def on_train_begin(self, args, state: TrainerState, control: TrainerControl, **kwargs):
        if self.lines:
            self.every = max(1, state.max_steps // self.lines)
        self._started, self._first_step = time.monotonic(), state.global_step
        self.progress(f"{self.method}: training for {state.max_steps} steps")

    def on_log(self, args, state: TrainerState, control: TrainerControl, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        if state.global_step % self.every and state.global_step != state.max_steps:
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
        done = state.global_step - self._first_step  # a resumed run counts its own steps
        if done > 0 and state.global_step < state.max_steps:
            per_step = (time.monotonic() - self._started) / done
            left = per_step * (state.max_steps - state.global_step)
            parts.append(f"about {format_seconds(left)} left")
        self.progress(", ".join(parts))

    def on_save(self, args, state: TrainerState, control: TrainerControl, **kwargs):
        self.progress(f"{self.method}: saved checkpoint-{state.global_step}")
