"""Jobs, schedule and sensors: what they ask Dagster to run."""

from datetime import UTC, datetime

import dagster as dg
import pytest

from big5_dagster import paths
from big5_dagster.config import load_settings
from big5_dagster.definitions import build_definitions
from big5_dagster.lib.personality.methods import METHODS
from big5_dagster.lib.traits import PERSONAS, TRAITS
from big5_dagster.partitions import method_partitions


@pytest.fixture
def defs(isolated_environment, tiny_backend) -> dg.Definitions:
    return build_definitions(load_settings(), paths.data_dir(), resources={"model": tiny_backend})


def _requested(
    defs: dg.Definitions, result: dg.EvaluateAutomationConditionsResult
) -> dict[str, set[str | None]]:
    """Asset -> requested partitions (None for an unpartitioned asset)."""
    graph = defs.resolve_asset_graph()
    return {
        key.to_user_string(): set(result.get_requested_partitions(key))
        for key in graph.materializable_asset_keys
        if result.get_num_requested(key)
    }


def test_full_pipeline_automation_materializes_every_asset_in_dependency_order(defs):
    # Every asset carries the pipeline condition; the sensor that acts on it targets them all.
    sensor = defs.resolve_sensor_def("big5_full_pipeline")
    assert isinstance(sensor, dg.AutomationConditionSensorDefinition)
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    graph = defs.resolve_asset_graph()
    for key in graph.materializable_asset_keys:
        assert graph.get(key).automation_condition is not None, key

    def materialize_requested(instance, result):
        for name, partitions in _requested(defs, result).items():
            for partition in partitions:
                instance.report_runless_asset_event(
                    dg.AssetMaterialization(name, partition=partition)
                )

    with dg.DagsterInstance.ephemeral() as instance:
        # An empty instance: the roots and what follows them within one run (the same
        # partitions definition, dependencies requested in the same tick) come first...
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        requested = _requested(defs, first)
        roots = {"psychgenerator_posts", "soda_scenarios", "personality_inventories"}
        assert roots | {"reasoning_tasks", "trait_classifier", "scenario_openers"} <= set(requested)
        # ... and nothing that needs a trait expert yet.
        assert not {"trait_experts", "big5_chat_replies", "big5_report"} & set(requested)

        # Done: the experts come next, every trait; the replies wait for them.
        materialize_requested(instance, first)
        second = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=first.cursor
        )
        requested = _requested(defs, second)
        assert requested["trait_experts"] == set(TRAITS)
        assert "big5_chat_replies" not in requested
        assert not roots & set(requested)  # done, not requested again

        # A dependency updated: what depends on it is requested again.
        materialize_requested(instance, second)
        third = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=second.cursor
        )
        assert _requested(defs, third)["big5_chat_replies"] == {p.key for p in PERSONAS}
        instance.report_runless_asset_event(dg.AssetMaterialization("soda_scenarios"))
        fourth = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=third.cursor
        )
        assert "scenario_openers" in _requested(defs, fourth)


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
