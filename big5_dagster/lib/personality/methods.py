"""The evaluated methods (one method partition each) and the persona of the base condition."""

from __future__ import annotations

METHODS: tuple[str, ...] = ("base", "prompt_description", "prompt_demonstrations", "sft", "dpo")
ADAPTER_METHODS: tuple[str, ...] = ("sft", "dpo")
NO_PERSONA = "none"
