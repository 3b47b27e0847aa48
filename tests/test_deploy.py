"""The scaling-out examples in deploy/ validate against Dagster's schemas and executors load."""

import importlib
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml
from dagster._config import validate_config
from dagster._core.instance.config import dagster_instance_config

from big5_dagster.config import load_settings, settings_from_mapping
from big5_dagster.dagster_home import instance_settings
from big5_dagster.definitions import build_definitions, executor_for
from big5_dagster.defs.factory import REMOTE_STEP_RETRY_POLICY
from big5_dagster.defs.tracking import previous_attempt_lost
from big5_dagster.defs.warehouse_load import LOAD_JOB, LOAD_SENSOR, LOAD_TAG, STAGED_VERSION_TAG
from big5_dagster.resources.warehouse import Warehouse

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
INSTANCES = sorted(DEPLOY.glob("*/dagster.yaml"))


def test_every_example_is_found():
    assert {p.parent.name for p in INSTANCES} == {"postgres", "kubernetes", "celery"}


@pytest.mark.parametrize("path", INSTANCES, ids=lambda p: p.parent.name)
def test_instance_file_validates_with_its_classes(path, monkeypatch):
    for var in (
        "DAGSTER_PG_HOST",
        "DAGSTER_PG_USERNAME",
        "DAGSTER_PG_PASSWORD",
        "DAGSTER_PG_DB",
        "BIG5_IMAGE",
    ):
        monkeypatch.setenv(var, "x")
    monkeypatch.setenv("DAGSTER_PG_PORT", "5433")
    # the instance schema (storage fields included) is checked here; it raises on an error
    config, _ = dagster_instance_config(str(path.parent))
    raw = yaml.safe_load(path.read_text())
    assert "postgres" in raw["storage"]
    # each configurable class imports and accepts its config (no connection is made)
    for key in ("run_launcher", "run_coordinator"):
        if key in raw:
            entry = raw[key]
            cls = getattr(importlib.import_module(entry["module"]), entry["class"])
            result = validate_config(cls.config_type(), entry.get("config", {}))
            assert result.success, result.errors
    postgres_db = config["storage"]["postgres"]["postgres_db"]
    assert postgres_db["port"] == {"env": "DAGSTER_PG_PORT"}
    # a bare postgresql:// would make SQLAlchemy 2.1 look for psycopg 3, which is not installed
    assert postgres_db["scheme"] == "postgresql+psycopg2"
    # library logs reach the run log there as in local runs
    assert config["python_logs"] == instance_settings()["python_logs"]


@pytest.mark.parametrize("name", ["in_process", "multiprocess", "k8s", "celery"])
def test_executors_load_into_the_definitions(name, tiny_backend, tmp_path):
    settings = settings_from_mapping({"executor": name})
    defs = build_definitions(settings, tmp_path, resources={"model": tiny_backend})
    dg.Definitions.validate_loadable(defs)
    assert defs.executor is executor_for(name)
    # Steps on other machines are retried (a lost machine is ordinary); local ones are not.
    policies = {a.op.name: a.op.retry_policy for a in defs.assets}
    assert "sql_models" in policies and len(policies) > 20
    expected = REMOTE_STEP_RETRY_POLICY if name in ("k8s", "celery") else None
    assert set(policies.values()) == {expected}, policies


START, RESTART = dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_RESTARTED
RETRY, SUCCESS = dg.DagsterEventType.STEP_UP_FOR_RETRY, dg.DagsterEventType.STEP_SUCCESS


@pytest.mark.parametrize(
    "kinds,lost",
    [
        ([START], False),  # a first attempt
        ([START, START], True),  # redelivered after its worker died
        ([START, RETRY, RESTART], False),  # an ordinary retry
        ([START, START, RETRY, RESTART], False),  # the retry of a lost attempt
        ([START, RETRY, RESTART, RESTART], True),  # the retry was lost in its turn
        ([START, SUCCESS, START], False),  # a finished step began again (resumed run)
    ],
)
def test_a_lost_attempt_is_one_that_began_and_never_ended(kinds, lost):
    assert previous_attempt_lost(kinds) is lost


@pytest.mark.parametrize("folder,executor", [("kubernetes", "k8s"), ("celery", "celery")])
def test_run_config_examples_match_their_executor(folder, executor):
    run_config = yaml.safe_load((DEPLOY / folder / "run_config.yaml").read_text())
    schema = executor_for(executor).config_schema
    result = validate_config(schema.config_type, run_config["execution"]["config"])
    assert result.success, result.errors
    assert load_settings().executor == "multiprocess"  # the default stays local


def test_staged_warehouse_brings_its_loader_and_sensor(tiny_backend, tmp_path):
    direct = build_definitions(settings_from_mapping({}), tmp_path, {"model": tiny_backend})
    assert LOAD_JOB not in {j.name for j in direct.jobs or []}
    settings = settings_from_mapping({"executor": "celery", "warehouse_writes": "staged"})
    defs = build_definitions(settings, tmp_path, resources={"model": tiny_backend})
    dg.Definitions.validate_loadable(defs)
    job = defs.get_job_def(LOAD_JOB)
    assert job.executor_def is dg.in_process_executor  # on the Dagster host, never a worker
    assert job.tags[LOAD_TAG] == "load"
    sensor = defs.get_sensor_def(LOAD_SENSOR)
    warehouse = defs.resources["warehouse"]

    with dg.DagsterInstance.ephemeral() as instance:
        context = dg.build_sensor_context(instance=instance, resources={"warehouse": warehouse})
        assert isinstance(sensor(context), dg.SkipReason)  # nothing staged
        warehouse.replace_table("t", pd.DataFrame({"x": [1]}))
        request = sensor(context)
        assert isinstance(request, dg.RunRequest)
        assert request.tags[STAGED_VERSION_TAG] == warehouse.staged_version()
        assert sensor(context).tags == request.tags  # not loaded yet
        # A load that fails (here: the warehouse path is a folder) is not restarted on the
        # same files ...
        broken = Warehouse(path=str(tmp_path), writes="staged", staged_dir=warehouse.staged_dir)
        failed = job.execute_in_process(
            instance=instance,
            tags=request.tags,
            resources={"warehouse": broken},
            raise_on_error=False,
        )
        assert not failed.success
        skip = sensor(context)
        assert isinstance(skip, dg.SkipReason) and failed.run_id in skip.skip_message
        # ... a new write tries again, and a successful load leaves nothing to do.
        warehouse.replace_table("t", pd.DataFrame({"x": [1, 2]}))
        assert isinstance(sensor(context), dg.RunRequest)
        warehouse.load_staged()
        assert warehouse.loaded_version() == warehouse.staged_version()
        assert isinstance(sensor(context), dg.SkipReason)  # the warehouse holds it all
        warehouse.replace_table("t", pd.DataFrame({"x": [2]}))
        assert isinstance(sensor(context), dg.RunRequest)  # a new write: load again
