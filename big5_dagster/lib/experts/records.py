"""The expert record of one trait (``expert.json`` beside the trained experts): which folder
holds the expert of each level, on which base model, and the version of the weights."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from big5_dagster.lib.common.files import read_json
from big5_dagster.lib.traits import LEVELS, Persona

RECORD_FILE = "expert.json"
MODES: tuple[str, ...] = ("lora", "full")
ADAPTER_LAYOUTS: tuple[str, ...] = ("per_trait", "per_level")


def expert_names(adapters: str) -> dict[str, str]:
    """Level -> the folder (and adapter name) of the expert that writes it."""
    if adapters == "per_level":
        return {level: f"expert-{level}" for level in LEVELS}
    return {level: "expert" for level in LEVELS}


@dataclass(frozen=True)
class ExpertRecord:
    """The trained expert(s) of one trait, as trait_experts wrote them."""

    trait: str
    mode: str
    """'lora' (adapters on ``base_model``) or 'full' (fine-tuned models)."""
    adapters: str
    """'per_trait' (one expert, level in the instruction) or 'per_level' (one per level)."""
    experts: Mapping[str, str]
    """Level -> folder (and adapter name) of the expert that writes it."""
    base_model: str
    base_fingerprint: str
    data_version: str
    """Hash of the weight files of every expert folder."""
    folder: Path
    """Where the record and the expert folders are (not stored in the file)."""
    system_prompt: str | None = None
    """The system turn of the expert prompt the experts were trained with (None: the chat
    template's default); every use of the experts prompts them the same way."""

    def to_json(self) -> dict[str, Any]:
        return {
            "trait": self.trait,
            "mode": self.mode,
            "adapters": self.adapters,
            "experts": dict(self.experts),
            "base_model": self.base_model,
            "base_fingerprint": self.base_fingerprint,
            "data_version": self.data_version,
            "system_prompt": self.system_prompt,
        }

    def write(self, folder: Path) -> Path:
        """Write ``expert.json`` into ``folder`` (the record's folder, or a staging copy)."""
        path = Path(folder) / RECORD_FILE
        path.write_text(json.dumps(self.to_json(), indent=2, sort_keys=True))
        return path

    @classmethod
    def read(cls, folder: Path) -> ExpertRecord:
        """The record in ``folder``; a clear error names the file and the field."""
        path = Path(folder) / RECORD_FILE
        data = read_json(path)
        fields = ("trait", "mode", "adapters", "experts", "base_model", "base_fingerprint")
        for name in (*fields, "data_version"):
            if name not in data:
                raise ValueError(f"{path}: field {name!r} is missing")
        if data["mode"] not in MODES:
            raise ValueError(f"{path}: field 'mode' is {data['mode']!r}, expected one of {MODES}")
        experts = data["experts"]
        if not isinstance(experts, dict) or set(experts) != set(LEVELS):
            raise ValueError(f"{path}: field 'experts' must name a folder for each of {LEVELS}")
        system_prompt = data.get("system_prompt")  # records before it was kept: the template's
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise ValueError(f"{path}: field 'system_prompt' must be a string or null")
        return cls(
            **{k: data[k] for k in (*fields, "data_version")},
            folder=Path(folder),
            system_prompt=system_prompt,
        )

    @property
    def folder_names(self) -> list[str]:
        """The distinct expert folders (one per trait, or one per level)."""
        return sorted(set(self.experts.values()))

    def path(self, level: str) -> Path:
        return self.folder / self.experts[level]

    def is_lora_on(self, fingerprint: str) -> bool:
        """Whether the experts are LoRA adapters on the model with this fingerprint."""
        return self.mode == "lora" and self.base_fingerprint == fingerprint

    def expert_id(self, level: str) -> str:
        """The expert that writes ``level``: base model, expert folder and weights version."""
        return f"{self.base_model}+{self.trait}/{self.experts[level]}@{self.data_version}"

    def anti_expert_level(self, persona: Persona) -> str | None:
        """The opposite level when its expert has weights of its own (else None)."""
        opposite = persona.opposite.level
        return opposite if self.experts[opposite] != self.experts[persona.level] else None
