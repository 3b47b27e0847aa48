"""The asset graph materializes for real, records lineage, and reruns only what changed."""

import json
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest

from big5_dagster import cli, paths
from big5_dagster.config import load_settings
from big5_dagster.definitions import build_definitions
from big5_dagster.runner import materialize_outdated

SMALL = {
    "ops": {
        "psychgenerator_posts": {"config": {"n_posts": 600}},
        "soda_scenarios": {"config": {"n_scenarios": 12}},
    }
}
CORPORA = {"psychgenerator_posts", "soda_scenarios", "personality_inventories"}
SQL_MODELS = {
    "stg_psychgenerator_posts",
    "stg_soda_scenarios",
    "posts_trait_level_counts",
    "posts_text_length_stats",
    "scenario_stats",
}
# The foundation's part of the graph: corpora and the SQL models over them.
FOUNDATION = [dg.AssetKey(name) for name in sorted(CORPORA | SQL_MODELS)]
CORPORA_KEYS = {dg.AssetKey(name) for name in CORPORA}


@pytest.fixture
def data_root(isolated_environment) -> Path:
    return paths.data_dir()


@pytest.fixture
def defs(data_root, tiny_backend) -> dg.Definitions:
    return build_definitions(load_settings(), data_root, resources={"model": tiny_backend})


@pytest.fixture
def instance():
    with dg.DagsterInstance.ephemeral() as inst:
        yield inst


def lineage_rows(root: Path, asset: str) -> pd.DataFrame:
    with duckdb.connect(str(paths.warehouse_path(root)), read_only=True) as con:
        return con.execute(
            "SELECT * FROM lineage.materializations WHERE asset = ? ORDER BY ended_at", [asset]
        ).df()


def materialized(steps) -> set[str]:
    return {key.to_user_string() for step in steps for key in step.keys}


def test_definitions_load_with_every_asset_versioned(defs):
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.materializable_asset_keys}
    assert keys >= CORPORA | SQL_MODELS
    for key in graph.materializable_asset_keys:
        assert graph.get(key).code_version, f"{key} has no code version"
    stg = graph.get(dg.AssetKey("posts_trait_level_counts"))
    assert dg.AssetKey("stg_psychgenerator_posts") in stg.parent_keys
    assert (
        dg.AssetKey("psychgenerator_posts")
        in graph.get(dg.AssetKey("stg_psychgenerator_posts")).parent_keys
    )


def test_workspace_module_loads():
    from big5_dagster.definitions import defs as module_defs

    dg.Definitions.validate_loadable(module_defs)


def test_materialize_all_then_lineage_back_to_corpora(defs, instance, data_root, capsys):
    lines: list[str] = []
    steps = materialize_outdated(defs, instance, FOUNDATION, run_config=SMALL, log=lines.append)
    assert materialized(steps) == CORPORA | SQL_MODELS
    # The dbt models go in one run (one dbt process), each run's cost is logged.
    assert [set(s.keys) for s in steps if set(s.keys) & set(FOUNDATION) - CORPORA_KEYS] == [
        {dg.AssetKey(name) for name in SQL_MODELS}
    ]
    assert sum("orchestration" in line and "peak memory" in line for line in lines) == len(steps)

    with duckdb.connect(str(paths.warehouse_path(data_root)), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM psychgenerator_posts").fetchone()[0] == 600
        assert con.execute("SELECT count(*) FROM soda_scenarios").fetchone()[0] == 12
        items = dict(
            con.execute(
                "SELECT inventory, count(*) FROM personality_inventories GROUP BY 1"
            ).fetchall()
        )
        assert items == {"bfi44": 44}  # tiny; the paper profile adds ipip_neo_120
        counts = con.execute(
            "SELECT sum(n_posts) FROM posts_trait_level_counts WHERE trait = 'openness'"
        ).fetchone()[0]
        assert counts == 600
        # one lineage row per materialization, with what a researcher needs to trace it
        row = con.execute(
            "SELECT * FROM lineage.materializations WHERE asset = 'psychgenerator_posts'"
        ).df()
        assert len(row) == 1
        assert json.loads(row.seeds[0]) == {"seed": 42, "split_seed": 42}
        assert json.loads(row.config[0])["n_posts"] == 600
        assert row.row_count[0] == 600 and row.profile[0] == "tiny"
        assert Path(json.loads(row.artifact_paths[0])[0]).exists()
        inputs = con.execute(
            """SELECT i.input_asset, i.input_data_version = m.data_version
               FROM lineage.inputs i JOIN lineage.materializations m
                 ON m.asset = i.input_asset
               WHERE i.materialization_id LIKE '%/posts_trait_level_counts/'"""
        ).fetchall()
        assert inputs == [("stg_psychgenerator_posts", True)]

    # Dagster got the same content-hash data version that the lineage row holds
    event = instance.get_latest_materialization_event(dg.AssetKey("psychgenerator_posts"))
    tags = event.asset_materialization.tags
    assert (
        tags["dagster/data_version"]
        == lineage_rows(data_root, "psychgenerator_posts").data_version[0]
    )

    capsys.readouterr()  # dbt's log lines from the runs above
    assert cli.main(["lineage", "posts_trait_level_counts"]) == 0
    tree = capsys.readouterr().out
    lines = tree.splitlines()
    assert lines[0].startswith("posts_trait_level_counts")
    assert "stg_psychgenerator_posts" in lines[1]
    assert "psychgenerator_posts" in lines[2] and "data=" in lines[2]


def test_changed_input_recomputes_only_what_depends_on_it(defs, instance, data_root):
    materialize_outdated(defs, instance, FOUNDATION, run_config=SMALL, log=lambda _: None)
    assert (
        materialize_outdated(defs, instance, FOUNDATION, run_config=SMALL, log=lambda _: None) == []
    )
    before = lineage_rows(data_root, "soda_scenarios").data_version.tolist()

    # a new seed for the scenarios: a new data version, and only its dependents go stale
    reseeded = {"ops": {"soda_scenarios": {"config": {"n_scenarios": 12, "seed": 7}}}}
    dg.materialize(
        defs.assets,
        selection=["soda_scenarios"],
        instance=instance,
        resources=defs.resources,
        run_config=reseeded,
    )
    after = lineage_rows(data_root, "soda_scenarios").data_version.tolist()
    assert len(after) == 2 and after[0] == before[0] and after[1] != before[0]

    steps = materialize_outdated(defs, instance, FOUNDATION, run_config=SMALL, log=lambda _: None)
    assert materialized(steps) == {"stg_soda_scenarios", "scenario_stats"}
    assert len(lineage_rows(data_root, "psychgenerator_posts")) == 1
    assert len(lineage_rows(data_root, "posts_trait_level_counts")) == 1
    # the rebuilt view records the new scenarios' version as its input
    with duckdb.connect(str(paths.warehouse_path(data_root)), read_only=True) as con:
        versions = con.execute(
            """SELECT i.input_data_version FROM lineage.inputs i
               JOIN lineage.materializations m USING (materialization_id)
               WHERE m.asset = 'stg_soda_scenarios' ORDER BY m.ended_at"""
        ).fetchall()
    assert [v for (v,) in versions] == [before[0], after[1]]


def test_an_input_recomputed_in_the_same_pass_makes_its_dependents_stale(
    defs, instance, data_root, tiny_backend, tmp_path
):
    # The pass reads each partition's latest materialization once; after it materializes the
    # reseeded scenarios it must read them again, or their dependents would pass for fresh.
    materialize_outdated(defs, instance, FOUNDATION, run_config=SMALL, log=lambda _: None)
    custom = tmp_path / "reseeded.yaml"
    custom.write_text("extends: tiny\nprofile: tiny\nscenarios:\n  seed: 7\n")
    reseeded = build_definitions(
        load_settings(config_file=custom), data_root, resources={"model": tiny_backend}
    )
    steps = materialize_outdated(
        reseeded, instance, FOUNDATION, run_config=SMALL, log=lambda _: None
    )
    assert materialized(steps) == {"soda_scenarios", "stg_soda_scenarios", "scenario_stats"}
    assert (
        materialize_outdated(reseeded, instance, FOUNDATION, run_config=SMALL, log=lambda _: None)
        == []
    )


def test_lineage_command_reports_unknown_asset(defs, instance, capsys):
    materialize_outdated(defs, instance, FOUNDATION, run_config=SMALL, log=lambda _: None)
    assert cli.main(["lineage", "no_such_asset"]) == 1
    assert "no materialization of 'no_such_asset'" in capsys.readouterr().err
