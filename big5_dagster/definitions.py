"""The Dagster code location: `dagster-webserver -w workspace.yaml` loads `defs` from here."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from big5_dagster import paths
from big5_dagster.config import EMBEDDED_MODEL, Settings, active_settings
from big5_dagster.defs import (
    automation,
    corpora,
    dialogues,
    evaluation,
    experts,
    reasoning,
    report,
    training,
)
from big5_dagster.defs.sql_models import build_sql_model_assets
from big5_dagster.resources.artifacts import ArtifactStore
from big5_dagster.resources.model_backend import ModelBackend
from big5_dagster.resources.warehouse import Warehouse


def is_offline_profile(settings: Settings) -> bool:
    """The tiny profile (embedded model, synthetic corpora) must never reach the network."""
    return (
        settings.model.base_model == EMBEDDED_MODEL
        and settings.posts.source != "hub"
        and settings.scenarios.source != "hub"
    )


def build_resources(settings: Settings, root: Path) -> dict[str, dg.ConfigurableResource]:
    return {
        "store": ArtifactStore(root=str(root)),
        "warehouse": Warehouse(path=str(paths.warehouse_path(root))),
        "model": ModelBackend(
            **settings.model.model_dump(), models_dir=str(paths.models_dir(root))
        ),
    }


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
    python_assets = [
        *corpora.assets,
        *experts.assets,
        *dialogues.assets,
        *training.assets,
        *evaluation.assets,
        *reasoning.assets,
        *report.assets,
    ]
    sql_assets = build_sql_model_assets(paths.sql_models_dir(), python_assets)
    evaluation_job = automation.evaluation_job()
    return dg.Definitions(
        assets=[*python_assets, *sql_assets],
        asset_checks=[*experts.asset_checks, *training.asset_checks],
        resources={**build_resources(settings, root), **(resources or {})},
        executor=executor_for(settings.executor),
        jobs=[automation.big5_full_pipeline, evaluation_job],
        schedules=[automation.weekly_reevaluation_schedule(evaluation_job)],
        sensors=automation.new_adapter_sensors(evaluation_job),
    )


settings = active_settings()
if is_offline_profile(settings):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")

data_root = paths.data_dir(settings.data_dir)
warehouse_file = paths.warehouse_path(data_root)
defs = build_definitions(settings, data_root)
