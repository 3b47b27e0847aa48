"""Lineage and data versions for every materialization, in one place.

An asset calls ``Tracker(context, warehouse)`` when it starts and returns
``tracker.result(...)``: that writes the lineage row (with the data version of every
input it read) and hands Dagster the content-hash data version, so downstream assets
go stale only when an input really changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg

from big5_dagster.config import active_settings
from big5_dagster.lib.lineage import InputVersion, MaterializationRecord
from big5_dagster.partitions import partition_key_of
from big5_dagster.resources.warehouse import Warehouse


class Tracker:
    def __init__(self, context: dg.AssetExecutionContext, warehouse: Warehouse) -> None:
        self.context = context
        self.warehouse = warehouse
        self.partition = partition_key_of(context)
        self.started_at = datetime.now(UTC).replace(tzinfo=None)

    def input_versions(
        self, partitions: Mapping[str, Sequence[str | None]] | None = None
    ) -> tuple[InputVersion, ...]:
        """Data versions of the upstream assets this step read.

        By default an upstream partition with the same key as this step is read alone;
        otherwise all its partitions. ``partitions`` overrides that per upstream asset.
        """
        partitions = partitions or {}
        upstream = sorted(
            self.context.assets_def.asset_deps[self.context.asset_key], key=lambda k: k.to_string()
        )
        found: list[InputVersion] = []
        for key in upstream:
            name = key.to_user_string()
            versions = self.warehouse.latest_versions(name)
            if name in partitions:
                wanted: Iterable[str | None] = partitions[name]
            elif self.partition is not None and self.partition in versions:
                wanted = [self.partition]
            else:
                wanted = sorted(versions, key=lambda p: p or "")
            found.extend(InputVersion(name, p, versions.get(p)) for p in wanted)
        return tuple(found)

    def result(
        self,
        *,
        data_version: str,
        rows: int | None = None,
        artifacts: Sequence[Path | str] = (),
        config: dg.Config | Mapping[str, Any] | None = None,
        model_ids: Mapping[str, Any] | None = None,
        seeds: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        input_partitions: Mapping[str, Sequence[str | None]] | None = None,
        check_results: Sequence[dg.AssetCheckResult] | None = None,
    ) -> dg.MaterializeResult:
        ended_at = datetime.now(UTC).replace(tzinfo=None)
        config_dict = config.model_dump() if isinstance(config, dg.Config) else dict(config or {})
        record = MaterializationRecord(
            asset=self.context.asset_key.to_user_string(),
            partition=self.partition,
            run_id=self.context.run.run_id,
            code_version=self.context.assets_def.code_versions_by_key.get(self.context.asset_key),
            data_version=data_version,
            started_at=self.started_at,
            ended_at=ended_at,
            row_count=rows,
            profile=active_settings().profile,
            config=config_dict,
            model_ids=dict(model_ids or {}),
            seeds=dict(seeds or {}),
            artifact_paths=[str(a) for a in artifacts],
            inputs=self.input_versions(input_partitions),
        )
        self.warehouse.record_lineage(record)
        meta: dict[str, Any] = {
            "data_version": data_version,
            "seconds": round((ended_at - self.started_at).total_seconds(), 3),
            "lineage_id": record.materialization_id,
        }
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
            data_version=dg.DataVersion(data_version),
            metadata=meta,
            check_results=check_results,
        )


def progress_logger(context: dg.AssetExecutionContext, what: str, every: float = 0.1):
    """A (done, total) callback that logs progress of a long step about every 10%."""
    state = {"next": 0.0}

    def report(done: int, total: int) -> None:
        fraction = done / total if total else 1.0
        if fraction >= state["next"] or done == total:
            context.log.info(f"{what}: {done}/{total} ({fraction:.0%})")
            state["next"] = fraction + every

    return report
