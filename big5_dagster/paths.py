"""The one place that knows the file layout under the data directory."""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "BIG5_DATA_DIR"
UNPARTITIONED = "all"


def project_root() -> Path | None:
    """The source checkout holding this package (editable install), if any."""
    here = Path(__file__).resolve().parent.parent
    if (here / "workspace.yaml").exists() and (here / "pyproject.toml").exists():
        return here
    return None


def data_dir(configured: str | None = None) -> Path:
    """BIG5_DATA_DIR, else the configured data_dir, else <checkout>/assets_data, else ./assets_data."""
    value = os.environ.get(DATA_DIR_ENV) or configured
    if value:
        return Path(value).expanduser().resolve()
    root = project_root()
    return (root / "assets_data") if root else Path.cwd() / "assets_data"


def warehouse_path(root: Path) -> Path:
    return root / "warehouse.duckdb"


def warehouse_files_dir(root: Path) -> Path:
    """The staged table files of ``warehouse_writes: staged``, one folder per table."""
    return root / "warehouse_files"


def models_dir(root: Path) -> Path:
    return root / "models"


def dagster_home(root: Path) -> Path:
    return root / "dagster_home"


def asset_dir(root: Path, asset: str, partition: str | None = None) -> Path:
    """assets_data/<asset>/<partition or 'all'>/"""
    return root / asset / (partition or UNPARTITIONED)


SQL_DIR_ENV = "BIG5_SQL_DIR"


def sql_models_dir() -> Path:
    """BIG5_SQL_DIR, else <checkout>/dbt_like_sql."""
    value = os.environ.get(SQL_DIR_ENV)
    if value:
        return Path(value).expanduser().resolve()
    root = project_root()
    if root is None:
        raise FileNotFoundError(
            f"cannot find the dbt_like_sql folder: set {SQL_DIR_ENV} (no source checkout found)"
        )
    return root / "dbt_like_sql"
