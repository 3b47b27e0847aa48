"""The warehouse serializes writers across processes and swaps tables atomically."""

import multiprocessing as mp
from datetime import datetime

import pandas as pd
import pytest

from big5_dagster.lib.common.lineage import (
    InputVersion,
    MaterializationRecord,
    format_tree,
    lineage_tree,
)
from big5_dagster.resources.warehouse import Warehouse


def _write_partition(path: str, partition: str, repeats: int) -> None:
    warehouse = Warehouse(path=path)
    for attempt in range(repeats):  # rerunning a partition must not duplicate its rows
        rows = pd.DataFrame({"partition": [partition] * 50, "i": range(50), "attempt": attempt})
        warehouse.replace_rows("replies", rows, where={"partition": partition})


def test_parallel_partition_writers_never_fail_on_the_lock(tmp_path):
    path = str(tmp_path / "warehouse.duckdb")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_write_partition, args=(path, f"p{k}", 5)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    counts = Warehouse(path=path).query(
        "SELECT partition, count(*) AS n, count(DISTINCT i) AS distinct_i, max(attempt) AS last "
        "FROM replies GROUP BY 1 ORDER BY 1"
    )
    assert counts.partition.tolist() == ["p0", "p1", "p2", "p3"]
    assert counts.n.tolist() == [50] * 4 and counts.distinct_i.tolist() == [50] * 4
    assert counts["last"].tolist() == [4] * 4


def test_replace_table_failure_keeps_the_previous_table(tmp_path):
    warehouse = Warehouse(path=str(tmp_path / "w.duckdb"))
    warehouse.replace_table("t", pd.DataFrame({"a": [1, 2, 3]}))

    with pytest.raises(Exception, match="complex128"):
        # a column DuckDB cannot store fails inside the transaction
        warehouse.replace_table("t", pd.DataFrame({"a": [1 + 2j]}))
    assert warehouse.query("SELECT a FROM t ORDER BY a").a.tolist() == [1, 2, 3]
    warehouse.replace_table("t", pd.DataFrame({"a": [4]}))  # and the warehouse still works
    assert warehouse.query("SELECT a FROM t").a.tolist() == [4]


def _record(asset, version, inputs=(), partition=None, run="r1", minute=0):
    now = datetime(2026, 1, 1, 12, minute, 0)
    return MaterializationRecord(
        asset=asset,
        partition=partition,
        run_id=run,
        code_version="c1",
        data_version=version,
        started_at=now,
        ended_at=now,
        row_count=3,
        inputs=tuple(inputs),
    )


def test_lineage_tree_follows_input_data_versions(tmp_path):
    warehouse = Warehouse(path=str(tmp_path / "w.duckdb"))
    warehouse.record_lineage(_record("posts", "v1", run="r1"))
    warehouse.record_lineage(
        _record("posts", "v2", run="r2", minute=1)
    )  # a later, different version
    warehouse.record_lineage(
        _record("report", "x1", inputs=[InputVersion("posts", None, "v1")], run="r3", minute=2)
    )
    latest = warehouse.query(
        "SELECT data_version FROM lineage.materializations WHERE asset = 'posts' "
        "ORDER BY ended_at DESC LIMIT 1"
    )
    assert latest.data_version.tolist() == ["v2"]
    with warehouse.connect() as con:
        tree = lineage_tree(con, "report")
    # the report read v1, not the latest posts
    assert tree.inputs[0].data_version == "v1" and tree.inputs[0].run_id == "r1"
    text = format_tree(tree)
    assert text.splitlines()[0].startswith("report  data=x1")
    assert "└── posts  data=v1" in text


def test_a_column_missing_in_the_first_partition_takes_values_later(tmp_path):
    # e.g. the base method has no system instruction; the prompting methods have one
    wh = Warehouse(path=str(tmp_path / "w.duckdb"))
    wh.replace_rows(
        "results", pd.DataFrame({"method": ["base"], "system": [None]}), {"method": "base"}
    )
    wh.replace_rows(
        "results", pd.DataFrame({"method": ["sft"], "system": ["be kind"]}), {"method": "sft"}
    )
    wh.replace_table("whole", pd.DataFrame({"method": ["base"], "system": [None]}))
    rows = wh.query("SELECT method, system FROM results ORDER BY method")
    assert rows.system.isna().tolist() == [True, False]
    assert rows.system.iloc[1] == "be kind"
    assert wh.query("SELECT typeof(system) AS t FROM whole").t[0] == "VARCHAR"
