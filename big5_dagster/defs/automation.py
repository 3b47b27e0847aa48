"""Jobs, the weekly re-evaluation schedule and the new-adapter sensor.

Dagster runs one partitions definition per run, and this graph has three (traits,
personas, methods), so `big5_full_pipeline` asks Dagster's own backfill engine (executed by
`dagster-daemon`, as the UI's "Materialize all" does) to materialize every asset and
partition in dependency order. `big5_evaluation` is an ordinary asset job partitioned by
method: a run evaluates one method and refreshes the summaries over every method present.
"""

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition
from dagster._core.execution.backfill import PartitionBackfill
from dagster._core.utils import make_new_backfill_id
from dagster._time import get_current_timestamp

from big5_dagster.config import active_settings
from big5_dagster.defs.evaluation import (
    inventory_responses,
    inventory_scores,
    psychometric_reliability,
    trait_correlations,
)
from big5_dagster.defs.reasoning import reasoning_by_trait, reasoning_results
from big5_dagster.defs.report import big5_report
from big5_dagster.defs.training import dpo_adapter, sft_adapter
from big5_dagster.lib.evaluation import METHODS
from big5_dagster.partitions import method_partitions

settings = active_settings()

EVALUATION_ASSETS = [
    inventory_responses,
    inventory_scores,
    psychometric_reliability,
    trait_correlations,
    reasoning_results,
    reasoning_by_trait,
    big5_report,
]


def evaluation_job() -> UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        "big5_evaluation",
        selection=dg.AssetSelection.assets(*EVALUATION_ASSETS),
        partitions_def=method_partitions,
        description="Evaluate one method (all personas): inventories and reasoning, then the "
        "summaries over every method evaluated so far and the report.",
    )


@dg.op(description="Submit an asset backfill of every asset and partition to Dagster's daemon.")
def submit_full_backfill(context: dg.OpExecutionContext) -> str:
    graph = context.repository_def.asset_graph  # the code location this run belongs to
    backfill_id = make_new_backfill_id()
    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id=backfill_id,
        asset_graph=graph,
        partition_names=None,
        asset_selection=sorted(graph.materializable_asset_keys, key=lambda k: k.to_string()),
        backfill_timestamp=get_current_timestamp(),
        tags={"big5/requested_by_run": context.run_id},
        dynamic_partitions_store=context.instance,
        all_partitions=True,
        title="big5_full_pipeline",
        description="Every BIG5-CHAT asset and partition, in dependency order.",
        run_config=None,
    )
    context.instance.add_backfill(backfill)
    context.log.info(f"submitted backfill {backfill_id}; dagster-daemon runs it (see Backfills)")
    return backfill_id


@dg.job(
    executor_def=dg.in_process_executor,  # one light op; the backfill's runs use the default
    description="Materialize the whole pipeline: corpora, experts, dialogues, training, "
    "evaluation and report, every partition, as one backfill run by dagster-daemon.",
)
def big5_full_pipeline():
    submit_full_backfill()


def weekly_reevaluation_schedule(job: UnresolvedAssetJobDefinition) -> dg.ScheduleDefinition:
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


def new_adapter_sensors(job: UnresolvedAssetJobDefinition) -> list[dg.SensorDefinition]:
    """One sensor per adapter asset: a new SFT (DPO) adapter evaluates the sft (dpo) method."""

    def sensor_for(adapter: dg.AssetsDefinition, method: str) -> dg.SensorDefinition:
        @dg.asset_sensor(
            name=f"evaluate_new_{method}_adapter",
            asset_key=adapter.key,
            job=job,
            default_status=(
                dg.DefaultSensorStatus.RUNNING
                if settings.automation.evaluate_new_adapters
                else dg.DefaultSensorStatus.STOPPED
            ),
            description=f"When {adapter.key.to_user_string()} is materialized, evaluate {method}.",
        )
        def evaluate_new_adapter(
            context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry
        ):
            # one evaluation per adapter materialization (its run and time identify it)
            run_key = f"{method}@{asset_event.run_id}@{asset_event.timestamp}"
            yield dg.RunRequest(run_key=run_key, partition_key=method)

        return evaluate_new_adapter

    return [sensor_for(sft_adapter, "sft"), sensor_for(dpo_adapter, "dpo")]
