"""The single writer of a staged warehouse (``warehouse_writes: staged``).

Steps on any machine write their tables and lineage as files under the shared data folder;
the ``warehouse_load`` job replays new and changed files into the DuckDB warehouse. It runs
in the run worker on the Dagster host (in-process executor: never on a Celery or
Kubernetes worker), and the deploy/ instance files allow one run tagged ``big5/warehouse``
at a time, so there is one writer in the whole deployment. The sensor starts a load when
the staged files differ from those the last successful load started from (so a load made
by hand or by ``big5 demo`` counts), unless the last load failed on these very files: a
new write, or a load launched by hand, tries again (a failing load is not restarted
every tick).
"""

import dagster as dg

from big5_dagster.resources.warehouse import Warehouse

LOAD_JOB = "warehouse_load"
LOAD_SENSOR = "warehouse_load_sensor"
LOAD_TAG = "big5/warehouse"
"""Run tag of the loader; the run queue limits it to one run at a time (deploy/*)."""
STAGED_VERSION_TAG = "big5/staged_version"
"""Run tag of a load the sensor requested: the staged version it saw."""
ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


@dg.op
def load_staged_files(context: dg.OpExecutionContext, warehouse: Warehouse) -> None:
    """Apply every new or changed staged file to the warehouse, in one transaction."""
    report = warehouse.load_staged()
    context.log.info(
        f"loaded {report.files_applied} staged files ({report.files_unchanged} unchanged) "
        f"into {warehouse.path}: {', '.join(report.tables) or 'no table changed'}; "
        f"staged version {warehouse.loaded_version()}"
    )


@dg.job(
    name=LOAD_JOB,
    executor_def=dg.in_process_executor,
    tags={LOAD_TAG: "load"},
    description="Load the staged table and lineage files into the DuckDB warehouse (its "
    "only writer when warehouse_writes is 'staged').",
)
def warehouse_load_job() -> None:
    load_staged_files()


@dg.sensor(
    name=LOAD_SENSOR,
    job=warehouse_load_job,
    minimum_interval_seconds=10,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Start warehouse_load when the staged files differ from those the last "
    "successful load started from, no load is queued or running and the last load did not "
    "fail on these same files.",
)
def warehouse_load_sensor(context: dg.SensorEvaluationContext, warehouse: Warehouse):
    version = warehouse.staged_version()
    if version is None:
        return dg.SkipReason("nothing is staged yet")
    if version == warehouse.loaded_version():
        return dg.SkipReason("the warehouse holds every staged file")
    active = context.instance.get_runs(
        filters=dg.RunsFilter(job_name=LOAD_JOB, statuses=ACTIVE), limit=1
    )
    if active:
        return dg.SkipReason(f"load {active[0].run_id} is queued or running")
    last = context.instance.get_runs(filters=dg.RunsFilter(job_name=LOAD_JOB), limit=1)
    if (
        last
        and last[0].status == dg.DagsterRunStatus.FAILURE
        and last[0].tags.get(STAGED_VERSION_TAG) == version
    ):
        return dg.SkipReason(
            f"load {last[0].run_id} of these staged files failed: a new write or a load "
            "launched by hand tries again"
        )
    return dg.RunRequest(tags={STAGED_VERSION_TAG: version})
