"""The one place that defines and parses partition keys."""

from __future__ import annotations

import dagster as dg

from big5_dagster.lib.personality.methods import METHODS
from big5_dagster.lib.traits import PERSONAS, TRAITS, Persona

trait_partitions = dg.StaticPartitionsDefinition(list(TRAITS))
persona_partitions = dg.StaticPartitionsDefinition([p.key for p in PERSONAS])
method_partitions = dg.StaticPartitionsDefinition(list(METHODS))


def partition_key_of(
    context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext,
) -> str | None:
    """The partition this step runs for, or None for an unpartitioned asset."""
    if isinstance(context, dg.AssetCheckExecutionContext):
        return (
            context.op_execution_context.partition_key
            if context.op_execution_context.has_partition_key
            else None
        )
    # A run's partition tag reaches every step, unpartitioned assets included.
    partitioned = context.has_partition_key and context.assets_def.partitions_def is not None
    return context.partition_key if partitioned else None


def persona_of(context: dg.AssetExecutionContext) -> Persona:
    key = partition_key_of(context)
    if key is None:
        raise ValueError("this asset runs per persona: choose a persona partition")
    return Persona.parse(key)


def trait_of(context: dg.AssetExecutionContext) -> str:
    key = partition_key_of(context)
    if key not in TRAITS:
        raise ValueError(f"partition {key!r} is not a trait: expected one of {list(TRAITS)}")
    return key


def method_of(context: dg.AssetExecutionContext) -> str:
    key = partition_key_of(context)
    if key not in METHODS:
        raise ValueError(f"partition {key!r} is not a method: expected one of {list(METHODS)}")
    return key
