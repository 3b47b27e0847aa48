"""Materialize what is missing or stale, in dependency order (used by `big5 demo`).

Staleness is read from Dagster's event log with public APIs only: an asset partition is
outdated when it was never materialized, when its latest materialization recorded another
code version (``dagster/code_version``), or when an input it read then (the tracker records
the data version of every input partition in ``big5/input_versions``) now has another data
version. A code version covers the code, data files and settings the asset uses
(``defs.factory``), so a second run with nothing changed materializes nothing.
"""

from __future__ import annotations

import gc
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from graphlib import TopologicalSorter
from typing import Any

import dagster as dg

from big5_dagster.defs.tracking import DATA_VERSION_TAG, INPUT_VERSIONS_METADATA

QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
CODE_VERSION_TAG = "dagster/code_version"
INPUT_DATA_VERSION_TAG = "dagster/input_data_version/"


@dataclass(frozen=True)
class Step:
    """One run: one asset (or several models of one multi-asset), for one partition key (or none)."""

    keys: tuple[dg.AssetKey, ...]
    partition: str | None


@dataclass(frozen=True)
class AssetNode:
    key: dg.AssetKey
    assets_def: dg.AssetsDefinition
    deps: tuple[dg.AssetKey, ...]
    code_version: str | None

    @property
    def partitions(self) -> list[str | None]:
        pdef = self.assets_def.partitions_def
        return list(pdef.get_partition_keys()) if pdef else [None]


def asset_nodes(defs: dg.Definitions) -> dict[dg.AssetKey, AssetNode]:
    """Every materializable asset of ``defs`` with its dependencies and code version."""
    nodes = {}
    for assets_def in defs.assets or []:
        if not isinstance(assets_def, dg.AssetsDefinition) or not assets_def.is_materializable:
            continue
        for spec in assets_def.specs:
            nodes[spec.key] = AssetNode(
                key=spec.key,
                assets_def=assets_def,
                deps=tuple(dep.asset_key for dep in spec.deps),
                code_version=assets_def.code_versions_by_key.get(spec.key),
            )
    return nodes


def dependency_levels(nodes: dict[dg.AssetKey, AssetNode]) -> list[list[dg.AssetKey]]:
    """Assets by dependency level (roots first), each level sorted by key."""
    sorter = TopologicalSorter({k: [d for d in n.deps if d in nodes] for k, n in nodes.items()})
    sorter.prepare()
    levels = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=lambda k: k.to_user_string())
        levels.append(ready)
        sorter.done(*ready)
    return levels


def _latest_materialization(
    instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None
) -> dg.AssetMaterialization | None:
    if partition is None:
        event = instance.get_latest_materialization_event(key)
        return event.asset_materialization if event else None
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
    ).records
    return records[0].asset_materialization if records else None


class LatestMaterializations:
    """The latest materialization of each asset partition, read from the event log once.

    One pass over the graph asks for the same upstream partitions many times (every
    partition of a downstream asset checks what it read); a no-op `big5 demo` made 264
    event-log queries for 65 partitions. Call :meth:`forget` after materializing anything.
    """

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self.instance = instance
        self._known: dict[tuple[dg.AssetKey, str | None], dg.AssetMaterialization | None] = {}

    def get(self, key: dg.AssetKey, partition: str | None) -> dg.AssetMaterialization | None:
        if (key, partition) not in self._known:
            self._known[key, partition] = _latest_materialization(self.instance, key, partition)
        return self._known[key, partition]

    def data_version(self, key: dg.AssetKey, partition: str | None) -> str | None:
        materialization = self.get(key, partition)
        return materialization.tags.get(DATA_VERSION_TAG) if materialization else None

    def forget(self) -> None:
        self._known.clear()


def _inputs_read(latest: dg.AssetMaterialization) -> dict[str, dict[str, Any]]:
    read = latest.metadata.get(INPUT_VERSIONS_METADATA)
    return getattr(read, "value", None) or {}


def staleness(latest: LatestMaterializations, node: AssetNode, partition: str | None) -> str | None:
    """Why this asset partition must be materialized (missing, new code version, a changed
    input), or None when it is fresh."""
    own = latest.get(node.key, partition)
    if own is None:
        return "missing"
    if node.code_version is not None and own.tags.get(CODE_VERSION_TAG) != node.code_version:
        return "new code version"
    read_versions = _inputs_read(own)
    for dep in node.deps:
        name = dep.to_user_string()
        if name in read_versions:
            for dep_partition, version in read_versions[name].items():
                current = latest.data_version(dep, dep_partition or None)
                if current != version:
                    return f"{name}{f'[{dep_partition}]' if dep_partition else ''} changed"
        else:
            # Not tracked by partition (an asset outside the tracker): Dagster's own tag, for an
            # unpartitioned input.
            recorded = own.tags.get(INPUT_DATA_VERSION_TAG + name)
            if recorded != latest.data_version(dep, None):
                return f"{name} changed"
    return None


def stale_partitions(
    defs: dg.Definitions, instance: dg.DagsterInstance
) -> dict[dg.AssetKey, dict[str | None, str]]:
    """Every asset partition that is missing or stale, or read an input partition that is:
    what `big5 demo` recomputes when each recomputed input gets a new data version.
    Asset -> partition -> why."""
    nodes = asset_nodes(defs)
    latest = LatestMaterializations(instance)
    stale: dict[dg.AssetKey, dict[str | None, str]] = {}
    for level in dependency_levels(nodes):
        for key in level:
            node = nodes[key]
            for partition in node.partitions:
                reason = staleness(latest, node, partition)
                if reason is None:
                    own = latest.get(key, partition)
                    read = _inputs_read(own) if own is not None else {}
                    for dep in node.deps:
                        upstream = stale.get(dep, {})
                        parts = read.get(dep.to_user_string(), {"": None})
                        if any((p or None) in upstream for p in parts):
                            reason = f"{dep.to_user_string()} is stale"
                            break
                if reason is not None:
                    stale.setdefault(key, {})[partition] = reason
    return stale


def outdated(
    defs: dg.Definitions, instance: dg.DagsterInstance, key: dg.AssetKey
) -> list[str | None]:
    """Partitions of ``key`` (None if unpartitioned) that are missing or stale."""
    node = asset_nodes(defs)[key]
    latest = LatestMaterializations(instance)
    return [p for p in node.partitions if staleness(latest, node, p) is not None]


def _batch_with_siblings(
    node: AssetNode,
    nodes: dict[dg.AssetKey, AssetNode],
    pending: set[dg.AssetKey],
    latest: LatestMaterializations,
    force: bool,
) -> list[dg.AssetKey]:
    """``node``'s key and the other keys of its multi-asset that can run in the same run.

    One run per model of a multi-asset (the dbt models) would start one dbt process per
    model (about 12 CPU-s each here). A sibling joins when it is outdated, or reads a key
    already in the batch (whose data it will change), and when nothing it reads outside the
    batch is still pending (an upstream asset of another kind that has not run yet).
    Only unpartitioned multi-assets are batched.
    """
    keys = [node.key]
    siblings = [
        nodes[k] for k in node.assets_def.keys if k != node.key and k in nodes and k in pending
    ]
    if node.assets_def.partitions_def is not None or not node.assets_def.can_subset:
        return keys
    added = True
    while added:
        added = False
        for sibling in siblings:
            if sibling.key in keys:
                continue
            if any(d in pending and d not in keys for d in sibling.deps if d in nodes):
                continue
            reads_batch = any(d in keys for d in sibling.deps)
            if force or reads_batch or staleness(latest, sibling, None) is not None:
                keys.append(sibling.key)
                added = True
    return keys


def _run_times(instance: dg.DagsterInstance, run_id: str) -> float:
    """Seconds the run's steps took (what is left of a run's wall time is orchestration)."""
    return sum(
        (s.end_time or 0.0) - (s.start_time or 0.0) for s in instance.get_run_step_stats(run_id)
    )


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux: the process's peak so far (the model, caches, trainers).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def materialize_outdated(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    selection: Sequence[dg.AssetKey] | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
    run_config: dict | None = None,
) -> list[Step]:
    """Materialize every missing or stale asset partition (all of them with ``force``).

    One run per asset partition, except that the outdated models of one multi-asset (the
    dbt models) share a run. ``run_config`` may set ``ops: {asset: {config: ...}}`` for any
    asset; each run gets the part for the assets it materializes. Each run logs its wall
    time, the CPU time of this process, the orchestration overhead (wall time outside the
    steps) and the peak memory of the process so far.
    """
    ops_config = (run_config or {}).get("ops", {})
    nodes = asset_nodes(defs)
    wanted = set(selection) if selection else set(nodes)
    pending = {k for k in nodes if k in wanted}
    assets = list(defs.assets or []) + list(defs.asset_checks or [])
    latest = LatestMaterializations(instance)
    done: list[Step] = []
    for level in dependency_levels(nodes):
        for key in (k for k in level if k in pending):
            node = nodes[key]
            # Upstream assets of this run have been materialized by now: their new data
            # versions decide whether this one is stale.
            partitions = [
                p for p in node.partitions if force or staleness(latest, node, p) is not None
            ]
            if not partitions:
                pending.discard(key)
                log(f"  fresh      {key.to_user_string()}")
                continue
            keys = _batch_with_siblings(node, nodes, pending, latest, force)
            pending.difference_update(keys)
            names = {k.to_python_identifier() for k in keys}
            for partition in partitions:
                label = ", ".join(k.to_user_string() for k in keys) + (
                    f"[{partition}]" if partition else ""
                )
                log(f"  materialize {label}")
                wall, cpu = time.perf_counter(), time.process_time()
                result = dg.materialize(
                    assets,
                    selection=keys,
                    instance=instance,
                    resources=defs.resources,
                    partition_key=partition,
                    run_config={
                        **QUIET_LOGS,
                        "ops": {n: c for n, c in ops_config.items() if n in names},
                    },
                    raise_on_error=True,
                )
                if not result.success:
                    raise RuntimeError(f"materialization of {label} failed")
                latest.forget()  # new materializations: read the event log again
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                # One process runs every step: what a step left in reference cycles (models,
                # trainers) must not sit under the next step's peak.
                gc.collect()
                overhead = max(0.0, wall - _run_times(instance, result.run_id))
                log(
                    f"    {wall:.1f} s (cpu {cpu:.1f} s, orchestration {overhead:.1f} s), "
                    f"peak memory {_peak_rss_mb():.0f} MB"
                )
                for check in result.get_asset_check_evaluations():
                    outcome = "passed" if check.passed else f"FAILED ({check.severity.value})"
                    note = f": {check.description}" if check.description else ""
                    log(f"    check {check.check_name} {outcome}{note}")
                done.append(Step(tuple(keys), partition))
    return done
