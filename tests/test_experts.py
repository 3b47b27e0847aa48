"""Expert generators' training data and prefix completions (METHOD.md section 3)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from transformers import AutoTokenizer

from big5_dagster.lib.corpora.labels import label_and_split
from big5_dagster.lib.corpora.synthetic_posts import generate_posts
from big5_dagster.lib.engine.chat import render_chat
from big5_dagster.lib.engine.generation import generate_chat, generate_from_text
from big5_dagster.lib.engine.loading import load_model
from big5_dagster.lib.engine.sampling import SamplingParams
from big5_dagster.lib.experts.examples import (
    complete_prefixes,
    expert_examples,
    expert_prompt,
    heldout_prefixes,
    split_prefix,
)

TRAIT = "extraversion"


@pytest.fixture(scope="module")
def posts() -> pd.DataFrame:
    return label_and_split(generate_posts(400, seed=3), split_seed=42, test_fraction=0.1)


@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer_dir: Path):
    return AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)


@pytest.fixture(scope="module")
def tiny_loaded(tiny_model_dir: Path):
    return load_model(str(tiny_model_dir), device="cpu")


def test_split_prefix_keeps_five_words_and_the_rest_with_its_space() -> None:
    assert split_prefix("I went to the park today with friends") == (
        "I went to the park",
        " today with friends",
    )
    assert split_prefix("  one two\nthree four five six ") == ("one two\nthree four five", " six")
    assert split_prefix("only five words are here") is None
    assert split_prefix("four words are here") is None


def test_expert_examples_are_balanced_prefix_prompts_with_the_rest_as_completion(
    posts: pd.DataFrame, tokenizer
) -> None:
    examples = expert_examples(posts, TRAIT, tokenizer, max_examples=40, seed=7)
    assert list(examples.columns) == ["post_id", "level", "prompt", "completion"]
    assert examples["level"].value_counts().to_dict() == {"high": 20, "low": 20}
    assert examples["post_id"].is_unique
    by_id = posts.set_index("post_id")
    for row in examples.itertuples(index=False):
        post = by_id.loc[row.post_id]
        assert post[f"{TRAIT}_split"] == "train"
        assert post[f"{TRAIT}_level"] == row.level
        header = expert_prompt(tokenizer, TRAIT, row.level)
        assert f"{TRAIT.capitalize()} - {row.level}" in header
        assert header.endswith("<|im_start|>assistant\n")
        assert row.prompt.startswith(header)
        prefix = row.prompt[len(header) :]
        assert prefix.split() == post["text"].split()[:5]
        assert row.completion.startswith(" ")
        assert prefix + row.completion == post["text"].strip()


def test_expert_examples_take_the_most_extreme_share_with_the_system_prompt(
    posts: pd.DataFrame, tokenizer
) -> None:
    examples = expert_examples(
        posts, TRAIT, tokenizer, max_examples=20, seed=7, extreme_share=0.5, system_prompt=""
    )
    train = posts[(posts[f"{TRAIT}_split"] == "train") & posts[f"{TRAIT}_level"].notna()]
    by_id = posts.set_index("post_id")
    for row in examples.itertuples(index=False):
        pool = train[train[f"{TRAIT}_level"] == row.level][TRAIT].abs()
        # every sampled author is in the more extreme half of their level
        assert abs(by_id.loc[row.post_id, TRAIT]) >= pool.quantile(0.5) - 1e-9
        assert row.prompt.startswith("<|im_start|>system\n<|im_end|>\n<|im_start|>user\n")
        assert "SmolLM" not in row.prompt
    whole = expert_examples(posts, TRAIT, tokenizer, max_examples=20, seed=7)
    assert "SmolLM" in whole.prompt.iloc[0]  # None: the template's default system turn
    assert set(whole.post_id) != set(examples.post_id)
    with pytest.raises(ValueError, match="extreme_share"):
        expert_examples(posts, TRAIT, tokenizer, 20, 7, extreme_share=0)


def test_expert_examples_are_seeded(posts: pd.DataFrame, tokenizer) -> None:
    first = expert_examples(posts, TRAIT, tokenizer, max_examples=20, seed=1)
    again = expert_examples(posts, TRAIT, tokenizer, max_examples=20, seed=1)
    other = expert_examples(posts, TRAIT, tokenizer, max_examples=20, seed=2)
    pd.testing.assert_frame_equal(first, again)
    assert set(first["post_id"]) != set(other["post_id"])


def test_expert_examples_cap_at_the_smaller_level(posts: pd.DataFrame, tokenizer) -> None:
    examples = expert_examples(posts, TRAIT, tokenizer, max_examples=10_000, seed=0)
    counts = examples["level"].value_counts()
    assert counts["high"] == counts["low"]
    train = posts[posts[f"{TRAIT}_split"] == "train"]
    assert counts["high"] <= min(train[f"{TRAIT}_level"].value_counts())


def test_heldout_prefixes_come_from_the_test_split_only(posts: pd.DataFrame) -> None:
    prefixes = heldout_prefixes(posts, TRAIT, n_per_level=5, seed=0)
    assert prefixes["level"].value_counts().to_dict() == {"high": 5, "low": 5}
    by_id = posts.set_index("post_id")
    for row in prefixes.itertuples(index=False):
        assert by_id.loc[row.post_id, f"{TRAIT}_split"] == "test"
        assert by_id.loc[row.post_id, f"{TRAIT}_level"] == row.level
        assert row.prefix.split() == row.text.split()[:5]


def test_bad_posts_raise_naming_the_field(posts: pd.DataFrame, tokenizer) -> None:
    with pytest.raises(ValueError, match="extraversion_split"):
        expert_examples(posts.drop(columns=f"{TRAIT}_split"), TRAIT, tokenizer, 10, 0)
    broken = posts.copy()
    row = broken.index[broken[f"{TRAIT}_level"].notna()][0]
    broken[f"{TRAIT}_level"] = broken[f"{TRAIT}_level"].astype(object)
    broken.loc[row, f"{TRAIT}_level"] = "medium"
    with pytest.raises(ValueError, match=rf"row {row} .*'{TRAIT}_level'.*'medium'"):
        expert_examples(broken, TRAIT, tokenizer, 10, 0)
    with pytest.raises(ValueError, match="unknown trait"):
        heldout_prefixes(posts, "humour", 2, 0)


def test_generate_from_text_matches_chat_generation(tiny_loaded) -> None:
    conversations = [
        [{"role": "user", "content": "Hello there"}],
        [{"role": "user", "content": "Tell me about your weekend please"}],
    ]
    params = SamplingParams(max_new_tokens=6, seed=5)
    from_chat = generate_chat(tiny_loaded, conversations, params)
    rendered = [render_chat(tiny_loaded.tokenizer, c) for c in conversations]
    from_text = generate_from_text(tiny_loaded, rendered, params)
    assert [r.token_ids for r in from_text] == [r.token_ids for r in from_chat]


def test_complete_prefixes_continue_the_expert_prompt(tiny_loaded) -> None:
    prefixes = ["I went to the park", "My boss said that I"]
    params = SamplingParams(max_new_tokens=5, do_sample=False, seed=0)
    for system in (None, ""):
        results = complete_prefixes(
            tiny_loaded, TRAIT, prefixes, "high", params, system_prompt=system
        )
        assert len(results) == 2 and all(r.n_new_tokens >= 1 for r in results)
        prompt = expert_prompt(tiny_loaded.tokenizer, TRAIT, "high", system)
        manual = generate_from_text(tiny_loaded, [prompt + p for p in prefixes], params)
        assert [r.token_ids for r in results] == [r.token_ids for r in manual]
    with pytest.raises(ValueError, match="level"):
        complete_prefixes(tiny_loaded, TRAIT, prefixes, "medium", params)
