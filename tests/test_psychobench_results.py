"""Reading PsychoBench result CSVs and reproducing its per-category statistics."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from big5_dagster.lib.personality.inventory import InventoryError
from big5_dagster.lib.personality.psychobench import load_psychobench_questionnaire
from big5_dagster.lib.personality.psychobench_results import (
    PsychoBenchResultsError,
    read_psychobench_results,
    score_psychobench,
)

QUESTIONNAIRE = {
    "name": "TOY",
    "questions": {"1": "I plan ahead.", "2": "I expect the worst.", "3": "I like people.", "4": "I am calm."},
    "inner_setting": "You are a helpful assistant who can only reply numbers from 1 to 5 in every statement.",
    "prompt": "You can only reply numbers from 1 to 5 in the following statements.",
    "scale": 6,
    "reverse": [2],
    "categories": [
        {"cat_name": "A", "cat_questions": [1, 2], "crowd": []},
        {"cat_name": "B", "cat_questions": [3, 4], "crowd": []},
        {"cat_name": "C", "compute_mode": "SUM", "cat_questions": [1, 3], "crowd": []},
        {"cat_name": "D", "compute_mode": "SUM", "cat_questions": [2, 4], "crowd": []},
    ],
}  # fmt: skip

PROMPT = "Prompt: You can only reply numbers from 1 to 5 in the following statements."
# As generate_testfile writes it and example_generator fills it: block 0 in question order,
# block 1 shuffled (3, 1, 4, 2); pandas renamed the repeated prompt header to '....1'.
HEADER = [
    PROMPT,
    "order-0",
    "shuffle0-test0",
    "shuffle0-test1",
    PROMPT + ".1",
    "order-1",
    "shuffle1-test0",
]
ROWS = [
    ["1. I plan ahead.", "1", "4", "5", "1. I like people.", "3", "2"],
    ["2. I expect the worst.", "2", "2", "1", "2. I plan ahead.", "1", "3"],
    ["3. I like people.", "3", " 5", "3", "3. I am calm.", "4", "4"],
    ["4. I am calm.", "4", "3", "maybe", "4. I expect the worst.", "2", "4"],
]  # fmt: skip


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def questionnaire(tmp_path: Path):
    path = tmp_path / "questionnaires.json"
    path.write_text(json.dumps([QUESTIONNAIRE]))
    return load_psychobench_questionnaire(path, "TOY")


def test_reads_the_psychobench_layout(tmp_path: Path) -> None:
    results = read_psychobench_results(_write_csv(tmp_path / "r.csv", HEADER, ROWS))
    assert len(results) == 4 * 3
    assert list(results["run"].unique()) == ["shuffle0-test0", "shuffle0-test1", "shuffle1-test0"]
    shuffled = results[results["run"] == "shuffle1-test0"]
    assert shuffled["item_number"].tolist() == [3, 1, 4, 2]
    assert shuffled["item_text"].tolist() == [
        "I like people.", "I plan ahead.", "I am calm.", "I expect the worst.",
    ]  # fmt: skip
    assert shuffled["answer"].tolist() == [2, 3, 4, 4]
    assert set(shuffled["order_column"]) == {"order-1"} and set(shuffled["block"]) == {1}
    bad = results[results["parse_status"] != "ok"]
    assert bad[["run", "item_number", "raw", "parse_status", "line"]].values.tolist() == [
        ["shuffle0-test1", 4, "maybe", "no_number", 5]
    ]


def test_scores_reproduce_hand_computed_means_and_sds(tmp_path: Path, questionnaire) -> None:
    results = read_psychobench_results(_write_csv(tmp_path / "r.csv", HEADER, ROWS))
    scores = score_psychobench(results, questionnaire)
    # Keyed answers per run (item 2 reversed as 6 - x):
    #   shuffle0-test0: 1=4, 2=6-2=4, 3=5, 4=3
    #   shuffle0-test1: 1=5, 2=6-1=5, 3=3, 4=unparsed
    #   shuffle1-test0: 1=3, 2=6-4=2, 3=2, 4=4
    # A (AVG 1,2): 4, 5, 2.5       -> mean 23/6, sample variance 19/12
    # B (AVG 3,4): 4, 3 (3 alone), 3 -> mean 10/3, sample variance 1/3
    # C (SUM 1,3): 9, 8, 5         -> mean 22/3, sample variance 13/3
    # D (SUM 2,4): 7, (partial sum dropped), 6 -> mean 6.5, sample variance 1/2
    assert scores["A"]["mean"] == pytest.approx(23 / 6)
    assert scores["A"]["sd"] == pytest.approx(math.sqrt(19 / 12))
    assert (scores["A"]["n_runs"], scores["A"]["n_unparsed"]) == (3, 0)
    assert scores["B"]["mean"] == pytest.approx(10 / 3)
    assert scores["B"]["sd"] == pytest.approx(math.sqrt(1 / 3))
    assert (scores["B"]["n_runs"], scores["B"]["n_unparsed"]) == (3, 1)
    assert scores["C"]["mean"] == pytest.approx(22 / 3)
    assert scores["C"]["sd"] == pytest.approx(math.sqrt(13 / 3))
    assert scores["D"]["mean"] == pytest.approx(6.5)
    assert scores["D"]["sd"] == pytest.approx(math.sqrt(0.5))
    assert (scores["D"]["n_runs"], scores["D"]["n_runs_total"], scores["D"]["n_unparsed"]) == (
        2,
        3,
        1,
    )


def test_out_of_range_and_empty_answers_are_unparsed(tmp_path: Path, questionnaire) -> None:
    header = [PROMPT, "order-1", "shuffle0-test0", "shuffle0-test1"]  # early 1-based naming
    rows = [
        ["1. I plan ahead.", "1", "7", "4"],
        ["2. I expect the worst.", "2", "", "2"],
        ["3. I like people.", "3", "3", "5"],
        ["4. I am calm.", "4", "3.5", "5"],
    ]
    results = read_psychobench_results(_write_csv(tmp_path / "r.csv", header, rows))
    assert results["parse_status"].tolist()[:4] == ["ok", "empty", "ok", "not_integer"]
    scores = score_psychobench(results, questionnaire)
    # Run 0 answered nothing usable in A (7 is off the 1..5 scale): only run 1 scores, 4 and 6-2.
    assert (scores["A"]["n_runs"], scores["A"]["n_unparsed"]) == (1, 2)
    assert scores["A"]["mean"] == 4.0 and math.isnan(scores["A"]["sd"])
    assert scores["B"]["mean"] == pytest.approx((3 + 5) / 2)


@pytest.mark.parametrize(
    ("header", "rows", "message"),
    [
        (["Prompt: x", "shuffle0-test0"], [["1. a", "3"]], r"line 1: no column header starts with 'order'"),
        (["order-0", "shuffle0-test0"], [["1", "3"]], r"line 1, column 1 \('order-0'\)"),
        ([PROMPT, "order-0", "shuffle0-test0"], [["1. a", "1", "3"], ["2. b", "2"]], r"line 3: 2 fields"),
        ([PROMPT, "order-0", "shuffle0-test0"], [["1. a", "one", "3"]], r"line 2, column 2 \('order-0'\): 'one'"),
        ([PROMPT, "order-0", "t"], [["1. a", "1", "3"], ["2. b", "1", "3"]], r"line 3, column 2 .*question 1 already"),
        ([PROMPT, "order-0", "t", "t"], [["1. a", "1", "3", "3"]], r"column 4: answer column 't' repeats column 3"),
    ],
)  # fmt: skip
def test_malformed_files_name_file_line_and_column(tmp_path: Path, header, rows, message) -> None:
    path = _write_csv(tmp_path / "bad.csv", header, rows)
    with pytest.raises(PsychoBenchResultsError, match=message) as err:
        read_psychobench_results(path)
    assert str(path) in str(err.value)


def test_missing_file_and_unknown_question(tmp_path: Path, questionnaire) -> None:
    with pytest.raises(PsychoBenchResultsError, match="cannot read PsychoBench result file"):
        read_psychobench_results(tmp_path / "absent.csv")
    path = _write_csv(tmp_path / "r.csv", [PROMPT, "order-0", "t0"], [["1. x", "9", "3"]])
    with pytest.raises(
        InventoryError, match=r"results line 2: question 9 is not in questionnaire 'TOY'"
    ):
        score_psychobench(read_psychobench_results(path), questionnaire)


def _materializations(asset: str):
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        return instance.fetch_materializations(dg.AssetKey(asset), limit=10).records


def test_import_command_materializes_the_asset_with_lineage(tmp_path: Path, capsys) -> None:
    """`big5 import-psychobench` on the hand-computed file above: it materializes
    psychobench_results (a Dagster run with a lineage row), prints the scores, and a re-import
    replaces the file's rows."""
    import duckdb

    from big5_dagster import cli, paths

    results = _write_csv(tmp_path / "r.csv", HEADER, ROWS)
    questionnaires = tmp_path / "q.json"
    questionnaires.write_text(json.dumps([QUESTIONNAIRE]))
    argv = ["import-psychobench", str(results), "--questionnaire", str(questionnaires)]
    assert cli.main([*argv, "--name", "TOY", "--format", "json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"A", "B", "C", "D"}
    assert printed["A"]["mean"] == pytest.approx(23 / 6)
    assert printed["A"]["sd"] == pytest.approx(math.sqrt(19 / 12))
    assert printed["B"]["n_unparsed"] == 1 and printed["A"]["n_runs"] == 3

    assert cli.main([*argv, "--name", "TOY", "--format", "json"]) == 0  # re-import: no duplicates
    warehouse = paths.warehouse_path(paths.data_dir())
    with duckdb.connect(str(warehouse), read_only=True) as con:
        n_rows = con.execute("SELECT count(*) FROM psychobench_answers").fetchone()[0]
        n_categories = con.execute("SELECT count(*) FROM psychobench_scores").fetchone()[0]
        lineage = con.execute(
            "SELECT run_id, data_version, config FROM lineage.materializations "
            "WHERE asset = 'psychobench_results' ORDER BY ended_at"
        ).fetchall()
    assert n_rows == len(read_psychobench_results(results)) and n_categories == 4
    # Each import is a Dagster materialization whose lineage row names the file it read.
    events = _materializations("psychobench_results")
    assert len(events) == len(lineage) == 2
    assert {e.run_id for e in events} == {run for run, _, _ in lineage}
    (config,) = {c for _, _, c in lineage}
    assert json.loads(config)["imports"] == [
        {"results": str(results), "questionnaire": str(questionnaires), "name": "TOY"}
    ]
    # The same file gives the same data version: the import is a function of its files.
    assert lineage[0][1] == lineage[1][1]


def test_import_command_fails_with_the_file_and_line_and_keeps_the_tables(
    tmp_path: Path, capsys
) -> None:
    from big5_dagster import cli, paths
    from big5_dagster.resources.warehouse import Warehouse

    questionnaires = tmp_path / "q.json"
    questionnaires.write_text(json.dumps([QUESTIONNAIRE]))
    good = _write_csv(tmp_path / "r.csv", HEADER, ROWS)
    assert cli.main(["import-psychobench", str(good), "--questionnaire", str(questionnaires),
                     "--name", "TOY"]) == 0  # fmt: skip
    bad = _write_csv(tmp_path / "bad.csv", [PROMPT, "order-0", "t0"], [["1. x", "one", "3"]])
    capsys.readouterr()
    argv = ["import-psychobench", str(bad), "--questionnaire", str(questionnaires), "--name", "TOY"]
    assert cli.main(argv) == 1
    error = capsys.readouterr().err
    assert f"{bad}: line 2, column 2 ('order-0'): 'one' is not a question number" in error
    warehouse = Warehouse(path=str(paths.warehouse_path(paths.data_dir())))
    sources = warehouse.query("SELECT DISTINCT source_file FROM psychobench_answers")
    assert sources.source_file.tolist() == [str(good.resolve())]


def test_configured_files_are_imported_by_the_asset(tmp_path: Path, monkeypatch) -> None:
    """psychobench_results is in the graph and imports what the settings name; the command
    adds its file to the configured ones."""
    import dagster as dg
    import yaml

    from big5_dagster import cli
    from big5_dagster.config import load_settings
    from big5_dagster.definitions import build_definitions
    from big5_dagster.resources.warehouse import Warehouse

    questionnaires = tmp_path / "q.json"
    questionnaires.write_text(json.dumps([QUESTIONNAIRE]))
    first = _write_csv(tmp_path / "first.csv", HEADER, ROWS)
    second = _write_csv(tmp_path / "second.csv", HEADER, ROWS)
    config = tmp_path / "settings.yaml"
    entry = {"results": str(first), "questionnaire": str(questionnaires), "name": "TOY"}
    config.write_text(yaml.safe_dump({"extends": "tiny", "psychobench": {"imports": [entry]}}))
    monkeypatch.setenv("BIG5_CONFIG", str(config))
    defs = build_definitions(load_settings(), tmp_path / "data")
    asset = defs.get_assets_def("psychobench_results")
    assert asset.group_names_by_key[dg.AssetKey("psychobench_results")] == "evaluation"
    with dg.DagsterInstance.get() as instance:
        assert dg.materialize([asset], instance=instance, resources=defs.resources).success
    warehouse = defs.resources["warehouse"]
    stored = warehouse.query("SELECT DISTINCT source_file FROM psychobench_scores")
    assert stored.source_file.tolist() == [str(first.resolve())]

    monkeypatch.setenv("BIG5_DATA_DIR", str(tmp_path / "data"))
    assert cli.main(["import-psychobench", str(second), "--questionnaire", str(questionnaires),
                     "--name", "TOY", "--format", "table"]) == 0  # fmt: skip
    stored = Warehouse(path=warehouse.path).query(
        "SELECT DISTINCT source_file FROM psychobench_scores ORDER BY 1"
    )
    assert stored.source_file.tolist() == sorted([str(first.resolve()), str(second.resolve())])
