"""Materialize what is missing or stale, in dependency order (used by `big5 demo`).

Dagster decides staleness from code versions and the data versions of inputs, so a
second run with nothing changed materializes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dagster as dg
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
from dagster._core.definitions.assets.graph.asset_graph import AssetGraph
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._time import get_current_datetime

QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


@dataclass(frozen=True)
class Step:
    """One run: assets sharing a partitions definition, for one partition key (or none)."""

    keys: tuple[dg.AssetKey, ...]
    partition: str | None


def _resolver(instance: dg.DagsterInstance, graph: AssetGraph) -> CachingStaleStatusResolver:
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=graph,
    )
    return CachingStaleStatusResolver(instance=instance, asset_graph=graph, loading_context=view)


def outdated(
    defs: dg.Definitions, instance: dg.DagsterInstance, key: dg.AssetKey
) -> list[str | None]:
    """Partitions of ``key`` (None if unpartitioned) that are missing or stale."""
    graph = defs.resolve_asset_graph()
    resolver = _resolver(instance, graph)
    pdef = graph.get(key).partitions_def
    keys: Sequence[str | None] = pdef.get_partition_keys() if pdef else [None]
    return [p for p in keys if resolver.get_status(key, p) != StaleStatus.FRESH]


def materialize_outdated(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    selection: Sequence[dg.AssetKey] | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
    run_config: dict | None = None,
) -> list[Step]:
    """Materialize every missing or stale asset partition (all of them with ``force``).

    ``run_config`` may set ``ops: {asset: {config: ...}}`` for any asset; each run gets
    the part for the asset it materializes.
    """
    ops_config = (run_config or {}).get("ops", {})
    graph = defs.resolve_asset_graph()
    wanted = set(selection) if selection else set(graph.materializable_asset_keys)
    assets = list(defs.assets or []) + list(defs.asset_checks or [])
    done: list[Step] = []
    for level in graph.toposorted_asset_keys_by_level:
        for key in sorted(k for k in level if k in wanted):
            pdef = graph.get(key).partitions_def
            partitions = (
                (pdef.get_partition_keys() if pdef else [None])
                if force
                else outdated(defs, instance, key)
            )
            if not partitions:
                log(f"  fresh      {key.to_user_string()}")
                continue
            for partition in partitions:
                label = key.to_user_string() + (f"[{partition}]" if partition else "")
                log(f"  materialize {label}")
                result = dg.materialize(
                    assets,
                    selection=[key],
                    instance=instance,
                    resources=defs.resources,
                    partition_key=partition,
                    run_config={
                        **QUIET_LOGS,
                        "ops": {
                            n: c for n, c in ops_config.items() if n == key.to_python_identifier()
                        },
                    },
                    raise_on_error=True,
                )
                if not result.success:
                    raise RuntimeError(f"materialization of {label} failed")
                for check in result.get_asset_check_evaluations():
                    outcome = "passed" if check.passed else f"FAILED ({check.severity.value})"
                    note = f": {check.description}" if check.description else ""
                    log(f"    check {check.check_name} {outcome}{note}")
                done.append(Step((key,), partition))
    return done
