"""Lineage of materializations in the warehouse's `lineage` schema.

One row per materialization (what was produced, by which code, config, models and seeds,
when, how many rows, where) and one row per input it read (which asset, partition and
data version). Walking inputs by data version leads from any result back to the corpora.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import duckdb
import pandas as pd

SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS lineage;
CREATE TABLE IF NOT EXISTS lineage.materializations (
    materialization_id VARCHAR PRIMARY KEY,
    asset VARCHAR NOT NULL,
    partition VARCHAR,
    run_id VARCHAR,
    code_version VARCHAR,
    data_version VARCHAR NOT NULL,
    profile VARCHAR,
    config JSON,
    settings JSON,
    model_ids JSON,
    seeds JSON,
    started_at TIMESTAMP,
    ended_at TIMESTAMP,
    row_count BIGINT,
    artifact_paths JSON
);
CREATE TABLE IF NOT EXISTS lineage.inputs (
    materialization_id VARCHAR NOT NULL,
    input_asset VARCHAR NOT NULL,
    input_partition VARCHAR,
    input_data_version VARCHAR
);
-- Warehouses made before the settings column: add it (rows from before have none).
ALTER TABLE lineage.materializations ADD COLUMN IF NOT EXISTS settings JSON;
"""


@dataclass(frozen=True)
class InputVersion:
    asset: str
    partition: str | None
    data_version: str | None


@dataclass(frozen=True)
class MaterializationRecord:
    asset: str
    partition: str | None
    run_id: str
    code_version: str | None
    data_version: str
    started_at: datetime
    ended_at: datetime
    row_count: int | None = None
    profile: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    """The run's config of the asset (the launchpad fields, defaults included)."""
    settings: dict[str, Any] = field(default_factory=dict)
    """The settings the asset read ('section.field' -> value), as they ran."""
    model_ids: dict[str, Any] = field(default_factory=dict)
    seeds: dict[str, Any] = field(default_factory=dict)
    artifact_paths: list[str] = field(default_factory=list)
    inputs: tuple[InputVersion, ...] = ()

    @property
    def materialization_id(self) -> str:
        return f"{self.run_id}/{self.asset}/{self.partition or ''}"


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(SCHEMA_SQL)


SCHEMA = "lineage"
MATERIALIZATIONS_TABLE = "materializations"
INPUTS_TABLE = "inputs"
INPUT_COLUMNS = ("materialization_id", "input_asset", "input_partition", "input_data_version")


def record_frames(rec: MaterializationRecord) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows of one materialization: (lineage.materializations, lineage.inputs)."""
    mid = rec.materialization_id

    def as_json(value: Any) -> str:
        return json.dumps(value, sort_keys=True, default=str)

    materialization = pd.DataFrame(
        [
            {
                "materialization_id": mid,
                "asset": rec.asset,
                "partition": rec.partition,
                "run_id": rec.run_id,
                "code_version": rec.code_version,
                "data_version": rec.data_version,
                "profile": rec.profile,
                "config": as_json(rec.config),
                "settings": as_json(rec.settings),
                "model_ids": as_json(rec.model_ids),
                "seeds": as_json(rec.seeds),
                "started_at": rec.started_at,
                "ended_at": rec.ended_at,
                "row_count": rec.row_count,
                "artifact_paths": json.dumps(rec.artifact_paths),
            }
        ]
    ).astype({"partition": object, "code_version": object, "profile": object})
    materialization["row_count"] = materialization["row_count"].astype("Int64")
    inputs = pd.DataFrame(
        [(mid, i.asset, i.partition, i.data_version) for i in rec.inputs],
        columns=list(INPUT_COLUMNS),
        dtype=object,
    )
    return materialization, inputs


def record_materialization(con: duckdb.DuckDBPyConnection, rec: MaterializationRecord) -> None:
    """Write one materialization and its inputs (replacing a retry of the same run step)."""
    mid = rec.materialization_id
    materialization, inputs = record_frames(rec)
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("DELETE FROM lineage.inputs WHERE materialization_id = ?", [mid])
        con.execute("DELETE FROM lineage.materializations WHERE materialization_id = ?", [mid])
        for table, frame in (("materializations", materialization), ("inputs", inputs)):
            con.register("_lineage_rows", frame)
            try:
                con.execute(f"INSERT INTO lineage.{table} BY NAME SELECT * FROM _lineage_rows")
            finally:
                con.unregister("_lineage_rows")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


NodeKey = tuple[str, str | None, str | None]
"""(asset, partition, data version): one materialization in the lineage graph."""


@dataclass
class LineageNode:
    asset: str
    partition: str | None
    data_version: str | None
    code_version: str | None = None
    run_id: str | None = None
    ended_at: datetime | None = None
    row_count: int | None = None
    found: bool = True
    inputs: list[LineageNode] = field(default_factory=list)

    @property
    def key(self) -> NodeKey:
        return (self.asset, self.partition, self.data_version)

    @property
    def name(self) -> str:
        return self.asset + (f"[{self.partition}]" if self.partition else "")


def _find(
    con: duckdb.DuckDBPyConnection, asset: str, partition: str | None, data_version: str | None
) -> tuple | None:
    sql = """
        SELECT materialization_id, data_version, code_version, run_id, ended_at, row_count
        FROM lineage.materializations
        WHERE asset = ? AND partition IS NOT DISTINCT FROM ?
    """
    params: list[Any] = [asset, partition]
    if data_version is not None:
        sql += " AND data_version = ?"
        params.append(data_version)
    sql += " ORDER BY ended_at DESC LIMIT 1"
    rows = con.execute(sql, params).fetchall()
    return rows[0] if rows else None


def lineage_tree(
    con: duckdb.DuckDBPyConnection,
    asset: str,
    partition: str | None = None,
    data_version: str | None = None,
) -> LineageNode:
    """The upstream graph of the latest (or the given) materialization of ``asset``.

    Lineage is a DAG: a materialization read by several others (the corpora under every
    persona) is one node object reached along each path, looked up once.
    """
    nodes: dict[NodeKey, LineageNode] = {}

    def visit(asset: str, partition: str | None, data_version: str | None) -> LineageNode:
        asked = (asset, partition, data_version)
        if asked in nodes:
            return nodes[asked]
        row = _find(con, asset, partition, data_version)
        if row is None:
            nodes[asked] = LineageNode(asset, partition, data_version, found=False)
            return nodes[asked]
        mid, version, code_version, run_id, ended_at, row_count = row
        node = LineageNode(asset, partition, version, code_version, run_id, ended_at, row_count)
        nodes[asked] = nodes[node.key] = node  # registered first: bad data cannot loop
        inputs = con.execute(
            """
            SELECT input_asset, input_partition, input_data_version FROM lineage.inputs
            WHERE materialization_id = ? ORDER BY input_asset, input_partition
            """,
            [mid],
        ).fetchall()
        node.inputs = [visit(*i) for i in inputs]
        return node

    return visit(asset, partition, data_version)


def _describe(n: LineageNode) -> str:
    if not n.found:
        return f"{n.name}  data={n.data_version or '?'}  (no lineage record)"
    when = n.ended_at.strftime("%Y-%m-%d %H:%M:%S") if n.ended_at else "?"
    rows = f"  rows={n.row_count}" if n.row_count is not None else ""
    return (
        f"{n.name}  data={n.data_version}  code={n.code_version}  "
        f"run={(n.run_id or '?')[:8]}  at={when}{rows}"
    )


REPEAT_MARK = "(repeat, shown above)"


def format_tree(node: LineageNode, depth: int | None = None) -> str:
    """An indented text tree, one line per materialization. A materialization met again on
    another path is described once: later it is one short line marked REPEAT_MARK, without
    its inputs; ``depth`` stops after that many levels of inputs (the line says how many
    are hidden)."""
    lines: list[str] = []
    shown: set[NodeKey] = set()

    def walk(n: LineageNode, prefix: str, last: bool, level: int) -> None:
        branch = "" if level == 0 else ("└── " if last else "├── ")
        repeat = n.key in shown
        cut = depth is not None and level >= depth and bool(n.inputs) and not repeat
        if repeat:
            line = f"{prefix}{branch}{n.name}  data={n.data_version or '?'}  {REPEAT_MARK}"
        else:
            line = prefix + branch + _describe(n)
        if cut:
            line += f"  ({len(n.inputs)} input(s) below --depth {depth})"
        lines.append(line)
        if repeat or cut:
            return
        shown.add(n.key)
        child_prefix = prefix if level == 0 else prefix + ("    " if last else "│   ")
        for i, child in enumerate(n.inputs):
            walk(child, child_prefix, i == len(n.inputs) - 1, level + 1)

    walk(node, "", True, 0)
    return "\n".join(lines)


def tree_json(node: LineageNode, depth: int | None = None) -> dict[str, Any]:
    """The tree as JSON-ready dicts, repeats and depth handled as in ``format_tree``: a
    repeated node has ``"repeat": true`` and no ``inputs``; a node at the depth limit has
    ``"inputs_hidden"``."""
    shown: set[NodeKey] = set()

    def walk(n: LineageNode, level: int) -> dict[str, Any]:
        out: dict[str, Any] = {
            "asset": n.asset,
            "partition": n.partition,
            "data_version": n.data_version,
        }
        if n.key in shown:
            return out | {"repeat": True}
        out["found"] = n.found
        if n.found:
            out |= {
                "code_version": n.code_version,
                "run_id": n.run_id,
                "ended_at": n.ended_at.isoformat() if n.ended_at else None,
                "row_count": n.row_count,
            }
        if depth is not None and level >= depth and n.inputs:
            return out | {"inputs_hidden": len(n.inputs)}
        shown.add(n.key)
        out["inputs"] = [walk(child, level + 1) for child in n.inputs]
        return out

    return walk(node, 0)
