"""The one module that opens the DuckDB warehouse.

DuckDB allows one writer per file, and a file lock on shared network storage is not a
safe lock. So the warehouse has two ways of taking writes, chosen by ``warehouse_writes``
in the settings:

- ``direct`` (the default, one machine): each write opens the file under an inter-process
  file lock on the local disk and commits one short transaction, so partitions running in
  parallel processes wait their turn instead of failing; a writer in a subprocess (dbt)
  holds the same lock through ``lock()``;
- ``staged`` (many machines sharing only the data folder): a step never opens the file. Each
  write is one parquet file under ``<data>/warehouse_files/<schema>.<table>/``: the whole
  table, or the rows of one key (e.g. one partition), written atomically and replaced
  whole when the step runs again. A single writer, :meth:`Warehouse.load_staged` (the
  ``warehouse_load`` job), replays new and changed files into the DuckDB file with the
  same SQL as direct writes, in one transaction, so the warehouse holds exactly one copy
  of every row however often a step was retried. Reads in a step (:meth:`session`) query
  the files through an in-memory DuckDB, never the shared warehouse.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import dagster as dg
import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock

from big5_dagster.lib.common import lineage
from big5_dagster.lib.common.files import atomic_file
from big5_dagster.lib.common.hashing import hash_json

WarehouseWrites = Literal["direct", "staged"]
TABLE_FILE = "table.parquet"
ROWS_PREFIX = "rows-"
WHERE_KEY = b"big5.where"
LOAD_SCHEMA = "big5_load"
"""Where the loader records which staged file versions it has applied."""
LOADED_SUFFIX = ".loaded"
"""Beside the warehouse file: the staged version the last load started from."""


class WarehouseError(RuntimeError):
    pass


@dataclass(frozen=True)
class LoadReport:
    """What one :meth:`Warehouse.load_staged` call applied."""

    files_applied: int
    files_unchanged: int
    tables: tuple[str, ...]


class Warehouse(dg.ConfigurableResource):
    """The DuckDB file holding result tables, SQL models and the `lineage` schema."""

    path: str
    lock_timeout_s: float = 900.0
    writes: WarehouseWrites = "direct"
    staged_dir: str | None = None
    """The shared folder of staged table files (``writes: staged``)."""

    # -- connections

    def _refuse_when_staged(self) -> None:
        if self.writes == "staged":
            raise WarehouseError(
                f"warehouse_writes is 'staged': steps do not open {self.path} (read with "
                "session(); the warehouse_load job is its only writer)"
            )

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the warehouse's inter-process lock; re-entrant in the holding thread, so
        ``connect()`` works inside it. With staged writes a step never takes it."""
        self._refuse_when_staged()
        with self._file_lock():
            yield

    @contextlib.contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short-lived connection to the DuckDB file, held under its inter-process lock.

        With staged writes only the loader opens the file: a step that tries is a bug."""
        self._refuse_when_staged()
        with self._file_connection() as con:
            yield con

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        db = Path(self.path)
        db.parent.mkdir(parents=True, exist_ok=True)
        # One lock object per file in this process: a second object would wait on the first.
        with FileLock(str(db) + ".lock", is_singleton=True).acquire(timeout=self.lock_timeout_s):
            yield

    @contextlib.contextmanager
    def _file_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._file_lock():
            con = duckdb.connect(self.path)
            try:
                lineage.ensure_schema(con)
                yield con
            finally:
                con.close()

    @contextlib.contextmanager
    def session(self, for_sql: str | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection to read from (and build scratch tables in): the file with direct
        writes; with staged writes an in-memory DuckDB where every staged table is a view
        over its files (lineage included), current to the last write of any machine.

        ``for_sql``: only the staged tables whose name occurs in this SQL get a view (a
        view reads the footer of every file of its table when it is made)."""
        if self.writes == "direct":
            with self.connect() as con:
                yield con
            return
        con = duckdb.connect()
        try:
            self._add_staged_views(
                con,
                lambda _, name: (
                    for_sql is None or re.search(rf"\b{re.escape(name)}\b", for_sql) is not None
                ),
            )
            yield con
        finally:
            con.close()

    @contextlib.contextmanager
    def scratch(self, tables: Iterable[tuple[str, str]]) -> Iterator[Warehouse]:
        """With staged writes: a private DuckDB file for a tool that needs a database file
        to read and build in (dbt), in which each staged table of ``tables`` ((schema,
        name) pairs) is a view over its files. Named like the warehouse (dbt-duckdb names
        the database after the file), in a temporary folder of this machine, removed on
        exit; what is built there reaches the warehouse only if it is staged."""
        if self.writes != "staged":
            raise WarehouseError("warehouse_writes is 'direct': build in the warehouse itself")
        wanted = set(tables)
        with tempfile.TemporaryDirectory(prefix="big5-scratch-") as folder:
            scratch = Warehouse(path=str(Path(folder) / Path(self.path).name))
            with scratch.connect() as con:
                self._add_staged_views(con, lambda schema, name: (schema, name) in wanted)
            yield scratch

    def _add_staged_views(
        self, con: duckdb.DuckDBPyConnection, wanted: Callable[[str, str], bool]
    ) -> None:
        for schema, name, files in self._staged_tables():
            if not wanted(schema, name):
                continue
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {_ident(schema)}")
            listed = ", ".join("'" + str(f).replace("'", "''") + "'" for f in files)
            con.execute(
                f"CREATE VIEW {_qualified(schema, name)} AS SELECT * FROM "
                f"read_parquet([{listed}], union_by_name = true)"
            )

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pd.DataFrame:
        with self.session(for_sql=sql) as con:
            return con.execute(sql, params or []).df()

    def table_exists(self, name: str, schema: str = "main") -> bool:
        if self.writes == "staged":
            return bool(self._table_files(schema, name))
        with self.connect() as con:
            return _table_exists(con, name, schema)

    # -- writes

    def replace_table(self, name: str, df: pd.DataFrame, schema: str = "main") -> None:
        """Swap in a whole new table in one transaction: readers see the old or the new one."""
        if self.writes == "staged":
            self._stage(schema, name, df, where=None)
            return
        with self.connect() as con:
            _transaction(con, lambda: _replace_table(con, schema, name, df))

    def replace_rows(
        self, name: str, df: pd.DataFrame, where: dict[str, Any], schema: str = "main"
    ) -> None:
        """Replace the rows matching ``where`` (e.g. one partition) with ``df``, in one transaction.

        The table is created from ``df`` the first time. Rerunning a partition therefore
        never duplicates its rows.
        """
        if self.writes == "staged":
            self._stage(schema, name, df, where=where)
            return
        with self.connect() as con:
            _transaction(con, lambda: _replace_rows(con, schema, name, df, where))

    def record_lineage(self, record: lineage.MaterializationRecord) -> None:
        if self.writes == "direct":
            with self.connect() as con:
                lineage.record_materialization(con, record)
            return
        where = {"materialization_id": record.materialization_id}
        materialization, inputs = lineage.record_frames(record)
        # inputs first: a reader that sees the materialization row sees its inputs too
        self._stage(lineage.SCHEMA, lineage.INPUTS_TABLE, inputs, where=where)
        self._stage(lineage.SCHEMA, lineage.MATERIALIZATIONS_TABLE, materialization, where=where)

    # -- staged files

    def _staged_root(self) -> Path:
        if not self.staged_dir:
            raise WarehouseError("warehouse_writes is 'staged' but no staged_dir is set")
        return Path(self.staged_dir)

    def _table_files(self, schema: str, name: str) -> list[Path]:
        folder = self._staged_root() / f"{schema}.{name}"
        if not folder.is_dir():
            return []
        return sorted(f for f in folder.glob("*.parquet") if not f.name.startswith("."))

    def _staged_tables(self) -> list[tuple[str, str, list[Path]]]:
        root = self._staged_root()
        found = []
        for folder in sorted(root.iterdir() if root.is_dir() else []):
            schema, dot, name = folder.name.partition(".")
            files = self._table_files(schema, name) if dot and folder.is_dir() else []
            if files:
                found.append((schema, name, files))
        return found

    def _stage(
        self, schema: str, name: str, df: pd.DataFrame, where: dict[str, Any] | None
    ) -> Path:
        """Write one staged file atomically: the whole table, or the rows of ``where``."""
        folder = self._staged_root() / f"{schema}.{name}"
        existing = self._table_files(schema, name)
        if where is None:
            if any(f.name != TABLE_FILE for f in existing):
                raise WarehouseError(
                    f"table {schema}.{name} is written by rows (files in {folder}): "
                    "it cannot also be replaced whole"
                )
            target = folder / TABLE_FILE
        else:
            if any(f.name == TABLE_FILE for f in existing):
                raise WarehouseError(
                    f"table {schema}.{name} is written whole ({folder / TABLE_FILE}): "
                    "its rows cannot also be replaced by key"
                )
            target = folder / f"{ROWS_PREFIX}{hash_json(sorted(where.items()))}.parquet"
        table = pa.Table.from_pandas(df, preserve_index=False)
        if where is not None:
            metadata = dict(table.schema.metadata or {})
            metadata[WHERE_KEY] = json.dumps(where, sort_keys=True, default=str).encode()
            table = table.replace_schema_metadata(metadata)
        with atomic_file(target) as tmp:
            pq.write_table(table, tmp)
        return target

    # -- the single writer

    def load_staged(self) -> LoadReport:
        """Apply every new or changed staged file to the DuckDB file, in one transaction.

        A file's version is its size and modification time, taken before it is read: a
        file replaced during the load is applied again by the next one. Applying a file
        twice gives the same table (its rows replace those of its key), so a load that
        crashes, or runs after a retried step rewrote a partition, leaves one copy of
        every row. Only one load runs at a time: the ``warehouse_load`` job is limited to
        one run in the deployment, and the file lock guards the local file as well. After
        the commit, :meth:`loaded_version` is the :meth:`staged_version` taken at the start.
        """
        if self.writes != "staged":
            raise WarehouseError("warehouse_writes is 'direct': there are no staged files")
        applied, unchanged, tables = 0, 0, []
        with self._file_connection() as con:
            staged = self.staged_version()  # before any file is read: never newer than them
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {LOAD_SCHEMA}")
            con.execute(
                f"CREATE TABLE IF NOT EXISTS {LOAD_SCHEMA}.applied "
                "(file VARCHAR PRIMARY KEY, version VARCHAR NOT NULL)"
            )
            done = dict(con.execute(f"SELECT file, version FROM {LOAD_SCHEMA}.applied").fetchall())
            root = self._staged_root()

            def apply_all() -> None:
                nonlocal applied, unchanged
                for schema, name, files in self._staged_tables():
                    changed = False
                    for file in files:
                        stat = os.stat(file)
                        version = f"{stat.st_size}:{stat.st_mtime_ns}"
                        relative = str(file.relative_to(root))
                        if done.get(relative) == version:
                            unchanged += 1
                            continue
                        frame, where = read_staged_file(file)
                        if where is None:
                            _replace_table(con, schema, name, frame)
                        else:
                            _replace_rows(con, schema, name, frame, where)
                        con.execute(
                            f"INSERT OR REPLACE INTO {LOAD_SCHEMA}.applied VALUES (?, ?)",
                            [relative, version],
                        )
                        applied += 1
                        changed = True
                    if changed:
                        tables.append(f"{schema}.{name}")

            _transaction(con, apply_all)
            if staged is not None:
                with atomic_file(self._loaded_marker()) as tmp:
                    tmp.write_text(staged + "\n", encoding="utf-8")
        return LoadReport(files_applied=applied, files_unchanged=unchanged, tables=tuple(tables))

    def _loaded_marker(self) -> Path:
        return Path(self.path + LOADED_SUFFIX)

    def loaded_version(self) -> str | None:
        """The :meth:`staged_version` the last successful load started from (None: none
        yet). Read without opening the warehouse, so a sensor can compare the two."""
        marker = self._loaded_marker()
        return marker.read_text(encoding="utf-8").strip() if marker.exists() else None

    def staged_version(self) -> str | None:
        """A fingerprint of every staged file (names, sizes, times), which changes with any
        write; None when nothing is staged."""
        root = self._staged_root()
        stamps = []
        for _, _, files in self._staged_tables():
            for file in files:
                stat = os.stat(file)
                stamps.append((str(file.relative_to(root)), stat.st_size, stat.st_mtime_ns))
        return hash_json(stamps) if stamps else None


def read_staged_file(path: Path) -> tuple[pd.DataFrame, dict[str, Any] | None]:
    """A staged file's rows and the key they replace (None: the whole table)."""
    table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(WHERE_KEY)
    return table.to_pandas(), (json.loads(raw) if raw is not None else None)


def _transaction(con: duckdb.DuckDBPyConnection, work) -> None:
    con.execute("BEGIN TRANSACTION")
    try:
        work()
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def _replace_table(
    con: duckdb.DuckDBPyConnection, schema: str, name: str, df: pd.DataFrame
) -> None:
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {_ident(schema)}")
    con.register("_incoming", df)
    try:
        con.execute(f"CREATE OR REPLACE TABLE {_qualified(schema, name)} AS {_typed_select(con)}")
    finally:
        con.unregister("_incoming")


def _replace_rows(
    con: duckdb.DuckDBPyConnection,
    schema: str,
    name: str,
    df: pd.DataFrame,
    where: dict[str, Any],
) -> None:
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {_ident(schema)}")
    con.register("_incoming", df)
    try:
        target = _qualified(schema, name)
        if _table_exists(con, name, schema):
            cond = " AND ".join(f"{_ident(k)} IS NOT DISTINCT FROM ?" for k in where)
            con.execute(f"DELETE FROM {target} WHERE {cond}", list(where.values()))
            _widen_untyped_columns(con, target)
            con.execute(f"INSERT INTO {target} BY NAME {_typed_select(con)}")
        else:
            con.execute(f"CREATE TABLE {target} AS {_typed_select(con)}")
    finally:
        con.unregister("_incoming")


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
