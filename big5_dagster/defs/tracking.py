"""Lineage and data versions for every materialization, in one place.

An asset creates ``Tracker(context, warehouse, store)`` when it starts and returns
``tracker.result(...)``. On creation the tracker takes the data versions of the inputs this
step reads from Dagster's own event log (the partitions Dagster maps to this step), so a
lineage row names what the run really read even when another run rematerializes an input
meanwhile. ``save_table`` is the asset epilogue (parquet file, warehouse table, data version)
in one call. ``result`` writes the lineage row with the settings that ran and hands Dagster
the content-hash data version, so downstream assets go stale only when an input changed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from big5_dagster.config import recording_reads
from big5_dagster.defs.factory import (
    CONFIG_SECTION_METADATA,
    PROFILE_METADATA,
    SETTINGS_METADATA,
)
from big5_dagster.lib.common import progress
from big5_dagster.lib.common.files import write_parquet
from big5_dagster.lib.common.hashing import hash_dataframe, hash_json
from big5_dagster.lib.common.jsonable import jsonable
from big5_dagster.lib.common.lineage import InputVersion, MaterializationRecord
from big5_dagster.partitions import partition_key_of
from big5_dagster.resources.artifacts import ArtifactStore
from big5_dagster.resources.warehouse import Warehouse

DATA_VERSION_TAG = "dagster/data_version"
INPUT_VERSIONS_METADATA = "big5/input_versions"
"""Materialization metadata: {input asset: {partition ('' if none): data version read}}."""


class SettingsNotCoveredError(RuntimeError):
    """An asset read a setting its code version does not cover (a change would not rerun it)."""


class LostAttemptError(RuntimeError):
    """The step's previous attempt began on a worker that was lost before the attempt ended."""


_ATTEMPT_BEGINS = {dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_RESTARTED}
_ATTEMPT_ENDS = {
    dg.DagsterEventType.STEP_SUCCESS,
    dg.DagsterEventType.STEP_FAILURE,
    dg.DagsterEventType.STEP_UP_FOR_RETRY,
}


def previous_attempt_lost(kinds: Sequence[dg.DagsterEventType]) -> bool:
    """Whether the attempt before the current one began and never ended, from a step's
    begin and end events in order (the last begin is the current attempt's)."""
    begins = [i for i, kind in enumerate(kinds) if kind in _ATTEMPT_BEGINS]
    if len(begins) < 2:  # the step's first attempt
        return False
    previous, current = begins[-2], begins[-1]
    return not any(kind in _ATTEMPT_ENDS for kind in kinds[previous + 1 : current])


def fail_if_previous_attempt_lost(context: dg.AssetExecutionContext) -> None:
    """Turn the redelivery of a lost step into a retry of the step's retry policy.

    When a Celery worker dies in the middle of a step, the broker gives the unacknowledged
    step to another worker, which runs it again as the same attempt: Dagster's Celery
    executor never learns of the loss, so the step's retry policy is not consulted and a
    step that takes its worker down every time would be redelivered forever. So when this
    step's previous attempt began and never ended, this attempt fails at once: the retry
    policy retries it (the next attempt resumes from what is on the shared disk) or, its
    retries spent, fails the run. Steps without a retry policy run on as before.
    """
    policy = context.op_def.retry_policy
    if policy is None:
        return
    step_key = str(context.op_handle)
    kinds = [
        entry.dagster_event.event_type
        for entry in context.instance.all_logs(
            context.run_id, of_type=_ATTEMPT_BEGINS | _ATTEMPT_ENDS
        )
        if entry.step_key == step_key and entry.dagster_event is not None
    ]
    if previous_attempt_lost(kinds):
        raise LostAttemptError(
            f"step {step_key} (attempt {context.retry_number + 1}) began before on a worker "
            "that was lost before the step ended (the broker redelivered it here); failing "
            f"into its retry policy (at most {policy.max_retries} retries)"
        )


def latest_data_version(
    instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None
) -> str | None:
    """The data version of the latest materialization of one asset partition, from Dagster."""
    if partition is None:
        event = instance.get_latest_materialization_event(key)
        materialization = event.asset_materialization if event else None
    else:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
        ).records
        materialization = records[0].asset_materialization if records else None
    if materialization is None:
        return None
    return materialization.tags.get(DATA_VERSION_TAG)


def step_input_versions(
    context: dg.AssetExecutionContext, asset_key: dg.AssetKey | None = None
) -> tuple[InputVersion, ...]:
    """The data versions of the upstream partitions this step reads for ``asset_key`` (by
    default the step's one asset), as Dagster has them now."""
    found: list[InputVersion] = []
    deps = context.assets_def.asset_deps[asset_key or context.asset_key]
    for key in sorted(deps, key=lambda k: k.to_string()):
        name = key.to_python_identifier()
        if name not in context.op_def.ins:
            # Another asset of the same multi-asset (dbt models): the same partition, as
            # Dagster has it by now (this step may have just rebuilt it).
            partitions: list[str | None] = [partition_key_of(context)]
        else:
            partitions = _input_partitions(context, name)
        for partition in sorted(partitions, key=lambda p: p or ""):
            version = latest_data_version(context.instance, key, partition)
            found.append(InputVersion(key.to_user_string(), partition, version))
    return tuple(found)


def _input_partitions(context: dg.AssetExecutionContext, name: str) -> list[str | None]:
    """The partitions of input ``name`` this step reads ([None] for an unpartitioned one)."""
    try:
        context.asset_partitions_def_for_input(name)
    except dg.DagsterInvariantViolationError:  # the upstream asset is not partitioned
        return [None]
    return list(context.asset_partition_keys_for_input(name))


class Tracker:
    def __init__(
        self,
        context: dg.AssetExecutionContext,
        warehouse: Warehouse,
        store: ArtifactStore | None = None,
        asset_key: dg.AssetKey | None = None,
    ) -> None:
        """``asset_key`` names one asset of a multi-asset step (default: the step's asset)."""
        fail_if_previous_attempt_lost(context)
        self.context = context
        self.asset_key = asset_key or context.asset_key
        self.warehouse = warehouse
        self.store = store
        self.partition = partition_key_of(context)
        self.started_at = datetime.now(UTC).replace(tzinfo=None)
        self.inputs = step_input_versions(context, self.asset_key)
        self.data_version: str | None = None
        self._recording = contextlib.ExitStack()
        self.settings_read = self._recording.enter_context(recording_reads())

    # -- the epilogue

    def save_table(
        self,
        frame: pd.DataFrame,
        filename: str,
        *,
        table: str | None = None,
        partition_column: str | None = None,
        versioned: bool = True,
        version_of: pd.DataFrame | None = None,
    ) -> Path:
        """Write ``frame`` as parquet under this asset's folder and into the warehouse table
        (whole, or only this partition's rows by ``partition_column``), atomically each; with
        ``versioned`` its content hash (of ``version_of`` if given) is the data version."""
        if self.store is None:
            raise ValueError("Tracker.save_table needs the artifact store")
        asset = self.asset_key.to_user_string()
        path = write_parquet(frame, self.store.file(asset, filename, self.partition))
        if table is not None and partition_column is not None:
            self.warehouse.replace_rows(table, frame, where={partition_column: self.partition})
        elif table is not None:
            self.warehouse.replace_table(table, frame)
        if versioned:
            self.data_version = hash_dataframe(frame if version_of is None else version_of)
        return path

    # -- the result

    def _asset_metadata(self) -> Mapping[str, Any]:
        metadata = self.context.assets_def.metadata_by_key.get(self.asset_key, {})
        return {k: getattr(v, "value", v) for k, v in metadata.items()}

    def _config(self) -> dict[str, Any]:
        return dict(self.context.op_config or {})

    def config_overrides(self) -> dict[str, Any]:
        """Launchpad values of settings this asset reads that differ from the settings file."""
        metadata = self._asset_metadata()
        section = metadata.get(CONFIG_SECTION_METADATA) or ""
        config = self._config()
        overrides = {}
        for name, value in (metadata.get(SETTINGS_METADATA) or {}).items():
            owner, _, field = name.partition(".")
            if section and owner == section and field in config:
                ran = jsonable(config[field])
                if ran != value:
                    overrides[name] = ran
        return overrides

    def _check_settings_read(self) -> None:
        covered = set((self._asset_metadata().get(SETTINGS_METADATA) or {}).keys())
        missing = sorted(self.settings_read - covered)
        if missing:
            raise SettingsNotCoveredError(
                f"{self.asset_key.to_user_string()} read settings {missing} that its code "
                "version does not cover: reading them through `config` or `settings` in the "
                "asset (or a defs helper it calls) puts them in the code version"
            )

    def result(
        self,
        *,
        data_version: str | None = None,
        rows: int | None = None,
        artifacts: Sequence[Path | str] = (),
        model_ids: Mapping[str, Any] | None = None,
        seeds: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        check_results: Sequence[dg.AssetCheckResult] | None = None,
    ) -> dg.MaterializeResult:
        self._recording.close()
        self._check_settings_read()
        content_version = data_version or self.data_version
        if content_version is None:
            raise ValueError("no data version: save a versioned table or pass data_version")
        overrides = self.config_overrides()
        # A launchpad run with other settings than the file's gives another data version, so
        # downstream assets see the change even where the content happens to be equal.
        version = hash_json([content_version, overrides]) if overrides else content_version
        ended_at = datetime.now(UTC).replace(tzinfo=None)
        asset_metadata = self._asset_metadata()
        record = MaterializationRecord(
            asset=self.asset_key.to_user_string(),
            partition=self.partition,
            run_id=self.context.run.run_id,
            code_version=self.context.assets_def.code_versions_by_key.get(self.asset_key),
            data_version=version,
            started_at=self.started_at,
            ended_at=ended_at,
            row_count=rows,
            profile=asset_metadata.get(PROFILE_METADATA),
            config=jsonable(self._config()),
            settings=jsonable({**(asset_metadata.get(SETTINGS_METADATA) or {}), **overrides}),
            model_ids=dict(model_ids or {}),
            seeds=dict(seeds or {}),
            artifact_paths=[str(a) for a in artifacts],
            inputs=self.inputs,
        )
        self.warehouse.record_lineage(record)
        meta: dict[str, Any] = {
            "data_version": version,
            "seconds": round((ended_at - self.started_at).total_seconds(), 3),
            "lineage_id": record.materialization_id,
            INPUT_VERSIONS_METADATA: dg.MetadataValue.json(_input_versions_json(self.inputs)),
        }
        if overrides:
            meta["config_overrides"] = dg.MetadataValue.json(jsonable(overrides))
        if rows is not None:
            meta["dagster/row_count"] = rows
        if artifacts:
            meta["path"] = dg.MetadataValue.path(str(artifacts[0]))
        if seeds:
            meta["seeds"] = dict(seeds)
        if model_ids:
            meta["models"] = dict(model_ids)
        meta.update(metadata or {})
        return dg.MaterializeResult(
            asset_key=self.asset_key,
            data_version=dg.DataVersion(version),
            metadata=meta,
            check_results=check_results,
        )


def _input_versions_json(inputs: Sequence[InputVersion]) -> dict[str, dict[str, str | None]]:
    out: dict[str, dict[str, str | None]] = {}
    for i in inputs:
        out.setdefault(i.asset, {})[i.partition or ""] = i.data_version
    return out


def progress_logger(context: dg.AssetExecutionContext, what: str, every: float = 0.1):
    """A (done, total) callback that logs progress of a long step about every 10%, with the
    time it has taken and an estimate of the time left (``lib.common.progress``)."""
    line = progress.ProgressLine(what, every=every)

    def report(done: int, total: int) -> None:
        message = line.update(done, total)
        if message is not None:
            context.log.info(message)

    return report
