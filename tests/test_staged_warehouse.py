"""Staged warehouse writes give the warehouse a direct-write run gives, through one loader.

The corpora, the inventories and the dbt models over them (dbt reads the warehouse while
it builds) are materialized twice on the same settings: once writing the DuckDB file
directly, once staging files (no step opens the file; dbt builds in a scratch file of
its own) and loading them afterwards.
"""

import dagster as dg
import pandas as pd
from ui_helpers import small_run_config

from big5_dagster import paths
from big5_dagster.config import settings_from_mapping
from big5_dagster.definitions import build_definitions
from big5_dagster.defs.sql_models import GROUP
from big5_dagster.resources.warehouse import Warehouse

SELECTION = ["psychgenerator_posts", "soda_scenarios", "personality_inventories"]
SMALL = {"posts": {"n_posts": 600}, "scenarios": {"n_scenarios": 6}}
# A staging model and a summary over it (the group holds every model of dbt's manifest).
SOME_SQL_MODELS = {"stg_psychgenerator_posts", "scenario_stats"}


def _materialize(root, writes: str, tiny_backend) -> tuple[dg.Definitions, list[str], list]:
    """Materialize the selection, then the dbt models: the definitions, the models and
    their check evaluations."""
    settings = settings_from_mapping({**SMALL, "warehouse_writes": writes})
    defs = build_definitions(settings, root, resources={"model": tiny_backend})
    sql_models = sorted(
        key.to_user_string()
        for a in defs.assets
        for key, group in a.group_names_by_key.items()
        if group == GROUP
    )
    assert set(sql_models) >= SOME_SQL_MODELS
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
    return defs, sql_models, result.get_asset_check_evaluations()


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
    _, _, direct_checks = _materialize(direct_root, "direct", tiny_backend)
    defs, sql_models, staged_checks = _materialize(staged_root, "staged", tiny_backend)
    staged = defs.resources["warehouse"]
    assert not paths.warehouse_path(staged_root).exists()  # no step opened the warehouse
    # dbt's tests ran on the rows it staged, as in direct mode
    assert {(c.check_name, c.passed) for c in staged_checks} == {
        (c.check_name, c.passed) for c in direct_checks
    }
    assert direct_checks and all(c.passed for c in staged_checks)
    # each model's rows are staged, whole, before any load
    assert all(staged.table_exists(name) for name in sql_models)

    report = staged.load_staged()
    assert "lineage.materializations" in report.tables
    assert {f"main.{name}" for name in sql_models} <= set(report.tables)
    direct_tables = _tables(Warehouse(path=str(paths.warehouse_path(direct_root))))
    loaded_tables = _tables(Warehouse(path=staged.path))
    assert set(loaded_tables) == set(direct_tables)
    assert set(loaded_tables) >= set(sql_models)
    for name, frame in direct_tables.items():
        pd.testing.assert_frame_equal(loaded_tables[name], frame, check_dtype=False, obj=name)

    # the same lineage: one row per materialization, with the same data versions
    versions = "SELECT asset, partition, data_version FROM lineage.materializations ORDER BY ALL"
    direct_lineage = Warehouse(path=str(paths.warehouse_path(direct_root))).query(versions)
    pd.testing.assert_frame_equal(Warehouse(path=staged.path).query(versions), direct_lineage)
