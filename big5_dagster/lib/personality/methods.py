"""The evaluated methods (one method partition each), the persona of the base condition, and
the scorers that read an answer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

STEERING_METHODS: dict[str, str] = {
    "steering_grounded": "grounded",
    "steering_prompted": "prompted",
}
"""Activation steering, one method per kind of persona vector (lib.engine.steering): the
variant is the method, so every table that compares methods keeps the two apart."""
METHODS: tuple[str, ...] = (
    "base",
    "prompt_description",
    "prompt_demonstrations",
    "sft",
    "dpo",
    *STEERING_METHODS,
)
ADAPTER_METHODS: tuple[str, ...] = ("sft", "dpo")
NO_PERSONA = "none"
SCORERS: tuple[str, ...] = ("logprob", "generate")


def is_deterministic(scorer: str, scorer_settings: Mapping[str, Any]) -> bool:
    """Whether ``scorer`` with these settings gives the same answer to a prompt every time:
    option log-probabilities always; generate-and-parse when it does not sample. Its runs
    would then be copies, not replicates (METHOD.md section 7, "Statistical units")."""
    if scorer not in SCORERS:
        raise ValueError(f"unknown scorer {scorer!r}: expected one of {list(SCORERS)}")
    return scorer == "logprob" or not scorer_settings.get("do_sample", True)
