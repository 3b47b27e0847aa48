"""The one module that opens the DuckDB warehouse.

DuckDB allows one writer per file and a second process opening it fails on the lock, so
every connection is taken under an inter-process file lock and kept short: partitions
running in parallel processes wait their turn instead of failing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pandas as pd
from filelock import FileLock

from big5_dagster.lib import lineage


class WarehouseError(RuntimeError):
    pass


class Warehouse(dg.ConfigurableResource):
    """The DuckDB file holding result tables, SQL models and the `lineage` schema."""

    path: str
    lock_timeout_s: float = 900.0

    @contextlib.contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short-lived connection, held under the warehouse's inter-process lock."""
        db = Path(self.path)
        db.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(db) + ".lock", timeout=self.lock_timeout_s):
            con = duckdb.connect(str(db))
            try:
                lineage.ensure_schema(con)
                yield con
            finally:
                con.close()

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pd.DataFrame:
        with self.connect() as con:
            return con.execute(sql, params or []).df()

    def table_exists(self, name: str, schema: str = "main") -> bool:
        with self.connect() as con:
            return _table_exists(con, name, schema)

    def replace_table(self, name: str, df: pd.DataFrame, schema: str = "main") -> None:
        """Swap in a whole new table in one transaction: readers see the old or the new one."""
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                con.execute(f"CREATE SCHEMA IF NOT EXISTS {_ident(schema)}")
                con.register("_incoming", df)
                con.execute(
                    f"CREATE OR REPLACE TABLE {_qualified(schema, name)} AS SELECT * FROM _incoming"
                )
                con.unregister("_incoming")
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def replace_rows(
        self, name: str, df: pd.DataFrame, where: dict[str, Any], schema: str = "main"
    ) -> None:
        """Replace the rows matching ``where`` (e.g. one partition) with ``df``, in one transaction.

        The table is created from ``df`` the first time. Rerunning a partition therefore
        never duplicates its rows.
        """
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                con.execute(f"CREATE SCHEMA IF NOT EXISTS {_ident(schema)}")
                con.register("_incoming", df)
                target = _qualified(schema, name)
                if _table_exists(con, name, schema):
                    cond = " AND ".join(f"{_ident(k)} IS NOT DISTINCT FROM ?" for k in where)
                    con.execute(f"DELETE FROM {target} WHERE {cond}", list(where.values()))
                    con.execute(f"INSERT INTO {target} BY NAME SELECT * FROM _incoming")
                else:
                    con.execute(f"CREATE TABLE {target} AS SELECT * FROM _incoming")
                con.unregister("_incoming")
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def record_lineage(self, record: lineage.MaterializationRecord) -> None:
        with self.connect() as con:
            lineage.record_materialization(con, record)

    def latest_versions(self, asset: str) -> dict[str | None, str]:
        """Partition -> data version of the latest recorded materialization of ``asset``."""
        with self.connect() as con:
            return lineage.latest_data_versions(con, asset)


def _table_exists(con: duckdb.DuckDBPyConnection, name: str, schema: str) -> bool:
    rows = con.execute(
        "SELECT 1 FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
        [schema, name],
    ).fetchall()
    return bool(rows)


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _qualified(schema: str, name: str) -> str:
    return f"{_ident(schema)}.{_ident(name)}"
