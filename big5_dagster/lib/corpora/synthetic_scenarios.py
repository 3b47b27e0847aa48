"""Deterministic synthetic SODA-like scenarios for the offline ``tiny`` profile.

``generate_scenarios`` stands in for SODA: short two-person social situations with names
filled in. The templates, their slot values and the first names are package data
(``data/corpora/scenario_templates.yaml``, ``scenario_slots.yaml``, ``first_names.yaml``).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache

import pandas as pd

from big5_dagster.lib.common.package_data import data_name, load_yaml


@dataclass(frozen=True)
class ScenarioBanks:
    first_names: tuple[str, ...]
    slots: Mapping[str, tuple[str, ...]]
    """Slot name -> its values, in file order (the order templates fill them in)."""
    templates: tuple[tuple[str, str], ...]
    """(situation, template): {x} is PersonX (opens the dialogue), {y} is PersonY (replies)."""


def _strings(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: expected a non-empty list of strings, got {value!r}")
    return tuple(value)


@cache
def scenario_banks() -> ScenarioBanks:
    """The name list, slot values and templates, read once and checked field by field."""
    names_file = data_name("corpora", "first_names.yaml")
    names = (load_yaml("corpora", "first_names.yaml") or {}).get("first_names")
    slots_file = data_name("corpora", "scenario_slots.yaml")
    slots = (load_yaml("corpora", "scenario_slots.yaml") or {}).get("slots")
    if not isinstance(slots, dict) or not slots:
        raise ValueError(f"{slots_file}: field 'slots' must map slot names to value lists")
    templates_file = data_name("corpora", "scenario_templates.yaml")
    entries = (load_yaml("corpora", "scenario_templates.yaml") or {}).get("templates")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{templates_file}: field 'templates' must be a non-empty list")
    templates = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not all(
            isinstance(entry.get(k), str) for k in ("situation", "template")
        ):
            raise ValueError(f"{templates_file} templates[{i}]: needs situation and template text")
        templates.append((entry["situation"], entry["template"]))
    return ScenarioBanks(
        first_names=_strings(names, f"{names_file} first_names"),
        slots={str(k): _strings(v, f"{slots_file} slots.{k}") for k, v in slots.items()},
        templates=tuple(templates),
    )


def _fill_template(
    template: str, x: str, y: str, rng: random.Random, slots: Mapping[str, tuple[str, ...]]
) -> str:
    slots = {key: rng.choice(values) for key, values in slots.items() if f"{{{key}}}" in template}
    return template.format(x=x, y=y, **slots)


def generate_scenarios(n_scenarios: int, seed: int) -> pd.DataFrame:
    """SODA-like two-person social scenarios in the canonical scenarios schema.

    Columns: scenario_id (str), narrative (2-3 sentences), person_x (opens the dialogue),
    person_y (replies; the persona-steered speaker). Narratives are unique and the two
    names always differ. The same (n_scenarios, seed) always gives the same frame.
    """
    if n_scenarios < 1:
        raise ValueError(f"n_scenarios must be >= 1, got {n_scenarios}")
    banks = scenario_banks()
    rng = random.Random(f"big5-synthetic-scenarios-{seed}")
    seen: set[str] = set()
    rows: list[dict[str, str]] = []
    attempts = 0
    # Cycle through the templates in shuffled rounds so every kind of situation shows up.
    order: list[int] = []
    while len(rows) < n_scenarios:
        attempts += 1
        if attempts > 50 * n_scenarios + 1000:
            raise ValueError(
                f"could not write {n_scenarios} distinct scenarios (got {len(rows)}): "
                "the template pool is too small for this many"
            )
        if not order:
            order = list(range(len(banks.templates)))
            rng.shuffle(order)
        _, template = banks.templates[order.pop()]
        person_x, person_y = rng.sample(banks.first_names, 2)
        narrative = _fill_template(template, person_x, person_y, rng, banks.slots)
        if narrative in seen:
            continue
        seen.add(narrative)
        rows.append(
            {
                "scenario_id": f"synthetic-{len(rows):05d}",
                "narrative": narrative,
                "person_x": person_x,
                "person_y": person_y,
            }
        )
    return pd.DataFrame(rows, columns=["scenario_id", "narrative", "person_x", "person_y"])
