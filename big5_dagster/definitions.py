"""The Dagster code location: `dagster-webserver -w workspace.yaml` loads `defs` from here.

:func:`build_definitions` is the one source of the definitions: every stage is built from
the one Settings object it is given. Only the module's last lines read the environment.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from big5_dagster import paths
from big5_dagster.config import EMBEDDED_MODEL, Settings, load_settings
from big5_dagster.defs import (
    automation,
    corpora,
    dialogues,
    evaluation,
    experts,
    expressed,
    psychobench,
    reasoning,
    report,
    steering,
    sweep,
    training,
    warehouse_load,
)
from big5_dagster.defs.factory import PROFILE_METADATA, step_retry_policy
from big5_dagster.defs.sql_models import build_sql_model_assets
from big5_dagster.resources import build_resources

STAGES = (
    corpora,
    experts,
    dialogues,
    sweep,
    training,
    steering,
    evaluation,
    expressed,
    psychobench,
    reasoning,
    report,
)


def is_offline_profile(settings: Settings) -> bool:
    """The tiny profile (embedded model, synthetic corpora) must never reach the network."""
    return (
        settings.model.base_model == EMBEDDED_MODEL
        and settings.posts.source != "hub"
        and settings.scenarios.source != "hub"
    )


def executor_for(name: str) -> dg.ExecutorDefinition:
    """The Dagster executor named in the settings (integrations imported only when chosen)."""
    if name == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    if name == "celery":
        from dagster_celery import celery_executor

        return celery_executor
    return dg.in_process_executor if name == "in_process" else dg.multiprocess_executor


def build_definitions(
    settings: Settings, root: Path, resources: dict[str, object] | None = None
) -> dg.Definitions:
    """All assets with resources for ``root``; ``resources`` swaps some (tests use a tiny model)."""
    stages = [stage.build(settings) for stage in STAGES]
    python_assets = [a for stage in stages for a in stage.assets]
    sql_models = build_sql_model_assets(
        paths.sql_models_dir(),
        paths.warehouse_path(root),
        python_assets,
        retry_policy=step_retry_policy(settings),
    )

    def stamped(spec: dg.AssetSpec) -> dg.AssetSpec:
        # Every asset records the profile it was built with, and runs under the pipeline's
        # automation condition (acted on only while the big5_full_pipeline sensor is on).
        spec = spec.merge_attributes(metadata={PROFILE_METADATA: settings.profile})
        return automation.with_pipeline_condition(spec)

    jobs, schedules, sensors = automation.build(settings)
    if settings.warehouse_writes == "staged":  # steps stage files; one job loads them
        jobs = [*jobs, warehouse_load.warehouse_load_job]
        sensors = [*sensors, warehouse_load.warehouse_load_sensor]
    return dg.Definitions(
        assets=dg.map_asset_specs(stamped, [*python_assets, sql_models]),
        asset_checks=[c for stage in stages for c in stage.asset_checks],
        resources={**build_resources(settings, root), **(resources or {})},
        executor=executor_for(settings.executor),
        jobs=jobs,
        schedules=schedules,
        sensors=sensors,
    )


settings = load_settings()
if is_offline_profile(settings):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")
data_root = paths.data_dir(settings.data_dir)
defs = build_definitions(settings, data_root)
