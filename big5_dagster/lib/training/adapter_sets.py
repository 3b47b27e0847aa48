"""The adapters an SFT or DPO asset trained, one per seed (``adapters.json``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from big5_dagster.lib.common.files import read_json, write_json
from big5_dagster.lib.common.hashing import hash_json

RECORD_FILE = "adapters.json"


@dataclass(frozen=True)
class TrainedAdapter:
    seed: int
    path: Path
    version: str
    """Hash of the adapter's weight files."""


@dataclass(frozen=True)
class AdapterSet:
    """One adapter per training seed on one base model."""

    base_model: str
    base_fingerprint: str
    adapters: Mapping[int, TrainedAdapter]

    @property
    def data_version(self) -> str:
        return hash_json({str(s): a.version for s, a in self.adapters.items()})

    @property
    def versions(self) -> dict[int, str]:
        return {seed: a.version for seed, a in self.adapters.items()}

    @property
    def paths(self) -> dict[int, str]:
        return {seed: str(a.path) for seed, a in self.adapters.items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "base_model": self.base_model,
            "base_fingerprint": self.base_fingerprint,
            "seeds": {
                str(s): {"path": str(a.path), "version": a.version}
                for s, a in self.adapters.items()
            },
            "data_version": self.data_version,
        }

    def write(self, folder: Path) -> Path:
        return write_json(self.to_json(), Path(folder) / RECORD_FILE)

    @classmethod
    def read(cls, folder: Path) -> AdapterSet:
        """The record in ``folder``; a clear error names the file and the field."""
        path = Path(folder) / RECORD_FILE
        data = read_json(path)
        for name in ("base_model", "base_fingerprint", "seeds"):
            if name not in data:
                raise ValueError(f"{path}: field {name!r} is missing")
        adapters = {}
        for seed, entry in data["seeds"].items():
            if not isinstance(entry, dict) or not {"path", "version"} <= set(entry):
                raise ValueError(f"{path}: seeds[{seed!r}] needs 'path' and 'version'")
            adapters[int(seed)] = TrainedAdapter(int(seed), Path(entry["path"]), entry["version"])
        return cls(data["base_model"], data["base_fingerprint"], adapters)
