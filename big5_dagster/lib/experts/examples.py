"""The expert generators' data and completions (METHOD.md section 3).

One expert per trait learns to continue a post in the voice of a trait level. A training
example is the chat-rendered expert prompt (``lib.prompts.expert_messages``: "complete the
sentence with Big Five personality <Trait> - <level>") with the generation prompt, followed by
the FIRST 5 WORDS of a post; the completion is the rest of the post (with its leading space),
on which alone the loss falls. This is exactly what the expert sees at DExperts decoding time:
its instruction, then the reply tokens generated so far, continued in the assistant turn.

Pure logic (no Dagster).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from big5_dagster.lib.engine.generation import GenerationResult
from big5_dagster.lib.engine.loading import LoadedModel
from big5_dagster.lib.engine.sampling import SamplingParams
from big5_dagster.lib.engine.shared_prefix import generate_with_shared_prefix
from big5_dagster.lib.prompts import expert_messages
from big5_dagster.lib.traits import LEVELS, TRAITS, Persona

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PREFIX_WORDS = 5
"""Words of a post the expert is given (the paper's input); the rest is its target."""
EXAMPLE_COLUMNS: tuple[str, ...] = ("post_id", "level", "prompt", "completion")
PREFIX_COLUMNS: tuple[str, ...] = ("post_id", "level", "prefix", "text")

# Matches from the start through the end of the PREFIX_WORDS-th whitespace-separated word.
_WORDS = re.compile(rf"\s*(?:\S+\s+){{{PREFIX_WORDS - 1}}}\S+")


def split_prefix(text: str) -> tuple[str, str] | None:
    """(first 5 words, rest with its leading whitespace), or None when nothing follows them.

    The prefix keeps the post's own characters (no re-joining), so prefix + rest == the text
    without leading and trailing whitespace.
    """
    stripped = text.lstrip()
    match = _WORDS.match(stripped)
    if match is None:
        return None
    prefix, rest = stripped[: match.end()], stripped[match.end() :]
    if not rest.strip():
        return None
    return prefix, rest.rstrip()


def expert_prompt(
    tokenizer: PreTrainedTokenizerBase, trait: str, level: str, system_prompt: str | None = None
) -> str:
    """The expert's chat-rendered prompt for a trait level, ending with the assistant header.

    ``system_prompt``: None leaves the system turn to the chat template (SmolLM2's injects its
    default assistant prompt); a string, even empty, is the system turn.
    """
    messages = expert_messages(Persona(trait, level), system_prompt)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def check_posts(posts: pd.DataFrame, trait: str) -> tuple[str, str]:
    if trait not in TRAITS:
        raise ValueError(f"unknown trait {trait!r}: expected one of {list(TRAITS)}")
    level_col, split_col = f"{trait}_level", f"{trait}_split"
    needed = ("post_id", "text", trait, level_col, split_col)
    missing = [c for c in needed if c not in posts.columns]
    if missing:
        raise ValueError(
            f"posts lack columns {missing}: pass them through corpora.label_and_split first"
        )
    levels = posts[level_col].dropna()
    bad = levels[~levels.isin(LEVELS)]
    if len(bad):
        row = bad.index[0]
        raise ValueError(
            f"posts row {row} (post_id {posts.at[row, 'post_id']!r}), field {level_col!r}: "
            f"expected 'high' or 'low', got {bad.iloc[0]!r}"
        )
    return level_col, split_col


def _usable_rows(posts: pd.DataFrame, trait: str, split: str) -> pd.DataFrame:
    """Labelled posts of the split whose text has a 5-word prefix and a rest."""
    level_col, split_col = check_posts(posts, trait)
    chosen = posts[(posts[split_col] == split).fillna(False) & posts[level_col].notna()]
    rows = []
    for row, post_id, text, level, z in zip(
        chosen.index,
        chosen["post_id"],
        chosen["text"],
        chosen[level_col],
        chosen[trait],
        strict=True,
    ):
        if not isinstance(text, str):
            raise ValueError(
                f"posts row {row} (post_id {post_id!r}), field 'text': expected a string, got {text!r}"
            )
        parts = split_prefix(text)
        if parts is not None:
            rows.append((str(post_id), str(level), parts[0], parts[1], text, abs(z)))
    return pd.DataFrame(rows, columns=["post_id", "level", "prefix", "rest", "text", "strength"])


def most_extreme(rows: pd.DataFrame, share: float) -> pd.DataFrame:
    """Per level, the ``share`` of rows with the largest |z| (ties at the cut are kept)."""
    if not 0 < share <= 1:
        raise ValueError(f"extreme_share must be in (0, 1], got {share}")
    if share == 1:
        return rows
    cut = rows.groupby("level")["strength"].transform(lambda s: s.quantile(1 - share))
    return rows[rows["strength"] >= cut].reset_index(drop=True)


def _balanced_sample(rows: pd.DataFrame, per_level: int, seed: int) -> pd.DataFrame:
    """``per_level`` rows of each level (seeded), interleaved in a seeded order."""
    rng = np.random.default_rng(seed)
    parts = []
    for level in LEVELS:
        pool = rows[rows["level"] == level]
        pick = rng.choice(len(pool), size=per_level, replace=False)
        parts.append(pool.iloc[np.sort(pick)])
    sample = pd.concat(parts, ignore_index=True)
    return sample.iloc[rng.permutation(len(sample))].reset_index(drop=True)


def _per_level(rows: pd.DataFrame, wanted: int, trait: str, split: str) -> int:
    counts = rows["level"].value_counts()
    available = min(int(counts.get(level, 0)) for level in LEVELS)
    if available == 0:
        raise ValueError(
            f"no usable {split!r} posts for trait {trait!r} at both levels "
            f"(high {int(counts.get('high', 0))}, low {int(counts.get('low', 0))}; a post needs "
            f"more than {PREFIX_WORDS} words)"
        )
    return min(wanted, available)


def expert_examples(
    posts: pd.DataFrame,
    trait: str,
    tokenizer: PreTrainedTokenizerBase,
    max_examples: int,
    seed: int,
    split: str = "train",
    *,
    extreme_share: float = 1.0,
    system_prompt: str | None = None,
) -> pd.DataFrame:
    """Training rows for one trait's expert: post_id, level, prompt, completion.

    A seeded sample of the trait's labelled posts in ``split``, balanced between high and low
    (``max_examples // 2`` each, fewer when a level has fewer usable posts), drawn from the
    ``extreme_share`` of each level's posts whose authors' |z| is largest (1.0: the whole
    tertile). prompt = the rendered expert prompt for the post's level (``expert_prompt``
    with ``system_prompt``) + its first 5 words; completion = the rest.
    """
    if max_examples < 2:
        raise ValueError(f"max_examples must be >= 2 (one per level), got {max_examples}")
    rows = most_extreme(_usable_rows(posts, trait, split), extreme_share)
    sample = _balanced_sample(rows, _per_level(rows, max_examples // 2, trait, split), seed)
    prompts = {level: expert_prompt(tokenizer, trait, level, system_prompt) for level in LEVELS}
    return pd.DataFrame(
        {
            "post_id": sample["post_id"],
            "level": sample["level"],
            "prompt": [
                prompts[lv] + p for lv, p in zip(sample["level"], sample["prefix"], strict=True)
            ],
            "completion": sample["rest"],
        }
    )


def heldout_prefixes(posts: pd.DataFrame, trait: str, n_per_level: int, seed: int) -> pd.DataFrame:
    """Test-split posts of a trait: post_id, level (the author's true level), prefix, text.

    A seeded, balanced sample of ``n_per_level`` posts per level (fewer when the test split
    has fewer); never a post the expert or the classifier trained on.
    """
    if n_per_level < 1:
        raise ValueError(f"n_per_level must be >= 1, got {n_per_level}")
    rows = _usable_rows(posts, trait, "test")
    sample = _balanced_sample(rows, _per_level(rows, n_per_level, trait, "test"), seed)
    return sample[list(PREFIX_COLUMNS)].reset_index(drop=True)


def complete_prefixes(
    loaded_expert: LoadedModel,
    trait: str,
    prefixes: Sequence[str],
    level: str,
    sampling: SamplingParams,
    *,
    system_prompt: str | None = None,
    batch_size: int = 48,
    progress: Callable[[int, int], None] | None = None,
) -> list[GenerationResult]:
    """The expert's continuations of post prefixes under its prompt for ``level``.

    Each prompt is the rendered expert prompt + the prefix, exactly as in training; the
    prompt is shared, so its KV cache is computed once. Row i samples from its own stream
    seeded by (``sampling.seed``, i), so the two levels see the same random numbers for the
    same prefix. The returned text is the continuation only (prepend the prefix to read the
    whole post).
    """
    Persona(trait, level)  # validates both
    prompt = expert_prompt(loaded_expert.tokenizer, trait, level, system_prompt)
    for i, prefix in enumerate(prefixes):
        if not isinstance(prefix, str) or not prefix.strip():
            raise ValueError(f"prefix {i}: expected non-empty text, got {prefix!r}")
    return generate_with_shared_prefix(
        loaded_expert,
        [prompt + prefix for prefix in prefixes],
        sampling,
        batch_size=batch_size,
        progress=progress,
    )
