"""Seeded generators of the tiny profile's local reasoning items (lm-eval task data).

- ``generate_social_items``: SocialIQA-like (a situation, a question about a feeling, a
  next action or a reaction, 3 options);
- ``generate_commonsense_items``: CommonsenseQA-like (an everyday question, 5 options);
- ``generate_arithmetic_items``: word problems (1-2 operations) with worked solutions.

Every item is right by construction. The item banks (people, situations, relations, the
words and templates of the word problems) are package data under ``data/reasoning/``;
the generators stay here and read them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

from big5_dagster.lib.common.package_data import data_name, load_yaml
from big5_dagster.lib.reasoning.tasks import ReasoningError


@dataclass(frozen=True)
class Situation:
    """A social situation; its answers follow from it by construction.

    ``feel`` is how X feels afterwards, ``next`` what X does next, ``react`` how Y reacts.
    """

    key: str
    valence: Literal["positive", "negative"]
    text: str
    feel: str
    next: str
    react: str
    slots: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class ItemBanks:
    people: tuple[tuple[str, str, str, str], ...]
    """(name, subject, object, possessive) pronouns."""
    situations: tuple[Situation, ...]
    social_questions: Mapping[str, tuple[str, ...]]
    """Question type (feel, next, react) -> question templates."""
    relations: Mapping[str, tuple[tuple[str, ...], tuple[tuple[str, str], ...]]]
    """Relation -> (question templates, (subject, answer) pairs)."""
    items_bought: tuple[tuple[str, str], ...]
    things_shared: tuple[str, ...]
    places: tuple[str, ...]
    problems: Mapping[str, tuple[str, str]]
    """Word problem kind -> (question template, solution template), in drawing order."""


def _field(mapping: Any, key: str, where: str) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise ValueError(f"{where}: field {key!r} is missing")
    return mapping[key]


def _texts(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: expected a non-empty list of strings, got {value!r}")
    return tuple(value)


def _pairs(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: expected a non-empty list of pairs")
    out = []
    for i, pair in enumerate(value):
        if not (
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)
        ):
            raise ValueError(f"{where}[{i}]: expected two strings, got {pair!r}")
        out.append((pair[0], pair[1]))
    return tuple(out)


def _people(document: Any, where: str) -> tuple[tuple[str, str, str, str], ...]:
    out = []
    for i, person in enumerate(_field(document, "people", where)):
        keys = ("name", "subject", "object", "possessive")
        out.append(tuple(str(_field(person, k, f"{where} people[{i}]")) for k in keys))
    return tuple(out)  # type: ignore[return-value]


def _situations(document: Any, where: str) -> tuple[Situation, ...]:
    out = []
    for i, entry in enumerate(_field(document, "situations", where)):
        at = f"{where} situations[{i}]"
        slots = entry.get("slots") or {} if isinstance(entry, dict) else {}
        out.append(
            Situation(
                **{k: str(_field(entry, k, at)) for k in ("key", "text", "feel", "next", "react")},
                valence=_field(entry, "valence", at),
                slots={str(k): _texts(v, f"{at}.slots.{k}") for k, v in slots.items()},
            )
        )
    return tuple(out)


@cache
def item_banks() -> ItemBanks:
    """The item banks, read once from the package data and checked field by field."""
    people_file = data_name("reasoning", "people.yaml")
    social_file = data_name("reasoning", "social_situations.yaml")
    social = load_yaml("reasoning", "social_situations.yaml")
    relations_file = data_name("reasoning", "commonsense_relations.yaml")
    relations = _field(
        load_yaml("reasoning", "commonsense_relations.yaml"), "relations", relations_file
    )
    arithmetic_file = data_name("reasoning", "arithmetic.yaml")
    arithmetic = load_yaml("reasoning", "arithmetic.yaml")
    problems = _field(arithmetic, "problems", arithmetic_file)
    return ItemBanks(
        people=_people(load_yaml("reasoning", "people.yaml"), people_file),
        situations=_situations(social, social_file),
        social_questions={
            str(k): _texts(v, f"{social_file} questions.{k}")
            for k, v in _field(social, "questions", social_file).items()
        },
        relations={
            str(name): (
                _texts(
                    _field(r, "templates", f"{relations_file} {name}"),
                    f"{relations_file} {name}.templates",
                ),
                _pairs(
                    _field(r, "pairs", f"{relations_file} {name}"), f"{relations_file} {name}.pairs"
                ),
            )
            for name, r in relations.items()
        },
        items_bought=_pairs(
            _field(arithmetic, "items_bought", arithmetic_file), f"{arithmetic_file} items_bought"
        ),
        things_shared=_texts(
            _field(arithmetic, "things_shared", arithmetic_file), f"{arithmetic_file} things_shared"
        ),
        places=_texts(_field(arithmetic, "places", arithmetic_file), f"{arithmetic_file} places"),
        problems={
            str(kind): (
                str(_field(p, "question", f"{arithmetic_file} problems.{kind}")),
                str(_field(p, "solution", f"{arithmetic_file} problems.{kind}")),
            )
            for kind, p in problems.items()
        },
    )


def _pick_people(rng: random.Random) -> dict[str, str]:
    (x, xsub, xobj, xpos), (y, *_rest) = rng.sample(item_banks().people, 2)
    return {"x": x, "xsub": xsub, "xobj": xobj, "xpos": xpos, "y": y}


def _render(template: str, slots: Mapping[str, str]) -> str:
    text = template.format(**slots)
    return text[0].upper() + text[1:]


def _situation_slots(situation: Situation, rng: random.Random) -> dict[str, str]:
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
    banks = item_banks()
    situations, questions = banks.situations, banks.social_questions
    order = list(range(len(situations)))
    qtypes = tuple(questions)

    def make(rng: random.Random, i: int) -> dict[str, Any]:
        if i % len(order) == 0:
            rng.shuffle(order)  # visit every situation once before repeating any
        situation = situations[order[i % len(order)]]
        qtype = qtypes[(i // len(order) + order[i % len(order)]) % len(qtypes)]
        people = _pick_people(rng)
        slots = {**people, **_situation_slots(situation, rng)}
        if qtype == "feel":
            pool = [s for s in situations if s.valence != situation.valence]
        else:
            pool = [s for s in situations if s.key != situation.key]
        distractors = []
        for other in rng.sample(pool, 2):
            other_slots = {**people, **_situation_slots(other, rng)}
            distractors.append(getattr(other, qtype).format(**other_slots))
        correct = getattr(situation, qtype).format(**slots)
        choices, label = _shuffled_options(correct, distractors, rng)
        question = rng.choice(questions[qtype]).format(**people)
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
        for relation, (templates, pairs) in sorted(item_banks().relations.items())
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


def _draw_numbers(kind: str, rng: random.Random, banks: ItemBanks) -> dict[str, Any]:
    """The words and numbers of one problem of ``kind``, and its integer answer."""
    if kind == "total_cost":
        items, _ = rng.choice(banks.items_bought)
        n, price = rng.randint(2, 9), rng.randint(2, 15)
        return {"items": items, "n": n, "price": price, "answer": n * price}
    if kind == "change":
        items, _ = rng.choice(banks.items_bought)
        n, price = rng.randint(2, 6), rng.randint(2, 12)
        cost = n * price
        money = cost + rng.randint(1, 40)
        return {
            "items": items,
            "n": n,
            "price": price,
            "cost": cost,
            "money": money,
            "answer": money - cost,
        }
    if kind == "share":
        things = rng.choice(banks.things_shared)
        k, each = rng.randint(2, 8), rng.randint(2, 12)
        return {"things": things, "k": k, "total": k * each, "answer": each}
    if kind == "keep_and_share":
        things = rng.choice(banks.things_shared)
        k, each, keep = rng.randint(2, 6), rng.randint(2, 9), rng.randint(1, 9)
        rest = k * each
        return {
            "things": things,
            "k": k,
            "keep": keep,
            "rest": rest,
            "total": rest + keep,
            "answer": each,
        }
    if kind == "distance":
        speed, hours = rng.randint(3, 12) * 10, rng.randint(2, 6)
        return {"speed": speed, "hours": hours, "answer": speed * hours}
    if kind == "two_legs":
        a, b = rng.randint(12, 95), rng.randint(12, 95)
        first, second = rng.sample(banks.places, 2)
        return {"a": a, "b": b, "first": first, "second": second, "answer": a + b}
    if kind == "left":
        total = rng.randint(10, 40)
        walked = rng.randint(1, total - 1)
        return {"total": total, "walked": walked, "answer": total - walked}
    if kind == "pages":
        per_day, days = rng.randint(5, 30), rng.randint(2, 9)
        return {"per_day": per_day, "days": days, "answer": per_day * days}
    raise ReasoningError(f"word problem kind {kind!r} has no number generator")


def _arithmetic_problem(rng: random.Random) -> dict[str, Any]:
    """One word problem (1-2 operations) with its worked solution and integer answer."""
    banks = item_banks()
    p = _pick_people(rng)
    kind = rng.choice(tuple(banks.problems))
    values = {"x": p["x"], "he": p["xsub"], "him": p["xobj"], **_draw_numbers(kind, rng, banks)}
    question, solution = banks.problems[kind]
    return {
        "question": question.format(**values),
        "solution": solution.format(**values),
        "answer": values["answer"],
        "kind": kind,
    }


def generate_arithmetic_items(
    n: int, seed: int, *, split: str = "test", exclude: Collection[str] = ()
) -> list[dict[str, Any]]:
    """Arithmetic word problems (shopping, sharing, travel, reading; 1-2 operations).

    Rows: question, solution (the worked steps), answer (int), kind. ``split`` names an
    independent seeded stream, so the few-shot pool never shares a generator with the test.
    """
    rng = random.Random(f"arithmetic_word:{split}:{seed}")
    return _unique_items(lambda r, _i: _arithmetic_problem(r), n, rng, "question", exclude)
