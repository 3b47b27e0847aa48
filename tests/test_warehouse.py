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
from big5_dagster.resources.warehouse import Warehouse, WarehouseError


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


# -- staged writes: many machines share the data folder, one writer loads the warehouse


def _staged(tmp_path) -> Warehouse:
    return Warehouse(
        path=str(tmp_path / "warehouse.duckdb"),
        writes="staged",
        staged_dir=str(tmp_path / "warehouse_files"),
    )


def _stage_partition(path: str, staged_dir: str, partition: str, repeats: int) -> None:
    warehouse = Warehouse(path=path, writes="staged", staged_dir=staged_dir)
    for attempt in range(repeats):  # retries rewrite the partition's file
        rows = pd.DataFrame({"partition": [partition] * 50, "i": range(50), "attempt": attempt})
        warehouse.replace_rows("replies", rows, where={"partition": partition})
        warehouse.record_lineage(_record("replies", f"v{attempt}", partition=partition))


def test_staged_writers_never_open_the_warehouse_and_one_load_holds_each_row_once(tmp_path):
    warehouse = _staged(tmp_path)
    ctx = mp.get_context("spawn")
    args = [(warehouse.path, warehouse.staged_dir, f"p{k}", 3) for k in range(4)]
    procs = [ctx.Process(target=_stage_partition, args=a) for a in args]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert not (tmp_path / "warehouse.duckdb").exists()  # no step opened it
    # Steps read the staged files: current, before any load.
    assert warehouse.query("SELECT count(*) AS n FROM replies").n.tolist() == [200]
    assert warehouse.table_exists("replies") and not warehouse.table_exists("other")

    report = warehouse.load_staged()
    assert report.files_applied == 12  # 4 partitions x (rows, lineage row, lineage inputs)
    assert set(report.tables) == {"main.replies", "lineage.materializations", "lineage.inputs"}
    loaded = Warehouse(path=warehouse.path)  # the file as users and SQL tools see it
    counts = loaded.query(
        "SELECT partition, count(*) AS n, count(DISTINCT i) AS d, max(attempt) AS last "
        "FROM replies GROUP BY 1 ORDER BY 1"
    )
    assert counts.n.tolist() == [50] * 4 and counts.d.tolist() == [50] * 4
    assert counts["last"].tolist() == [2] * 4  # the last attempt's rows, only
    lineage_rows = loaded.query("SELECT partition, data_version FROM lineage.materializations")
    assert sorted(lineage_rows.itertuples(index=False, name=None)) == [
        (f"p{k}", "v2") for k in range(4)
    ]

    # Loading again applies nothing; a retried partition replaces its rows, not adds.
    assert warehouse.load_staged().files_applied == 0
    warehouse.replace_rows(
        "replies",
        pd.DataFrame({"partition": ["p1"] * 5, "i": range(5), "attempt": 9}),
        where={"partition": "p1"},
    )
    assert warehouse.load_staged().tables == ("main.replies",)
    n = loaded.query("SELECT partition, count(*) AS n FROM replies GROUP BY 1 ORDER BY 1")
    assert n.n.tolist() == [50, 5, 50, 50]


def test_a_failed_load_applies_nothing_and_the_next_one_everything(tmp_path, monkeypatch):
    warehouse = _staged(tmp_path)
    warehouse.replace_table("a", pd.DataFrame({"x": [1, 2]}))
    warehouse.replace_rows("b", pd.DataFrame({"k": ["p"], "y": [1]}), where={"k": "p"})
    import big5_dagster.resources.warehouse as module

    real = module._replace_rows

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(module, "_replace_rows", crash)
    with pytest.raises(OSError, match="disk full"):
        warehouse.load_staged()
    loaded = Warehouse(path=warehouse.path)
    assert not loaded.table_exists("a")  # the whole load rolled back
    monkeypatch.setattr(module, "_replace_rows", real)
    assert warehouse.load_staged().files_applied == 2
    assert loaded.query("SELECT sum(x) AS s FROM a").s.tolist() == [3]


def test_staged_mode_refuses_direct_connections_and_mixed_writes(tmp_path):
    warehouse = _staged(tmp_path)
    with pytest.raises(WarehouseError, match="staged"), warehouse.connect():
        pass
    warehouse.replace_table("whole", pd.DataFrame({"x": [1]}))
    with pytest.raises(WarehouseError, match="written whole"):
        warehouse.replace_rows("whole", pd.DataFrame({"x": [2]}), where={"x": 2})
    with pytest.raises(WarehouseError, match="direct"):
        Warehouse(path=warehouse.path).load_staged()


def test_staged_lineage_reads_like_direct_lineage(tmp_path):
    records = [
        _record("posts", "a1"),
        _record("experts", "b1", [InputVersion("posts", None, "a1")], partition="openness"),
    ]
    direct, staged = Warehouse(path=str(tmp_path / "direct.duckdb")), _staged(tmp_path)
    for record in records:
        direct.record_lineage(record)
        staged.record_lineage(record)
    with direct.session() as a, staged.session() as b:
        tree_direct = format_tree(lineage_tree(a, "experts", "openness"))
        assert tree_direct == format_tree(lineage_tree(b, "experts", "openness"))
    staged.load_staged()
    with Warehouse(path=staged.path).session() as c:
        assert format_tree(lineage_tree(c, "experts", "openness")) == tree_direct
    assert "posts" in tree_direct


def test_a_staged_query_gets_views_of_the_tables_it_names_only(tmp_path):
    warehouse = _staged(tmp_path)
    warehouse.replace_table("answers", pd.DataFrame({"x": [1, 2]}))
    warehouse.replace_table("answers_cache", pd.DataFrame({"y": [3]}))
    assert warehouse.query("SELECT sum(x) AS s FROM answers").s.tolist() == [3]
    listed = "SELECT table_name FROM information_schema.tables ORDER BY 1"
    with warehouse.session(for_sql="SELECT * FROM answers") as con:
        assert con.execute(listed).fetchall() == [("answers",)]  # not answers_cache
    with warehouse.session() as con:
        assert con.execute(listed).fetchall() == [("answers",), ("answers_cache",)]
