"""Reading an answer: the first-integer rule on generated text (``parse_answer``), the
option log-probabilities mapped back onto the scale and renormalized (``logprob_answers``),
and the status of a log-probability answer that put too little mass on the options
(``option_mass_status``)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from big5_dagster.lib.personality.administration import check_order, map_back, scale_values
from big5_dagster.lib.personality.inventory import Inventory

PARSE_STATUSES: tuple[str, ...] = ("ok", "empty", "no_number", "not_integer", "out_of_range")
LOW_MASS = "low_mass"
"""A log-probability answer whose options got less than the minimum option mass."""
ANSWER_STATUSES: tuple[str, ...] = (*PARSE_STATUSES, LOW_MASS)
DEFAULT_MIN_OPTION_MASS = 0.1
"""Below this share of the next-token probability on the options a log-probability answer
is ``low_mass``. SmolLM2-135M-Instruct put 0.27-0.41 (BFI-44) and 0.12-0.33 (IPIP-NEO-120)
of it on the options of the base and trait-description prompts (measured 2026-12-02), a
random-weight model about 5 / 49152: 0.1 separates an answer from no answer."""


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


def answer_decided(text: str) -> bool:
    """Whether no continuation of ``text`` can change what ``first_integer`` (and so
    ``parse_answer``) reads from it: generation may stop here.

    The rule looks at the first run of digits, the character after it and, after a '.', the
    digits of a fraction (the sign before the run is already written). So the answer is
    decided once the run is followed by a character other than '.', or by '.' and a
    non-digit, or by '.' and a run of digits that has ended: '4' may become '45', '4.' may
    become '4.5', '4.0' may become '4.05'. Before the first digit nothing is decided (a
    number may still come): such a reply runs to its end-of-turn token or the cap.
    """
    match = _DIGITS.search(text)
    if match is None:
        return False
    end = match.end()
    if end == len(text):
        return False
    if text[end] != ".":
        return True
    fraction = _DIGITS.match(text, end + 1)
    if fraction is None:
        return end + 1 < len(text)
    return fraction.end() < len(text)


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


def option_mass_status(option_mass: np.ndarray, min_option_mass: float) -> np.ndarray:
    """'ok' where the options got at least ``min_option_mass`` of the next-token
    probability, else 'low_mass': the model hardly answered with an option at all, so the
    renormalized distribution says little about what it would choose. Such an answer is
    counted and reported beside the scores, exactly like a parse failure, and has no value.
    """
    if not 0.0 <= min_option_mass < 1.0:
        raise ValueError(f"min_option_mass must be in [0, 1), got {min_option_mass!r}")
    mass = np.asarray(option_mass, dtype=np.float64)
    if np.isnan(mass).any():
        raise ValueError("option_mass holds NaN: every log-probability answer records its mass")
    return np.where(mass >= min_option_mass, "ok", LOW_MASS)
