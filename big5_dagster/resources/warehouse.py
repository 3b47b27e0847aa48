"""The one module that opens the DuckDB warehouse.

DuckDB allows one writer per file and a second process opening it fails on the lock, so
every connection is taken under an inter-process file lock and kept short: partitions
running in parallel processes wait their turn instead of failing. A writer in a
subprocess (dbt) holds the same lock through ``lock()``.
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

from big5_dagster.lib.common import lineage


class WarehouseError(RuntimeError):
    pass


class Warehouse(dg.ConfigurableResource):
    """The DuckDB file holding result tables, SQL models and the `lineage` schema."""

    path: str
    lock_timeout_s: float = 900.0

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the warehouse's inter-process lock; re-entrant in the holding thread, so
        ``connect()`` works inside it."""
        db = Path(self.path)
        db.parent.mkdir(parents=True, exist_ok=True)
        # One lock object per file in this process: a second object would wait on the first.
        with FileLock(str(db) + ".lock", is_singleton=True).acquire(timeout=self.lock_timeout_s):
            yield

    @contextlib.contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short-lived connection, held under the warehouse's inter-process lock."""
        with self.lock():
            con = duckdb.connect(self.path)
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
                    f"CREATE OR REPLACE TABLE {_qualified(schema, name)} AS {_typed_select(con)}"
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
                    _widen_untyped_columns(con, target)
                    con.execute(f"INSERT INTO {target} BY NAME {_typed_select(con)}")
                else:
                    con.execute(f"CREATE TABLE {target} AS {_typed_select(con)}")
                con.unregister("_incoming")
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def record_lineage(self, record: lineage.MaterializationRecord) -> None:
        with self.connect() as con:
            lineage.record_materialization(con, record)


def _table_exists(con: duckdb.DuckDBPyConnection, name: str, schema: str) -> bool:
    rows = con.execute(
        "SELECT 1 FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
        [schema, name],
    ).fetchall()
    return bool(rows)


def _column_types(con: duckdb.DuckDBPyConnection, relation: str) -> dict[str, str]:
    return {row[0]: row[1] for row in con.execute(f"DESCRIBE {relation}").fetchall()}


def _typed_select(con: duckdb.DuckDBPyConnection) -> str:
    """SELECT from the registered frame, with all-missing columns (DuckDB type NULL, which
    no later row could be inserted into) stored as VARCHAR."""
    untyped = [
        c for c, t in _column_types(con, "_incoming").items() if t == '"NULL"' or t == "NULL"
    ]
    if not untyped:
        return "SELECT * FROM _incoming"
    casts = ", ".join(f"CAST({_ident(c)} AS VARCHAR) AS {_ident(c)}" for c in untyped)
    return f"SELECT * REPLACE ({casts}) FROM _incoming"


def _widen_untyped_columns(con: duckdb.DuckDBPyConnection, target: str) -> None:
    """Give a column stored untyped (all missing so far) the type of the incoming rows."""
    incoming = _column_types(con, "_incoming")
    for column, kind in _column_types(con, target).items():
        new = incoming.get(column)
        if kind in ("NULL", '"NULL"') and new and new not in ("NULL", '"NULL"'):
            con.execute(f"ALTER TABLE {target} ALTER {_ident(column)} TYPE {new}")


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _qualified(schema: str, name: str) -> str:
    return f"{_ident(schema)}.{_ident(name)}"
