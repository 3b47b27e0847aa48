"""Administering inventory items to a model: item prompts, counterbalanced option orders and
the seeded plan of calls (reading the answers: ``personality.answer_reading``).

One item per call (METHOD.md section 6). The paper's defects are fixed here: every item is
presented in both option orders ("normal": 1 = lowest anchor; "reversed": 1 = highest
anchor), every sampled call has its own recorded seed, and an answer that cannot be parsed
is reported with a status, never turned into a number.

The item order is not shuffled: each call holds one item and nothing of the others, so the
order in which the calls are made cannot change an answer, and a shuffle would only be a
seed that changes nothing. Item order can only matter when the items share a context (the
whole inventory in one conversation, as PsychoBench administers it); that arm is not
implemented (see README, "Personality evaluation").

Two ways to read an answer:

- generate and parse: ``parse_answer`` applies the first-integer rule to the generated text;
- option log-probabilities: ``logprob_answer(s)`` maps the next-token probabilities of the
  presented numbers back onto the scale, renormalizes them and reports the mass that fell
  on the options at all (small models put most of it elsewhere).

Prompt layout (``item_messages``): the system turn holds the persona instruction and/or the
demonstrations; the user turn is instructions, then the option list, then the statement,
then the answer request. Putting the option list before the statement makes everything up
to the statement identical for all items of a condition and option order, so a backend
that caches the KV of a shared prefix computes it once.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np
import pandas as pd

from big5_dagster.lib.common.code_version import code_reach
from big5_dagster.lib.common.hashing import hash_json
from big5_dagster.lib.personality.inventory import Inventory, InventoryError, Item
from big5_dagster.lib.prompts import (
    DEMONSTRATION_LINE_TEMPLATE,
    DEMONSTRATIONS_HEADER,
    OPTION_LINE_TEMPLATE,
    USER_TEMPLATE,
)

OPTION_ORDERS: tuple[str, ...] = ("normal", "reversed")


# Stable small codes for seeding: independent of the order in which a caller lists orders.
_ORDER_CODES: dict[str, int] = {"normal": 0, "reversed": 1}

Message = dict[str, str]


def check_order(order: str) -> str:
    """Return ``order`` if it is 'normal' or 'reversed'; raise ValueError naming the choices."""
    if order not in _ORDER_CODES:
        raise ValueError(f"unknown option order {order!r}: expected one of {list(OPTION_ORDERS)}")
    return order


def map_back(presented_value: Any, order: str, inv: Inventory) -> Any:
    """The scale value meant by the number the model saw (works on scalars and numpy arrays).

    "normal": the presented number is the scale value. "reversed": the presented number p
    labels anchor scale_min + scale_max - p (on 1-5, presented 1 means 5, 'Agree strongly').
    The mapping is its own inverse, so it also gives the number to present for a scale value.
    """
    check_order(order)
    if order == "normal":
        return presented_value
    return inv.scale_min + inv.scale_max - presented_value


def scale_values(inv: Inventory) -> list[int]:
    """The answer values scale_min..scale_max, in ascending order."""
    return list(range(inv.scale_min, inv.scale_max + 1))


def options_block(inv: Inventory, order: str) -> str:
    """The numbered option lines in presented order, e.g. '1 = Agree strongly' first when reversed."""
    check_order(order)
    if not inv.anchors:
        raise InventoryError(
            f"inventory {inv.name!r} has no scale anchors: its options cannot be labelled, "
            "so it cannot be administered item by item with counterbalanced option order"
        )
    return "\n".join(
        OPTION_LINE_TEMPLATE.format(number=p, label=inv.anchors[int(map_back(p, order, inv))])
        for p in scale_values(inv)
    )


def statement_text(inv: Inventory, item: Item) -> str:
    """The stem followed by the item text ('I see myself as someone who... Is talkative.')."""
    return f"{inv.stem} {item.text}" if inv.stem else item.text


def demonstrations_block(demonstrations: Sequence[str]) -> str:
    """The prompting baseline's example replies as one numbered block under a fixed header."""
    if isinstance(demonstrations, str):
        raise TypeError("demonstrations must be a list of strings, not one string")
    if not demonstrations:
        raise ValueError("demonstrations is empty: pass None for no demonstrations")
    lines = []
    for index, text in enumerate(demonstrations, start=1):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"demonstrations[{index - 1}] is empty or not a string: {text!r}")
        lines.append(DEMONSTRATION_LINE_TEMPLATE.format(index=index, text=text.strip()))
    return DEMONSTRATIONS_HEADER + "\n" + "\n".join(lines)


def system_text(persona_system: str | None, demonstrations: Sequence[str] | None) -> str | None:
    """The system turn: persona text, then the demonstrations block; None when neither is given."""
    parts = []
    if persona_system is not None:
        if not persona_system.strip():
            raise ValueError("persona_system is blank: pass None for no system turn")
        parts.append(persona_system.strip())
    if demonstrations is not None:
        parts.append(demonstrations_block(demonstrations))
    return "\n\n".join(parts) if parts else None


def item_messages(
    inv: Inventory,
    item: Item,
    order: str,
    persona_system: str | None = None,
    demonstrations: Sequence[str] | None = None,
) -> list[Message]:
    """Chat messages asking the model to rate one item.

    The system turn (only when ``persona_system`` or ``demonstrations`` is given) holds the
    persona instruction or description and/or the block of example replies. The user turn is
    the inventory's instructions, the numbered options in the presented ``order``, the
    statement (stem + item text) and "Answer with a single number from {min} to {max}."
    Everything before the statement is the same for every item of one condition and order.
    """
    messages: list[Message] = []
    system = system_text(persona_system, demonstrations)
    if system is not None:
        messages.append({"role": "system", "content": system})
    messages.append(
        {
            "role": "user",
            "content": USER_TEMPLATE.format(
                instructions=inv.instructions.strip(),
                options=options_block(inv, order),
                statement=statement_text(inv, item),
                low=inv.scale_min,
                high=inv.scale_max,
            ),
        }
    )
    return messages


@cache
def prompt_template_hash() -> str:
    """Provenance hash of how item prompts are built: the templates (lib.prompts) and the code
    assembling them (the modules ``item_messages`` reaches, see lib.common.code_version).

    Changes whenever a template or the rendering code changes (even cosmetically), so cached
    answers are never reused across prompt versions.
    """
    return code_reach(item_messages).version()


def messages_hash(messages: Sequence[Message]) -> str:
    """Content hash of one concrete prompt (for item-level caching and provenance)."""
    return hash_json([dict(m) for m in messages])


def _derived_seed(*parts: int) -> int:
    # SeedSequence mixes the parts into a well-spread 32-bit seed, identical on every platform.
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint32)[0])


def administration_plan(
    inv: Inventory, n_runs: int, seed: int, orders: Sequence[str] = OPTION_ORDERS
) -> pd.DataFrame:
    """Every call to make: one row per (run, option order, item), deterministic given ``seed``.

    Each item appears in every listed option order in every run (full counterbalancing),
    items in inventory order (one item per call: the order of the calls does not matter).
    ``call_seed`` is a per-call seed derived from (seed, run, order, item number) for
    sampling during generation; it does not depend on the condition, so conditions are
    compared under common random numbers.

    Columns: inventory, run (0-based), option_order, item_id, item_number, call_seed. Rows
    are sorted by run, then by ``orders`` as given, then inventory order.
    """
    if isinstance(n_runs, bool) or not isinstance(n_runs, int) or n_runs < 1:
        raise ValueError(f"n_runs must be a positive integer, got {n_runs!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    orders = tuple(orders)
    if not orders:
        raise ValueError("orders must name at least one option order")
    if len(set(orders)) != len(orders):
        raise ValueError(f"orders lists an order twice: {list(orders)}")
    for order in orders:
        check_order(order)

    item_ids = list(inv.item_ids)
    item_numbers = [item.number for item in inv.items]
    frames = [
        pd.DataFrame(
            {
                "inventory": inv.name,
                "run": run,
                "option_order": order,
                "item_id": item_ids,
                "item_number": item_numbers,
                "call_seed": [
                    _derived_seed(seed, run, _ORDER_CODES[order], n) for n in item_numbers
                ],
            }
        )
        for run in range(n_runs)
        for order in orders
    ]
    plan = pd.concat(frames, ignore_index=True)
    return plan.astype(
        {
            "inventory": "string",
            "run": "int64",
            "option_order": "string",
            "item_id": "string",
            "item_number": "int64",
            "call_seed": "int64",
        }
    )
