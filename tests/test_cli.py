"""The `big5` command's conventions, its lineage printout, and the run log's library logs."""

import json
import logging
import re
import subprocess
import sys

import dagster as dg
import pytest
from test_warehouse import _record as lineage_record

from big5_dagster import cli, paths
from big5_dagster.dagster_home import LIBRARY_LOGGERS, missing_log_settings
from big5_dagster.lib.common.lineage import InputVersion
from big5_dagster.resources.warehouse import Warehouse


def test_version_prints_the_installed_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"big5 {version('big5-dagster')}"


def test_top_level_help_lists_every_subcommand_with_its_help():
    parser = cli.build_parser()
    text = parser.format_help()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, subparser in sub.choices.items():
        (entry,) = [a for a in sub._choices_actions if a.dest == name]
        assert entry.help, f"subcommand {name} has no help"
        assert re.search(rf"^\s+{re.escape(name)}\s", text, re.M), f"{name} not listed:\n{text}"
        assert subparser.prog == f"big5 {name}"


def test_every_bench_option_has_help():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    bench = sub.choices["bench"]
    benchmarks = next(a for a in bench._actions if a.dest == "benchmark")
    assert set(benchmarks.choices) == {"all", "dexperts", "dtypes", "training", "inventory"}
    for name, benchmark in benchmarks.choices.items():
        for action in benchmark._actions:
            if action.dest != "help":
                assert action.help, f"big5 bench {name} {action.option_strings}: no help text"


def test_settings_into_a_closed_pipe_ends_without_a_traceback():
    # The reader has gone before the command writes (as `big5 settings | head` after head
    # exits): the command ends quietly instead of printing a BrokenPipeError traceback.
    proc = subprocess.Popen(
        [sys.executable, "-m", "big5_dagster.cli", "settings"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()
    _, stderr = proc.communicate(timeout=120)
    assert b"Traceback" not in stderr and b"BrokenPipeError" not in stderr, stderr.decode()
    assert proc.returncode == 1


def _record(asset, version, inputs=(), partition=None, minute=0):
    return lineage_record(asset, version, inputs, partition, run=f"run{minute:05d}", minute=minute)


@pytest.fixture
def shared_upstream_lineage():
    """scores <- replies[a], replies[b]; each reply <- experts <- posts; replies <- scenarios."""
    warehouse = Warehouse(path=str(paths.warehouse_path(paths.data_dir())))
    warehouse.record_lineage(_record("posts", "p1"))
    warehouse.record_lineage(_record("scenarios", "s1"))
    warehouse.record_lineage(
        _record("experts", "e1", [InputVersion("posts", None, "p1")], minute=1)
    )
    for n, persona in enumerate(("a", "b")):
        warehouse.record_lineage(
            _record(
                "replies",
                f"r{persona}",
                [InputVersion("experts", None, "e1"), InputVersion("scenarios", None, "s1")],
                partition=persona,
                minute=2 + n,
            )
        )
    warehouse.record_lineage(
        _record(
            "scores",
            "x1",
            [InputVersion("replies", "a", "ra"), InputVersion("replies", "b", "rb")],
            minute=5,
        )
    )
    return warehouse


def test_lineage_prints_each_node_once_and_marks_repeats(shared_upstream_lineage, capsys):
    assert cli.main(["lineage", "scores"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("scores  data=x1  ")
    described = [line for line in lines if "code=" in line]
    names = [re.sub(r"^[│├└─\s]*", "", line).split("  ")[0] for line in described]
    # every materialization described exactly once
    assert sorted(names) == sorted(
        ["scores", "replies[a]", "replies[b]", "experts", "posts", "scenarios"]
    )
    repeats = [line for line in lines if "(repeat, shown above)" in line]
    assert len(repeats) == 2, "\n".join(lines)  # experts and scenarios under replies[b]
    assert {re.sub(r"^[│├└─\s]*", "", r).split("  ")[0] for r in repeats} == {
        "experts",
        "scenarios",
    }
    assert len(lines) == len(described) + len(repeats)


def test_lineage_depth_and_json(shared_upstream_lineage, capsys):
    assert cli.main(["lineage", "scores", "--depth", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert all("2 input(s) below --depth 1" in line for line in lines[1:])

    assert cli.main(["lineage", "scores", "--format", "json"]) == 0
    tree = json.loads(capsys.readouterr().out)
    assert (tree["asset"], tree["data_version"], tree["run_id"]) == ("scores", "x1", "run00005")
    first, second = tree["inputs"]
    assert (first["partition"], second["partition"]) == ("a", "b")
    experts = first["inputs"][0]
    assert experts["asset"] == "experts" and experts["inputs"][0]["asset"] == "posts"
    assert second["inputs"] == [
        {"asset": "experts", "partition": None, "data_version": "e1", "repeat": True},
        {"asset": "scenarios", "partition": None, "data_version": "s1", "repeat": True},
    ]

    assert cli.main(["lineage", "scores", "--format", "json", "--depth", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["inputs_hidden"] == 2


def test_library_logs_reach_the_run_log():
    """The instance file the project writes (conftest writes it like `big5 demo`) routes the
    libraries' logs into the Dagster run log at INFO."""
    home = paths.Path(dg.DagsterInstance.get().root_directory)
    assert missing_log_settings(home / "dagster.yaml") == []

    @dg.asset
    def chatty() -> None:
        for name in LIBRARY_LOGGERS:
            logging.getLogger(f"{name}.some_module").info(f"hello from {name}")

    with dg.DagsterInstance.get() as instance:
        result = dg.materialize([chatty], instance=instance)
        messages = [e.user_message for e in instance.all_logs(result.run_id)]
    for name in LIBRARY_LOGGERS:
        assert f"hello from {name}" in messages, name
