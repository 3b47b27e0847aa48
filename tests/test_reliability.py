"""Persona partitions in parallel processes, a run killed mid-partition, a killed writer.

The upstream assets are built once per module, in-process and small, on the tiny random
model; the partitions under test then run as `dagster asset materialize` processes on the
same data dir and DAGSTER_HOME, configured by a BIG5_CONFIG file (as a user runs them).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest
from filelock import FileLock, Timeout
from ui_helpers import (
    N_SCENARIOS,
    REPO_ROOT,
    VENV_BIN,
    log_tail,
    materialize_dialogue_inputs,
    pipeline_env,
    start_group,
    stop_group,
    write_dagster_home,
    write_small_config,
)

from big5_dagster import paths
from big5_dagster.resources.warehouse import Warehouse

TRAITS_BUILT = ("openness", "conscientiousness")
PARALLEL_PERSONAS = (
    "openness_high",
    "openness_low",
    "conscientiousness_high",
    "conscientiousness_low",
)
KILLED_PERSONA = "conscientiousness_high"
# What a second writer hitting DuckDB's (or Dagster's SQLite) lock would print.
LOCK_ERRORS = (
    "Could not set lock on file",
    "Conflicting lock is held",
    "database is locked",
    "could not be acquired",
)


@dataclass(frozen=True)
class Prepared:
    data: Path
    home: Path
    env: dict[str, str]

    @property
    def warehouse(self) -> Path:
        return paths.warehouse_path(self.data)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_model_dir: Path) -> Prepared:
    """Corpora, openers and two traits' experts, small, in one data dir and instance."""
    root = tmp_path_factory.mktemp("reliability")
    data = root / "data"
    home = write_dagster_home(root / "dagster_home")
    config = write_small_config(root / "small.yaml", tiny_model_dir)
    materialize_dialogue_inputs(data, home, config, TRAITS_BUILT)
    return Prepared(data=data, home=home, env=pipeline_env(data, home, config))


def materialize_command(persona: str, run_config: dict | None = None) -> list[str]:
    command = [
        str(VENV_BIN / "dagster"),
        "asset",
        "materialize",
        "-m",
        "big5_dagster.definitions",
        "--select",
        "big5_chat_replies",
        "--partition",
        persona,
    ]
    if run_config:
        command += ["--config-json", json.dumps(run_config)]
    return command


def scenario_ids(prepared: Prepared) -> list[str]:
    scenarios = pd.read_parquet(prepared.data / "soda_scenarios" / "all" / "scenarios.parquet")
    return sorted(scenarios.scenario_id)


def warehouse_reply_counts(prepared: Prepared, persona: str) -> tuple[int, int, list[str]]:
    """(rows, distinct scenarios, scenario ids) of ``persona`` in the warehouse table."""
    with duckdb.connect(str(prepared.warehouse), read_only=True) as con:
        rows = con.execute(
            "SELECT scenario_id FROM big5_chat_replies WHERE persona = ? ORDER BY scenario_id",
            [persona],
        ).fetchall()
    ids = [r[0] for r in rows]
    return len(ids), len(set(ids)), ids


def test_four_persona_partitions_in_parallel_processes(prepared, tmp_path, tiny_model_dir):
    # Four runs at once, each executing its step with the multiprocess executor (a child
    # process per step), all writing one warehouse and one Dagster instance.
    config = write_small_config(tmp_path / "multiprocess.yaml", tiny_model_dir, "multiprocess")
    env = {**prepared.env, "BIG5_CONFIG": str(config)}  # one torch thread per process
    logs = {p: tmp_path / f"{p}.log" for p in PARALLEL_PERSONAS}
    processes = {p: start_group(materialize_command(p), env, logs[p]) for p in PARALLEL_PERSONAS}
    try:
        for process in processes.values():
            process.wait(timeout=600)
    finally:
        for process in processes.values():
            stop_group(process, grace_s=1)

    for persona, process in processes.items():
        output = logs[persona].read_text(errors="replace")
        assert process.returncode == 0, f"{persona} failed:\n{output[-6000:]}"
        for marker in LOCK_ERRORS:
            assert marker not in output, f"{persona}: lock error {marker!r}:\n{output[-6000:]}"

    expected = scenario_ids(prepared)
    for persona in PARALLEL_PERSONAS:
        rows, distinct, ids = warehouse_reply_counts(prepared, persona)
        assert (rows, distinct) == (N_SCENARIOS, N_SCENARIOS), persona
        assert ids == expected
        replies = pd.read_parquet(prepared.data / "big5_chat_replies" / persona / "replies.parquet")
        assert sorted(replies.scenario_id) == expected
        assert not list((prepared.data / "big5_chat_replies" / persona).glob(".chunks-*"))

    # Every process recorded its run in the one SQLite instance and its lineage row in
    # the warehouse.
    with dg.DagsterInstance.from_config(str(prepared.home)) as instance:
        for persona in PARALLEL_PERSONAS:
            runs = instance.get_runs(
                filters=dg.RunsFilter(tags={"dagster/partition": persona}), limit=1
            )
            assert runs and runs[0].status == dg.DagsterRunStatus.SUCCESS, persona
    with duckdb.connect(str(prepared.warehouse), read_only=True) as con:
        recorded = con.execute(
            "SELECT partition, count(DISTINCT run_id) FROM lineage.materializations "
            "WHERE asset = 'big5_chat_replies' GROUP BY partition"
        ).fetchall()
    assert {p for p, _ in recorded} >= set(PARALLEL_PERSONAS)


# Several slow batches, so that the kill lands between two of them.
SLOW_REPLIES = {"ops": {"big5_chat_replies": {"config": {"batch_size": 1, "max_new_tokens": 32}}}}


def test_killed_partition_resumes_without_redoing_finished_batches(prepared, tmp_path):
    persona = KILLED_PERSONA
    folder = prepared.data / "big5_chat_replies" / persona
    command = materialize_command(persona, SLOW_REPLIES)
    log = tmp_path / "killed.log"
    process = start_group(command, prepared.env, log)
    try:
        deadline = time.monotonic() + 600
        while not list(folder.glob(".chunks-*/chunk-*.parquet")):
            assert process.poll() is None, f"ended before a batch was written:\n{log_tail(log)}"
            assert time.monotonic() < deadline, f"no batch written in time:\n{log_tail(log)}"
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        stop_group(process, grace_s=0)
    assert process.returncode == -signal.SIGKILL

    (chunk_dir,) = folder.glob(".chunks-*")
    finished_before_kill = len(list(chunk_dir.glob("chunk-*.parquet")))
    assert 1 <= finished_before_kill < N_SCENARIOS, log_tail(log)
    # The killed process held no lock that outlives it: the warehouse opens at once.
    Warehouse(path=str(prepared.warehouse), lock_timeout_s=5).query("SELECT 1")

    rerun = subprocess.run(
        command, env=prepared.env, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT
    )
    output = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, output[-6000:]
    assert f"resuming: {finished_before_kill} of {N_SCENARIOS} batches already done" in output, (
        output[-6000:]
    )
    # The progress lines count the batches this run generated: only the missing ones.
    progress = re.findall(rf"{persona} replies: (\d+)/(\d+)", output)
    assert progress and {int(total) for _, total in progress} == {
        N_SCENARIOS - finished_before_kill
    }, output[-6000:]

    assert not list(folder.glob(".chunks-*"))
    expected = scenario_ids(prepared)
    replies = pd.read_parquet(folder / "replies.parquet")
    assert sorted(replies.scenario_id) == expected
    rows, distinct, ids = warehouse_reply_counts(prepared, persona)
    assert (rows, distinct) == (N_SCENARIOS, N_SCENARIOS)
    assert ids == expected


HOLD_THE_WAREHOUSE = """
import sys, time
from big5_dagster.resources.warehouse import Warehouse

with Warehouse(path=sys.argv[1]).connect() as con:
    con.execute("CREATE TABLE written_before_kill AS SELECT 42 AS answer")
    print("holding", flush=True)
    time.sleep(600)
"""


def test_a_writer_killed_while_holding_the_warehouse_blocks_no_one(tmp_path):
    db = tmp_path / "warehouse.duckdb"
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_WAREHOUSE, str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        line = process.stdout.readline().strip()
        assert line == "holding", process.stderr.read() if process.poll() is not None else line
        with pytest.raises(Timeout):  # the lock really is held
            FileLock(str(db) + ".lock", timeout=0.2).acquire()
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        stop_group(process, grace_s=0)
        process.stdout.close()
        process.stderr.close()

    warehouse = Warehouse(path=str(db), lock_timeout_s=5)
    assert warehouse.query("SELECT answer FROM written_before_kill").answer.tolist() == [42]
