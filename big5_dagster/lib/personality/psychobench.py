"""PsychoBench questionnaires (its questionnaires.json format) imported as inventories."""

from __future__ import annotations

import numbers
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from big5_dagster.lib.personality.inventory import (
    COMPUTE_MODES,
    Inventory,
    InventoryError,
    Item,
    Norm,
    load_inventory,
    optional_field,
    parse_json,
    required_field,
    validate_inventory,
)

_ANSWER_RANGE = re.compile(r"numbers\s+from\s+(-?\d+)\s+to\s+(-?\d+)", re.IGNORECASE)


def load_psychobench_questionnaire(path: str | Path, name: str) -> Inventory:
    """Import one questionnaire from a PsychoBench ``questionnaires.json`` file.

    The file (CUHK-ARISE/PsychoBench) is a JSON list of questionnaires, each with: ``name``;
    ``questions`` {"1": text, ...}; ``scale`` (int); ``reverse`` [item numbers];
    ``categories`` [{cat_name, cat_questions [numbers], compute_mode? "AVG"|"SUM",
    crowd [{crowd_name?, crowd_sample_mean, crowd_sample_sd, crowd_sample_num}]}];
    ``prompt`` and ``inner_setting`` (the instructions and system prompt given to the model).

    Semantics, as in PsychoBench's utils.py:
    - A reverse item's answer x is scored ``scale - x``. ``scale`` is therefore
      min + max of the answer range, not the number of points: BFI has scale 6 with answers
      1..5, LOT-R scale 4 with answers 0..4, EPQ-R scale 1 with answers 0..1. The range is
      read from "numbers from A to B" in inner_setting (else prompt) and must satisfy
      A + B == scale; without such text it is 1..scale-1, PsychoBench's usual layout.
      With scale_min = A and scale_max = B, reverse_key (min + max - x) equals scale - x.
    - ``compute_mode`` is per category; absent means AVG (mean of the category's items),
      SUM is their sum. score_responses follows this.
    - A category may leave items out (LOT-R's fillers) and an item may sit in several
      categories; Item.category is then None and Inventory.categories is authoritative.
    - Crowd norms stay per category, one Norm per crowd group (``crowd_name`` -> group).

    Unknown ``name`` raises InventoryError listing the available names; a malformed file
    raises InventoryError naming the file, the questionnaire and the field.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise InventoryError(f"{path}: cannot read PsychoBench file: {err}") from err
    data = parse_json(text, str(path))
    if not isinstance(data, list):
        raise InventoryError(
            f"{path}: expected a JSON list of questionnaires, got {type(data).__name__}"
        )
    names: list[str] = []
    for index, entry in enumerate(data):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise InventoryError(
                f"{path}: questionnaire [{index}]: field 'name' missing or not a string"
            )
        names.append(entry["name"])
    matches = [entry for entry in data if entry["name"] == name]
    if not matches:
        raise InventoryError(f"{path}: no questionnaire named {name!r}; available: {names}")
    if len(matches) > 1:
        raise InventoryError(f"{path}: questionnaire name {name!r} appears {len(matches)} times")
    inv = _psychobench_inventory(matches[0], path, f"{path}: questionnaire {name!r}")
    try:
        validate_inventory(inv)
    except InventoryError as err:
        raise InventoryError(f"{path}: {err}") from err
    return inv


def _psychobench_inventory(entry: dict[str, Any], path: Path, where: str) -> Inventory:
    name = entry["name"]
    raw_questions = required_field(entry, "questions", dict, where)
    if not raw_questions:
        raise InventoryError(f"{where}: field 'questions' is empty")
    questions: dict[int, str] = {}
    for key, text in raw_questions.items():
        try:
            number = int(key)
        except ValueError as err:
            raise InventoryError(
                f"{where}: field 'questions' key {key!r} is not an item number"
            ) from err
        if not isinstance(text, str):
            raise InventoryError(f"{where}: field 'questions'[{key!r}] must be a string")
        questions[number] = text

    scale = required_field(entry, "scale", int, where)
    prompt = optional_field(entry, "prompt", str, where, default="")
    inner_setting = optional_field(entry, "inner_setting", str, where, default="")
    scale_min, scale_max, range_from = _psychobench_answer_range(
        scale, inner_setting, prompt, where
    )

    reverse = required_field(entry, "reverse", list, where)
    for number in reverse:
        if isinstance(number, bool) or not isinstance(number, int) or number not in questions:
            raise InventoryError(
                f"{where}: field 'reverse' names {number!r}, which is not a question number"
            )

    width = len(str(max(questions)))
    slug = re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_") or "q"

    def item_id(number: int) -> str:
        return f"{slug}_{number:0{width}d}"

    # Newer PsychoBench files set compute_mode once per questionnaire; older ones per category.
    default_mode = optional_field(entry, "compute_mode", str, where, default="AVG")
    raw_categories = required_field(entry, "categories", list, where)
    if not raw_categories:
        raise InventoryError(f"{where}: field 'categories' is empty")
    categories: dict[str, tuple[str, ...]] = {}
    compute_modes: dict[str, str] = {}
    norms: dict[str, tuple[Norm, ...]] = {}
    membership: dict[int, list[str]] = {}
    for index, raw in enumerate(raw_categories):
        cat_where = f"{where}: categories[{index}]"
        if not isinstance(raw, dict):
            raise InventoryError(f"{cat_where}: expected an object")
        cat_name = required_field(raw, "cat_name", str, cat_where)
        cat_where = f"{cat_where} ({cat_name!r})"
        if cat_name in categories:
            raise InventoryError(f"{cat_where}: duplicate field 'cat_name'")
        numbers_in_cat = required_field(raw, "cat_questions", list, cat_where)
        for number in numbers_in_cat:
            if isinstance(number, bool) or not isinstance(number, int) or number not in questions:
                raise InventoryError(
                    f"{cat_where}: field 'cat_questions' names {number!r}, which is not a question number"
                )
            membership.setdefault(number, []).append(cat_name)
        categories[cat_name] = tuple(item_id(n) for n in numbers_in_cat)
        mode = optional_field(raw, "compute_mode", str, cat_where, default=default_mode)
        if mode not in COMPUTE_MODES:
            raise InventoryError(
                f"{cat_where}: field 'compute_mode' is {mode!r}, expected one of {list(COMPUTE_MODES)}"
            )
        compute_modes[cat_name] = mode
        crowd = required_field(raw, "crowd", list, cat_where)
        parsed = []
        for k, group in enumerate(crowd):
            crowd_where = f"{cat_where}: crowd[{k}]"
            if not isinstance(group, dict):
                raise InventoryError(f"{crowd_where}: expected an object")
            # Newer files write {mean, std, n}; older ones crowd_sample_{mean,sd,num}.
            keys = (
                ("mean", "std", "n")
                if "mean" in group
                else ("crowd_sample_mean", "crowd_sample_sd", "crowd_sample_num")
            )
            parsed.append(
                Norm(
                    mean=float(required_field(group, keys[0], numbers.Real, crowd_where)),
                    sd=float(required_field(group, keys[1], numbers.Real, crowd_where)),
                    n=required_field(group, keys[2], int, crowd_where),
                    source=f"PsychoBench {path.name}: {name} / {cat_name}",
                    group=optional_field(group, "crowd_name", str, crowd_where),
                )
            )
        if parsed:
            norms[cat_name] = tuple(parsed)

    reverse_set = set(reverse)
    items = []
    for number in sorted(questions):
        # An item in no category or in several has no single category of its own.
        in_categories = membership.get(number, [])
        items.append(
            Item(
                id=item_id(number),
                number=number,
                text=questions[number],
                category=in_categories[0] if len(in_categories) == 1 else None,
                keyed=-1 if number in reverse_set else 1,
            )
        )
    return Inventory(
        name=name,
        title=name,
        citation=(
            f"Questionnaire {name!r} in PsychoBench format (Huang et al., ICLR 2024, "
            f"github.com/CUHK-ARISE/PsychoBench), imported from {path.name}"
        ),
        instructions=prompt,
        stem="",
        scale_min=scale_min,
        scale_max=scale_max,
        anchors={},
        items=tuple(items),
        categories=categories,
        norms=norms,
        compute_modes=compute_modes,
        provenance={
            "format": "PsychoBench questionnaires.json",
            "file": str(path),
            "questionnaire": name,
            "scale_field": str(scale),
            "answer_range_from": range_from,
            "inner_setting": inner_setting,
        },
    )


def _psychobench_answer_range(
    scale: int, inner_setting: str, prompt: str, where: str
) -> tuple[int, int, str]:
    for field_name, text in (("inner_setting", inner_setting), ("prompt", prompt)):
        match = _ANSWER_RANGE.search(text)
        if match:
            low, high = int(match.group(1)), int(match.group(2))
            if low >= high or low + high != scale:
                raise InventoryError(
                    f"{where}: field 'scale' is {scale} but field {field_name!r} states answers "
                    f"{low}..{high}; PsychoBench reverse-scores as scale - x, which needs "
                    f"min + max == scale"
                )
            return low, high, field_name
    if scale < 3:
        raise InventoryError(
            f"{where}: field 'scale' is {scale} and no 'numbers from A to B' text gives the answer range"
        )
    return 1, scale - 1, "default 1..scale-1"


def configured_inventories(
    names: Sequence[str], psychobench_file: str | None, psychobench_names: Sequence[str]
) -> list[Inventory]:
    """The packaged inventories ``names``, plus the named PsychoBench questionnaires."""
    loaded = [load_inventory(name) for name in names]
    if psychobench_names and not psychobench_file:
        raise ValueError("inventories.psychobench_names is set but psychobench_file is not")
    for name in psychobench_names:
        loaded.append(load_psychobench_questionnaire(psychobench_file, name))
    found = [inv.name for inv in loaded]
    if len(set(found)) != len(found):
        raise ValueError(f"inventory names must be unique, got {found}")
    return loaded
