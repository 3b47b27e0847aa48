"""Staged warehouse writes give the warehouse a direct-write run gives, through one loader.

The corpora, the inventories and the SQL models over them (which read the warehouse while
they build) are materialized twice on the same settings: once writing the DuckDB file
directly, once staging files (no step opens the file) and loading them afterwards.
"""

import dagster as dg
import pandas as pd
from ui_helpers import small_run_config

from big5_dagster import paths
from big5_dagster.config import settings_from_mapping
from big5_dagster.definitions import build_definitions
from big5_dagster.resources.warehouse import Warehouse

SELECTION = ["psychgenerator_posts", "soda_scenarios", "personality_inventories"]
SMALL = {"posts": {"n_posts": 600}, "scenarios": {"n_scenarios": 6}}


def _materialize(root, writes: str, tiny_backend) -> dg.Definitions:
    settings = settings_from_mapping({**SMALL, "warehouse_writes": writes})
    defs = build_definitions(settings, root, resources={"model": tiny_backend})
    sql_models = [
        a.key.to_user_string() for a in defs.assets if "sql_models" in a.group_names_by_key.values()
    ]
    with dg.DagsterInstance.ephemeral() as instance:
        for selection in (SELECTION, sql_models):
            result = dg.materialize(
                list(defs.assets),
                selection=selection,
                instance=instance,
                resources=defs.resources,
                run_config=small_run_config(*selection),
            )
            assert result.success
    return defs


def _tables(warehouse: Warehouse) -> dict[str, pd.DataFrame]:
    names = warehouse.query(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
    ).table_name
    tables = {}
    for name in sorted(names):
        frame = warehouse.query(f'SELECT * FROM "{name}"')
        tables[name] = frame.sort_values(list(frame.columns)).reset_index(drop=True)
    return tables


def test_staged_then_loaded_equals_direct(tmp_path, tiny_backend):
    direct_root, staged_root = tmp_path / "direct", tmp_path / "staged"
    _materialize(direct_root, "direct", tiny_backend)
    staged = _materialize(staged_root, "staged", tiny_backend).resources["warehouse"]
    assert not paths.warehouse_path(staged_root).exists()  # no step opened the warehouse

    report = staged.load_staged()
    assert "lineage.materializations" in report.tables
    direct_tables = _tables(Warehouse(path=str(paths.warehouse_path(direct_root))))
    loaded_tables = _tables(Warehouse(path=staged.path))
    assert set(loaded_tables) == set(direct_tables)
    assert {"stg_psychgenerator_posts", "scenario_stats"} <= set(loaded_tables)
    for name, frame in direct_tables.items():
        pd.testing.assert_frame_equal(loaded_tables[name], frame, check_dtype=False, obj=name)

    count = "SELECT asset, count(*) AS n FROM lineage.materializations GROUP BY 1 ORDER BY 1"
    direct_lineage = Warehouse(path=str(paths.warehouse_path(direct_root))).query(count)
    pd.testing.assert_frame_equal(Warehouse(path=staged.path).query(count), direct_lineage)
