"""Administering inventory items to a model: prompts, counterbalancing, parsing, option scoring.

One item per call (METHOD.md section 6). The paper's defects are fixed here: every item is
presented in both option orders ("normal": 1 = lowest anchor; "reversed": 1 = highest
anchor), the item order is shuffled per run with a recorded seed, and an answer that cannot
be parsed is reported with a status, never turned into a number.

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

import re
from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np
import pandas as pd

from big5_dagster.lib.inventories import Inventory, InventoryError, Item
from big5_dagster.lib.storage import hash_json, hash_source

OPTION_ORDERS: tuple[str, ...] = ("normal", "reversed")
# Stable small codes for seeding: independent of the order in which a caller lists orders.
_ORDER_CODES: dict[str, int] = {"normal": 0, "reversed": 1}

Message = dict[str, str]

# --------------------------------------------------------------------------- prompt text

USER_TEMPLATE = (
    "{instructions}\n\n"
    "Response options:\n{options}\n\n"
    "Statement: {statement}\n\n"
    "Answer with a single number from {low} to {high}."
)
OPTION_LINE_TEMPLATE = "{number} = {label}"
DEMONSTRATIONS_HEADER = "Here are examples of how you talk:"
DEMONSTRATION_LINE_TEMPLATE = "{index}. {text}"


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
    """Provenance hash of how item prompts are built: the template texts and the code using them.

    Changes whenever a template string or one of the rendering functions changes (even
    cosmetically), so cached answers are never reused across prompt versions.
    """
    templates = {
        "user": USER_TEMPLATE,
        "option_line": OPTION_LINE_TEMPLATE,
        "demonstrations_header": DEMONSTRATIONS_HEADER,
        "demonstration_line": DEMONSTRATION_LINE_TEMPLATE,
    }
    code = hash_source(
        map_back, options_block, statement_text, demonstrations_block, system_text, item_messages
    )
    return hash_json({"templates": templates, "code": code})


def messages_hash(messages: Sequence[Message]) -> str:
    """Content hash of one concrete prompt (for item-level caching and provenance)."""
    return hash_json([dict(m) for m in messages])


# --------------------------------------------------------------------------- plan


def _derived_seed(*parts: int) -> int:
    # SeedSequence mixes the parts into a well-spread 32-bit seed, identical on every platform.
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint32)[0])


def run_seed(seed: int, run: int) -> int:
    """The seed that shuffles the item order of ``run``: derived from (seed, run)."""
    return _derived_seed(seed, run)


def administration_plan(
    inv: Inventory, n_runs: int, seed: int, orders: Sequence[str] = OPTION_ORDERS
) -> pd.DataFrame:
    """Every call to make: one row per (run, option order, item), deterministic given ``seed``.

    In each run the items are shuffled with ``run_seed(seed, run)`` (recorded per row as
    ``run_seed``); the same item order is used for every option order of that run, so the
    orders differ only in how the options are presented. Each item appears in every listed
    option order in every run (full counterbalancing). ``call_seed`` is a per-call seed
    derived from (seed, run, order, item number) for sampling during generation.

    Columns: inventory, run (0-based), run_seed, option_order, position (1-based place of
    the item in the run's order), item_id, item_number, call_seed. Rows are sorted by run,
    then by ``orders`` as given, then position.
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

    item_ids = np.array(inv.item_ids, dtype=object)
    item_numbers = np.array([item.number for item in inv.items], dtype=np.int64)
    n_items = len(item_ids)
    frames = []
    for run in range(n_runs):
        shuffle_seed = run_seed(seed, run)
        permutation = np.random.default_rng(shuffle_seed).permutation(n_items)
        for order in orders:
            numbers = item_numbers[permutation]
            frames.append(
                pd.DataFrame(
                    {
                        "inventory": inv.name,
                        "run": run,
                        "run_seed": shuffle_seed,
                        "option_order": order,
                        "position": np.arange(1, n_items + 1),
                        "item_id": item_ids[permutation],
                        "item_number": numbers,
                        "call_seed": [
                            _derived_seed(seed, run, _ORDER_CODES[order], n) for n in numbers
                        ],
                    }
                )
            )
    plan = pd.concat(frames, ignore_index=True)
    return plan.astype(
        {
            "inventory": "string",
            "run": "int64",
            "run_seed": "int64",
            "option_order": "string",
            "position": "int64",
            "item_id": "string",
            "item_number": "int64",
            "call_seed": "int64",
        }
    )


# --------------------------------------------------------------------------- parsing

PARSE_STATUSES: tuple[str, ...] = ("ok", "empty", "no_number", "not_integer", "out_of_range")
_DIGITS = re.compile(r"[0-9]+")
_MINUS_SIGNS = ("-", "\u2212")


def first_integer(text: str | None) -> tuple[int | None, str]:
    """The first number token of ``text`` as an integer, without a range check.

    Returns (value, status), status one of 'ok', 'empty', 'no_number', 'not_integer'. See
    ``parse_answer`` for the rule.
    """
    if text is None or not str(text).strip():
        return None, "empty"
    text = str(text)
    match = _DIGITS.search(text)
    if match is None:
        return None, "no_number"
    start, end = match.span()
    # A decimal fraction belongs to the token: '3.5' is one number, not 3. A period that is
    # not followed by a digit ends a sentence ('I'd say 4.').
    if end < len(text) - 1 and text[end] == ".":
        fraction = _DIGITS.match(text, end + 1)
        if fraction is not None and fraction.group().strip("0"):
            return None, "not_integer"
    value = int(match.group())
    # A minus sign right before the digits is the number's sign unless it joins two words or
    # numbers ('3-4' is a range, 'well-2' a typo): only a sign after a space, punctuation or
    # the start counts.
    if start > 0 and text[start - 1] in _MINUS_SIGNS:
        before = text[start - 2] if start >= 2 else ""
        if not before.isalnum():
            value = -value
    return value, "ok"


def parse_answer(text: str | None, inv: Inventory) -> tuple[int | None, str]:
    """Read a generated answer with the first-integer rule; never guesses.

    Rule, applied to the raw generated text:

    1. None or only whitespace -> (None, 'empty').
    2. Find the first maximal run of ASCII digits 0-9. None -> (None, 'no_number'); number
       words ('four') are not read.
    3. The token is the whole run: '45' is forty-five, never 4 then 5.
       If the run is followed by '.' and more digits, the token is a decimal: '3.5' ->
       (None, 'not_integer'); a zero fraction ('4.0', '4.00') is the integer 4. A period
       without digits after it ends a sentence: 'I'd say 4.' -> 4. A comma is not a decimal
       separator ('3,5' -> 3).
    4. A '-' (or U+2212) directly before the run makes it negative when the sign is not
       itself preceded by a letter or digit ('-2' -> -2, out of range on 1-5; '3-4' -> 3).
    5. Valid iff scale_min <= value <= scale_max; otherwise (None, 'out_of_range').
       Later numbers are never consulted: '4/5' -> 4 (read as "4 out of 5"), '3 or 4' -> 3,
       'On a scale of 1 to 5, 4' -> 1. The prompt asks for a single number so the first
       token is the answer; the statuses and raw text are kept so such cases can be audited.

    Returns (value, status) with status in PARSE_STATUSES; value is None unless status 'ok'.
    """
    value, status = first_integer(text)
    if status != "ok":
        return None, status
    if not inv.scale_min <= value <= inv.scale_max:
        return None, "out_of_range"
    return value, "ok"


def parse_answers(
    texts: Sequence[str | None], orders: Sequence[str], inv: Inventory
) -> pd.DataFrame:
    """Parse many generated answers and map them back to the scale.

    Returns a frame aligned with the inputs: presented_value (Int64, the parsed number as
    the model wrote it), value (Float64 scale value after ``map_back``; NA on failure) and
    parse_status.
    """
    if len(texts) != len(orders):
        raise ValueError(f"got {len(texts)} answers but {len(orders)} option orders")
    presented: list[int | None] = []
    values: list[float | None] = []
    statuses: list[str] = []
    for text, order in zip(texts, orders, strict=True):
        value, status = parse_answer(text, inv)
        presented.append(value)
        values.append(None if value is None else float(map_back(value, order, inv)))
        statuses.append(status)
    return pd.DataFrame(
        {
            "presented_value": pd.array(presented, dtype="Int64"),
            "value": pd.array(values, dtype="Float64"),
            "parse_status": pd.array(statuses, dtype="string"),
        }
    )


# --------------------------------------------------------------------------- option scoring

_LOGPROB_TOLERANCE = 1e-6


def logprob_answers(
    option_logprobs: np.ndarray, orders: Sequence[str], inv: Inventory
) -> pd.DataFrame:
    """Scale answers from option log-probabilities, many prompts at once.

    ``option_logprobs[i, k]`` is the log-probability (full-vocabulary softmax) of the option
    presented as number scale_min + k in prompt i, i.e. columns follow the presented numbers
    1..5, not the scale values. Each row is mapped back to scale values with ``orders[i]``,
    then renormalized over the options. Returns one row per prompt:

    - option_mass: sum of the raw option probabilities before renormalization (how much the
      model answered with an option at all);
    - p_<v> for each scale value v: renormalized probability of scale value v;
    - expected_score: sum of v * p_v;
    - argmax_score: the most probable scale value (ties go to the lowest value).
    """
    lp = np.asarray(option_logprobs, dtype=np.float64)
    values = np.array(scale_values(inv), dtype=np.float64)
    n_options = len(values)
    if lp.ndim != 2 or lp.shape[1] != n_options:
        raise ValueError(
            f"option_logprobs must have shape (n, {n_options}) for the {n_options} options of "
            f"inventory {inv.name!r}, got {lp.shape}"
        )
    if len(orders) != lp.shape[0]:
        raise ValueError(f"got {lp.shape[0]} rows of log-probabilities but {len(orders)} orders")
    bad_rows = np.flatnonzero(np.isnan(lp).any(axis=1) | (lp > _LOGPROB_TOLERANCE).any(axis=1))
    if bad_rows.size:
        i = int(bad_rows[0])
        raise ValueError(
            f"option_logprobs row {i} is not a set of log-probabilities (NaN or > 0): {lp[i]}"
        )
    probs_presented = np.exp(np.minimum(lp, 0.0))
    mass = probs_presented.sum(axis=1)
    if (mass > 1 + _LOGPROB_TOLERANCE).any():
        i = int(np.flatnonzero(mass > 1 + _LOGPROB_TOLERANCE)[0])
        raise ValueError(f"option_logprobs row {i} puts mass {mass[i]:.6f} > 1 on the options")
    if (mass <= 0).any():
        i = int(np.flatnonzero(mass <= 0)[0])
        raise ValueError(f"option_logprobs row {i} puts no probability on any option")

    reversed_rows = np.array([check_order(o) == "reversed" for o in orders], dtype=bool)
    # Column k holds presented number min + k; under "reversed" that is scale value max - k,
    # so reversing the columns puts them in scale order.
    probs_scale = np.where(reversed_rows[:, None], probs_presented[:, ::-1], probs_presented)
    probs_scale = probs_scale / mass[:, None]
    frame = pd.DataFrame(
        {
            "expected_score": probs_scale @ values,
            "argmax_score": values[np.argmax(probs_scale, axis=1)],
            "option_mass": mass,
        }
    )
    for k, v in enumerate(values):
        frame[f"p_{int(v)}"] = probs_scale[:, k]
    return frame


def logprob_answer(option_logprobs: Sequence[float], order: str, inv: Inventory) -> dict[str, Any]:
    """One prompt's answer from option log-probabilities (see ``logprob_answers``).

    Returns {"expected_score", "argmax_score", "probabilities" {scale value: p}, "option_mass"}.
    """
    row = logprob_answers(np.asarray(option_logprobs, dtype=np.float64)[None, :], [order], inv)
    first = row.iloc[0]
    return {
        "expected_score": float(first["expected_score"]),
        "argmax_score": float(first["argmax_score"]),
        "probabilities": {v: float(first[f"p_{v}"]) for v in scale_values(inv)},
        "option_mass": float(first["option_mass"]),
    }
