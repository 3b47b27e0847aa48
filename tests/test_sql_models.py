"""The dbt project in dbt_like_sql/ as Dagster assets: graph, content, checks, lineage."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest
from dagster_dbt import DbtProject
from filelock import FileLock

from big5_dagster import paths
from big5_dagster.config import load_settings
from big5_dagster.defs import corpora
from big5_dagster.defs.sql_models import (
    SqlModelsError,
    SqlModelTranslator,
    build_sql_model_assets,
    check_sources,
)
from big5_dagster.lib.traits import TRAITS
from big5_dagster.resources.artifacts import ArtifactStore
from big5_dagster.resources.dbt import dbt_resource
from big5_dagster.resources.warehouse import Warehouse
from big5_dagster.runner import outdated

PROJECT = Path(__file__).resolve().parents[1] / "dbt_like_sql"
STAGING = {"stg_psychgenerator_posts", "stg_soda_scenarios"}
SUMMARY = {"posts_trait_level_counts", "posts_text_length_stats", "scenario_stats"}
SQL_MODELS = STAGING | SUMMARY
SQL_KEYS = [dg.AssetKey(name) for name in sorted(SQL_MODELS)]

# (post_id, text, {trait: (z, level, split)}); traits not listed are the dropped middle third.
POSTS = [
    (
        "p1",
        "I love trying new ideas",
        {
            "openness": (1.5, "high", "train"),
            "conscientiousness": (-1.2, "low", "train"),
            "agreeableness": (0.9, "high", "test"),
            "neuroticism": (-1.0, "low", "train"),
        },
    ),
    (
        "p2",
        "  so  tired   today ",
        {
            "openness": (-1.1, "low", "train"),
            "extraversion": (-0.8, "low", "train"),
            "neuroticism": (1.3, "high", "train"),
        },
    ),
    (
        "p3",
        "Party tonight with everyone! Bring snacks and music",
        {
            "openness": (1.2, "high", "test"),
            "conscientiousness": (1.1, "high", "train"),
            "extraversion": (1.8, "high", "train"),
            "agreeableness": (-0.7, "low", "train"),
        },
    ),
    ("p4", "", {"openness": (0.9, "high", "train"), "extraversion": (-1.4, "low", "test")}),
]
SCENARIOS = [
    ("s1", "Alice lends Bob her car for the weekend.", "Alice", "Bob"),
    ("s2", "Bob forgets  Alice's birthday", "Bob", "Alice"),
    ("s3", "Carol wins a prize", "Carol", "Dana"),
]
SOURCE_VERSIONS = {"psychgenerator_posts": "posts-v1", "soda_scenarios": "scenarios-v1"}


def posts_frame() -> pd.DataFrame:
    rows = []
    for post_id, text, traits in POSTS:
        row: dict[str, object] = {"post_id": post_id, "text": text}
        for trait in TRAITS:
            z, level, split = traits.get(trait, (0.0, None, None))
            row |= {trait: z, f"{trait}_level": level, f"{trait}_split": split}
        rows.append(row)
    frame = pd.DataFrame(rows)
    for trait in TRAITS:  # a trait with no dropped post still has text-typed columns
        frame[[f"{trait}_level", f"{trait}_split"]] = frame[
            [f"{trait}_level", f"{trait}_split"]
        ].astype("string")
    return frame


def write_sources(warehouse: Warehouse, instance: dg.DagsterInstance) -> None:
    """The tables the corpora assets would write, with a data version for each in Dagster."""
    warehouse.replace_table("psychgenerator_posts", posts_frame())
    warehouse.replace_table(
        "soda_scenarios",
        pd.DataFrame(SCENARIOS, columns=["scenario_id", "narrative", "person_x", "person_y"]),
    )
    for asset, version in SOURCE_VERSIONS.items():
        instance.report_runless_asset_event(
            dg.AssetMaterialization(asset, tags={"dagster/data_version": version})
        )


def corpora_assets() -> list[dg.AssetsDefinition]:
    return corpora.build(load_settings()).assets


def sql_definitions(project_dir: Path, root: Path, lock_timeout_s: float = 900.0) -> dg.Definitions:
    """The corpora assets and the dbt models over a warehouse under ``root``."""
    warehouse_path = paths.warehouse_path(root)
    python_assets = corpora_assets()
    models = build_sql_model_assets(project_dir, warehouse_path, python_assets)
    return dg.Definitions(
        assets=[*python_assets, models],
        resources={
            "warehouse": Warehouse(path=str(warehouse_path), lock_timeout_s=lock_timeout_s),
            "dbt": dbt_resource(project_dir, warehouse_path),
            "store": ArtifactStore(root=str(root)),
        },
    )


def run_models(
    defs: dg.Definitions, instance: dg.DagsterInstance, keys: list[dg.AssetKey] = SQL_KEYS
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        defs.assets,
        selection=keys,
        instance=instance,
        resources=defs.resources,
        raise_on_error=False,
    )


@dataclass
class Built:
    root: Path
    defs: dg.Definitions
    instance: dg.DagsterInstance
    result: dg.ExecuteInProcessResult

    def query(self, sql: str) -> list[tuple]:
        with duckdb.connect(str(paths.warehouse_path(self.root)), read_only=True) as con:
            return con.execute(sql).fetchall()


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Built:
    """Every model built once by dagster-dbt over hand-made source tables."""
    root = tmp_path_factory.mktemp("sql_models")
    defs = sql_definitions(PROJECT, root)
    with dg.DagsterInstance.ephemeral() as instance:
        write_sources(Warehouse(path=str(paths.warehouse_path(root))), instance)
        result = run_models(defs, instance)
        assert result.success, result.all_events
        yield Built(root, defs, instance, result)


def manifest_nodes(resource_type: str) -> dict[str, dict]:
    project = DbtProject(PROJECT)
    manifest = json.loads(project.manifest_path.read_text())
    return {
        node["name"]: node
        for node in manifest["nodes"].values()
        if node["resource_type"] == resource_type
    }


# --- the graph ---------------------------------------------------------------------------


def test_models_hang_under_the_python_assets_that_write_their_sources() -> None:
    defs = sql_definitions(PROJECT, paths.data_dir())
    graph = defs.resolve_asset_graph()
    parents = {key.to_user_string(): graph.get(key).parent_keys for key in SQL_KEYS}
    assert parents == {
        "stg_psychgenerator_posts": {dg.AssetKey("psychgenerator_posts")},
        "stg_soda_scenarios": {dg.AssetKey("soda_scenarios")},
        "posts_trait_level_counts": {dg.AssetKey("stg_psychgenerator_posts")},
        "posts_text_length_stats": {dg.AssetKey("stg_psychgenerator_posts")},
        "scenario_stats": {dg.AssetKey("stg_soda_scenarios")},
    }
    (models,) = [a for a in defs.assets if dg.AssetKey("scenario_stats") in a.keys]
    assert models.op.pool == "warehouse"
    for key in SQL_KEYS:
        node = graph.get(key)
        assert node.group_name == "sql_models"
        assert {"dbt", "duckdb"} <= set(node.kinds)
        # the code version is the SQL itself: any edit to the file makes a new one
        path = PROJECT / manifest_nodes("model")[key.path[-1]]["original_file_path"]
        sql = path.read_text().strip()  # dbt strips the file
        assert node.code_version == hashlib.sha1(sql.encode()).hexdigest()


def test_dbt_tests_are_asset_checks_of_every_kind_on_staging_and_summary_models() -> None:
    defs = sql_definitions(PROJECT, paths.data_dir())
    checks = defs.resolve_asset_graph().asset_check_keys
    kinds_by_model: dict[str, set[str]] = {}
    for test in manifest_nodes("test").values():
        kind = test["test_metadata"]["name"]
        model = test["attached_node"].rsplit(".", 1)[-1]
        assert dg.AssetCheckKey(dg.AssetKey(model), test["name"]) in checks
        kinds_by_model.setdefault(model, set()).add(kind)
    assert set(kinds_by_model) == SQL_MODELS
    every_kind = {"not_null", "unique", "accepted_values", "relationships"}
    assert set().union(*(kinds_by_model[m] for m in STAGING)) == every_kind
    assert set().union(*(kinds_by_model[m] for m in SUMMARY)) == every_kind


def test_a_source_must_map_to_the_asset_that_writes_its_table(tmp_path: Path) -> None:
    copy = tmp_path / "dbt_like_sql"
    shutil.copytree(PROJECT, copy, ignore=shutil.ignore_patterns("sql_models-*", "logs"))
    manifest_path = copy / "target" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    (source,) = [s for s in manifest["sources"].values() if s["name"] == "soda_scenarios"]

    for meta in (source["meta"], source["config"]["meta"]):  # dbt keeps it in both
        meta["dagster"]["asset_key"] = ["soda_scenario"]  # misspelt
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(SqlModelsError) as error:
        check_sources(DbtProject(copy), SqlModelTranslator(), corpora_assets())
    message = str(error.value)
    assert str(copy / "models" / "sources.yml") in message
    assert "'soda_scenario'" in message and "written by 'soda_scenarios'" in message

    source["identifier"] = "no_such_table"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(SqlModelsError, match="no Python asset writes the table 'no_such_table'"):
        check_sources(DbtProject(copy), SqlModelTranslator(), corpora_assets())


# --- what a build produces -----------------------------------------------------------------


def test_staging_models_are_views_and_summaries_tables(built: Built) -> None:
    kinds = dict(
        built.query(
            "SELECT table_name, table_type FROM information_schema.tables "
            "WHERE table_schema = 'main'"
        )
    )
    assert kinds == {
        "psychgenerator_posts": "BASE TABLE",
        "soda_scenarios": "BASE TABLE",
        "stg_psychgenerator_posts": "VIEW",
        "stg_soda_scenarios": "VIEW",
        "posts_trait_level_counts": "BASE TABLE",
        "posts_text_length_stats": "BASE TABLE",
        "scenario_stats": "BASE TABLE",
    }


def test_stg_posts_is_one_row_per_post_and_trait(built: Built) -> None:
    rows = built.query(
        "SELECT post_id, trait_ordinal, trait, z_score, level, split, n_words, n_chars "
        "FROM stg_psychgenerator_posts ORDER BY post_id, trait_ordinal"
    )
    assert len(rows) == len(POSTS) * len(TRAITS)
    p1 = [row for row in rows if row[0] == "p1"]
    assert [row[2] for row in p1] == list(TRAITS)
    assert [row[1] for row in p1] == [1, 2, 3, 4, 5]
    assert p1[0][3:6] == (1.5, "high", "train")
    assert p1[2][4:6] == (None, None)  # extraversion: dropped middle third
    words_chars = {row[0]: row[6:] for row in rows if row[2] == "openness"}
    # Runs of spaces and surrounding spaces do not make extra words; empty text has none.
    assert words_chars == {"p1": (5, 23), "p2": (3, 20), "p3": (8, 51), "p4": (0, 0)}


def test_posts_trait_level_counts_match_the_hand_made_posts(built: Built) -> None:
    rows = built.query(
        "SELECT trait_ordinal, trait, level, split, n_posts FROM posts_trait_level_counts"
    )
    expected: Counter[tuple[str, str | None, str | None]] = Counter()
    for _, _, traits in POSTS:
        for trait in TRAITS:
            _, level, split = traits.get(trait, (0.0, None, None))
            expected[(trait, level, split)] += 1
    counts = {(t, lv, sp): n for _, t, lv, sp, n in rows}
    assert counts == dict(expected)
    assert {(t, o) for o, t, *_ in rows} == {(t, i + 1) for i, t in enumerate(TRAITS)}
    assert counts[("openness", "high", "train")] == 2
    assert counts[("extraversion", None, None)] == 1
    for trait in TRAITS:
        assert sum(n for (t, _, _), n in counts.items() if t == trait) == len(POSTS)


def test_posts_text_length_stats_per_trait_and_level(built: Built) -> None:
    rows = built.query(
        "SELECT trait, level, n_posts, mean_words, median_words, min_words, max_words, "
        "mean_chars, median_chars, min_chars, max_chars FROM posts_text_length_stats "
        "ORDER BY trait_ordinal, level"
    )
    stats = {(row[0], row[1]): row[2:] for row in rows}
    # openness high = p1 (5 words, 23 chars), p3 (8, 51), p4 (0, 0)
    assert stats[("openness", "high")] == pytest.approx((3, 13 / 3, 5.0, 0, 8, 74 / 3, 23.0, 0, 51))
    assert stats[("openness", "low")] == pytest.approx((1, 3.0, 3.0, 3, 3, 20.0, 20.0, 20, 20))
    assert all(level in ("high", "low") for _, level in stats)  # no middle-third group
    assert [row[0] for row in rows] == sorted((row[0] for row in rows), key=TRAITS.index)


def test_scenario_stats(built: Built) -> None:
    row = built.query(
        "SELECT n_scenarios, n_distinct_scenario_ids, n_distinct_person_x, n_distinct_person_y, "
        "n_distinct_names, mean_narrative_words, median_narrative_words, "
        "min_narrative_words, max_narrative_words FROM scenario_stats"
    )
    # narratives have 8, 4 and 4 words; names Alice, Bob, Carol, Dana
    assert row == [(3, 3, 3, 3, 4, pytest.approx(16 / 3), 4.0, 4, 8)]
    n_words = built.query("SELECT scenario_id, n_words FROM stg_soda_scenarios ORDER BY 1")
    assert n_words == [("s1", 8), ("s2", 4), ("s3", 4)]


def test_every_dbt_test_ran_as_a_passing_asset_check(built: Built) -> None:
    evaluations = built.result.get_asset_check_evaluations()
    assert {e.check_name for e in evaluations} == set(manifest_nodes("test"))
    assert all(e.passed for e in evaluations)


def test_materializations_carry_row_counts_columns_and_lineage(built: Built) -> None:
    lineage = {
        asset: (version, rows)
        for asset, version, rows in built.query(
            "SELECT asset, data_version, row_count FROM lineage.materializations"
        )
    }
    for key in SQL_KEYS:
        event = built.instance.get_latest_materialization_event(key).asset_materialization
        name = key.to_user_string()
        assert event.tags["dagster/data_version"] == lineage[name][0]
        assert event.metadata["dagster/row_count"].value == lineage[name][1]
        columns = [c.name for c in event.metadata["dagster/column_schema"].schema.columns]
        (expected,) = built.query(f"SELECT list(column_name) FROM (DESCRIBE {name})")
        assert columns == expected[0]
    assert lineage["stg_psychgenerator_posts"][1] == len(POSTS) * len(TRAITS)
    assert lineage["scenario_stats"][1] == 1

    inputs = built.query(
        "SELECT m.asset, i.input_asset, i.input_data_version FROM lineage.inputs i "
        "JOIN lineage.materializations m USING (materialization_id) "
        "WHERE m.run_id = '" + built.result.run_id + "'"
    )
    assert sorted(inputs) == sorted(
        [
            ("stg_psychgenerator_posts", "psychgenerator_posts", "posts-v1"),
            ("stg_soda_scenarios", "soda_scenarios", "scenarios-v1"),
            (
                "posts_trait_level_counts",
                "stg_psychgenerator_posts",
                lineage["stg_psychgenerator_posts"][0],
            ),
            (
                "posts_text_length_stats",
                "stg_psychgenerator_posts",
                lineage["stg_psychgenerator_posts"][0],
            ),
            ("scenario_stats", "stg_soda_scenarios", lineage["stg_soda_scenarios"][0]),
        ]
    )


def test_nothing_changed_means_no_model_is_outdated(built: Built) -> None:
    assert {
        key.to_user_string(): outdated(built.defs, built.instance, key) for key in SQL_KEYS
    } == {name: [] for name in SQL_MODELS}


def test_dbt_leaves_the_warehouse_free_for_the_next_writer(built: Built) -> None:
    # dagster-dbt opens the file in this process for row counts; a connection left open
    # would refuse both a read-only open here and a writer in another process.
    assert built.query("SELECT count(*) FROM scenario_stats") == [(1,)]
    writer = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, duckdb; duckdb.connect(sys.argv[1]).execute('CREATE TABLE w AS SELECT 1')",
            str(paths.warehouse_path(built.root)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert writer.returncode == 0, writer.stderr


# --- failures --------------------------------------------------------------------------------


def test_a_broken_model_fails_with_dbts_error_and_keeps_the_previous_table(
    built: Built, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    root.mkdir()
    shutil.copy(paths.warehouse_path(built.root), paths.warehouse_path(root))
    project = tmp_path / "dbt_like_sql"
    shutil.copytree(PROJECT, project, ignore=shutil.ignore_patterns("sql_models-*", "logs"))
    model = project / "models" / "summary" / "posts_trait_level_counts.sql"
    # Fails at run time, after the new table has started to fill.
    model.write_text(
        model.read_text().replace(
            "count(*) as n_posts",
            "count(*) as n_posts,\n"
            "    max(case when trait = 'neuroticism' then error('bad trait row') end) as boom",
        )
    )
    key = dg.AssetKey("posts_trait_level_counts")
    defs = sql_definitions(project, root)
    # the manifest was parsed again: the edited SQL is a new code version
    assert (
        defs.resolve_asset_graph().get(key).code_version
        != built.defs.resolve_asset_graph().get(key).code_version
    )
    before = Warehouse(path=str(paths.warehouse_path(root))).query(
        "SELECT * FROM posts_trait_level_counts ORDER BY ALL"
    )

    with dg.DagsterInstance.ephemeral() as instance:
        result = run_models(defs, instance, [key])
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.to_string()
    assert "bad trait row" in message and "posts_trait_level_counts" in message
    assert not result.get_asset_materialization_events()

    warehouse = Warehouse(path=str(paths.warehouse_path(root)))
    after = warehouse.query("SELECT * FROM posts_trait_level_counts ORDER BY ALL")
    pd.testing.assert_frame_equal(after, before)
    leftovers = warehouse.query(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_name LIKE 'posts_trait_level_counts%'"
    )
    assert leftovers.table_name.tolist() == ["posts_trait_level_counts"]
    recorded = warehouse.query(
        "SELECT count(*) AS n FROM lineage.materializations WHERE asset = ?", [key.path[-1]]
    )
    assert recorded.n[0] == 1  # the build from the fixture only


def test_dbt_waits_for_the_warehouse_lock(built: Built, tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    shutil.copy(paths.warehouse_path(built.root), paths.warehouse_path(root))
    defs = sql_definitions(PROJECT, root, lock_timeout_s=1)
    # Another writer holds the lock: dbt must not start (it would write beside it).
    with (
        FileLock(str(paths.warehouse_path(root)) + ".lock"),
        dg.DagsterInstance.ephemeral() as instance,
    ):
        result = run_models(defs, instance, [dg.AssetKey("scenario_stats")])
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert "Timeout" in failure.step_failure_data.error.to_string()
    assert not result.get_asset_materialization_events()
