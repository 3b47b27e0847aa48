"""The Dagster instance file the project writes: ``$DAGSTER_HOME/dagster.yaml``.

`big5 demo`, `make ui` and the tests create it from :func:`instance_settings`, so a run
watched in the UI shows what the libraries log during long steps (model loading and GGUF
conversion, TRL training, lm-eval) beside the assets' own messages. Dagster attaches its
handler to the loggers named in ``python_logs.managed_python_loggers`` (children included)
and sets them to ``python_log_level``.

Run ``python -m big5_dagster.dagster_home [HOME]`` to create one (the Makefile does).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import yaml

from big5_dagster import paths

LIBRARY_LOGGERS: tuple[str, ...] = (
    "big5_dagster",
    "transformers",
    "peft",
    "trl",
    "accelerate",
    "datasets",
    "lm_eval",
)
"""Loggers whose records reach the Dagster run log: the project's and those of the
libraries that do its long steps."""
INSTANCE_FILE = "dagster.yaml"


def instance_settings() -> dict[str, Any]:
    """The project's dagster.yaml content: no telemetry, library logs in the run log."""
    return {
        "telemetry": {"enabled": False},
        "python_logs": {
            "managed_python_loggers": list(LIBRARY_LOGGERS),
            "python_log_level": "INFO",
        },
    }


def missing_log_settings(config_file: Path) -> list[str]:
    """The project's managed loggers an existing dagster.yaml does not manage."""
    data = yaml.safe_load(config_file.read_text()) or {}
    managed = set((data.get("python_logs") or {}).get("managed_python_loggers") or [])
    return [name for name in LIBRARY_LOGGERS if name not in managed]


def prepare_dagster_home(home: Path, extra: dict[str, Any] | None = None) -> Path:
    """Create ``home`` with the project's dagster.yaml (plus ``extra`` top-level keys) unless
    it has one; an existing file is left alone, with a warning when library logs would not
    reach the run log."""
    home.mkdir(parents=True, exist_ok=True)
    config_file = home / INSTANCE_FILE
    if not config_file.exists():
        config_file.write_text(
            yaml.safe_dump({**instance_settings(), **(extra or {})}, sort_keys=False)
        )
    else:
        missing = missing_log_settings(config_file)
        if missing:
            print(
                f"note: {config_file} does not list {', '.join(missing)} in "
                "python_logs.managed_python_loggers, so their logs do not reach the run log; "
                f"see big5_dagster/dagster_home.py for the settings",
                file=sys.stderr,
            )
    return home


def default_home() -> Path:
    """DAGSTER_HOME if set, else <data dir>/dagster_home."""
    return Path(os.environ.get("DAGSTER_HOME") or paths.dagster_home(paths.data_dir()))


if __name__ == "__main__":
    print(prepare_dagster_home(Path(sys.argv[1]) if len(sys.argv) > 1 else default_home()))
