"""The dbt project in dbt_like_sql/ as Dagster assets, one per model, through dagster-dbt.

Models read the tables Python assets write as dbt sources; ``sources.yml`` maps each
source to the asset that writes it, so the models hang under it in the graph. The code
version of a model is a hash of its SQL (dagster-dbt's default); its data version is a
hash of the table's content, and each materialization gets a lineage row with the data
versions of its inputs, like every other asset. dbt tests are the models' asset checks.

dbt writes the warehouse from a subprocess, which the warehouse's lock file does not
cover by itself: each dbt call holds ``Warehouse.lock()``. With staged warehouse writes
(machines sharing only the data folder) dbt runs like any other step, on any machine: in
a private scratch DuckDB file where the tables it reads are views over their staged
files; the models it built are then staged as whole tables, which the warehouse_load job
loads like every other staged table.
"""

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from dagster_dbt import DagsterDbtTranslator, DbtCliInvocation, DbtProject, dbt_assets
from filelock import FileLock

from big5_dagster.defs.tracking import Tracker, fail_if_previous_attempt_lost
from big5_dagster.lib.common.hashing import hash_dataframe
from big5_dagster.resources.dbt import WAREHOUSE_PATH_ENV, WarehouseDbtCli, dbt_resource
from big5_dagster.resources.warehouse import Warehouse

WAREHOUSE_TABLES = "warehouse_tables"
GROUP = "sql_models"
PREVIEW_ROWS = 10
# What dbt reads: a change to any of these makes the saved manifest stale.
_PROJECT_FILES = ("dbt_project.yml", "profiles.yml", "models/**/*.sql", "models/**/*.yml")


class SqlModelsError(ValueError):
    """The dbt project does not fit the asset graph (e.g. a source no asset writes)."""


def _manifest_is_stale(project: DbtProject) -> bool:
    if not project.manifest_path.exists():
        return True
    built = project.manifest_path.stat().st_mtime
    return any(
        path.stat().st_mtime > built
        for pattern in _PROJECT_FILES
        for path in project.project_dir.glob(pattern)
    )


def prepare_project(project_dir: Path, warehouse_path: Path) -> DbtProject:
    """The dbt project, with a manifest that matches its files (``dbt parse`` if not).

    `make setup` builds the manifest; parsing here again only when a model or YAML file
    changed since keeps an edited checkout, or a test's copy, loadable offline.
    """
    project = DbtProject(project_dir=project_dir)
    if not _manifest_is_stale(project):
        return project
    # Processes loading the definitions at once parse one at a time.
    with FileLock(str(project.manifest_path) + ".lock", timeout=600):
        if _manifest_is_stale(project):
            # Parsing does not connect, but profiles.yml needs the variable set.
            os.environ.setdefault(WAREHOUSE_PATH_ENV, str(warehouse_path))
            dbt = dbt_resource(project.project_dir, warehouse_path)
            dbt.cli(["parse", "--quiet"], target_path=project.target_path).wait()
    return project


class SqlModelTranslator(DagsterDbtTranslator):
    """dagster-dbt's names (asset key = model name), with the models in one group."""

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return GROUP


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


def check_sources(
    project: DbtProject,
    translator: DagsterDbtTranslator,
    python_assets: Sequence[dg.AssetsDefinition],
) -> None:
    """Each dbt source must map to the Python asset that writes its table.

    Dagster accepts a dependency on any key, so a misspelt ``asset_key`` in sources.yml
    would silently cut the models off from the asset that feeds them.
    """
    manifest = _manifest(project)
    writers = warehouse_sources(python_assets)
    for unique_id, source in sorted(manifest["sources"].items()):
        where = f"{project.project_dir / source['original_file_path']}"
        table = source["identifier"]
        key = translator.get_asset_spec(manifest, unique_id, project).key
        writer = writers.get(table)
        if writer is None:
            raise SqlModelsError(
                f"{where}: source {source['source_name']}.{source['name']}: no Python asset "
                f"writes the table {table!r} (tables written: {sorted(writers)})"
            )
        if key != writer:
            raise SqlModelsError(
                f"{where}: source {source['source_name']}.{source['name']} maps to the asset "
                f"{key.to_user_string()!r}, but {table!r} is written by "
                f"{writer.to_user_string()!r}: set meta.dagster.asset_key to "
                f"{list(writer.path)}"
            )


def _manifest(project: DbtProject) -> dict[str, Any]:
    return json.loads(project.manifest_path.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Relation:
    """Where a model or source lives: ``sql`` names it in a query."""

    schema: str
    name: str
    sql: str


def _relations(
    project: DbtProject, translator: DagsterDbtTranslator
) -> dict[dg.AssetKey, Relation]:
    """Asset key -> the relation its model builds (``sql`` e.g. ``"warehouse"."main"."x"``)."""
    manifest = _manifest(project)
    return {
        translator.get_asset_spec(manifest, unique_id, project).key: Relation(
            node["schema"], node["alias"], node["relation_name"]
        )
        for unique_id, node in manifest["nodes"].items()
        if node["resource_type"] == "model"
    }


def _tables_read(project: DbtProject) -> set[tuple[str, str]]:
    """(schema, name) of every table dbt may read: the sources and the models themselves
    (a model built in an earlier run is read by the models that ref it)."""
    manifest = _manifest(project)
    sources = {(s["schema"], s["identifier"]) for s in manifest["sources"].values()}
    models = {
        (node["schema"], node["alias"])
        for node in manifest["nodes"].values()
        if node["resource_type"] == "model"
    }
    return sources | models


def _drain(events: Iterator[Any]) -> tuple[list[Any], BaseException | None]:
    """Every event dbt produced, and the error it ended with (a failed model or test)."""
    collected: list[Any] = []
    try:
        for event in events:
            collected.append(event)
    except Exception as error:  # dbt's failure: report what it built first, then raise
        return collected, error
    return collected, None


def _close_adapter(invocation: DbtCliInvocation) -> None:
    """Close the in-process DuckDB connection dagster-dbt opened for row counts and column
    metadata: while it is open (read-only) no other connection to the file can be made."""
    adapter = invocation.adapter
    if adapter is not None:
        adapter.cleanup_connections()
        # dbt-duckdb keeps the database open in a class-level environment beyond its
        # connections; dropping it (what dbt-duckdb does at exit) closes the file.
        type(adapter.connections).close_all_connections()


def _tracked(
    context: dg.AssetExecutionContext,
    event: dg.Output,
    warehouse: Warehouse,
    table: pd.DataFrame,
    started_at: datetime,
) -> dg.MaterializeResult:
    """The model's materialization with dbt's metadata and a content-hash data version,
    after writing its lineage row. Called once the models it depends on in this step have
    been yielded, so the tracker reads their new data versions."""
    key = context.asset_key_for_output(event.output_name)
    tracker = Tracker(context, warehouse, asset_key=key)
    tracker.started_at = started_at  # the dbt call that built it
    preview = dg.MetadataValue.md(table.head(PREVIEW_ROWS).to_markdown(index=False))
    return tracker.result(
        data_version=hash_dataframe(table),
        rows=len(table),
        artifacts=[warehouse.path],
        metadata={**event.metadata, "preview": preview},
    )


def _dbt_build(
    context: dg.AssetExecutionContext, dbt: WarehouseDbtCli
) -> tuple[list[Any], BaseException | None, datetime]:
    """Run ``dbt build`` for the selected models: its events, the error it ended with, and
    when it started."""
    started_at = datetime.now(UTC).replace(tzinfo=None)
    invocation = dbt.cli(["build"], context=context)
    # Let dbt finish first (this reads and keeps its output): the thread pool that adds row
    # counts and columns polls in a busy loop while dbt runs, taking a core from it. For
    # DuckDB no event comes out before dbt ends in any case.
    invocation.is_successful()
    events, error = _drain(invocation.stream().fetch_row_counts().fetch_column_metadata())
    _close_adapter(invocation)
    return events, error, started_at


def _content(read: Warehouse, relation: Relation) -> pd.DataFrame:
    # ORDER BY ALL: a view's row order is not fixed, its content is.
    return read.query(f"SELECT * FROM {relation.sql} ORDER BY ALL")


def build_sql_model_assets(
    project_dir: Path,
    warehouse_path: Path,
    python_assets: Sequence[dg.AssetsDefinition],
    retry_policy: dg.RetryPolicy | None = None,
) -> dg.AssetsDefinition:
    """The dbt models as one multi-asset (each model selectable on its own) in the
    warehouse pool; a source that does not map to the asset writing it fails here."""
    project = prepare_project(project_dir, warehouse_path)
    translator = SqlModelTranslator()
    check_sources(project, translator, python_assets)
    relations = _relations(project, translator)
    tables_read = _tables_read(project)

    @dbt_assets(
        manifest=project.manifest_path,
        project=project,
        dagster_dbt_translator=translator,
        pool="warehouse",
        retry_policy=retry_policy,
    )
    def sql_models(
        context: dg.AssetExecutionContext, dbt: WarehouseDbtCli, warehouse: Warehouse
    ) -> Iterator[Any]:
        fail_if_previous_attempt_lost(context)  # before dbt runs (the trackers come after)
        if warehouse.writes == "staged":
            # dbt builds in a scratch file of this machine; what it built is staged whole.
            with warehouse.scratch(tables_read) as scratch, dbt.building_in(scratch.path):
                events, error, started_at = _dbt_build(context, dbt)
                built = {
                    key: _content(scratch, relations[key])
                    for key in (
                        context.asset_key_for_output(e.output_name)
                        for e in events
                        if isinstance(e, dg.Output)
                    )
                }
            for event in events:
                if isinstance(event, dg.Output):
                    key = context.asset_key_for_output(event.output_name)
                    relation = relations[key]
                    warehouse.replace_table(relation.name, built[key], schema=relation.schema)
                    yield _tracked(context, event, warehouse, built[key], started_at)
                else:
                    yield event
        else:
            with warehouse.lock():
                events, error, started_at = _dbt_build(context, dbt)
                for event in events:
                    if isinstance(event, dg.Output):
                        key = context.asset_key_for_output(event.output_name)
                        table = _content(warehouse, relations[key])
                        yield _tracked(context, event, warehouse, table, started_at)
                    else:
                        yield event
        if error is not None:
            raise error

    return sql_models
