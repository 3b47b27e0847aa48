"""Reasoning benchmarks through lm-evaluation-harness (METHOD.md section 6, "Reasoning").

Pure logic (no Dagster). lm_eval is the engine: every prompt, few-shot context, filter and
metric below is computed by lm_eval (``lm_eval.evaluator.evaluate`` on an ``HFLM`` that
wraps the model object already in memory, so a peft adapter attached by the caller is what gets
evaluated and no second copy is loaded). This module only

- writes the tiny profile's local task sets (seeded generators: ``social_mc``,
  ``commonsense_mc``, ``arithmetic_word``) as JSONL files plus lm_eval task YAMLs
  (``dataset_path: json``), which run offline;
- declares the paper's task list and few-shot counts (:func:`paper_tasks`);
- runs a task set for one condition and flattens lm_eval's output into tidy tables;
- compares high and low personas per trait (:func:`reasoning_by_trait`) and counts the
  paper's preferred directions (:func:`trait_direction_counts`).

Notes on lm_eval 0.4.13 that shape the code:

- ``TaskManager()`` indexes ~14,700 built-in task configs (about 20 s here); a local task
  set is indexed alone (``include_defaults=False``), in milliseconds.
- ``simple_evaluate`` is ``evaluate`` plus seeding, task loading and run metadata; the
  metadata runs torch's collect_env (``pip list`` and other subprocesses: ~2.7 s per call
  here, ~2 minutes over the tiny profile's conditions), so :func:`run_reasoning` does the
  seeding and loading itself and calls ``evaluate``. Seeding touches Python's, numpy's and
  torch's global generators; the caller's generator states are restored afterwards.
- A local ``data_files`` path must be absolute (lm_eval passes it to ``datasets`` as is,
  relative to the working directory), so the YAMLs name the final directory; a moved task
  directory is detected and reported, not silently mis-read.
- For multiple choice, lm_eval predicts ``np.argmax`` of the per-choice log-likelihoods
  (ties go to the first choice), and identical context+continuation requests are computed
  in one forward pass (``group_by="contexts"``), so identical choices tie exactly.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml

from big5_dagster.lib.storage import atomic_dir, hash_bytes, hash_file, hash_json
from big5_dagster.lib.traits import TRAITS, Persona

OutputType = Literal["multiple_choice", "generate_until"]

LOCAL_GROUP = "big5_local_reasoning"
"""lm_eval group that lists the local tasks (for ``lm_eval --include_path DIR --tasks ...``)."""
LOCAL_TASK_NAMES: tuple[str, ...] = ("social_mc", "commonsense_mc", "arithmetic_word")
GENERATOR_VERSION = 1
"""Bump when a generator or template changes what it writes for the same seed."""
MANIFEST_FILE = "manifest.json"
ANSWER_MARKER = "The answer is"
STRICT_FILTER = "strict-match"
FLEXIBLE_FILTER = "flexible-extract"
NO_FILTER = "none"

# The paper's finding (METHOD.md section 6): models trained for high C, high A, low E and
# low N do better on most benchmarks. Openness has no stated direction.
PREFERRED_LEVEL: dict[str, str] = {
    "conscientiousness": "high",
    "agreeableness": "high",
    "extraversion": "low",
    "neuroticism": "low",
}
_Z_975 = 1.959963984540054


class ReasoningError(ValueError):
    """Bad task set, bad results table or a failed lm_eval run; the message says where."""


# --------------------------------------------------------------------------------------
# Task declarations
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchmarkTask:
    """One lm_eval task (or group, e.g. ``mmlu``) and how this project runs and reads it."""

    name: str
    num_fewshot: int
    output_type: OutputType
    metrics: tuple[str, ...]
    filters: tuple[str, ...] = (NO_FILTER,)
    primary: tuple[tuple[str, str], ...] = ()
    """(metric, filter) pairs that count as this task's benchmark scores (direction count)."""
    version: str | None = None
    """Content hash of a local task's data and config; None for lm_eval's built-in tasks."""
    include_path: str | None = None
    """The folder holding a local task's YAML; None for lm_eval's built-in tasks."""
    is_group: bool = False

    def __post_init__(self) -> None:
        if self.num_fewshot < 0:
            raise ReasoningError(f"task {self.name!r}: num_fewshot must be >= 0")
        for metric, filter_name in self.primary:
            if metric not in self.metrics or filter_name not in self.filters:
                raise ReasoningError(
                    f"task {self.name!r}: primary score ({metric}, {filter_name}) is not "
                    f"among metrics {self.metrics} x filters {self.filters}"
                )


def paper_tasks() -> list[BenchmarkTask]:
    """The paper's benchmarks (METHOD.md section 6) as lm_eval 0.4.13 names them.

    GPQA and all multiple-choice tasks run 0-shot, GSM8K 5-shot with both of lm_eval's
    extractions (strict "#### N" and the last number), TruthfulQA as mc2. METHOD.md names
    these 8 tasks but counts "9 benchmarks"; counting GSM8K's two extractions as two primary
    scores gives 9 (our reading, not stated by the paper). Running them needs the Hugging
    Face hub (or a pre-filled datasets cache), so the tests check the declarations only.
    """
    mc = ("acc", "acc_norm")
    return [
        BenchmarkTask("social_iqa", 0, "multiple_choice", ("acc",), primary=(("acc", NO_FILTER),)),
        BenchmarkTask(
            "commonsense_qa", 0, "multiple_choice", ("acc",), primary=(("acc", NO_FILTER),)
        ),
        BenchmarkTask("piqa", 0, "multiple_choice", mc, primary=(("acc", NO_FILTER),)),
        BenchmarkTask("mathqa", 0, "multiple_choice", mc, primary=(("acc", NO_FILTER),)),
        BenchmarkTask(
            "mmlu", 0, "multiple_choice", ("acc",), primary=(("acc", NO_FILTER),), is_group=True
        ),
        BenchmarkTask(
            "gpqa_main_zeroshot", 0, "multiple_choice", mc, primary=(("acc", NO_FILTER),)
        ),
        BenchmarkTask(
            "gsm8k",
            5,
            "generate_until",
            ("exact_match",),
            filters=(STRICT_FILTER, FLEXIBLE_FILTER),
            primary=(("exact_match", STRICT_FILTER), ("exact_match", FLEXIBLE_FILTER)),
        ),
        BenchmarkTask(
            "truthfulqa_mc2", 0, "multiple_choice", ("acc",), primary=(("acc", NO_FILTER),)
        ),
    ]


# --------------------------------------------------------------------------------------
# Generators of the local task sets
# --------------------------------------------------------------------------------------

# (name, subject, object, possessive) pronouns
_PEOPLE: tuple[tuple[str, str, str, str], ...] = (
    ("Alex", "he", "him", "his"),
    ("Maria", "she", "her", "her"),
    ("Jordan", "he", "him", "his"),
    ("Priya", "she", "her", "her"),
    ("Sam", "he", "him", "his"),
    ("Lena", "she", "her", "her"),
    ("Omar", "he", "him", "his"),
    ("Chloe", "she", "her", "her"),
    ("Daniel", "he", "him", "his"),
    ("Aisha", "she", "her", "her"),
    ("Tom", "he", "him", "his"),
    ("Yuki", "she", "her", "her"),
    ("Carlos", "he", "him", "his"),
    ("Nora", "she", "her", "her"),
    ("Felix", "he", "him", "his"),
    ("Grace", "she", "her", "her"),
)


@dataclass(frozen=True)
class _Situation:
    """A social situation; its answers follow from it by construction.

    ``feel`` is how X feels afterwards, ``next`` what X does next, ``react`` how Y reacts.
    Feeling distractors come from situations of the opposite valence (a sad event cannot
    leave X proud); action distractors mention objects absent from this situation.
    """

    key: str
    valence: Literal["positive", "negative"]
    text: str
    feel: str
    next: str
    react: str
    slots: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


_SITUATIONS: tuple[_Situation, ...] = (
    _Situation(
        "lost_pet",
        "negative",
        "{x} came home and found that {xpos} dog {pet} had slipped out of the yard. {y}, "
        "{xpos} neighbor, heard {xobj} calling for the dog.",
        "worried",
        "search the streets for {pet}",
        "offer to help look for {pet}",
        {"pet": ("Biscuit", "Rex", "Luna", "Pepper")},
    ),
    _Situation(
        "won_race",
        "positive",
        "{x} trained for months and won the {race} race while {y} cheered at the finish line.",
        "proud",
        "celebrate the win with {xpos} running club",
        "hug {x} at the finish line",
        {"race": ("city", "charity", "school", "mountain")},
    ),
    _Situation(
        "forgot_birthday",
        "negative",
        "{x} forgot that yesterday was {y}'s birthday and did not even send a message.",
        "guilty",
        "apologize to {y} and plan a late surprise",
        "tell {x} that the forgotten birthday hurt a little",
    ),
    _Situation(
        "got_job",
        "positive",
        "{x} got a phone call saying {xsub} got the job {xsub} had interviewed for, and "
        "told {y} right away.",
        "excited",
        "get ready for {xpos} first day at the new job",
        "tell {x} that {xsub} earned the new job",
    ),
    _Situation(
        "broke_vase",
        "negative",
        "While visiting {y}, {x} bumped the shelf and broke {y}'s favorite vase.",
        "embarrassed",
        "offer to pay for a new vase",
        "say accidents happen and sweep up the broken vase",
    ),
    _Situation(
        "moved_away",
        "negative",
        "{x} moved to a new city where {xsub} knows nobody, and {y}, {xpos} best friend, "
        "stayed behind.",
        "lonely",
        "join a club in the new city to meet people",
        "promise to visit {x} in the new city soon",
    ),
    _Situation(
        "roadside_help",
        "positive",
        "{x}'s car got a flat tire in the rain, and {y}, a stranger, stopped to help "
        "{xobj} change it.",
        "grateful",
        "thank {y} for changing the tire",
        "say that changing the tire was no trouble",
    ),
    _Situation(
        "passed_exam",
        "positive",
        "{x} was sure {xsub} had failed the {subject} exam, but {y} showed {xobj} the posted "
        "grades and {xsub} had passed.",
        "relieved",
        "relax after weeks of studying {subject}",
        "tell {x} that the worry about the exam was for nothing",
        {"subject": ("chemistry", "history", "statistics", "French")},
    ),
    _Situation(
        "credit_taken",
        "negative",
        "In the team meeting, {x}'s coworker {y} presented {x}'s idea as {y}'s own.",
        "angry",
        "tell the manager whose idea it really was",
        "avoid {x} for the rest of the day",
    ),
    _Situation(
        "surprise_party",
        "positive",
        "{y} secretly invited all of {x}'s old friends and threw {xobj} a surprise party.",
        "happy",
        "thank everyone for coming to the party",
        "watch {x}'s face light up as the guests shout surprise",
    ),
    _Situation(
        "lost_wallet",
        "negative",
        "{x} reached the checkout and realized {xpos} wallet was not in {xpos} bag; {y}, "
        "the cashier, was waiting.",
        "anxious",
        "retrace {xpos} steps to find the wallet",
        "set the groceries aside while {x} looks for the wallet",
    ),
    _Situation(
        "rained_out_picnic",
        "negative",
        "{x} spent all morning packing a picnic for {y}, but a storm rolled in just as "
        "they reached the park.",
        "disappointed",
        "carry the picnic basket back to the car",
        "suggest eating the picnic food at home instead",
    ),
    _Situation(
        "new_niece",
        "positive",
        "{x} held {xpos} newborn niece for the first time while {y}, the baby's mother, watched.",
        "joyful",
        "take photos of the baby",
        "remind {x} to support the baby's head",
    ),
    _Situation(
        "first_speech",
        "negative",
        "{x} has to give a speech to the whole school tomorrow and has never spoken in "
        "public; {y} is {xpos} teacher.",
        "nervous",
        "practice the speech in front of a mirror",
        "give {x} tips for speaking slowly and calmly",
    ),
    _Situation(
        "knitted_scarf",
        "positive",
        "{y} spent weeks knitting {x} a {color} scarf by hand as a winter gift.",
        "touched",
        "wear the {color} scarf the next cold day",
        "hope that {x} likes the {color} scarf",
        {"color": ("red", "green", "blue", "yellow")},
    ),
    _Situation(
        "promotion_denied",
        "negative",
        "{x} worked late for a whole year, but the promotion went to {y}, who had just "
        "joined the company.",
        "frustrated",
        "ask {xpos} boss what {xsub} could do better to be promoted",
        "start the new role as team lead",
    ),
    _Situation(
        "found_money",
        "positive",
        "While {y} was helping {xobj} clean the closet, {x} found a fifty-dollar bill in an "
        "old coat pocket.",
        "delighted",
        "treat {y} to lunch with the fifty dollars",
        "laugh and call {x} lucky for finding the money",
    ),
    _Situation(
        "fever_before_trip",
        "negative",
        "{x} woke up with a high fever on the morning {xsub} and {y} were leaving for a vacation.",
        "miserable",
        "call a doctor and postpone the vacation",
        "bring {x} soup and medicine",
    ),
    _Situation(
        "first_length",
        "positive",
        "After weeks of lessons from {y}, {x} finally swam a full length of the pool "
        "without stopping.",
        "accomplished",
        "sign up for more swimming lessons",
        "give {x} a high five at the edge of the pool",
    ),
    _Situation(
        "locked_out",
        "negative",
        "{x} locked {xpos} keys inside the car at the mall, and {y} had the only spare key "
        "at home across town.",
        "annoyed",
        "call {y} to bring the spare car key",
        "drive across town with the spare car key",
    ),
    _Situation(
        "crash_at_night",
        "negative",
        "{x} was home alone at night when {xsub} heard a loud crash in the basement; {y} "
        "lives next door.",
        "scared",
        "turn on every light and call {y}",
        "come over with a flashlight to check the basement",
    ),
    _Situation(
        "art_show",
        "positive",
        "At the art show, {y} told {x} that {xpos} painting of the {scene} was the best in "
        "the room.",
        "flattered",
        "thank {y} for the kind words about the painting",
        "ask {x} how long the painting of the {scene} took",
        {"scene": ("harbor", "forest", "old bridge", "city at night")},
    ),
)

_SOCIAL_QUESTIONS: dict[str, tuple[str, ...]] = {
    "feel": ("How would {x} feel afterwards?", "How would you describe {x} after this?"),
    "next": ("What will {x} want to do next?", "What is {x} most likely to do next?"),
    "react": ("How would {y} most likely react?", "What will {y} probably do?"),
}


def _pick_people(rng: random.Random) -> dict[str, str]:
    (x, xsub, xobj, xpos), (y, *_rest) = rng.sample(_PEOPLE, 2)
    return {"x": x, "xsub": xsub, "xobj": xobj, "xpos": xpos, "y": y}


def _render(template: str, slots: Mapping[str, str]) -> str:
    text = template.format(**slots)
    return text[0].upper() + text[1:]


def _situation_slots(situation: _Situation, rng: random.Random) -> dict[str, str]:
    return {name: rng.choice(values) for name, values in sorted(situation.slots.items())}


def _shuffled_options(
    correct: str, distractors: Sequence[str], rng: random.Random
) -> tuple[list[str], int]:
    options = [correct, *distractors]
    rng.shuffle(options)
    return options, options.index(correct)


def _unique_items(
    make_item: Callable[[random.Random, int], dict[str, Any]],
    n: int,
    rng: random.Random,
    key: str,
    exclude: Collection[str] = (),
) -> list[dict[str, Any]]:
    """n items from ``make_item(rng, i)`` whose ``key`` text is unique (and not excluded)."""
    items: list[dict[str, Any]] = []
    seen = set(exclude)
    attempts = 0
    while len(items) < n:
        attempts += 1
        if attempts > 50 * n + 100:
            raise ReasoningError(
                f"could only generate {len(items)} distinct items out of the {n} requested; "
                "lower n_items"
            )
        item = make_item(rng, len(items))
        if item[key] in seen:
            continue
        seen.add(item[key])
        items.append(item)
    return items


def generate_social_items(
    n: int, seed: int, *, exclude: Collection[str] = ()
) -> list[dict[str, Any]]:
    """SocialIQA-like items: a situation, a question about a feeling, a next action or a
    reaction, and 3 options (the situation's own answer and two from other situations).

    Rows: context, question, choices (3), label (index of the correct choice), situation,
    question_type.
    """
    rng = random.Random(f"social_mc:{seed}")
    order = list(range(len(_SITUATIONS)))
    qtypes = tuple(_SOCIAL_QUESTIONS)

    def make(rng: random.Random, i: int) -> dict[str, Any]:
        if i % len(order) == 0:
            rng.shuffle(order)  # visit every situation once before repeating any
        situation = _SITUATIONS[order[i % len(order)]]
        qtype = qtypes[(i // len(order) + order[i % len(order)]) % len(qtypes)]
        people = _pick_people(rng)
        slots = {**people, **_situation_slots(situation, rng)}
        if qtype == "feel":
            pool = [s for s in _SITUATIONS if s.valence != situation.valence]
        else:
            pool = [s for s in _SITUATIONS if s.key != situation.key]
        distractors = []
        for other in rng.sample(pool, 2):
            other_slots = {**people, **_situation_slots(other, rng)}
            distractors.append(getattr(other, qtype).format(**other_slots))
        correct = getattr(situation, qtype).format(**slots)
        choices, label = _shuffled_options(correct, distractors, rng)
        question = rng.choice(_SOCIAL_QUESTIONS[qtype]).format(**people)
        context = _render(situation.text, slots)
        return {
            "context": context,
            "question": question,
            "choices": choices,
            "label": label,
            "situation": situation.key,
            "question_type": qtype,
            "_key": f"{context} {question}",
        }

    items = _unique_items(make, n, rng, "_key", exclude)
    for item in items:
        del item["_key"]
    return items


# Everyday relations with one right answer per subject; distractors are other subjects'
# answers in the same relation (scissors do not unlock a door).
_COMMONSENSE_RELATIONS: dict[str, tuple[tuple[str, ...], tuple[tuple[str, str], ...]]] = {
    "tool_for": (
        (
            "What would you use to {s}?",
            "{x} needs to {s}. What should {xsub} pick up?",
            "Which object is made to {s}?",
        ),
        (
            ("cut a sheet of paper", "scissors"),
            ("drive a nail into wood", "hammer"),
            ("unlock the front door", "key"),
            ("measure how long a table is", "tape measure"),
            ("sweep dust off the floor", "broom"),
            ("dig a hole in the garden", "shovel"),
            ("see in a dark basement", "flashlight"),
            ("boil water for tea", "kettle"),
            ("brush your teeth", "toothbrush"),
            ("dry off after a shower", "towel"),
            ("keep the rain off your head", "umbrella"),
            ("tighten a loose screw", "screwdriver"),
            ("water the plants on a balcony", "watering can"),
        ),
    ),
    "place_for": (
        (
            "Where would you go to {s}?",
            "{x} wants to {s}. Where should {xsub} go?",
            "What is the usual place to {s}?",
        ),
        (
            ("borrow a book for free", "library"),
            ("buy a fresh loaf of bread", "bakery"),
            ("catch a flight to another country", "airport"),
            ("mail a package", "post office"),
            ("watch a new film on a big screen", "cinema"),
            ("swim laps", "swimming pool"),
            ("deposit a paycheck", "bank"),
            ("see lions and zebras", "zoo"),
            ("fill a prescription for medicine", "pharmacy"),
            ("get a haircut", "barbershop"),
            ("board a train", "train station"),
            ("fill up the car with fuel", "gas station"),
        ),
    ),
    "animal_that": (
        ("Which animal {s}?", "What animal {s}?", "{x} saw an animal that {s}. What was it?"),
        (
            ("gives the milk sold by dairy farms", "cow"),
            ("lays the eggs people often eat for breakfast", "chicken"),
            ("spins webs to catch insects", "spider"),
            ("makes honey in a hive", "bee"),
            ("has a long trunk", "elephant"),
            ("has a very long neck for reaching treetops", "giraffe"),
            ("carries its baby in a pouch", "kangaroo"),
            ("hoots in the trees at night", "owl"),
            ("has black and white stripes", "zebra"),
            ("builds dams across rivers", "beaver"),
            ("barks at the mail carrier", "dog"),
            ("carries its shell on its back and moves very slowly", "snail"),
        ),
    ),
    "remedy_for": (
        (
            "{x} feels {s}. What should {xsub} do?",
            "What is the best thing to do when you are {s}?",
            "If someone is {s}, what will help?",
        ),
        (
            ("hungry", "eat a meal"),
            ("thirsty", "drink some water"),
            ("sleepy", "go to bed"),
            ("cold", "put on a warm coat"),
            ("sweaty after a long run", "take a shower"),
            ("lost in a new city", "look at a map"),
            ("sick with a high fever", "see a doctor"),
            ("too hot in a stuffy room", "open a window"),
            ("sticky from eating candy", "wash up with soap and water"),
            ("unable to see the board from the back row", "move to a front seat"),
            ("worried about a test tomorrow", "study the material"),
        ),
    ),
    "made_from": (
        (
            "What is {s} mainly made from?",
            "{x} asked what {s} is made from. What is the answer?",
            "Which material is {s} made of?",
        ),
        (
            ("a window pane", "glass"),
            ("a candle", "wax"),
            ("a car tire", "rubber"),
            ("a sheet of paper", "wood pulp"),
            ("a brick", "clay"),
            ("a loaf of bread", "flour"),
            ("cheese", "milk"),
            ("wine", "grapes"),
            ("potato chips", "potatoes"),
            ("ketchup", "tomatoes"),
            ("a wool sweater", "sheep's wool"),
            ("an ice cube", "water"),
        ),
    ),
}


def generate_commonsense_items(
    n: int, seed: int, *, exclude: Collection[str] = ()
) -> list[dict[str, Any]]:
    """CommonsenseQA-like items: an everyday question with 5 options, one right by
    construction (the subject's own answer in its relation) and four from other subjects.

    Rows: question, choices (5), label, relation.
    """
    rng = random.Random(f"commonsense_mc:{seed}")
    facts = [
        (relation, templates, subject, answer, [a for s, a in pairs if s != subject])
        for relation, (templates, pairs) in sorted(_COMMONSENSE_RELATIONS.items())
        for subject, answer in pairs
    ]
    order = list(range(len(facts)))

    def make(rng: random.Random, i: int) -> dict[str, Any]:
        if i % len(order) == 0:
            rng.shuffle(order)
        relation, templates, subject, answer, others = facts[order[i % len(order)]]
        people = _pick_people(rng)
        question = _render(rng.choice(templates), {**people, "s": subject})
        choices, label = _shuffled_options(answer, rng.sample(others, 4), rng)
        return {"question": question, "choices": choices, "label": label, "relation": relation}

    return _unique_items(make, n, rng, "question", exclude)


_ITEMS_BOUGHT = (
    ("notebooks", "notebook"),
    ("apples", "apple"),
    ("movie tickets", "movie ticket"),
    ("bags of rice", "bag of rice"),
    ("paint brushes", "paint brush"),
    ("sandwiches", "sandwich"),
)
_THINGS_SHARED = ("cookies", "stickers", "marbles", "strawberries", "pencils", "cards")
_PLACES = ("the lake", "the market", "the farm", "the museum", "the coast", "the old mill")


def _arithmetic_problem(rng: random.Random) -> dict[str, Any]:
    """One word problem (1-2 operations) with its worked solution and integer answer."""
    p = _pick_people(rng)
    x, he = p["x"], p["xsub"]
    kind = rng.choice(
        ("total_cost", "change", "share", "keep_and_share", "distance", "two_legs", "left", "pages")
    )
    if kind == "total_cost":
        items, _ = rng.choice(_ITEMS_BOUGHT)
        n, price = rng.randint(2, 9), rng.randint(2, 15)
        answer = n * price
        q = f"{x} buys {n} {items} that cost {price} dollars each. How many dollars does {he} spend?"
        s = f"{n} * {price} = {answer}."
    elif kind == "change":
        items, _ = rng.choice(_ITEMS_BOUGHT)
        n, price = rng.randint(2, 6), rng.randint(2, 12)
        cost = n * price
        money = cost + rng.randint(1, 40)
        answer = money - cost
        q = (
            f"{x} has {money} dollars and buys {n} {items} at {price} dollars each. "
            f"How many dollars does {he} have left?"
        )
        s = f"{n} * {price} = {cost}. {money} - {cost} = {answer}."
    elif kind == "share":
        things = rng.choice(_THINGS_SHARED)
        k, each = rng.randint(2, 8), rng.randint(2, 12)
        total = k * each
        answer = each
        q = (
            f"{x} has {total} {things} and shares them equally among {k} friends. "
            f"How many {things} does each friend get?"
        )
        s = f"{total} / {k} = {answer}."
    elif kind == "keep_and_share":
        things = rng.choice(_THINGS_SHARED)
        k, each, keep = rng.randint(2, 6), rng.randint(2, 9), rng.randint(1, 9)
        rest = k * each
        total = rest + keep
        answer = each
        q = (
            f"{x} has {total} {things}, keeps {keep} for {p['xobj']}self and gives the rest "
            f"equally to {k} classmates. How many {things} does each classmate get?"
        )
        s = f"{total} - {keep} = {rest}. {rest} / {k} = {answer}."
    elif kind == "distance":
        speed, hours = rng.randint(3, 12) * 10, rng.randint(2, 6)
        answer = speed * hours
        q = (
            f"A train travels at {speed} kilometers per hour for {hours} hours. "
            "How many kilometers does it travel?"
        )
        s = f"{speed} * {hours} = {answer}."
    elif kind == "two_legs":
        a, b = rng.randint(12, 95), rng.randint(12, 95)
        first, second = rng.sample(_PLACES, 2)
        answer = a + b
        q = (
            f"{x} drives {a} kilometers to {first} and then {b} kilometers more to {second}. "
            f"How many kilometers does {he} drive in total?"
        )
        s = f"{a} + {b} = {answer}."
    elif kind == "left":
        total = rng.randint(10, 40)
        walked = rng.randint(1, total - 1)
        answer = total - walked
        q = (
            f"A hiking trail is {total} kilometers long. {x} has walked {walked} kilometers "
            f"of it. How many kilometers does {he} have left?"
        )
        s = f"{total} - {walked} = {answer}."
    else:  # pages
        per_day, days = rng.randint(5, 30), rng.randint(2, 9)
        answer = per_day * days
        q = f"{x} reads {per_day} pages every day. How many pages does {he} read in {days} days?"
        s = f"{per_day} * {days} = {answer}."
    return {"question": q, "solution": s, "answer": answer, "kind": kind}


def generate_arithmetic_items(
    n: int, seed: int, *, split: str = "test", exclude: Collection[str] = ()
) -> list[dict[str, Any]]:
    """Arithmetic word problems (shopping, sharing, travel, reading; 1-2 operations).

    Rows: question, solution (the worked steps), answer (int), kind. ``split`` names an
    independent seeded stream, so the few-shot pool never shares a generator with the test.
    """
    rng = random.Random(f"arithmetic_word:{split}:{seed}")
    return _unique_items(lambda r, _i: _arithmetic_problem(r), n, rng, "question", exclude)


# --------------------------------------------------------------------------------------
# lm_eval task configs and the task directory
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalTaskData:
    """A task to write: its rows per split and its lm_eval config (without dataset paths)."""

    name: str
    config: Mapping[str, Any]
    """lm_eval task config: everything but ``task``, ``dataset_*`` and the split names."""
    test_rows: Sequence[Mapping[str, Any]]
    fewshot_rows: Sequence[Mapping[str, Any]] = ()
    num_fewshot: int = 0
    filters: tuple[str, ...] = (NO_FILTER,)
    primary: tuple[tuple[str, str], ...] = ()

    @property
    def output_type(self) -> OutputType:
        return self.config["output_type"]

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(m["metric"] for m in self.config["metric_list"])


ChoiceFormat = Literal["text", "letter"]
_LETTERS = "ABCDEFGHIJ"


def multiple_choice_config(
    question_text: str, *, n_choices: int, choice_format: ChoiceFormat = "text"
) -> dict[str, Any]:
    """lm_eval config of a multiple-choice task whose rows have ``choices`` and ``label``.

    ``question_text`` is the Jinja text of the question (without the answer cue).

    - ``text``: each choice's text is the scored continuation of "<question>\nAnswer:"
      (like SocialIQA and PIQA in lm_eval); acc (summed log-likelihood) and acc_norm (per
      character) can differ. One forward pass per choice.
    - ``letter``: the choices are listed as "A. ..." and the letters are scored (like
      CommonsenseQA, MMLU and GPQA in lm_eval). lm_eval scores all one-token continuations
      of a context from one forward pass, so an item costs one pass instead of one per
      choice: 3-5x cheaper, which matters with long persona prompts. acc_norm would equal
      acc (all continuations one character long), so only acc is computed.
    """
    if not 2 <= n_choices <= len(_LETTERS):
        raise ReasoningError(f"n_choices must be between 2 and {len(_LETTERS)}, got {n_choices}")
    metrics = [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]
    if choice_format == "text":
        doc_to_text, doc_to_choice = question_text + "\nAnswer:", "choices"
        metrics.append({"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True})
    elif choice_format == "letter":
        listed = "".join(f"\n{_LETTERS[i]}. {{{{choices[{i}]}}}}" for i in range(n_choices))
        doc_to_text, doc_to_choice = (
            question_text + listed + "\nAnswer:",
            list(_LETTERS[:n_choices]),
        )
    else:
        raise ReasoningError(f"choice_format must be 'text' or 'letter', got {choice_format!r}")
    return {
        "output_type": "multiple_choice",
        "doc_to_text": doc_to_text,
        "doc_to_choice": doc_to_choice,
        "doc_to_target": "label",
        "target_delimiter": " ",
        "metric_list": metrics,
    }


def arithmetic_config(max_gen_toks: int) -> dict[str, Any]:
    """lm_eval config of the word problems, shaped like lm_eval's GSM8K task.

    The target (also the few-shot answer) is "<steps> The answer is N."; exact_match strips
    everything up to the marker from the reference. Two filters: strict-match takes the
    number after "The answer is", flexible-extract the last number in the output.
    """
    number = r"-?[0-9][0-9,]*"
    return {
        "output_type": "generate_until",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_target": "{{solution}} " + ANSWER_MARKER + " {{answer}}.",
        "target_delimiter": " ",
        "fewshot_delimiter": "\n\n",
        "generation_kwargs": {
            "until": ["Question:", "</s>", "<|im_end|>"],
            "do_sample": False,
            "max_gen_toks": max_gen_toks,
        },
        "metric_list": [
            {
                "metric": "exact_match",
                "aggregation": "mean",
                "higher_is_better": True,
                "ignore_case": True,
                "ignore_punctuation": False,
                "regexes_to_ignore": [",", r"\$", "(?s).*" + ANSWER_MARKER + " ", r"\.$"],
            }
        ],
        "filter_list": [
            {
                "name": STRICT_FILTER,
                "filter": [
                    {"function": "regex", "regex_pattern": ANSWER_MARKER + f" ({number})"},
                    {"function": "take_first"},
                ],
            },
            {
                "name": FLEXIBLE_FILTER,
                "filter": [
                    {"function": "regex", "group_select": -1, "regex_pattern": f"({number})"},
                    {"function": "take_first"},
                ],
            },
        ],
    }


def local_task_data(
    n_items: int | Mapping[str, int],
    seed: int,
    n_shots: int,
    *,
    n_fewshot_pool: int | None = None,
    max_gen_toks: int = 64,
    choice_format: ChoiceFormat = "text",
) -> list[LocalTaskData]:
    """The tiny profile's three task sets, generated from ``seed``.

    ``n_items``: test items per task, one count for all or a count per task name.
    """
    counts = dict.fromkeys(LOCAL_TASK_NAMES, n_items) if isinstance(n_items, int) else dict(n_items)
    unknown = sorted(set(counts) - set(LOCAL_TASK_NAMES))
    if unknown or set(counts) != set(LOCAL_TASK_NAMES):
        raise ReasoningError(
            f"n_items must be an int or give a count for each of {list(LOCAL_TASK_NAMES)}, "
            f"got {sorted(counts)}"
        )
    for name, count in counts.items():
        if not isinstance(count, int) or count < 1:
            raise ReasoningError(f"n_items[{name!r}] must be an integer >= 1, got {count!r}")
    if n_shots < 0:
        raise ReasoningError(f"n_shots must be >= 0, got {n_shots}")
    pool = max(8, 2 * n_shots) if n_fewshot_pool is None else n_fewshot_pool
    if pool < n_shots:
        raise ReasoningError(f"n_fewshot_pool ({pool}) must be >= n_shots ({n_shots})")
    arithmetic_test = generate_arithmetic_items(counts["arithmetic_word"], seed, split="test")
    arithmetic_fewshot = generate_arithmetic_items(
        pool, seed, split="fewshot", exclude={row["question"] for row in arithmetic_test}
    )
    acc = (("acc", NO_FILTER),)
    return [
        LocalTaskData(
            "social_mc",
            multiple_choice_config(
                "Q: {{context}} {{question}}", n_choices=3, choice_format=choice_format
            ),
            generate_social_items(counts["social_mc"], seed),
            primary=acc,
        ),
        LocalTaskData(
            "commonsense_mc",
            multiple_choice_config(
                "Question: {{question}}", n_choices=5, choice_format=choice_format
            ),
            generate_commonsense_items(counts["commonsense_mc"], seed),
            primary=acc,
        ),
        LocalTaskData(
            "arithmetic_word",
            arithmetic_config(max_gen_toks),
            arithmetic_test,
            fewshot_rows=arithmetic_fewshot,
            num_fewshot=n_shots,
            filters=(STRICT_FILTER, FLEXIBLE_FILTER),
            primary=(("exact_match", STRICT_FILTER), ("exact_match", FLEXIBLE_FILTER)),
        ),
    ]


def _jsonl_bytes(rows: Sequence[Mapping[str, Any]]) -> bytes:
    return "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows).encode()


def write_task_set(
    directory: Path, tasks: Sequence[LocalTaskData], *, settings: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Write JSONL data, one lm_eval YAML per task, a group YAML and ``manifest.json`` into
    ``directory`` (atomically: the folder is replaced whole) and return the manifest.

    A task's version is the content hash of its data files and its config (with data files
    named relative to the folder, so the hash does not depend on where the folder lives).
    ``settings`` (JSON-serializable) are recorded in the manifest as they are.
    """
    directory = Path(directory).resolve()
    names = [t.name for t in tasks]
    if len(set(names)) != len(names) or not names:
        raise ReasoningError(f"task names must be unique and non-empty, got {names}")
    entries = []
    with atomic_dir(directory) as tmp:
        for task in tasks:
            if not task.test_rows:
                raise ReasoningError(f"task {task.name!r} has no test rows")
            if task.num_fewshot > len(task.fewshot_rows):
                raise ReasoningError(
                    f"task {task.name!r}: num_fewshot {task.num_fewshot} needs at least as "
                    f"many few-shot rows, got {len(task.fewshot_rows)}"
                )
            splits = {"test": task.test_rows}
            if task.fewshot_rows:
                splits["fewshot"] = task.fewshot_rows
            data_files = {split: f"{task.name}.{split}.jsonl" for split in splits}
            for split, rows in splits.items():
                (tmp / data_files[split]).write_bytes(_jsonl_bytes(rows))
            portable = {
                "task": task.name,
                "tag": [LOCAL_GROUP + "_tasks"],
                "dataset_path": "json",
                "dataset_kwargs": {"data_files": data_files},
                "test_split": "test",
                **({"fewshot_split": "fewshot"} if task.fewshot_rows else {}),
                "num_fewshot": task.num_fewshot,
                **{k: v for k, v in task.config.items() if k != "metadata"},
            }
            version = hash_json(
                {"config": portable, "data": {f: hash_file(tmp / f) for f in data_files.values()}}
            )
            config = {
                **portable,
                "dataset_kwargs": {
                    "data_files": {s: str(directory / f) for s, f in data_files.items()}
                },
                "metadata": {"version": GENERATOR_VERSION, "content_hash": version},
            }
            yaml_name = f"{task.name}.yaml"
            (tmp / yaml_name).write_text(yaml.safe_dump(config, sort_keys=False))
            entries.append(
                {
                    "name": task.name,
                    "version": version,
                    "yaml": yaml_name,
                    "data_files": data_files,
                    "n_items": len(task.test_rows),
                    "n_fewshot_pool": len(task.fewshot_rows),
                    "num_fewshot": task.num_fewshot,
                    "output_type": task.output_type,
                    "metrics": list(task.metrics),
                    "filters": list(task.filters),
                    "primary": [list(p) for p in task.primary],
                }
            )
        group = {
            "group": LOCAL_GROUP,
            "task": names,
            "metadata": {"version": GENERATOR_VERSION},
        }
        (tmp / "_group.yaml").write_text(yaml.safe_dump(group, sort_keys=False))
        manifest = {
            "directory": str(directory),
            "group": LOCAL_GROUP,
            "generator_version": GENERATOR_VERSION,
            "version": hash_json([e["version"] for e in entries]),
            "tasks": entries,
            **dict(settings or {}),
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def write_local_tasks(
    directory: Path,
    n_items: int | Mapping[str, int],
    seed: int,
    n_shots: int,
    *,
    n_fewshot_pool: int | None = None,
    max_gen_toks: int = 64,
    choice_format: ChoiceFormat = "text",
) -> dict[str, Any]:
    """Generate the tiny profile's local task sets and write them into ``directory``.

    ``n_items`` test items per task (one count, or a count per task name);
    ``arithmetic_word`` runs ``n_shots``-shot from a separate few-shot split
    (``n_fewshot_pool`` rows, default max(8, 2 * n_shots)) and generates at most
    ``max_gen_toks`` tokens; the multiple-choice tasks run 0-shot like the paper's, in
    ``choice_format`` (see :func:`multiple_choice_config`). Returns the manifest (see
    :func:`write_task_set`), which also records these settings.
    """
    tasks = local_task_data(
        n_items,
        seed,
        n_shots,
        n_fewshot_pool=n_fewshot_pool,
        max_gen_toks=max_gen_toks,
        choice_format=choice_format,
    )
    settings = {
        "seed": seed,
        "n_items": n_items if isinstance(n_items, int) else dict(n_items),
        "n_shots": n_shots,
        "max_gen_toks": max_gen_toks,
        "choice_format": choice_format,
    }
    return write_task_set(directory, tasks, settings=settings)


def load_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of a task directory, checked against the files it names."""
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ReasoningError(f"{path}: cannot read the task manifest ({e})") from e
    _check_manifest(manifest, source=str(path))
    return manifest


def _check_manifest(manifest: Mapping[str, Any], source: str) -> None:
    for field_name in ("directory", "tasks"):
        if field_name not in manifest:
            raise ReasoningError(f"{source}: manifest has no field {field_name!r}")
    directory = Path(manifest["directory"])
    for i, entry in enumerate(manifest["tasks"]):
        for field_name in ("name", "yaml", "data_files", "num_fewshot", "output_type", "metrics"):
            if field_name not in entry:
                raise ReasoningError(f"{source}: tasks[{i}] has no field {field_name!r}")
        for name in [entry["yaml"], *entry["data_files"].values()]:
            if not (directory / name).is_file():
                raise ReasoningError(
                    f"{source}: tasks[{i}] ({entry['name']}) names {directory / name}, which "
                    "does not exist; the task YAMLs hold absolute data paths, so rewrite a "
                    "moved task directory with write_local_tasks"
                )


def benchmark_tasks(manifest: Mapping[str, Any]) -> list[BenchmarkTask]:
    """The tasks of a local task directory's manifest, as :class:`BenchmarkTask` entries."""
    _check_manifest(manifest, source="manifest")
    return [
        BenchmarkTask(
            name=entry["name"],
            num_fewshot=int(entry["num_fewshot"]),
            output_type=entry["output_type"],
            metrics=tuple(entry["metrics"]),
            filters=tuple(entry.get("filters", [NO_FILTER])),
            primary=tuple(tuple(p) for p in entry.get("primary", [])),  # type: ignore[misc]
            version=entry.get("version"),
            include_path=str(manifest["directory"]),
        )
        for entry in manifest["tasks"]
    ]


# --------------------------------------------------------------------------------------
# Running lm_eval on a model already in memory
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def hub_offline(enabled: bool = True) -> Iterator[None]:
    """HF_HUB_OFFLINE / HF_DATASETS_OFFLINE for this block, also for already-imported
    libraries (huggingface_hub and datasets read the variables once, at import)."""
    if not enabled:
        yield
        return
    import datasets.config
    import huggingface_hub.constants

    env_before = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    attrs = [
        (huggingface_hub.constants, "HF_HUB_OFFLINE"),
        (datasets.config, "HF_HUB_OFFLINE"),
        (datasets.config, "HF_DATASETS_OFFLINE"),
    ]
    attrs_before = [(mod, name, getattr(mod, name)) for mod, name in attrs if hasattr(mod, name)]
    os.environ.update({k: "1" for k in env_before})
    for mod, name, _ in attrs_before:
        setattr(mod, name, True)
    try:
        yield
    finally:
        for mod, name, value in attrs_before:
            setattr(mod, name, value)
        for key, value in env_before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _restored_global_rngs() -> Iterator[None]:
    """lm_eval seeds the global random, numpy and torch generators; give the caller's back."""
    import torch

    py_state, np_state, torch_state = (
        random.getstate(),
        np.random.get_state(),
        torch.get_rng_state(),
    )
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


def _task_manager(tasks: Sequence[BenchmarkTask]) -> Any:
    from lm_eval.tasks import TaskManager

    include = sorted({t.include_path for t in tasks if t.include_path})
    builtin = any(t.include_path is None for t in tasks)
    # Indexing lm_eval's ~14,700 built-in configs takes ~20 s: skip it for local-only runs.
    return TaskManager(include_path=include or None, include_defaults=builtin)


def _leaf_tasks(
    loaded: Mapping[str, Any], name: str, group_map: Mapping[str, list[str]]
) -> list[str]:
    if name in loaded["tasks"]:
        return [name]
    return [
        leaf for child in group_map.get(name, []) for leaf in _leaf_tasks(loaded, child, group_map)
    ]


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan  # lm_eval writes "N/A" for a stderr it did not compute


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _samples_rows(
    task: BenchmarkTask, name: str, samples: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    rows = []
    for sample in samples:
        arguments = sample.get("arguments") or [("", "")]
        row: dict[str, Any] = {
            "task": name,
            "benchmark": task.name,
            "doc_id": int(sample["doc_id"]),
            "filter": sample.get("filter", NO_FILTER),
            "target": str(_jsonable(sample.get("target"))),
            "prompt": str(arguments[0][0]),
            "prompt_hash": sample.get("prompt_hash"),
            "doc_hash": sample.get("doc_hash"),
            "doc": json.dumps(_jsonable(sample.get("doc")), sort_keys=True, default=str),
        }
        resps, filtered = sample.get("resps") or [], sample.get("filtered_resps") or []
        if task.output_type == "multiple_choice" or (
            filtered and isinstance(filtered[0], list | tuple)
        ):
            lls = [float(r[0]) for r in filtered]
            row["response"] = None
            row["choice_loglikelihoods"] = json.dumps(lls)
            row["prediction"] = str(int(np.argmax(lls))) if lls else None
        else:
            row["response"] = str(resps[0][0]) if resps and resps[0] else ""
            row["choice_loglikelihoods"] = None
            row["prediction"] = str(filtered[0]) if filtered else None
        for metric in sample.get("metrics", []):
            row[metric] = _as_float(sample.get(metric))
        rows.append(row)
    return rows


def run_reasoning(
    model: Any,
    tokenizer: Any,
    tasks: Mapping[str, Any] | Sequence[BenchmarkTask],
    *,
    system_instruction: str | None,
    apply_chat_template: bool,
    limit: int | None,
    batch_size: int,
    seed: int,
    log_samples: bool = True,
    offline: bool | None = None,
    bootstrap_iters: int = 1000,
    request_cache: Path | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Evaluate ``model`` (a transformers model, or a peft model wrapping one) on ``tasks``
    with lm_eval and return (results, samples) as tidy tables.

    ``tasks`` is a local task directory's manifest (:func:`write_local_tasks`) or a list of
    :class:`BenchmarkTask` (e.g. :func:`paper_tasks`). The persona goes in as lm_eval's
    ``system_instruction``; ``apply_chat_template=True`` renders prompts with the tokenizer's
    chat template and few-shot examples as turns (``fewshot_as_multiturn``). ``limit`` caps
    items per task; ``seed`` seeds lm_eval's generators and few-shot sampling. ``offline``
    (default: True when every task is local) forces HF_HUB_OFFLINE/HF_DATASETS_OFFLINE.
    ``bootstrap_iters`` only matters for non-mean metrics (means get a closed-form stderr).
    ``request_cache``: an SQLite file of lm_eval's response cache (``CachingLM``); a rerun
    computes only requests it does not hold (greedy generations and log-likelihoods). Its
    key is the request alone (full prompt, continuation, generation settings), not the
    model: use one file per model and adapter, e.g. named by their fingerprints.

    results: one row per task (or group), metric and filter: value, stderr, n, n_shot,
    task_version, higher_is_better, primary, is_group, chat_template,
    system_instruction_hash, limit, seed, eval_seconds.
    samples (empty when ``log_samples`` is False): one row per task, doc and filter: target,
    prompt, prompt_hash, doc_hash, doc (JSON), response (generated text), choice_loglikelihoods
    (JSON, multiple choice), prediction (filtered answer or argmax choice index), and one
    column per metric.
    """
    import torch
    from lm_eval.api.model import CachingLM
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM

    benchmarks = benchmark_tasks(tasks) if isinstance(tasks, Mapping) else list(tasks)
    if not benchmarks:
        raise ReasoningError("no tasks to run")
    if batch_size < 1:
        raise ReasoningError(f"batch_size must be >= 1, got {batch_size}")
    if offline is None:
        offline = all(t.include_path for t in benchmarks)
    instruction_hash = (
        hash_bytes(system_instruction.encode()) if system_instruction is not None else None
    )

    started = time.perf_counter()
    with hub_offline(offline), _restored_global_rngs():
        task_manager = _task_manager(benchmarks)
        loaded = task_manager.load([t.name for t in benchmarks])
        group_map = loaded.get("group_map", {})
        for bench in benchmarks:
            leaves = _leaf_tasks(loaded, bench.name, group_map)
            if not leaves:
                raise ReasoningError(f"lm_eval loaded no task for {bench.name!r}")
            for leaf in leaves:
                # Per-task few-shot counts (simple_evaluate's num_fewshot sets one for all).
                loaded["tasks"][leaf].set_config(key="num_fewshot", value=bench.num_fewshot)
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        if request_cache is not None:
            lm = CachingLM(lm, str(request_cache))
        # What simple_evaluate does around evaluate(), minus its run metadata: that calls
        # torch's collect_env (pip list and other subprocesses, ~2.7 s per run here), git,
        # and the hub for the model's sha.
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        for task_object in loaded["tasks"].values():
            task_object.set_fewshot_seed(seed=seed)
        output = evaluate(
            lm=lm,
            task_dict=loaded,
            limit=limit,
            bootstrap_iters=bootstrap_iters,
            log_samples=log_samples,
            system_instruction=system_instruction,
            apply_chat_template=apply_chat_template,
            fewshot_as_multiturn=apply_chat_template,
        )
    seconds = time.perf_counter() - started
    if output is None:
        raise ReasoningError("lm_eval returned no results (not rank 0 of a distributed run?)")

    n_samples = output.get("n-samples", {})
    n_shot = output.get("n-shot", {})
    versions = output.get("versions", {})
    higher = output.get("higher_is_better", {})
    result_rows = []
    for bench in benchmarks:
        scores = output["results"].get(bench.name)
        if scores is None:
            raise ReasoningError(f"lm_eval returned no results for {bench.name!r}")
        leaves = _leaf_tasks(loaded, bench.name, group_map)
        n = sum(int(n_samples.get(leaf, {}).get("effective", 0)) for leaf in leaves)
        for key, value in scores.items():
            metric, sep, filter_name = key.partition(",")
            if not sep or metric.endswith("_stderr"):
                continue
            result_rows.append(
                {
                    "task": bench.name,
                    "metric": metric,
                    "filter": filter_name,
                    "value": _as_float(value),
                    "stderr": _as_float(scores.get(f"{metric}_stderr,{filter_name}")),
                    "n": n,
                    "n_shot": int(n_shot.get(bench.name, n_shot.get(leaves[0], bench.num_fewshot))),
                    "task_version": bench.version or str(versions.get(bench.name, "")),
                    "higher_is_better": bool(
                        higher.get(bench.name, higher.get(leaves[0], {})).get(metric, True)
                    ),
                    "primary": (metric, filter_name) in bench.primary,
                    "is_group": bench.name in loaded.get("groups", {}),
                    "chat_template": bool(apply_chat_template),
                    "system_instruction_hash": instruction_hash,
                    "limit": limit,
                    "seed": seed,
                    "eval_seconds": seconds,
                }
            )
    results = pd.DataFrame(result_rows)
    results["limit"] = results["limit"].astype("Int64")

    sample_rows: list[dict[str, Any]] = []
    if log_samples:
        by_leaf = {
            leaf: bench
            for bench in benchmarks
            for leaf in _leaf_tasks(loaded, bench.name, group_map)
        }
        for leaf, samples in output.get("samples", {}).items():
            if leaf in by_leaf:
                sample_rows.extend(_samples_rows(by_leaf[leaf], leaf, samples))
    samples_table = pd.DataFrame(sample_rows)
    if not samples_table.empty:
        task_version = {t.name: t.version or str(versions.get(t.name, "")) for t in benchmarks}
        samples_table["task_version"] = samples_table["benchmark"].map(task_version)
        samples_table["n_shot"] = samples_table["task"].map(
            lambda leaf: int(n_shot.get(leaf, by_leaf[leaf].num_fewshot))
        )
        samples_table["chat_template"] = bool(apply_chat_template)
        samples_table["system_instruction_hash"] = instruction_hash
    return results, samples_table


# --------------------------------------------------------------------------------------
# High versus low per trait, and the paper's direction count
# --------------------------------------------------------------------------------------

_BY_TRAIT_REQUIRED = ("method", "persona", "task", "metric", "value", "stderr", "n")


def _benchmark_label(task: str, metric: str, filter_name: str) -> str:
    return (
        f"{task}:{metric}" if filter_name in ("", NO_FILTER) else f"{task}:{metric}:{filter_name}"
    )


def reasoning_by_trait(results_per_condition: pd.DataFrame) -> pd.DataFrame:
    """High minus low per method, benchmark and trait, with a 95% confidence interval.

    Input: one row per condition and score with columns method, persona ('<trait>_<level>';
    rows without a persona (None, '' or 'none': the base model) are skipped), task, metric, value,
    stderr, n, and optionally adapter_seed, filter, higher_is_better. A benchmark is
    (task, metric, filter).

    Uncertainty: per adapter seed s the difference is d_s = v_high,s - v_low,s with item
    variance se_s^2 = se_high,s^2 + se_low,s^2 (treating the two runs as independent,
    which is conservative when they share items). One seed (or none: prompting methods):
    se = se_s. Several seeds: diff = mean_s d_s and
    se = sqrt(var_s(d_s) / k + mean_s se_s^2): the first term is the spread between
    training seeds, the second the item sampling variance, which does not shrink with more
    seeds because every seed answers the same items. CI = diff +- 1.96 se.

    Output columns: method, benchmark, task, metric, filter, trait, preferred_level,
    high, low, diff, se, ci_low, ci_high, n_seeds, se_items, se_seeds, n_high, n_low,
    higher_is_better, in_preferred_direction (None for openness).
    """
    df = results_per_condition
    missing = [c for c in _BY_TRAIT_REQUIRED if c not in df.columns]
    if missing:
        raise ReasoningError(f"results table is missing column(s) {missing}")
    df = df.copy()
    if "filter" not in df.columns:
        df["filter"] = NO_FILTER
    if "adapter_seed" not in df.columns:
        df["adapter_seed"] = None
    if "higher_is_better" not in df.columns:
        df["higher_is_better"] = True
    no_persona = df["persona"].isna() | df["persona"].astype(str).str.lower().isin(["", "none"])
    df = df[~no_persona]
    traits, levels = [], []
    for index, key in df["persona"].items():
        try:
            persona = Persona.parse(str(key))
        except ValueError as e:
            raise ReasoningError(f"results table row {index}: field 'persona': {e}") from e
        traits.append(persona.trait)
        levels.append(persona.level)
    df["trait"], df["level"] = traits, levels
    df["seed_key"] = df["adapter_seed"].map(lambda s: "none" if pd.isna(s) else str(s))
    df["filter"] = df["filter"].fillna(NO_FILTER).astype(str)
    keys = ["method", "task", "metric", "filter", "trait", "seed_key", "level"]
    duplicated = df.duplicated(keys, keep=False)
    if duplicated.any():
        first = df[duplicated].iloc[0]
        raise ReasoningError(
            f"results table row {df[duplicated].index[0]}: more than one row for "
            + ", ".join(f"{k}={first[k]!r}" for k in keys if k != "seed_key")
            + f", adapter_seed={first['adapter_seed']!r}"
        )
    for column in ("value", "stderr", "n"):
        bad = pd.to_numeric(df[column], errors="coerce").isna() & df[column].notna()
        if bad.any():
            raise ReasoningError(
                f"results table row {df[bad].index[0]}: field {column!r} is not numeric "
                f"({df.loc[df[bad].index[0], column]!r})"
            )
        df[column] = pd.to_numeric(df[column], errors="coerce")

    wide = df.pivot_table(
        index=["method", "task", "metric", "filter", "trait", "seed_key"],
        columns="level",
        values=["value", "stderr", "n"],
        aggfunc="first",
        dropna=False,
    )
    higher = df.groupby(["method", "task", "metric", "filter"])["higher_is_better"].first()
    rows = []
    for (method, task, metric, filter_name, trait), seeds in wide.groupby(
        level=["method", "task", "metric", "filter", "trait"]
    ):
        paired = seeds.dropna(subset=[("value", "high"), ("value", "low")])
        if paired.empty:
            continue
        d = paired[("value", "high")] - paired[("value", "low")]
        item_var = paired[("stderr", "high")] ** 2 + paired[("stderr", "low")] ** 2
        k = len(paired)
        se_items = float(np.sqrt(item_var.mean()))
        se_seeds = float(d.std(ddof=1) / np.sqrt(k)) if k > 1 else 0.0
        se = float(np.sqrt(se_seeds**2 + se_items**2))
        diff = float(d.mean())
        preferred = PREFERRED_LEVEL.get(trait)
        higher_is_better = bool(higher.loc[(method, task, metric, filter_name)])
        if preferred is None:
            in_direction = None
        else:
            better_high = diff > 0 if higher_is_better else diff < 0
            better_low = diff < 0 if higher_is_better else diff > 0
            in_direction = better_high if preferred == "high" else better_low
        rows.append(
            {
                "method": method,
                "benchmark": _benchmark_label(task, metric, filter_name),
                "task": task,
                "metric": metric,
                "filter": filter_name,
                "trait": trait,
                "preferred_level": preferred,
                "high": float(paired[("value", "high")].mean()),
                "low": float(paired[("value", "low")].mean()),
                "diff": diff,
                "se": se,
                "ci_low": diff - _Z_975 * se,
                "ci_high": diff + _Z_975 * se,
                "n_seeds": k,
                "se_items": se_items,
                "se_seeds": se_seeds,
                "n_high": int(paired[("n", "high")].sum()),
                "n_low": int(paired[("n", "low")].sum()),
                "higher_is_better": higher_is_better,
                "in_preferred_direction": in_direction,
            }
        )
    columns = [
        "method", "benchmark", "task", "metric", "filter", "trait", "preferred_level", "high",
        "low", "diff", "se", "ci_low", "ci_high", "n_seeds", "se_items", "se_seeds", "n_high",
        "n_low", "higher_is_better", "in_preferred_direction",
    ]  # fmt: skip
    out = pd.DataFrame(rows, columns=columns)
    trait_order = {t: i for i, t in enumerate(TRAITS)}
    return (
        out.assign(_t=out["trait"].map(trait_order))
        .sort_values(["method", "_t", "benchmark"])
        .drop(columns="_t")
        .reset_index(drop=True)
    )


def trait_direction_counts(by_trait: pd.DataFrame) -> pd.DataFrame:
    """The paper's count per method: on how many benchmarks high C, high A, low E and low N
    score better (METHOD.md: SFT 7 of 9 each).

    Input: :func:`reasoning_by_trait`'s table (filter it to the primary benchmarks first).
    Output: method, trait, preferred_level, n_benchmarks, n_in_preferred_direction,
    n_significant (the 95% CI excludes 0 on the preferred side), n_ties (diff exactly 0).
    """
    required = ("method", "trait", "benchmark", "diff", "ci_low", "ci_high", "higher_is_better")
    missing = [c for c in required if c not in by_trait.columns]
    if missing:
        raise ReasoningError(f"by-trait table is missing column(s) {missing}")
    rows = []
    for method in sorted(by_trait["method"].unique()):
        for trait, preferred in PREFERRED_LEVEL.items():
            part = by_trait[(by_trait["method"] == method) & (by_trait["trait"] == trait)]
            sign = np.where(part["higher_is_better"].astype(bool), 1.0, -1.0)
            if preferred == "low":
                sign = -sign
            better = part["diff"].to_numpy() * sign  # > 0: the preferred level scores better
            significant = np.where(sign > 0, part["ci_low"] > 0, part["ci_high"] < 0)
            rows.append(
                {
                    "method": method,
                    "trait": trait,
                    "preferred_level": preferred,
                    "n_benchmarks": int(part["benchmark"].nunique()),
                    "n_in_preferred_direction": int((better > 0).sum()),
                    "n_significant": int(significant.sum()),
                    "n_ties": int((better == 0).sum()),
                }
            )
    return pd.DataFrame(rows)
