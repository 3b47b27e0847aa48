"""Deterministic synthetic PsychGenerator-like posts for the offline ``tiny`` profile.

``generate_posts`` stands in for the PsychGenerator posts (METHOD.md section 2): each post
has one author whose five trait z-scores are drawn from a multivariate normal with the
published human intercorrelations (lib/personality/human_reference.py), and its wording
carries those scores through trait-marker phrase banks, so a text classifier can learn the
trait levels and the experts have a real signal to imitate.

Design of the trait signal:
- Each trait's pole (sign of z) picks its bank; the chance of a marker clause and of a
  short marker tag both grow with |z|, so a near-average author writes mostly neutral
  text and an extreme one is unmistakable, while every post mixes several traits.
- Posts open with a neutral opener and an everyday event (topic) most of the time, so
  the first five words are usually neutral and the signal sits in the rest: the experts
  are trained on "first 5 words -> rest of the post".
- A few style habits ride on top (casual lowercase without apostrophes for low
  conscientiousness, exclamation marks for high extraversion, trailing dots for high
  neuroticism), again with a probability that grows with |z|.

The phrase banks are package data (``data/corpora/trait_markers.yaml`` with the sources that
inspired each bank, and ``data/corpora/post_phrases.yaml``); this module only generates.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import pandas as pd

from big5_dagster.lib.common.package_data import data_name, load_yaml
from big5_dagster.lib.personality.human_reference import HUMAN_TRAIT_CORRELATIONS
from big5_dagster.lib.traits import LEVELS, TRAITS

MIN_POST_WORDS = 12
MAX_POST_WORDS = 40
MAX_MARKER_CLAUSES = 3
MAX_MARKER_TAGS = 2
MAX_SENTENCES = 3


@dataclass(frozen=True)
class PoleMarkers:
    """Language of one pole of one trait: full first-person clauses and short tags."""

    clauses: tuple[str, ...]
    tags: tuple[str, ...]


@dataclass(frozen=True)
class PostPhrases:
    """Everything a synthetic post is written from."""

    markers: Mapping[tuple[str, str], PoleMarkers]
    """(trait, level) -> that pole's markers."""
    openers: tuple[str, ...]
    """Neutral first words of most posts."""
    topics: Mapping[str, tuple[str, ...]]
    """Everyday events by topic: neutral content that gives posts something to be about."""
    fillers: tuple[str, ...]
    """Neutral padding for posts that came out too short."""
    connectors: tuple[str, ...]

    @property
    def all_events(self) -> tuple[str, ...]:
        return tuple(e for events in self.topics.values() for e in events)


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: expected a non-empty list of strings, got {value!r}")
    return tuple(value)


def _section(document: Any, key: str, where: str) -> Any:
    if not isinstance(document, dict) or key not in document:
        raise ValueError(f"{where}: field {key!r} is missing")
    return document[key]


@cache
def post_phrases() -> PostPhrases:
    """The phrase banks, read once from the package data and checked field by field."""
    markers_file = data_name("corpora", "trait_markers.yaml")
    markers_doc = load_yaml("corpora", "trait_markers.yaml")
    markers = {}
    for trait in TRAITS:
        poles = _section(markers_doc, trait, markers_file)
        for level in LEVELS:
            pole = _section(poles, level, f"{markers_file} {trait}")
            where = f"{markers_file} {trait}.{level}"
            markers[(trait, level)] = PoleMarkers(
                clauses=_strings(_section(pole, "clauses", where), f"{where}.clauses"),
                tags=_strings(_section(pole, "tags", where), f"{where}.tags"),
            )
    phrases_file = data_name("corpora", "post_phrases.yaml")
    phrases = load_yaml("corpora", "post_phrases.yaml")
    topics = _section(phrases, "topics", phrases_file)
    if not isinstance(topics, dict) or not topics:
        raise ValueError(f"{phrases_file} topics: expected a mapping of topic -> events")
    return PostPhrases(
        markers=markers,
        openers=_strings(_section(phrases, "openers", phrases_file), f"{phrases_file} openers"),
        topics={str(k): _strings(v, f"{phrases_file} topics.{k}") for k, v in topics.items()},
        fillers=_strings(_section(phrases, "fillers", phrases_file), f"{phrases_file} fillers"),
        connectors=_strings(
            _section(phrases, "connectors", phrases_file), f"{phrases_file} connectors"
        ),
    )


def marker_clause_probability(strength: float) -> float:
    """Chance that a trait contributes a marker clause, given its |z|: grows with |z|."""
    return float(np.clip(0.10 + 0.45 * strength, 0.0, 0.92))


def marker_tag_probability(strength: float) -> float:
    """Chance that a trait contributes a short marker tag, given its |z|: grows with |z|."""
    return float(np.clip(0.06 + 0.32 * strength, 0.0, 0.85))


def sample_trait_scores(n: int, seed: int) -> np.ndarray:
    """n x 5 z-scores (TRAITS order) from a multivariate normal with the human correlations."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    chol = np.linalg.cholesky(HUMAN_TRAIT_CORRELATIONS)
    standard = np.random.default_rng(seed).standard_normal((n, len(TRAITS)))
    return standard @ chol.T


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def _ends_sentence(text: str) -> bool:
    return text.rstrip()[-1:] in {"?", "!", "."}


def _casual(text: str) -> str:
    """Low-conscientiousness texting style: all lowercase, no apostrophes, no final stop."""
    return text.lower().replace("'", "").rstrip(".")


def _assemble(
    opener: str | None,
    units: list[str],
    tags: list[str],
    exclaim: bool,
    trail_off: bool,
    rng: random.Random,
    connectors: Sequence[str],
) -> str:
    """Join units into at most MAX_SENTENCES sentences, then append tags."""
    sentences: list[str] = []
    remaining = list(units)
    while remaining:
        current = remaining.pop(0)
        # Merge when too many units are left for the sentence budget, or now and then for variety.
        slots_left = MAX_SENTENCES - len(sentences) - 1
        while (
            remaining
            and not _ends_sentence(current)
            and (len(remaining) > slots_left or rng.random() < 0.3)
        ):
            current = current + rng.choice(connectors) + remaining.pop(0)
        sentences.append(current)
    if opener:
        sentences[0] = f"{opener} {sentences[0]}"
    finished = []
    for i, sentence in enumerate(sentences):
        sentence = _capitalize(sentence)
        if not _ends_sentence(sentence):
            if exclaim and rng.random() < 0.7:
                sentence += "!" if rng.random() < 0.6 else "!!"
            elif trail_off and i == len(sentences) - 1:
                sentence += "..."
            else:
                sentence += "."
        finished.append(sentence)
    text = " ".join(finished)
    if tags:
        text = text + " " + " ".join(tags)
    return text


def _write_post(scores: np.ndarray, rng: random.Random, phrases: PostPhrases) -> str:
    """One post whose markers follow the author's five z-scores."""
    clause_picks: list[tuple[float, str]] = []
    tag_picks: list[tuple[float, str]] = []
    for trait, z in zip(TRAITS, scores, strict=True):
        strength = abs(float(z))
        bank = phrases.markers[trait, "high" if z >= 0 else "low"]
        if rng.random() < marker_clause_probability(strength):
            clause_picks.append((strength, rng.choice(bank.clauses)))
            # Very strong authors sometimes say it twice.
            if strength > 1.5 and rng.random() < 0.3:
                clause_picks.append((strength - 0.01, rng.choice(bank.clauses)))
        if rng.random() < marker_tag_probability(strength):
            tag_picks.append((strength, rng.choice(bank.tags)))
    # The strongest traits win when a post has room for only a few markers.
    clause_picks.sort(key=lambda pick: -pick[0])
    tag_picks.sort(key=lambda pick: -pick[0])
    clauses = list(dict.fromkeys(text for _, text in clause_picks[:MAX_MARKER_CLAUSES]))
    tags = list(dict.fromkeys(text for _, text in tag_picks[:MAX_MARKER_TAGS]))
    rng.shuffle(clauses)
    rng.shuffle(tags)

    topic = rng.choice(sorted(phrases.topics))
    event = rng.choice(phrases.topics[topic])
    opener = rng.choice(phrases.openers) if rng.random() < 0.8 else None
    # Mostly event first (neutral start), sometimes a marker clause leads.
    event_first = not clauses or rng.random() < 0.85
    z = dict(zip(TRAITS, (float(v) for v in scores), strict=True))
    exclaim = rng.random() < float(np.clip(0.5 * z["extraversion"] - 0.1, 0.0, 0.85))
    trail_off = rng.random() < float(np.clip(0.5 * z["neuroticism"] - 0.15, 0.0, 0.7))
    casual = rng.random() < float(np.clip(-0.55 * z["conscientiousness"] - 0.15, 0.0, 0.8))

    def compose(extra: list[str]) -> str:
        units = [event, *clauses] if event_first else [*clauses[:1], event, *clauses[1:]]
        return _assemble(
            opener, [*units, *extra], tags, exclaim, trail_off, rng, phrases.connectors
        )

    text = compose([])
    # Too long: drop the least essential parts first (tags, then the weakest clauses).
    while len(text.split()) > MAX_POST_WORDS:
        if tags:
            tags.pop()
        elif clauses:
            clauses.pop()
        else:
            opener = None
        text = compose([])
    # Too short: pad with neutral content (a filler or another everyday event) that fits.
    all_events = phrases.all_events
    extra: list[str] = []
    while len(text.split()) < MIN_POST_WORDS:
        candidate = rng.choice(phrases.fillers if not extra else all_events)
        padded = compose([*extra, candidate])
        if len(padded.split()) <= MAX_POST_WORDS:
            extra.append(candidate)
            text = padded
    return _casual(text) if casual else text


def generate_posts(n_posts: int, seed: int) -> pd.DataFrame:
    """Synthetic PsychGenerator-like posts in the canonical posts schema.

    Columns: post_id (str), text (str), openness, conscientiousness, extraversion,
    agreeableness, neuroticism (float z-scores of the post's single author). The same
    (n_posts, seed) always gives the same frame.
    """
    if n_posts < 1:
        raise ValueError(f"n_posts must be >= 1, got {n_posts}")
    scores = sample_trait_scores(n_posts, seed)
    # Scores come from numpy's generator; the wording from a separate stream, both from `seed`.
    text_rng = random.Random(f"big5-synthetic-posts-{seed}")
    phrases = post_phrases()
    texts = [_write_post(row, text_rng, phrases) for row in scores]
    frame = pd.DataFrame({"post_id": [f"synthetic-{i:06d}" for i in range(n_posts)], "text": texts})
    for j, trait in enumerate(TRAITS):
        frame[trait] = scores[:, j].astype(float)
    return frame
