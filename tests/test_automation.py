"""Jobs, schedule and sensors: what they ask Dagster to run."""

from datetime import UTC, datetime

import dagster as dg
import pytest
from dagster._core.definitions.job_base import RepoBackedJob
from dagster._core.execution.execute_in_process import core_execute_in_process

from big5_dagster import paths
from big5_dagster.config import load_settings
from big5_dagster.definitions import build_definitions
from big5_dagster.lib.evaluation import METHODS
from big5_dagster.partitions import method_partitions


@pytest.fixture
def defs(isolated_environment, tiny_backend) -> dg.Definitions:
    return build_definitions(load_settings(), paths.data_dir(), resources={"model": tiny_backend})


def test_full_pipeline_job_submits_one_backfill_of_every_asset_and_partition(defs):
    # Run it as a code location's run worker does: the job backed by its repository.
    job = RepoBackedJob("big5_full_pipeline", defs.get_repository_def())
    with dg.DagsterInstance.ephemeral() as instance:
        result = core_execute_in_process(
            run_config={},
            job=job,
            instance=instance,
            output_capturing_enabled=True,
            raise_on_error=True,
        )
        assert result.success
        (backfill,) = instance.get_backfills()
        assert backfill.backfill_id == result.output_for_node("submit_full_backfill")
        targeted = backfill.asset_backfill_data.target_subset
        keys = {k.to_user_string() for k in targeted.asset_keys}
        graph = defs.resolve_asset_graph()
        assert keys == {k.to_user_string() for k in graph.materializable_asset_keys}
        assert "big5_report" in keys
        personas = targeted.get_partitions_subset(dg.AssetKey("big5_chat_replies"))
        assert len(personas) == 10
        assert backfill.tags["big5/requested_by_run"] == result.run_id


def test_evaluation_job_is_partitioned_by_method_and_ends_in_the_report(defs):
    job = defs.resolve_job_def("big5_evaluation")
    assert job.partitions_def == method_partitions
    selected = {k.to_user_string() for k in job.asset_layer.asset_graph.executable_asset_keys}
    assert {"inventory_responses", "reasoning_results", "big5_report"} <= selected
    assert "sft_adapter" not in selected  # evaluation never retrains


def test_weekly_schedule_requests_one_run_per_method(defs):
    schedule = defs.resolve_schedule_def("weekly_reevaluation")
    assert schedule.cron_schedule == load_settings().automation.reevaluation_cron
    assert schedule.job_name == "big5_evaluation"
    when = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)
    with dg.build_schedule_context(
        scheduled_execution_time=when, repository_def=defs.get_repository_def()
    ) as context:
        requests = list(schedule.evaluate_tick(context).run_requests)
    assert sorted(r.partition_key for r in requests) == sorted(METHODS)
    assert len({r.run_key for r in requests}) == len(METHODS)


def test_new_adapter_sensor_requests_an_evaluation_of_that_method(defs):
    sensor = defs.resolve_sensor_def("evaluate_new_sft_adapter")
    with dg.DagsterInstance.ephemeral() as instance:
        context = dg.build_sensor_context(instance=instance, definitions=defs)
        assert not list(sensor.evaluate_tick(context).run_requests)  # nothing new yet
        instance.report_runless_asset_event(dg.AssetMaterialization("sft_adapter"))
        context = dg.build_sensor_context(instance=instance, definitions=defs)
        (request,) = sensor.evaluate_tick(context).run_requests
    assert request.partition_key == "sft"
    assert request.job_name in (None, "big5_evaluation")
