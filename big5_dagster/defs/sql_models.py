"""dbt-style SQL models over the warehouse, one Dagster asset per `*.sql` file.

This is a factory because these assets are generated from files: dependencies come from
each model's ``{{ ref('x') }}``, the code version is the hash of its SQL, and a ref to a
Python asset resolves to the warehouse table that asset writes (``warehouse_table`` in
its metadata).
"""

from collections.abc import Sequence
from pathlib import Path

import dagster as dg

from big5_dagster.defs.tracking import Tracker
from big5_dagster.lib.common.hashing import hash_dataframe
from big5_dagster.lib.sqlmodels import (
    SqlModel,
    build_model,
    discover_models,
    main_schema_relation,
    resolve_graph,
)
from big5_dagster.resources.warehouse import Warehouse

WAREHOUSE_TABLES = "warehouse_tables"
PREVIEW_ROWS = 10


def warehouse_sources(assets: Sequence[dg.AssetsDefinition]) -> dict[str, dg.AssetKey]:
    """Warehouse table -> the Python asset that writes it (``warehouse_tables`` metadata)."""
    sources: dict[str, dg.AssetKey] = {}
    for assets_def in assets:
        for spec in assets_def.specs:
            tables = (spec.metadata or {}).get(WAREHOUSE_TABLES, [])
            if isinstance(tables, dg.MetadataValue):  # Dagster may wrap lists as JSON values
                tables = tables.value
            for table in tables:
                sources[str(table)] = spec.key
    return sources


def _sql_model_asset(model: SqlModel, deps: list[dg.AssetKey]) -> dg.AssetsDefinition:
    @dg.asset(
        name=model.name,
        deps=deps,
        code_version=model.code_version,
        group_name="sql_models",
        kinds={"duckdb", "sql"},
        description=model.description or f"SQL model {model.path.name}",
        metadata={
            "sql_file": dg.MetadataValue.path(str(model.path)),
            "materialized": model.materialized,
            WAREHOUSE_TABLES: [model.name],
        },
        pool="warehouse",
    )
    def _asset(context: dg.AssetExecutionContext, warehouse: Warehouse) -> dg.MaterializeResult:
        tracker = Tracker(context, warehouse)
        with warehouse.connect() as con:
            build_model(con, model, main_schema_relation)
            table = con.execute(f"SELECT * FROM {main_schema_relation(model.name)}").df()
        return tracker.result(
            data_version=hash_dataframe(table),
            rows=len(table),
            artifacts=[warehouse.path],
            metadata={
                "preview": dg.MetadataValue.md(table.head(PREVIEW_ROWS).to_markdown(index=False)),
                "sql": dg.MetadataValue.md(f"```sql\n{model.sql.strip()}\n```"),
            },
        )

    return _asset


def build_sql_model_assets(
    directory: Path, python_assets: Sequence[dg.AssetsDefinition]
) -> list[dg.AssetsDefinition]:
    """One asset per SQL model, in build order; unknown refs and cycles fail naming the file."""
    sources = warehouse_sources(python_assets)
    models = resolve_graph(discover_models(directory), sources=sources)
    model_names = {m.name for m in models}
    assets = []
    for model in models:
        deps = [dg.AssetKey(r) if r in model_names else sources[r] for r in model.refs]
        assets.append(_sql_model_asset(model, deps))
    return assets
