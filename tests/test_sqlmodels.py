"""The dbt-style SQL model runner and the models in dbt_like_sql/."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import duckdb
import pytest

from big5_dagster.lib.sqlmodels import (
    SqlModel,
    SqlModelError,
    build_model,
    discover_models,
    load_model,
    main_schema_relation,
    parse_model,
    render_sql,
    resolve_graph,
)
from big5_dagster.lib.traits import TRAITS

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_MODELS_DIR = REPO_ROOT / "dbt_like_sql"
SOURCES = ("psychgenerator_posts", "soda_scenarios")

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
    (
        "p4",
        "",
        {
            "openness": (0.9, "high", "train"),
            "extraversion": (-1.4, "low", "test"),
        },
    ),
]

SCENARIOS = [
    ("s1", "Alice lends Bob her car for the weekend.", "Alice", "Bob"),
    ("s2", "Bob forgets  Alice's birthday", "Bob", "Alice"),
    ("s3", "Carol wins a prize", "Carol", "Dana"),
]


def create_sources(con: duckdb.DuckDBPyConnection) -> None:
    trait_columns = ", ".join(
        f"{trait} DOUBLE, {trait}_level VARCHAR, {trait}_split VARCHAR" for trait in TRAITS
    )
    con.execute(
        f"CREATE TABLE psychgenerator_posts (post_id VARCHAR, text VARCHAR, {trait_columns})"
    )
    for post_id, text, traits in POSTS:
        values: list[object] = [post_id, text]
        for trait in TRAITS:
            values.extend(traits.get(trait, (0.0, None, None)))
        placeholders = ", ".join("?" for _ in values)
        con.execute(f"INSERT INTO psychgenerator_posts VALUES ({placeholders})", values)
    con.execute(
        "CREATE TABLE soda_scenarios "
        "(scenario_id VARCHAR, narrative VARCHAR, person_x VARCHAR, person_y VARCHAR)"
    )
    con.executemany("INSERT INTO soda_scenarios VALUES (?, ?, ?, ?)", SCENARIOS)


@pytest.fixture
def warehouse(tmp_path: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    create_sources(con)
    yield con
    con.close()


@pytest.fixture
def built_warehouse(warehouse: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    for model in resolve_graph(discover_models(REAL_MODELS_DIR), SOURCES):
        build_model(warehouse, model, main_schema_relation)
    return warehouse


def write_models(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, sql in files.items():
        (directory / name).write_text(sql, encoding="utf-8")
    return directory


def model(name: str, sql: str) -> SqlModel:
    return parse_model(name, Path(f"/models/{name}.sql"), sql)


# --- the real models ---------------------------------------------------------------------


def test_real_models_discover_with_their_materializations_refs_and_descriptions() -> None:
    models = {m.name: m for m in discover_models(REAL_MODELS_DIR)}
    assert {name: (m.materialized, m.refs) for name, m in models.items()} == {
        "stg_psychgenerator_posts": ("view", ("psychgenerator_posts",)),
        "stg_soda_scenarios": ("view", ("soda_scenarios",)),
        "posts_trait_level_counts": ("table", ("stg_psychgenerator_posts",)),
        "posts_text_length_stats": ("table", ("stg_psychgenerator_posts",)),
        "scenario_stats": ("table", ("stg_soda_scenarios",)),
    }
    for m in models.values():
        assert len(m.description) > 40, f"{m.path} needs a leading -- description"
        assert "{{" not in m.description


def test_real_models_resolve_in_a_fixed_order() -> None:
    models = discover_models(REAL_MODELS_DIR)
    shuffled = list(models)
    random.Random(7).shuffle(shuffled)
    expected = [
        "stg_psychgenerator_posts",
        "posts_text_length_stats",
        "posts_trait_level_counts",
        "stg_soda_scenarios",
        "scenario_stats",
    ]
    assert [m.name for m in resolve_graph(models, SOURCES)] == expected
    assert [m.name for m in resolve_graph(shuffled, reversed(SOURCES))] == expected


def test_real_models_build_as_views_and_tables(built_warehouse: duckdb.DuckDBPyConnection) -> None:
    kinds = dict(
        built_warehouse.execute(
            "SELECT table_name, table_type FROM information_schema.tables "
            "WHERE table_schema = 'main'"
        ).fetchall()
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


def test_stg_posts_is_one_row_per_post_and_trait(
    built_warehouse: duckdb.DuckDBPyConnection,
) -> None:
    rows = built_warehouse.execute(
        "SELECT post_id, trait_ordinal, trait, z_score, level, split, n_words, n_chars "
        "FROM stg_psychgenerator_posts ORDER BY post_id, trait_ordinal"
    ).fetchall()
    assert len(rows) == len(POSTS) * len(TRAITS)
    p1 = [row for row in rows if row[0] == "p1"]
    assert [row[2] for row in p1] == list(TRAITS)
    assert [row[1] for row in p1] == [1, 2, 3, 4, 5]
    assert p1[0][3:6] == (1.5, "high", "train")
    assert p1[2][4:6] == (None, None)  # extraversion: dropped middle third
    words_chars = {row[0]: row[6:] for row in rows if row[2] == "openness"}
    # Runs of spaces and surrounding spaces do not make extra words; empty text has none.
    assert words_chars == {"p1": (5, 23), "p2": (3, 20), "p3": (8, 51), "p4": (0, 0)}


def test_posts_trait_level_counts_match_the_hand_made_posts(
    built_warehouse: duckdb.DuckDBPyConnection,
) -> None:
    rows = built_warehouse.execute(
        "SELECT trait_ordinal, trait, level, split, n_posts FROM posts_trait_level_counts"
    ).fetchall()
    expected: Counter[tuple[str, str | None, str | None]] = Counter()
    for _, _, traits in POSTS:
        for trait in TRAITS:
            _, level, split = traits.get(trait, (0.0, None, None))
            expected[(trait, level, split)] += 1
    assert {(t, lv, sp): n for _, t, lv, sp, n in rows} == dict(expected)
    assert {(t, o) for o, t, *_ in rows} == {(t, i + 1) for i, t in enumerate(TRAITS)}
    # Spot checks by hand: openness has 3 high (2 train, 1 test) and 1 low.
    counts = {(t, lv, sp): n for _, t, lv, sp, n in rows}
    assert counts[("openness", "high", "train")] == 2
    assert counts[("openness", "high", "test")] == 1
    assert counts[("openness", "low", "train")] == 1
    assert counts[("extraversion", None, None)] == 1
    for trait in TRAITS:
        assert sum(n for (t, _, _), n in counts.items() if t == trait) == len(POSTS)


def test_posts_text_length_stats_per_trait_and_level(
    built_warehouse: duckdb.DuckDBPyConnection,
) -> None:
    rows = built_warehouse.execute(
        "SELECT trait, level, n_posts, mean_words, median_words, min_words, max_words, "
        "mean_chars, median_chars, min_chars, max_chars FROM posts_text_length_stats "
        "ORDER BY trait_ordinal, level"
    ).fetchall()
    stats = {(row[0], row[1]): row[2:] for row in rows}
    # openness high = p1 (5 words, 23 chars), p3 (8, 51), p4 (0, 0)
    assert stats[("openness", "high")] == pytest.approx((3, 13 / 3, 5.0, 0, 8, 74 / 3, 23.0, 0, 51))
    assert stats[("openness", "low")] == pytest.approx((1, 3.0, 3.0, 3, 3, 20.0, 20.0, 20, 20))
    # the middle third (NULL level) is not a group here
    assert all(level in ("high", "low") for _, level in stats)
    assert [row[0] for row in rows] == sorted(
        (row[0] for row in rows), key=TRAITS.index
    )  # O, C, E, A, N order


def test_scenario_stats(built_warehouse: duckdb.DuckDBPyConnection) -> None:
    row = built_warehouse.execute(
        "SELECT n_scenarios, n_distinct_scenario_ids, n_distinct_person_x, n_distinct_person_y, "
        "n_distinct_names, mean_narrative_words, median_narrative_words, "
        "min_narrative_words, max_narrative_words FROM scenario_stats"
    ).fetchall()
    # narratives have 8, 4 and 4 words; names Alice, Bob, Carol, Dana
    assert row == [(3, 3, 3, 3, 4, pytest.approx(16 / 3), 4.0, 4, 8)]
    n_words = built_warehouse.execute(
        "SELECT scenario_id, n_words FROM stg_soda_scenarios ORDER BY scenario_id"
    ).fetchall()
    assert n_words == [("s1", 8), ("s2", 4), ("s3", 4)]


# --- parsing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tag",
    [
        "{{ ref('src') }}",
        '{{ ref("src") }}',
        "{{ref('src')}}",
        "{{   ref (  'src'  )   }}",
        "{{\n  ref(\n    'src'\n  )\n}}",
    ],
)
def test_ref_variants_parse_and_render(tag: str) -> None:
    m = model("m", f"select * from {tag} where 1 = 1")
    assert m.refs == ("src",)
    assert render_sql(m, lambda name: f'"main"."{name}"') == (
        'select * from "main"."src" where 1 = 1'
    )


def test_refs_are_unique_in_order_of_first_use() -> None:
    m = model(
        "m",
        "select * from {{ ref('b') }} join {{ ref(\"a\") }} using (id) "
        "join {{ ref('b') }} as b2 using (id)",
    )
    assert m.refs == ("b", "a")
    assert render_sql(m, str.upper) == "select * from B join A using (id) join B as b2 using (id)"


def test_config_sets_materialization_and_is_removed_keeping_line_numbers() -> None:
    sql = (
        "-- Counts per group.\n-- Second line.\n{{ config(materialized='table') }}\nselect 1 as x\n"
    )
    m = model("m", sql)
    assert m.materialized == "table"
    assert m.description == "Counts per group.\nSecond line."
    assert render_sql(m, str) == "-- Counts per group.\n-- Second line.\n\nselect 1 as x\n"
    assert model("v", "select 1").materialized == "view"
    assert model("v", "select 1").description == ""
    multi_line = model("t", '{{ config(\n  materialized="table"\n) }}\nselect 1')
    assert render_sql(multi_line, str).splitlines()[3] == "select 1"  # still line 4


@pytest.mark.parametrize(
    ("sql", "line", "fragment"),
    [
        ("select 1\nfrom x\n{% if true %}where 1{% endif %}", 3, "{% if true %}"),
        ("select\n  {{ var('start') }}", 2, "var"),
        ("-- c\n{# a jinja comment #}\nselect 1", 2, "comment"),
        ("select * from {{ ref('a') | upper }}", 1, "unsupported Jinja"),
        ("select * from {{ ref('pkg', 'a') }}", 1, "exactly one"),
        ("\n\nselect * from {{ ref('a')", 3, "unclosed"),
        ("{{ config(materialized='incremental') }}\nselect 1", 1, "materialized"),
        ("{{ config(schema='other') }}\nselect 1", 1, "schema"),
        ("{{ config(materialized='table') }}\n{{ config(materialized='view') }}", 2, "once"),
    ],
)
def test_unsupported_jinja_names_file_and_line(
    tmp_path: Path, sql: str, line: int, fragment: str
) -> None:
    path = tmp_path / "bad_model.sql"
    path.write_text(sql, encoding="utf-8")
    with pytest.raises(SqlModelError) as error:
        load_model(path)
    assert f"{path}:{line}:" in str(error.value)
    assert fragment in str(error.value)


def test_model_name_must_be_an_identifier(tmp_path: Path) -> None:
    path = tmp_path / "my-model.sql"
    path.write_text("select 1", encoding="utf-8")
    with pytest.raises(SqlModelError, match="my-model"):
        load_model(path)


def test_code_version_follows_the_sql_text(tmp_path: Path) -> None:
    path = tmp_path / "m.sql"
    path.write_text("select 1 as x\n", encoding="utf-8")
    first = load_model(path).code_version
    assert len(first) == 16 and int(first, 16) >= 0
    assert load_model(path).code_version == first
    path.write_text("select 2 as x\n", encoding="utf-8")
    assert load_model(path).code_version != first
    path.write_text("select 1 as x\n", encoding="utf-8")
    assert load_model(path).code_version == first


# --- discovery and the graph -------------------------------------------------------------


def test_duplicate_model_names_name_both_files(tmp_path: Path) -> None:
    root = write_models(tmp_path / "models", {"a.sql": "select 1"})
    write_models(root / "marts", {"a.sql": "select 2"})
    with pytest.raises(SqlModelError) as error:
        discover_models(root)
    assert str(root / "a.sql") in str(error.value)
    assert str(root / "marts" / "a.sql") in str(error.value)


def test_unknown_ref_names_the_file_and_lists_known_names(tmp_path: Path) -> None:
    root = write_models(
        tmp_path,
        {
            "good.sql": "select * from {{ ref('posts') }}",
            "typo.sql": "select * from {{ ref('good') }} join {{ ref('postz') }} using (id)",
        },
    )
    with pytest.raises(SqlModelError) as error:
        resolve_graph(discover_models(root), ["posts"])
    message = str(error.value)
    assert str(root / "typo.sql") in message
    assert "'postz'" in message
    assert "['good', 'posts', 'typo']" in message


def test_cycle_names_the_files_in_it(tmp_path: Path) -> None:
    root = write_models(
        tmp_path,
        {
            "a.sql": "select * from {{ ref('b') }}",
            "b.sql": "select * from {{ ref('a') }}",
            "c.sql": "select * from {{ ref('a') }}",  # downstream of the cycle, not in it
            "d.sql": "select * from {{ ref('src') }}",
        },
    )
    with pytest.raises(SqlModelError) as error:
        resolve_graph(discover_models(root), ["src"])
    message = str(error.value)
    assert "a.sql -> b.sql -> a.sql" in message
    assert str(root / "a.sql") in message and str(root / "b.sql") in message
    assert "c.sql" not in message


def test_self_reference_is_a_cycle() -> None:
    with pytest.raises(SqlModelError, match=r"loop\.sql -> loop\.sql"):
        resolve_graph([model("loop", "select * from {{ ref('loop') }}")], [])


def test_model_named_like_a_source_is_an_error() -> None:
    with pytest.raises(SqlModelError, match=r"/models/soda_scenarios\.sql.*collides"):
        resolve_graph([model("soda_scenarios", "select 1")], SOURCES)


def test_build_order_is_alphabetical_among_ready_models() -> None:
    models = [
        model("zeta", "select 1"),
        model("beta", "select * from {{ ref('zeta') }}"),
        model("alpha", "select * from {{ ref('src') }}"),
        model("gamma", "select 1"),
        model("delta", "select * from {{ ref('beta') }} join {{ ref('alpha') }} using (x)"),
    ]
    expected = ["alpha", "gamma", "zeta", "beta", "delta"]
    for seed in range(5):
        shuffled = list(models)
        random.Random(seed).shuffle(shuffled)
        assert [m.name for m in resolve_graph(shuffled, ["src"])] == expected


# --- building ----------------------------------------------------------------------------


def test_failing_table_model_keeps_the_previous_good_table(
    warehouse: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    path = tmp_path / "post_ids.sql"
    path.write_text(
        "{{ config(materialized='table') }}\nselect post_id from {{ ref('psychgenerator_posts') }}",
        encoding="utf-8",
    )
    build_model(warehouse, load_model(path), main_schema_relation)
    before = warehouse.execute("SELECT post_id FROM post_ids ORDER BY post_id").fetchall()
    assert before == [("p1",), ("p2",), ("p3",), ("p4",)]

    # Fails at run time, after the new table has started to fill.
    path.write_text(
        "{{ config(materialized='table') }}\n"
        "select post_id, case when post_id = 'p3' then error('bad row') else 1 end as flag\n"
        "from {{ ref('psychgenerator_posts') }}",
        encoding="utf-8",
    )
    with pytest.raises(SqlModelError) as error:
        build_model(warehouse, load_model(path), main_schema_relation)
    assert str(path) in str(error.value) and "bad row" in str(error.value)

    # Fails at bind time.
    path.write_text(
        "{{ config(materialized='table') }}\nselect no_such_column from {{ ref('psychgenerator_posts') }}",
        encoding="utf-8",
    )
    with pytest.raises(SqlModelError, match="no_such_column"):
        build_model(warehouse, load_model(path), main_schema_relation)

    assert warehouse.execute("SELECT post_id FROM post_ids ORDER BY post_id").fetchall() == before
    leftovers = warehouse.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_name LIKE 'post_ids%'"
    ).fetchall()
    assert leftovers == [("post_ids",)]
    # The connection is usable again: no transaction left open.
    path.write_text("{{ config(materialized='table') }}\nselect 42 as answer", encoding="utf-8")
    build_model(warehouse, load_model(path), main_schema_relation)
    assert warehouse.execute("SELECT answer FROM post_ids").fetchall() == [(42,)]


def test_failing_view_keeps_the_previous_view(warehouse: duckdb.DuckDBPyConnection) -> None:
    build_model(warehouse, model("v", "select 1 as x"), main_schema_relation)
    with pytest.raises(SqlModelError, match=r"/models/v\.sql"):
        build_model(
            warehouse,
            model("v", "select nope from {{ ref('soda_scenarios') }}"),
            main_schema_relation,
        )
    assert warehouse.execute("SELECT x FROM v").fetchall() == [(1,)]


def test_materialization_can_switch_between_view_and_table(
    warehouse: duckdb.DuckDBPyConnection,
) -> None:
    def kind() -> str:
        return warehouse.execute(
            "SELECT table_type FROM information_schema.tables WHERE table_name = 'm'"
        ).fetchall()[0][0]

    build_model(warehouse, model("m", "select 1 as x"), main_schema_relation)
    assert kind() == "VIEW"
    build_model(
        warehouse,
        model("m", "{{ config(materialized='table') }} select 2 as x"),
        main_schema_relation,
    )
    assert kind() == "BASE TABLE"
    build_model(warehouse, model("m", "select 3 as x;"), main_schema_relation)
    assert kind() == "VIEW"
    assert warehouse.execute("SELECT x FROM m").fetchall() == [(3,)]


@pytest.mark.parametrize(
    ("sql", "fragment"),
    [
        ("select 1; select 2", "exactly one SELECT"),
        ("create table evil as select 1", "SELECT"),
        ("selec 1", "does not parse"),
        ("-- only a comment\n", "exactly one SELECT"),
    ],
)
def test_a_model_must_be_one_select(
    warehouse: duckdb.DuckDBPyConnection, sql: str, fragment: str
) -> None:
    with pytest.raises(SqlModelError, match=fragment) as error:
        build_model(warehouse, model("m", sql), main_schema_relation)
    assert "/models/m.sql" in str(error.value)
    assert warehouse.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('m', 'evil')"
    ).fetchall() == [(0,)]
