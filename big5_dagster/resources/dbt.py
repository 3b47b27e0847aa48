"""dbt's CLI as a Dagster resource, pointed at the project's warehouse file."""

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
from dagster_dbt import DbtCliResource

# profiles.yml (dbt_like_sql/) reads the warehouse file from this variable.
WAREHOUSE_PATH_ENV = "BIG5_WAREHOUSE_PATH"


class WarehouseDbtCli(DbtCliResource):
    """``DbtCliResource`` that sets BIG5_WAREHOUSE_PATH for the dbt subprocess."""

    warehouse_path: str

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        os.environ[WAREHOUSE_PATH_ENV] = self.warehouse_path
        super().setup_for_execution(context)

    @contextlib.contextmanager
    def building_in(self, database_path: str) -> Iterator[None]:
        """dbt calls in this block read and build ``database_path`` instead of the
        warehouse (with staged writes: the step's private scratch file)."""
        os.environ[WAREHOUSE_PATH_ENV] = database_path
        try:
            yield
        finally:
            os.environ[WAREHOUSE_PATH_ENV] = self.warehouse_path


def dbt_executable() -> str:
    """The ``dbt`` installed beside this Python (found even when the venv is not on PATH)."""
    beside = Path(sys.executable).with_name("dbt")
    return str(beside) if beside.exists() else "dbt"


def dbt_resource(project_dir: Path, warehouse_path: Path) -> WarehouseDbtCli:
    return WarehouseDbtCli(
        project_dir=str(project_dir),
        warehouse_path=str(warehouse_path),
        dbt_executable=dbt_executable(),
    )
