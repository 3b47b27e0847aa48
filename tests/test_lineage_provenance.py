"""A lineage row names the input data versions the run really read (Dagster's provenance of
that step), not whatever is latest in the warehouse when the run ends."""

import threading

import dagster as dg
import duckdb
import pandas as pd

from big5_dagster.defs.tracking import Tracker
from big5_dagster.lib.common.hashing import hash_json
from big5_dagster.resources.artifacts import ArtifactStore
from big5_dagster.resources.warehouse import Warehouse

reading, release = threading.Event(), threading.Event()


class NumbersConfig(dg.Config):
    value: int = 1


@dg.asset
def numbers(
    context: dg.AssetExecutionContext,
    config: NumbersConfig,
    store: ArtifactStore,
    warehouse: Warehouse,
) -> dg.MaterializeResult:
    tracker = Tracker(context, warehouse, store)
    path = tracker.save_table(pd.DataFrame({"n": [config.value]}), "numbers.parquet")
    return tracker.result(rows=1, artifacts=[path])


@dg.asset(deps=[numbers])
def total(
    context: dg.AssetExecutionContext, store: ArtifactStore, warehouse: Warehouse
) -> dg.MaterializeResult:
    tracker = Tracker(context, warehouse, store)
    read = pd.read_parquet(store.file("numbers", "numbers.parquet"))
    reading.set()
    # A long step: another run rematerializes `numbers` before this one ends.
    assert release.wait(120), "the second run did not finish"
    return tracker.result(data_version=hash_json(read.n.tolist()), rows=1)


def test_overlapping_runs_record_the_input_version_each_run_read(tmp_path):
    warehouse_path = tmp_path / "warehouse.duckdb"
    resources = {
        "store": ArtifactStore(root=str(tmp_path / "data")),
        "warehouse": Warehouse(path=str(warehouse_path)),
    }
    assets = [numbers, total]

    def numbers_run(value: int, instance: dg.DagsterInstance) -> str:
        result = dg.materialize(
            assets,
            selection=["numbers"],
            instance=instance,
            resources=resources,
            run_config={"ops": {"numbers": {"config": {"value": value}}}},
        )
        event = instance.get_latest_materialization_event(dg.AssetKey("numbers"))
        assert result.success
        return event.asset_materialization.tags["dagster/data_version"]

    with dg.instance_for_test() as instance:
        first = numbers_run(1, instance)
        outcome: dict[str, object] = {}

        def total_run() -> None:
            outcome["result"] = dg.materialize(
                assets, selection=["total"], instance=instance, resources=resources
            )

        slow = threading.Thread(target=total_run)
        slow.start()
        assert reading.wait(120), "the total run never started reading"
        second = numbers_run(2, instance)  # overlaps the total run
        release.set()
        slow.join(timeout=120)
        assert outcome["result"].success
        assert first != second

        total_event = instance.get_latest_materialization_event(dg.AssetKey("total"))
        dagster_read = total_event.asset_materialization.tags["dagster/input_data_version/numbers"]
        recorded = total_event.asset_materialization.metadata["big5/input_versions"].value

    with duckdb.connect(str(warehouse_path), read_only=True) as con:
        latest_numbers = con.execute(
            "SELECT data_version FROM lineage.materializations WHERE asset = 'numbers' "
            "ORDER BY ended_at DESC LIMIT 1"
        ).fetchone()[0]
        (input_version,) = con.execute(
            """SELECT i.input_data_version FROM lineage.inputs i
               JOIN lineage.materializations m USING (materialization_id)
               WHERE m.asset = 'total' AND i.input_asset = 'numbers'"""
        ).fetchone()
    # The warehouse's latest version of the input is the second run's...
    assert latest_numbers == second
    # ... but the total run read the first, as Dagster's provenance of its step says.
    assert input_version == first == dagster_read
    assert recorded == {"numbers": {"": first}}
