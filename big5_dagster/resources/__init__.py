"""Dagster resources: the warehouse (DuckDB), the artifact store, the model backend, dbt.

:func:`build_resources` is the one place they are made from settings: the definitions, the
CLI and the benchmarks all call it.
"""

from __future__ import annotations

from pathlib import Path

from big5_dagster import paths
from big5_dagster.config import Settings
from big5_dagster.resources.artifacts import ArtifactStore
from big5_dagster.resources.dbt import dbt_resource
from big5_dagster.resources.model_backend import ModelBackend
from big5_dagster.resources.warehouse import Warehouse


def build_resources(settings: Settings, root: Path) -> dict[str, object]:
    """The pipeline's resources for the data directory ``root``."""
    return {
        "store": ArtifactStore(root=str(root)),
        "warehouse": Warehouse(
            path=str(paths.warehouse_path(root)),
            writes=settings.warehouse_writes,
            staged_dir=str(paths.warehouse_files_dir(root)),
        ),
        "dbt": dbt_resource(paths.sql_models_dir(), paths.warehouse_path(root)),
        "model": ModelBackend(
            **settings.model.model_dump(), models_dir=str(paths.models_dir(root))
        ),
    }
