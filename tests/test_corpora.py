"""Corpora: schema mapping of the hub datasets, validation errors, loaders, labels and splits.

Everything runs offline: the hub code path is exercised on small local files with the hub
datasets' columns, through the same ``datasets.load_dataset`` call.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest

from big5_dagster.lib.corpora.hub import load_posts, load_scenarios, seeded_row_sample
from big5_dagster.lib.corpora.labels import label_and_split
from big5_dagster.lib.corpora.schema import (
    POST_COLUMNS,
    SCENARIO_COLUMNS,
    CorpusError,
    canonical_posts,
    validate_scenarios,
)
from big5_dagster.lib.traits import TRAITS

PSYCHADAPTER_SCORES = ["ope_z", "con_z", "ext_z", "agr_z", "neu_z"]


def psychadapter_frame(n: int = 12, seed: int = 0) -> pd.DataFrame:
    """A small table with the PsychAdapter hub columns (message_id, message, *_z, dep, swl)."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "message_id": np.arange(5000, 5000 + n),
            "message": [f"post number {i} about my day at the lake" for i in range(n)],
        }
    )
    for column in PSYCHADAPTER_SCORES:
        frame[column] = rng.standard_normal(n)
    frame["dep_score"] = rng.standard_normal(n)
    frame["swl"] = rng.standard_normal(n)
    return frame


def soda_frame(n: int = 30) -> pd.DataFrame:
    """A small table with the allenai/soda columns."""
    return pd.DataFrame(
        {
            "head": [f"PersonX helps PersonY {i}" for i in range(n)],
            "relation": ["xIntent"] * n,
            "tail": ["to be kind"] * n,
            "literal": [f"literal {i}" for i in range(n)],
            "narrative": [f"Story {i}: Ana asks Ben{i} for help moving a couch." for i in range(n)],
            "dialogue": [["Can you help?", "Sure."] for _ in range(n)],
            "speakers": [["Ana", f"Ben{i}"] for i in range(n)],
            "PersonX": ["Ana"] * n,
            "PersonY": [f" Ben{i} " for i in range(n)],
            "PersonZ": [""] * n,
            "original_index": np.arange(n),
            "split": ["train"] * n,
            "head_answer": ["Yes"] * n,
            "pmi_head_answer": ["Yes"] * n,
            "relation_tail_answer": ["Yes"] * n,
            "pmi_relation_tail_answer": ["Yes"] * n,
        }
    )


@pytest.fixture
def cache_dir(tmp_path: Path) -> str:
    return str(tmp_path / "hf_cache")


def expected_canonical(frame: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({"post_id": frame["message_id"].astype(str), "text": frame["message"]})
    for trait, column in zip(TRAITS, PSYCHADAPTER_SCORES, strict=True):
        out[trait] = frame[column].astype(float)
    return out


# --- schema mapping and loading -------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_local_file_with_hub_columns_maps_to_canonical_schema(tmp_path, cache_dir, suffix):
    frame = psychadapter_frame()
    path = tmp_path / f"posts{suffix}"
    if suffix == ".parquet":
        frame.to_parquet(path)
    elif suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_json(path, orient="records", lines=True)
    posts, source = load_posts("local", str(path), cache_dir=cache_dir)
    assert source == str(path)
    assert tuple(posts.columns) == POST_COLUMNS
    pd.testing.assert_frame_equal(posts, expected_canonical(frame), check_dtype=False)


def test_hub_path_loads_through_datasets_with_token_from_env(
    tmp_path, cache_dir, monkeypatch, caplog
):
    frame = psychadapter_frame(n=20)
    parquet = tmp_path / "train.parquet"
    frame.to_parquet(parquet)
    calls = []
    real_load = datasets.load_dataset

    def offline_hub(path, split=None, token=None, cache_dir=None, **kwargs):
        # Same code path after loading: a parquet split with the hub dataset's columns.
        calls.append({"path": path, "split": split, "token": token})
        return real_load("parquet", data_files=str(parquet), split="train", cache_dir=cache_dir)

    monkeypatch.setattr(datasets, "load_dataset", offline_hub)
    monkeypatch.setenv("HF_TOKEN", "hf_test_secret_token")
    with caplog.at_level(logging.DEBUG):
        posts, source = load_posts(
            "hub",
            "huvucode/PsychAdapter",
            split="validation",
            max_posts=5,
            seed=3,
            cache_dir=cache_dir,
        )
    assert calls == [
        {"path": "huvucode/PsychAdapter", "split": "validation", "token": "hf_test_secret_token"}
    ]
    assert source == "huvucode/PsychAdapter (split validation)"
    assert "hf_test_secret_token" not in source + caplog.text
    rows = seeded_row_sample(20, 5, seed=3)
    expected = expected_canonical(frame.iloc[rows].reset_index(drop=True))
    pd.testing.assert_frame_equal(posts, expected, check_dtype=False)


def test_seeded_sample_is_deterministic_sorted_and_seed_dependent():
    first = seeded_row_sample(1000, 50, seed=1)
    np.testing.assert_array_equal(first, seeded_row_sample(1000, 50, seed=1))
    assert len(set(first)) == 50 and np.all(np.diff(first) > 0)
    assert not np.array_equal(first, seeded_row_sample(1000, 50, seed=2))
    np.testing.assert_array_equal(seeded_row_sample(10, None, seed=1), np.arange(10))
    np.testing.assert_array_equal(seeded_row_sample(10, 99, seed=1), np.arange(10))


def test_accepts_codes_and_full_names_and_ignores_unrelated_columns():
    frame = psychadapter_frame(n=4)
    coded = frame.rename(columns=dict(zip(PSYCHADAPTER_SCORES, "OCEAN", strict=True)))
    coded["user_age"] = 30
    named = frame.rename(columns=dict(zip(PSYCHADAPTER_SCORES, TRAITS, strict=True)))
    named = named.rename(columns={"message_id": "post_id", "message": "text"})
    expected = expected_canonical(frame)
    for variant in (coded, named):
        pd.testing.assert_frame_equal(
            canonical_posts(variant, "f.csv"), expected, check_dtype=False
        )


# --- bad input: CorpusError names the file, the row and the column ----------------------------


def write(frame: pd.DataFrame, path: Path) -> str:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    return str(path)


def load_error(path: str, cache_dir: str, **kwargs) -> CorpusError:
    with pytest.raises(CorpusError) as caught:
        load_posts("local", path, cache_dir=cache_dir, **kwargs)
    error = caught.value
    assert path in str(error) and error.source == path
    return error


def test_missing_trait_column_names_file_and_column(tmp_path, cache_dir):
    path = write(psychadapter_frame().drop(columns=["neu_z"]), tmp_path / "posts.parquet")
    error = load_error(path, cache_dir)
    assert (error.row, error.column) == ("header", "neuroticism")
    assert "neu_z" in str(error)


def test_missing_text_column_names_file_and_column(tmp_path, cache_dir):
    path = write(psychadapter_frame().drop(columns=["message"]), tmp_path / "posts.parquet")
    error = load_error(path, cache_dir)
    assert (error.row, error.column) == ("header", "text")
    assert "message" in str(error)


def test_non_numeric_score_names_row_and_column(tmp_path, cache_dir):
    frame = psychadapter_frame()
    frame["con_z"] = frame["con_z"].astype(object)
    frame.loc[2, "con_z"] = "abc"
    path = write(frame, tmp_path / "posts.csv")
    error = load_error(path, cache_dir)
    assert error.column == "con_z"
    assert error.row == "3 (message_id '5002')"  # 1-based data row, with the post's id
    assert "'abc'" in str(error)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_missing_or_infinite_score_is_rejected(tmp_path, cache_dir, value):
    frame = psychadapter_frame()
    frame.loc[6, "ext_z"] = value
    path = write(frame, tmp_path / "posts.parquet")
    error = load_error(path, cache_dir)
    assert (error.row, error.column) == ("7 (message_id '5006')", "ext_z")


@pytest.mark.parametrize(
    ("text", "suffix"), [("   ", ".parquet"), ("", ".csv"), (None, ".parquet")]
)
def test_empty_text_names_row_and_column(tmp_path, cache_dir, text, suffix):
    frame = psychadapter_frame()
    frame["message"] = frame["message"].astype(object)
    frame.loc[3, "message"] = text
    path = write(frame, tmp_path / f"posts{suffix}")
    error = load_error(path, cache_dir)
    assert (error.row, error.column) == ("4 (message_id '5003')", "message")


@pytest.mark.parametrize("column", ["H", "hon_z", "x"])
def test_unknown_trait_code_names_the_column(tmp_path, cache_dir, column):
    frame = psychadapter_frame()
    frame[column] = 0.5
    path = write(frame, tmp_path / "posts.parquet")
    error = load_error(path, cache_dir)
    assert (error.row, error.column) == ("header", column)
    assert "unknown trait code" in str(error)


def test_trait_given_twice_is_rejected():
    frame = psychadapter_frame()
    frame["O"] = 0.1
    with pytest.raises(CorpusError, match="openness is given twice") as caught:
        canonical_posts(frame, "posts.csv")
    assert caught.value.column == "O"


def test_duplicate_post_id_names_the_second_row():
    frame = psychadapter_frame()
    frame.loc[9, "message_id"] = 5001
    with pytest.raises(CorpusError, match="duplicate post id") as caught:
        canonical_posts(frame, "posts.csv")
    assert caught.value.row == "10 (message_id '5001')"


def test_error_rows_refer_to_the_original_file_after_sampling(tmp_path, cache_dir):
    frame = psychadapter_frame(n=40)
    frame["message"] = frame["message"].astype(object)
    frame.loc[10:, "message"] = " "  # every row from 11 on is bad
    path = write(frame, tmp_path / "posts.parquet")
    error = load_error(path, cache_dir, max_posts=8, seed=4)
    first_bad = next(r for r in seeded_row_sample(40, 8, seed=4) if r >= 10)
    assert error.row == f"{first_bad + 1} (message_id '{5000 + first_bad}')"


def test_missing_unsupported_or_unreadable_files_are_named(tmp_path, cache_dir):
    for path, problem in (
        (tmp_path / "absent.parquet", "does not exist"),
        (tmp_path / "posts.xlsx", "unsupported file type"),
        (tmp_path / "broken.parquet", "could not be read"),
    ):
        if path.name != "absent.parquet":
            path.write_text("not a table")
        with pytest.raises(CorpusError, match=problem) as caught:
            load_posts("local", str(path), cache_dir=cache_dir)
        assert caught.value.source == str(path)


# --- scenarios ----------------------------------------------------------------------------------


def test_soda_columns_map_to_canonical_scenarios_skipping_unusable_rows(tmp_path, cache_dir):
    frame = soda_frame()
    frame.loc[[1, 4], "PersonY"] = ""  # no second person
    frame.loc[7, "PersonY"] = "ana"  # same person as PersonX
    frame.loc[9, "narrative"] = None
    path = write(frame, tmp_path / "soda.parquet")
    scenarios, source = load_scenarios("local", path, n_scenarios=26, seed=5, cache_dir=cache_dir)
    assert source == path
    assert tuple(scenarios.columns) == SCENARIO_COLUMNS
    assert len(scenarios) == 26 and scenarios["scenario_id"].is_unique
    rows = scenarios["scenario_id"].str.removeprefix("soda-").astype(int) - 1
    assert not set(rows) & {1, 4, 7, 9}
    for row, scenario in zip(rows, scenarios.itertuples(), strict=True):
        assert scenario.narrative == frame.loc[row, "narrative"]
        assert (scenario.person_x, scenario.person_y) == ("Ana", f"Ben{row}")  # names stripped
    again, _ = load_scenarios("local", path, n_scenarios=26, seed=5, cache_dir=cache_dir)
    pd.testing.assert_frame_equal(scenarios, again)
    other, _ = load_scenarios("local", path, n_scenarios=10, seed=6, cache_dir=cache_dir)
    smaller, _ = load_scenarios("local", path, n_scenarios=10, seed=5, cache_dir=cache_dir)
    assert set(other["scenario_id"]) != set(smaller["scenario_id"])
    with pytest.raises(CorpusError, match="only 26 usable scenarios, 27 requested"):
        load_scenarios("local", path, n_scenarios=27, seed=5, cache_dir=cache_dir)


def test_soda_hub_path_uses_the_split_and_prefixes_ids(tmp_path, cache_dir, monkeypatch):
    parquet = tmp_path / "train.parquet"
    soda_frame().to_parquet(parquet)
    real_load = datasets.load_dataset
    calls = []

    def offline_hub(path, split=None, token=None, cache_dir=None, **kwargs):
        calls.append((path, split))
        return real_load("parquet", data_files=str(parquet), split="train", cache_dir=cache_dir)

    monkeypatch.setattr(datasets, "load_dataset", offline_hub)
    scenarios, source = load_scenarios(
        "hub", "allenai/soda", n_scenarios=5, seed=1, cache_dir=cache_dir
    )
    assert calls == [("allenai/soda", "train")]
    assert source == "allenai/soda (split train)"
    assert scenarios["scenario_id"].str.startswith("train-").all()


def test_soda_missing_column_and_non_text_names_are_errors(tmp_path, cache_dir):
    path = write(soda_frame().drop(columns=["PersonY"]), tmp_path / "soda.parquet")
    with pytest.raises(CorpusError) as caught:
        load_scenarios("local", path, n_scenarios=3, seed=0, cache_dir=cache_dir)
    assert (caught.value.source, caught.value.row, caught.value.column) == (
        path,
        "header",
        "PersonY",
    )

    numeric = soda_frame().assign(PersonX=np.arange(30))
    path = write(numeric, tmp_path / "numeric.parquet")
    with pytest.raises(CorpusError, match="not text") as caught:
        load_scenarios("local", path, n_scenarios=3, seed=0, cache_dir=cache_dir)
    assert caught.value.column == "PersonX" and isinstance(caught.value.row, int)


def test_validate_scenarios_rejects_blank_fields_and_same_person():
    good = pd.DataFrame(
        {
            "scenario_id": ["a", "b"],
            "narrative": ["Ana and Ben argue.", "Cleo helps Dev."],
            "person_x": ["Ana", "Cleo"],
            "person_y": ["Ben", "Dev"],
        }
    )
    validate_scenarios(good, "s.parquet")
    with pytest.raises(CorpusError) as caught:
        validate_scenarios(good.assign(narrative=["Ana and Ben argue.", "  "]), "s.parquet")
    assert (caught.value.row, caught.value.column) == ("2 (scenario_id 'b')", "narrative")
    with pytest.raises(CorpusError, match="same person") as caught:
        validate_scenarios(good.assign(person_y=["ana ", "Dev"]), "s.parquet")
    assert caught.value.row == "1 (scenario_id 'a')"


# --- tertile labels and 95/5 split ------------------------------------------------------------


@pytest.fixture(scope="module")
def posts() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    frame = pd.DataFrame(
        {"post_id": [f"p{i}" for i in range(1200)], "text": ["some words here"] * 1200}
    )
    for trait in TRAITS:
        frame[trait] = rng.standard_normal(1200)
    return frame


@pytest.mark.parametrize("trait", TRAITS)
def test_levels_are_tertiles_with_the_middle_dropped(posts, trait):
    labelled = label_and_split(posts, split_seed=42, test_fraction=0.05)
    level = labelled[f"{trait}_level"]
    scores = posts[trait]
    low_cut, high_cut = np.quantile(scores, [1 / 3, 2 / 3])
    assert (level[scores <= low_cut] == "low").all()
    assert (level[scores > high_cut] == "high").all()
    middle = (scores > low_cut) & (scores <= high_cut)
    assert level[middle].isna().all()
    assert level.value_counts().to_dict() == {"low": 400, "high": 400}


@pytest.mark.parametrize("trait", TRAITS)
def test_split_is_95_5_among_labelled_rows_and_stratified(posts, trait):
    labelled = label_and_split(posts, split_seed=42, test_fraction=0.05)
    level, split = labelled[f"{trait}_level"], labelled[f"{trait}_split"]
    assert (split.isna() == level.isna()).all()
    assert split.value_counts().to_dict() == {"train": 760, "test": 40}
    assert level[split == "test"].value_counts().to_dict() == {"low": 20, "high": 20}


def test_labels_and_splits_are_deterministic_and_seeded(posts):
    first = label_and_split(posts, split_seed=42, test_fraction=0.05)
    pd.testing.assert_frame_equal(first, label_and_split(posts, split_seed=42, test_fraction=0.05))
    pd.testing.assert_frame_equal(first[list(posts.columns)], posts)  # input columns unchanged
    assert "openness_level" not in posts.columns  # no mutation of the input
    other = label_and_split(posts, split_seed=43, test_fraction=0.05)
    assert not first["openness_split"].equals(other["openness_split"])
    assert first["openness_level"].equals(other["openness_level"])
    # Each trait has its own split.
    tests = [set(first.index[first[f"{t}_split"] == "test"]) for t in TRAITS]
    assert len({frozenset(t) for t in tests}) == len(TRAITS)


def test_label_and_split_handles_tiny_inputs_and_rejects_bad_fractions(posts):
    tiny = label_and_split(posts.head(9), split_seed=1, test_fraction=0.05)
    for trait in TRAITS:
        split = tiny[f"{trait}_split"].dropna()
        assert len(split) == 6 and (split == "test").sum() == 1
    with pytest.raises(ValueError, match="test_fraction"):
        label_and_split(posts, split_seed=1, test_fraction=1.5)
    with pytest.raises(ValueError, match="canonical columns"):
        label_and_split(posts.drop(columns=["neuroticism"]), split_seed=1, test_fraction=0.05)


def test_level_boundaries_are_at_or_below_low_and_strictly_above_high():
    # Scores 0..6: the 33.3rd percentile is 2 (low includes it), the 66.7th is 4 (high excludes it).
    frame = pd.DataFrame({"post_id": [str(i) for i in range(7)], "text": ["words"] * 7})
    for trait in TRAITS:
        frame[trait] = np.arange(7, dtype=float)
    level = label_and_split(frame, split_seed=0, test_fraction=0.05)["openness_level"]
    assert level.tolist()[:3] == ["low"] * 3 and level.tolist()[5:] == ["high"] * 2
    assert level.iloc[3:5].isna().all()
