"""The whole-pipeline automation, the evaluation job, the weekly re-evaluation schedule and
the new-adapter sensors (public Dagster APIs only).

Dagster runs one partitions definition per run, and this graph has three (traits,
personas, methods). `big5_full_pipeline` is a declarative-automation sensor (off by
default; `dagster-daemon` evaluates it): every asset carries :data:`PIPELINE_CONDITION`, so
the daemon materializes each missing asset partition once all its dependencies exist, in
dependency order across the three partitions definitions, and again after its code version
changes or a dependency is updated. `big5_evaluation` is an ordinary asset job partitioned
by method: a run evaluates one method and refreshes the summaries over every method present.
"""

import dagster as dg

from big5_dagster.config import Settings
from big5_dagster.lib.personality.methods import METHODS
from big5_dagster.partitions import method_partitions

EVALUATION_ASSETS = (
    "inventory_responses",
    "inventory_scores",
    "psychometric_reliability",
    "trait_correlations",
    "reasoning_results",
    "reasoning_by_trait",
    "big5_report",
)
PIPELINE_SENSOR = "big5_full_pipeline"

# Missing (never materialized, and its last run did not fail) or changed since last handled;
# never while it or a dependency runs, nor before every dependency exists.
PIPELINE_CONDITION = (
    (
        (dg.AutomationCondition.missing() & ~dg.AutomationCondition.execution_failed())
        | (
            dg.AutomationCondition.code_version_changed()
            | dg.AutomationCondition.any_deps_updated()
        ).since_last_handled()
    )
    & ~dg.AutomationCondition.in_progress()
    & ~dg.AutomationCondition.any_deps_missing()
    & ~dg.AutomationCondition.any_deps_in_progress()
).with_label("missing or changed, dependencies ready")


def with_pipeline_condition(spec: dg.AssetSpec) -> dg.AssetSpec:
    return spec.replace_attributes(automation_condition=PIPELINE_CONDITION)


def pipeline_sensor() -> dg.AutomationConditionSensorDefinition:
    return dg.AutomationConditionSensorDefinition(
        PIPELINE_SENSOR,
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.STOPPED,
        description="Materialize the whole pipeline: every missing asset and partition once "
        "its dependencies exist, in dependency order; again when its code version changes or "
        "a dependency is updated. Turn it on in the UI (dagster-daemon runs it).",
    )


def evaluation_job():
    return dg.define_asset_job(
        "big5_evaluation",
        selection=dg.AssetSelection.assets(*EVALUATION_ASSETS),
        partitions_def=method_partitions,
        description="Evaluate one method (all personas): inventories and reasoning, then the "
        "summaries over every method evaluated so far and the report.",
    )


def weekly_reevaluation_schedule(settings: Settings, job) -> dg.ScheduleDefinition:
    @dg.schedule(
        name="weekly_reevaluation",
        job=job,
        cron_schedule=settings.automation.reevaluation_cron,
        execution_timezone=settings.automation.timezone,
        default_status=(
            dg.DefaultScheduleStatus.RUNNING
            if settings.automation.schedule_running
            else dg.DefaultScheduleStatus.STOPPED
        ),
        description="Re-evaluate every method on a schedule (cron from settings).",
    )
    def weekly_reevaluation(context: dg.ScheduleEvaluationContext):
        stamp = context.scheduled_execution_time.isoformat()
        for method in METHODS:
            yield dg.RunRequest(run_key=f"{method}@{stamp}", partition_key=method)

    return weekly_reevaluation


def new_adapter_sensors(settings: Settings, job) -> list[dg.SensorDefinition]:
    """One sensor per adapter asset: a new SFT (DPO) adapter evaluates the sft (dpo) method."""

    def sensor_for(adapter: str, method: str) -> dg.SensorDefinition:
        @dg.asset_sensor(
            name=f"evaluate_new_{method}_adapter",
            asset_key=dg.AssetKey(adapter),
            job=job,
            default_status=(
                dg.DefaultSensorStatus.RUNNING
                if settings.automation.evaluate_new_adapters
                else dg.DefaultSensorStatus.STOPPED
            ),
            description=f"When {adapter} is materialized, evaluate {method}.",
        )
        def evaluate_new_adapter(
            context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry
        ):
            # one evaluation per adapter materialization (its run and time identify it)
            run_key = f"{method}@{asset_event.run_id}@{asset_event.timestamp}"
            yield dg.RunRequest(run_key=run_key, partition_key=method)

        return evaluate_new_adapter

    return [sensor_for("sft_adapter", "sft"), sensor_for("dpo_adapter", "dpo")]


def build(settings: Settings) -> tuple[list, list, list]:
    """(jobs, schedules, sensors)."""
    job = evaluation_job()
    return (
        [job],
        [weekly_reevaluation_schedule(settings, job)],
        [*new_adapter_sensors(settings, job), pipeline_sensor()],
    )
