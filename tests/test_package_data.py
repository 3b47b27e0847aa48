"""Data out of code: the phrase banks, scenario lists, item banks and task templates are package
data, and moving them there changed nothing that is generated for a given seed.

The expected hashes were computed with the code before the move (the banks were Python
literals then), so any change to a phrase, a template, a name or the order of a list fails
here: update them only on purpose, together with the data.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from big5_dagster.lib.common.hashing import hash_dataframe, hash_json
from big5_dagster.lib.common.package_data import data_files, load_yaml
from big5_dagster.lib.corpora.synthetic_posts import generate_posts, post_phrases
from big5_dagster.lib.corpora.synthetic_scenarios import generate_scenarios, scenario_banks
from big5_dagster.lib.reasoning import items
from big5_dagster.lib.reasoning.task_set import write_local_tasks

ROOT = Path(__file__).resolve().parent.parent

# The tiny profile's sizes and seeds (profiles/tiny.yaml and config.py defaults).
TINY_TASKS = {"social_mc": 6, "commonsense_mc": 6, "arithmetic_word": 4}


def test_tiny_corpora_are_what_the_code_generated_before_the_move():
    assert hash_dataframe(generate_posts(6000, 42)) == "251f557f40c8c86e"
    assert hash_dataframe(generate_scenarios(32, 42)) == "ea912eb01a9965b6"


@pytest.mark.parametrize(
    ("choice_format", "expected"), [("letter", "9f924a783cd75104"), ("text", "e7411c9a1ad9e5f4")]
)
def test_tiny_reasoning_tasks_are_what_the_code_wrote_before_the_move(
    tmp_path, choice_format, expected
):
    # The manifest version hashes every task's data files and lm-eval config.
    manifest = write_local_tasks(
        tmp_path / "tasks", TINY_TASKS, seed=42, n_shots=2, max_gen_toks=32,
        choice_format=choice_format,
    )  # fmt: skip
    assert manifest["version"] == expected


def test_wide_samples_reach_every_template_and_are_unchanged():
    # Larger samples than the tiny profile draws, so every scenario template, situation,
    # relation and word-problem kind is used at least once.
    assert hash_dataframe(generate_scenarios(600, 7)) == "820bdffa732d0f37"
    assert hash_json(items.generate_social_items(66, 7)) == "ddedd41dacfc9ce9"
    assert hash_json(items.generate_commonsense_items(60, 7)) == "10132e9844b86796"
    arithmetic = items.generate_arithmetic_items(200, 7)
    assert {a["kind"] for a in arithmetic} == set(items.item_banks().problems)
    assert hash_json(arithmetic) == "d61085506c5b4b20"
    rng = random.Random("probe")
    assert hash_json([items._arithmetic_problem(rng) for _ in range(300)]) == "242ae97362b0391e"


def test_every_phrase_of_the_corpus_banks_is_unchanged():
    phrases, scenarios = post_phrases(), scenario_banks()
    banks = {
        "trait_markers": {
            f"{t}/{lv}": {"clauses": list(b.clauses), "tags": list(b.tags)}
            for (t, lv), b in phrases.markers.items()
        },
        "post_openers": list(phrases.openers),
        "post_topics": {k: list(v) for k, v in phrases.topics.items()},
        "neutral_fillers": list(phrases.fillers),
        "connectors": list(phrases.connectors),
        "first_names": list(scenarios.first_names),
        "scenario_pools": {k: list(v) for k, v in scenarios.slots.items()},
        "scenario_templates": [list(t) for t in scenarios.templates],
    }
    assert hash_json(banks) == "c9e11623daa4e7bf"


def test_every_item_of_the_reasoning_banks_is_unchanged():
    banks = items.item_banks()
    content = {
        "people": [list(p) for p in banks.people],
        "situations": [
            {
                "key": s.key, "valence": s.valence, "text": s.text, "feel": s.feel,
                "next": s.next, "react": s.react, "slots": {k: list(v) for k, v in s.slots.items()},
            }
            for s in banks.situations
        ],
        "social_questions": {k: list(v) for k, v in banks.social_questions.items()},
        "commonsense_relations": {
            k: {"templates": list(t), "pairs": [list(p) for p in ps]}
            for k, (t, ps) in banks.relations.items()
        },
        "items_bought": [list(x) for x in banks.items_bought],
        "things_shared": list(banks.things_shared),
        "places": list(banks.places),
    }  # fmt: skip
    assert hash_json(content) == "3e98dfd9ef420d75"


def test_a_broken_bank_names_the_file_and_field(monkeypatch):
    from big5_dagster.lib.corpora import synthetic_posts

    real = synthetic_posts.load_yaml

    def without_tags(*parts):
        document = real(*parts)
        if parts[-1] == "trait_markers.yaml":
            del document["neuroticism"]["low"]["tags"]
        return document

    monkeypatch.setattr(synthetic_posts, "load_yaml", without_tags)
    synthetic_posts.post_phrases.cache_clear()
    try:
        with pytest.raises(ValueError, match=r"trait_markers\.yaml neuroticism\.low.*'tags'"):
            synthetic_posts.post_phrases()
    finally:
        synthetic_posts.post_phrases.cache_clear()


def test_data_files_ship_in_the_wheel(tmp_path):
    # pyproject's package-data must list every data file, or an installed package lacks it.
    packaged = set(data_files("corpora") + data_files("reasoning") + data_files("inventories"))
    assert packaged == {p.relative_to(ROOT / "big5_dagster" / "data").as_posix()
                        for p in (ROOT / "big5_dagster" / "data").rglob("*")
                        if p.is_file() and p.suffix in (".yaml", ".json")}  # fmt: skip
    # Build from a copy: setuptools writes build/ and egg-info beside the sources.
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(ROOT / "big5_dagster", source / "big5_dagster", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(source)],
        check=True, capture_output=True, cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("big5_dagster-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"big5_dagster/data/{p}" for p in packaged} <= names
    assert "big5_dagster/profiles/tiny.yaml" in names
    assert load_yaml("reasoning", "task_configs.yaml")["tasks"].keys() == TINY_TASKS.keys()
