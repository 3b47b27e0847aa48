"""Personality inventories: loading, validation and scoring.

Two inventories ship as package data in ``big5_dagster/data/inventories/`` (see METHOD.md section 6):

- ``bfi44``: the Big Five Inventory (John, Donahue & Kentle 1991), 44 items, 1-5 agree scale.
- ``ipip_neo_120``: the IPIP-NEO-120 (Johnson 2014), 120 public-domain items, 1-5 accuracy
  scale, 30 facets.

Both are validated on load against the keying counts the paper states, so a transcription
slip in the data (one flipped key) fails loudly instead of skewing every trait score.

Scoring never imputes: an answer that is missing or could not be parsed is counted, and the
category mean is taken over the answered items only.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from big5_dagster.lib.common.package_data import data_name, read_text
from big5_dagster.lib.traits import TRAITS

COMPUTE_MODES: tuple[str, ...] = ("AVG", "SUM")


class InventoryError(ValueError):
    """An inventory file or a set of responses is malformed or inconsistent."""


class TraitKeying(NamedTuple):
    """How many items a trait has and how many of them are reverse-keyed."""

    n_items: int
    n_reversed: int


# The counts METHOD.md section 6 states for the inventories the paper uses.
EXPECTED_KEYING: dict[str, dict[str, TraitKeying]] = {
    "bfi44": {
        "openness": TraitKeying(10, 2),
        "conscientiousness": TraitKeying(9, 4),
        "extraversion": TraitKeying(8, 3),
        "agreeableness": TraitKeying(9, 4),
        "neuroticism": TraitKeying(8, 3),
    },
    "ipip_neo_120": {
        "openness": TraitKeying(24, 12),
        "conscientiousness": TraitKeying(24, 13),
        "extraversion": TraitKeying(24, 6),
        "agreeableness": TraitKeying(24, 17),
        "neuroticism": TraitKeying(24, 7),
    },
}


PACKAGED_INVENTORIES: tuple[str, ...] = tuple(EXPECTED_KEYING)


@dataclass(frozen=True)
class Item:
    """One questionnaire item. ``keyed`` is +1 (agreeing raises the score) or -1 (reverse-keyed).

    ``category`` is the scale the item is scored on (the trait, for Big Five inventories), or
    None when an imported questionnaire puts it in no category or in several.
    """

    id: str
    number: int
    text: str
    category: str | None
    keyed: int
    facet: str | None = None
    facet_code: str | None = None

    @property
    def trait(self) -> str | None:
        return self.category

    @property
    def reverse_keyed(self) -> bool:
        return self.keyed == -1


@dataclass(frozen=True)
class Norm:
    """A human reference sample for one category: mean and SD on the scored scale."""

    mean: float
    sd: float
    n: int
    source: str
    group: str | None = None


@dataclass(frozen=True)
class Inventory:
    """A questionnaire: items, answer scale, categories (item ids per scale) and human norms.

    ``compute_modes`` maps a category to "AVG" (mean of keyed items, the default) or "SUM".
    ``provenance`` records where the item texts and keying were taken from.
    """

    name: str
    title: str
    citation: str
    instructions: str
    stem: str
    scale_min: int
    scale_max: int
    anchors: Mapping[int, str]
    items: tuple[Item, ...]
    categories: Mapping[str, tuple[str, ...]]
    norms: Mapping[str, tuple[Norm, ...]] = field(default_factory=dict)
    compute_modes: Mapping[str, str] = field(default_factory=dict)
    provenance: Mapping[str, str] = field(default_factory=dict)

    @property
    def item_ids(self) -> tuple[str, ...]:
        return tuple(item.id for item in self.items)

    def item(self, item_id: str) -> Item:
        for item in self.items:
            if item.id == item_id:
                return item
        raise InventoryError(f"inventory {self.name!r} has no item {item_id!r}")

    def compute_mode(self, category: str) -> str:
        if category not in self.categories:
            raise InventoryError(
                f"inventory {self.name!r} has no category {category!r}: "
                f"expected one of {list(self.categories)}"
            )
        return self.compute_modes.get(category, "AVG")


def validate_inventory(inv: Inventory) -> None:
    """Structural checks for any inventory; raises InventoryError naming what is wrong.

    Unique item ids and numbers, keys of +1/-1, a scale with min < max whose anchors (when
    given) cover exactly min..max, every item's category known, every category listing only
    existing items, compute modes AVG/SUM, norms only for known categories.
    """
    where = f"inventory {inv.name!r}"
    if inv.scale_min >= inv.scale_max:
        raise InventoryError(f"{where}: scale min {inv.scale_min} is not below max {inv.scale_max}")
    if inv.anchors:
        wanted = set(range(inv.scale_min, inv.scale_max + 1))
        have = set(inv.anchors)
        if have != wanted:
            raise InventoryError(
                f"{where}: scale anchors must cover {inv.scale_min}..{inv.scale_max} exactly; "
                f"missing {sorted(wanted - have)}, unexpected {sorted(have - wanted)}"
            )
    if not inv.items:
        raise InventoryError(f"{where}: has no items")
    seen_ids: set[str] = set()
    seen_numbers: set[int] = set()
    for item in inv.items:
        if item.id in seen_ids:
            raise InventoryError(f"{where}: duplicate item id {item.id!r}")
        if item.number in seen_numbers:
            raise InventoryError(f"{where}: duplicate item number {item.number} ({item.id!r})")
        seen_ids.add(item.id)
        seen_numbers.add(item.number)
        if item.keyed not in (1, -1):
            raise InventoryError(
                f"{where}: item {item.id!r} has keyed={item.keyed!r}, expected +1 or -1"
            )
        if item.category is not None and item.category not in inv.categories:
            raise InventoryError(
                f"{where}: item {item.id!r} has unknown category {item.category!r}; "
                f"known: {list(inv.categories)}"
            )
        if item.category is not None and item.id not in inv.categories[item.category]:
            raise InventoryError(
                f"{where}: item {item.id!r} says category {item.category!r} but is not listed in it"
            )
    for category, ids in inv.categories.items():
        if not ids:
            raise InventoryError(f"{where}: category {category!r} has no items")
        if len(set(ids)) != len(ids):
            raise InventoryError(f"{where}: category {category!r} lists an item twice")
        unknown = [i for i in ids if i not in seen_ids]
        if unknown:
            raise InventoryError(f"{where}: category {category!r} lists unknown items {unknown}")
    for category, mode in inv.compute_modes.items():
        if category not in inv.categories:
            raise InventoryError(f"{where}: compute mode given for unknown category {category!r}")
        if mode not in COMPUTE_MODES:
            raise InventoryError(
                f"{where}: category {category!r} has compute mode {mode!r}, expected one of {list(COMPUTE_MODES)}"
            )
    for category, norms in inv.norms.items():
        if category not in inv.categories:
            raise InventoryError(f"{where}: norms given for unknown category {category!r}")
        for norm in norms:
            if norm.sd < 0 or norm.n <= 0:
                raise InventoryError(
                    f"{where}: norm for {category!r} has sd={norm.sd}, n={norm.n} (need sd >= 0, n > 0)"
                )


def validate_big_five_inventory(inv: Inventory, expected: Mapping[str, TraitKeying]) -> None:
    """Check a Big Five inventory against the expected items and reverse-keyed items per trait.

    Runs validate_inventory first, then requires complete anchors, every item's trait to be
    one of the five traits, and the per-trait counts to equal ``expected`` exactly. All
    mismatches are reported together, each naming the trait and the counts found vs expected.
    """
    validate_inventory(inv)
    where = f"inventory {inv.name!r}"
    if not inv.anchors:
        raise InventoryError(f"{where}: scale anchors are missing")
    for item in inv.items:
        if item.category not in TRAITS:
            raise InventoryError(
                f"{where}: item {item.id!r} has unknown trait {item.category!r}; known traits: {list(TRAITS)}"
            )
    problems: list[str] = []
    for trait in sorted(set(expected) | set(inv.categories), key=_trait_order):
        if trait not in expected:
            problems.append(f"trait {trait!r} is not expected")
            continue
        ids = inv.categories.get(trait, ())
        n_items = len(ids)
        n_reversed = sum(1 for item_id in ids if inv.item(item_id).reverse_keyed)
        want = expected[trait]
        if n_items != want.n_items:
            problems.append(f"{trait}: {n_items} items found, expected {want.n_items}")
        if n_reversed != want.n_reversed:
            problems.append(
                f"{trait}: {n_reversed} reverse-keyed items found, expected {want.n_reversed}"
            )
    if problems:
        raise InventoryError(
            f"{where}: keying does not match the expected counts: " + "; ".join(problems)
        )


def _trait_order(trait: str) -> tuple[int, str]:
    return (TRAITS.index(trait) if trait in TRAITS else len(TRAITS), trait)


def load_inventory(name: str) -> Inventory:
    """Load a packaged inventory ('bfi44' or 'ipip_neo_120'), validated against METHOD.md counts."""
    if name not in PACKAGED_INVENTORIES:
        raise InventoryError(f"unknown inventory {name!r}: available {list(PACKAGED_INVENTORIES)}")
    origin = data_name("inventories", f"{name}.json")
    text = read_text("inventories", f"{name}.json")
    data = parse_json(text, origin)
    inv = inventory_from_dict(data, origin)
    if inv.name != name:
        raise InventoryError(f"{origin}: field 'name' is {inv.name!r}, expected {name!r}")
    try:
        validate_big_five_inventory(inv, EXPECTED_KEYING[name])
    except InventoryError as err:
        raise InventoryError(f"{origin}: {err}") from err
    return inv


def load_inventory_file(
    path: str | Path, expected: Mapping[str, TraitKeying] | None = None
) -> Inventory:
    """Load an inventory JSON file in the packaged format (for custom inventories).

    Always runs validate_inventory; with ``expected`` also validate_big_five_inventory.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise InventoryError(f"{path}: cannot read inventory file: {err}") from err
    inv = inventory_from_dict(parse_json(text, str(path)), str(path))
    try:
        if expected is None:
            validate_inventory(inv)
        else:
            validate_big_five_inventory(inv, expected)
    except InventoryError as err:
        raise InventoryError(f"{path}: {err}") from err
    return inv


def inventory_from_dict(data: Any, origin: str = "<dict>") -> Inventory:
    """Build an Inventory from the packaged JSON layout (not validated; see validate_*).

    Layout: name, title, citation, instructions, stem, source {..}, scale {min, max,
    anchors {"1": ..}}, items [{id, number, text, trait, facet, facet_code?, keyed "+"/"-"}],
    norms {trait: {mean, sd, n, source, group?} or a list of such}. Errors name ``origin``,
    the item and the field.
    """
    if not isinstance(data, dict):
        raise InventoryError(f"{origin}: expected a JSON object, got {type(data).__name__}")
    name = required_field(data, "name", str, origin)
    scale = required_field(data, "scale", dict, origin)
    scale_min = required_field(scale, "min", int, f"{origin}: scale")
    scale_max = required_field(scale, "max", int, f"{origin}: scale")
    raw_anchors = required_field(scale, "anchors", dict, f"{origin}: scale")
    anchors: dict[int, str] = {}
    for key, label in raw_anchors.items():
        try:
            value = int(key)
        except ValueError as err:
            raise InventoryError(f"{origin}: scale.anchors key {key!r} is not an integer") from err
        if not isinstance(label, str):
            raise InventoryError(f"{origin}: scale.anchors[{key!r}] must be a string")
        anchors[value] = label

    raw_items = required_field(data, "items", list, origin)
    items: list[Item] = []
    for index, raw in enumerate(raw_items):
        where = f"{origin}: items[{index}]"
        if not isinstance(raw, dict):
            raise InventoryError(f"{where}: expected an object")
        item_id = required_field(raw, "id", str, where)
        where = f"{where} (id {item_id!r})"
        keyed = required_field(raw, "keyed", str, where)
        if keyed not in ("+", "-"):
            raise InventoryError(f"{where}: field 'keyed' must be '+' or '-', got {keyed!r}")
        items.append(
            Item(
                id=item_id,
                number=required_field(raw, "number", int, where),
                text=required_field(raw, "text", str, where),
                category=optional_field(raw, "trait", str, where),
                keyed=1 if keyed == "+" else -1,
                facet=optional_field(raw, "facet", str, where),
                facet_code=optional_field(raw, "facet_code", str, where),
            )
        )

    grouped: dict[str, list[str]] = {}
    for item in items:
        if item.category is not None:
            grouped.setdefault(item.category, []).append(item.id)
    categories = {c: tuple(grouped[c]) for c in sorted(grouped, key=_trait_order)}
    # An explicit category map (written by inventory_to_dict) also covers items scored on
    # several categories or on none, as imported PsychoBench questionnaires can have.
    explicit = optional_field(data, "categories", dict, origin, default=None)
    if explicit is not None:
        categories = {str(c): tuple(str(i) for i in ids) for c, ids in explicit.items()}
    compute_modes = optional_field(data, "compute_modes", dict, origin, default={})

    norms: dict[str, tuple[Norm, ...]] = {}
    for category, raw_norm in optional_field(data, "norms", dict, origin, default={}).items():
        entries = raw_norm if isinstance(raw_norm, list) else [raw_norm]
        parsed = []
        for k, entry in enumerate(entries):
            where = f"{origin}: norms[{category!r}]" + (
                f"[{k}]" if isinstance(raw_norm, list) else ""
            )
            if not isinstance(entry, dict):
                raise InventoryError(f"{where}: expected an object")
            parsed.append(
                Norm(
                    mean=float(required_field(entry, "mean", numbers.Real, where)),
                    sd=float(required_field(entry, "sd", numbers.Real, where)),
                    n=required_field(entry, "n", int, where),
                    source=required_field(entry, "source", str, where),
                    group=optional_field(entry, "group", str, where),
                )
            )
        norms[category] = tuple(parsed)

    source = optional_field(data, "source", dict, origin, default={})
    return Inventory(
        name=name,
        title=required_field(data, "title", str, origin),
        citation=required_field(data, "citation", str, origin),
        instructions=required_field(data, "instructions", str, origin),
        stem=required_field(data, "stem", str, origin),
        scale_min=scale_min,
        scale_max=scale_max,
        anchors=anchors,
        items=tuple(items),
        categories=categories,
        norms=norms,
        compute_modes={str(k): str(v) for k, v in compute_modes.items()},
        provenance={str(k): str(v) for k, v in source.items()},
    )


def inventory_to_dict(inv: Inventory) -> dict[str, Any]:
    """The JSON layout read by inventory_from_dict, with explicit categories and modes."""
    return {
        "name": inv.name,
        "title": inv.title,
        "citation": inv.citation,
        "instructions": inv.instructions,
        "stem": inv.stem,
        "source": dict(inv.provenance),
        "scale": {
            "min": inv.scale_min,
            "max": inv.scale_max,
            "anchors": {str(k): v for k, v in sorted(inv.anchors.items())},
        },
        "items": [
            {
                "id": item.id,
                "number": item.number,
                "text": item.text,
                "trait": item.category,
                "facet": item.facet,
                "facet_code": item.facet_code,
                "keyed": "+" if item.keyed == 1 else "-",
            }
            for item in inv.items
        ],
        "categories": {c: list(ids) for c, ids in inv.categories.items()},
        "compute_modes": dict(inv.compute_modes),
        "norms": {
            c: [
                {"mean": n.mean, "sd": n.sd, "n": n.n, "source": n.source, "group": n.group}
                for n in entries
            ]
            for c, entries in inv.norms.items()
        },
    }


def inventory_items_frame(inv: Inventory) -> pd.DataFrame:
    """One row per item, in administration order, for the warehouse."""
    return pd.DataFrame(
        {
            "inventory": [inv.name] * len(inv.items),
            "item_id": [item.id for item in inv.items],
            "number": pd.array([item.number for item in inv.items], dtype="int64"),
            "text": [item.text for item in inv.items],
            "category": [item.category for item in inv.items],
            "facet": [item.facet for item in inv.items],
            "facet_code": [item.facet_code for item in inv.items],
            "keyed": pd.array([item.keyed for item in inv.items], dtype="int64"),
            "reverse_keyed": pd.array([item.reverse_keyed for item in inv.items], dtype="bool"),
        }
    )


def reverse_key(value: float, inv: Inventory) -> float:
    """Reverse a response on the inventory's scale: scale_min + scale_max - value (6 - x on 1-5)."""
    _check_on_scale(value, inv, f"inventory {inv.name!r}")
    return inv.scale_min + inv.scale_max - value


def score_responses(
    inv: Inventory, responses: Mapping[str, float | None]
) -> dict[str, dict[str, float | int | None]]:
    """Score one respondent: per category, the mean of answered items after reverse-keying.

    ``responses`` maps item id to a value on the scale (floats allowed, e.g. an expected value
    over option probabilities) or None/NaN for an answer that is missing or was not parsed.
    Missing answers are never imputed; they are counted. Returns, per category:
    ``mean`` (None when nothing was answered), ``score`` (the mean for AVG categories; the sum
    for SUM categories, None unless every item was answered, since a partial sum is not on the
    scale's metric), ``n_items``, ``n_answered``, ``n_missing``.
    Unknown item ids and values off the scale raise InventoryError.
    """
    known = set(inv.item_ids)
    unknown = sorted(set(responses) - known)
    if unknown:
        raise InventoryError(
            f"inventory {inv.name!r}: responses name unknown items {unknown[:5]}"
            + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        )
    by_id = {item.id: item for item in inv.items}
    scores: dict[str, dict[str, float | int | None]] = {}
    for category, ids in inv.categories.items():
        keyed_values: list[float] = []
        n_missing = 0
        for item_id in ids:
            raw = responses.get(item_id)
            if _is_missing(raw):
                n_missing += 1
                continue
            where = f"inventory {inv.name!r}: item {item_id!r}"
            value = _check_on_scale(raw, inv, where)
            item = by_id[item_id]
            keyed_values.append(value if item.keyed == 1 else inv.scale_min + inv.scale_max - value)
        mean = sum(keyed_values) / len(keyed_values) if keyed_values else None
        if inv.compute_mode(category) == "SUM":
            score = sum(keyed_values) if n_missing == 0 else None
        else:
            score = mean
        scores[category] = {
            "mean": mean,
            "score": score,
            "n_items": len(ids),
            "n_answered": len(keyed_values),
            "n_missing": n_missing,
        }
    return scores


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    try:
        return value is pd.NA or bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _check_on_scale(value: Any, inv: Inventory, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InventoryError(
            f"{where}: response {value!r} is not a number (parse answers first; use None for unparsed)"
        )
    number = float(value)
    if not inv.scale_min <= number <= inv.scale_max:
        raise InventoryError(
            f"{where}: response {value!r} is outside the scale {inv.scale_min}..{inv.scale_max}"
        )
    return number


def parse_json(text: str, origin: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InventoryError(f"{origin}: not valid JSON: {err}") from err


def required_field(obj: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in obj:
        raise InventoryError(f"{where}: missing field {key!r}")
    value = obj[key]
    if not is_kind(value, kind):
        raise InventoryError(
            f"{where}: field {key!r} must be {kind.__name__}, got {type(value).__name__} {value!r:.60}"
        )
    return value


def optional_field(
    obj: Mapping[str, Any], key: str, kind: type, where: str, default: Any = None
) -> Any:
    if obj.get(key) is None:
        return default
    return required_field(obj, key, kind, where)


def is_kind(value: Any, kind: type) -> bool:
    # bool is an int in Python; a JSON true where a count belongs is a malformed file.
    if isinstance(value, bool) and kind is not bool:
        return False
    return isinstance(value, kind)


def inventory_norms_frame(inventories: Sequence[Inventory]) -> pd.DataFrame:
    """The human norms of each inventory and category, one row per group, with sources."""
    return pd.DataFrame(
        [
            {
                "inventory": inv.name,
                "category": category,
                "group": norm.group,
                "mean": norm.mean,
                "sd": norm.sd,
                "n": norm.n,
                "source": norm.source,
            }
            for inv in inventories
            for category, entries in inv.norms.items()
            for norm in entries
        ]
    )
