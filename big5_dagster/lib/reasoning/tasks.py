"""The reasoning benchmarks as lm-evaluation-harness tasks (METHOD.md section 6, "Reasoning").

The local task sets (tiny profile) are written by ``reasoning.task_set``; the paper's list
of lm_eval tasks is declared here (:func:`paper_tasks`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

OutputType = Literal["multiple_choice", "generate_until"]

LOCAL_GROUP = "big5_local_reasoning"
"""lm_eval group that lists the local tasks (for ``lm_eval --include_path DIR --tasks ...``)."""


LOCAL_TASK_NAMES: tuple[str, ...] = ("social_mc", "commonsense_mc", "arithmetic_word")


GENERATOR_VERSION = 1
"""Bump when a generator or template changes what it writes for the same seed."""


MANIFEST_FILE = "manifest.json"


STRICT_FILTER = "strict-match"


FLEXIBLE_FILTER = "flexible-extract"


NO_FILTER = "none"


class ReasoningError(ValueError):
    """Bad task set, bad results table or a failed lm_eval run; the message says where."""


@dataclass(frozen=True)
class BenchmarkTask:
    """One lm_eval task (or group, e.g. ``mmlu``) and how this project runs and reads it."""

    name: str
    num_fewshot: int
    output_type: OutputType
    metrics: tuple[str, ...]
    filters: tuple[str, ...] = (NO_FILTER,)
    primary: tuple[tuple[str, str], ...] = ()
    """(metric, filter) pairs that count as this task's benchmark scores (direction count)."""
    version: str | None = None
    """Content hash of a local task's data and config; None for lm_eval's built-in tasks."""
    include_path: str | None = None
    """The folder holding a local task's YAML; None for lm_eval's built-in tasks."""
    is_group: bool = False

    def __post_init__(self) -> None:
        if self.num_fewshot < 0:
            raise ReasoningError(f"task {self.name!r}: num_fewshot must be >= 0")
        for metric, filter_name in self.primary:
            if metric not in self.metrics or filter_name not in self.filters:
                raise ReasoningError(
                    f"task {self.name!r}: primary score ({metric}, {filter_name}) is not "
                    f"among metrics {self.metrics} x filters {self.filters}"
                )


def paper_tasks() -> list[BenchmarkTask]:
    """The paper's benchmarks (METHOD.md section 6) as lm_eval 0.4.13 names them.

    GPQA and all multiple-choice tasks run 0-shot, GSM8K 5-shot with both of lm_eval's
    extractions (strict "#### N" and the last number), TruthfulQA as mc2. METHOD.md names
    these 8 tasks but counts "9 benchmarks"; counting GSM8K's two extractions as two primary
    scores gives 9 (our reading, not stated by the paper). Running them needs the Hugging
    Face hub (or a pre-filled datasets cache), so the tests check the declarations only.
    """
    mc = ("acc", "acc_norm")
    return [
        BenchmarkTask("social_iqa", 0, "multiple_choice", ("acc",), primary=(("acc", NO_FILTER),)),
        BenchmarkTask(
            "commonsense_qa", 0, "multiple_choice", ("acc",), primary=(("acc", NO_FILTER),)
        ),
        BenchmarkTask("piqa", 0, "multiple_choice", mc, primary=(("acc", NO_FILTER),)),
        BenchmarkTask("mathqa", 0, "multiple_choice", mc, primary=(("acc", NO_FILTER),)),
        BenchmarkTask(
            "mmlu", 0, "multiple_choice", ("acc",), primary=(("acc", NO_FILTER),), is_group=True
        ),
        BenchmarkTask(
            "gpqa_main_zeroshot", 0, "multiple_choice", mc, primary=(("acc", NO_FILTER),)
        ),
        BenchmarkTask(
            "gsm8k",
            5,
            "generate_until",
            ("exact_match",),
            filters=(STRICT_FILTER, FLEXIBLE_FILTER),
            primary=(("exact_match", STRICT_FILTER), ("exact_match", FLEXIBLE_FILTER)),
        ),
        BenchmarkTask(
            "truthfulqa_mc2", 0, "multiple_choice", ("acc",), primary=(("acc", NO_FILTER),)
        ),
    ]
