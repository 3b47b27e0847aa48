"""From raw DExperts replies to the BIG5-CHAT dataset, and how good that dataset is (METHOD.md 4).

Steps, each a pure function:
- ``clean_reply`` / ``clean_opener``: strip stage directions, speaker labels and wrapping
  quotes from a model's line, keeping the spoken content intact.
- ``is_refusal`` / ``refusal_reason``: assistant-style refusals and breaking character,
  from a documented pattern list (``REFUSAL_PATTERNS``).
- ``near_duplicate_pairs`` / ``near_duplicate_partners`` / ``near_duplicate_flags``:
  replies of different personas to the same scenario that say (nearly) the same thing.
- ``split_by_scenario``: a seeded train/test split at the scenario level (no leak).
- ``build_dataset``: one validated record per reply with flags; ``write_jsonl`` writes it.
- ``dialogue_quality_table`` / ``target_accuracy_vs_chance``: does each persona's reply
  carry its trait level according to the trait classifier?

Flagged replies are never dropped here: the original data had about 2% refusals and
about 3% near-duplicates across personas, and the point is to count them and let the
consumers (SFT/DPO example builders) filter with the flag columns.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from big5_dagster.lib.storage import atomic_file
from big5_dagster.lib.traits import PERSONAS, TRAITS, Persona

FLAG_NAMES: tuple[str, ...] = ("refusal", "empty", "near_duplicate", "truncated")
SPLITS: tuple[str, ...] = ("train", "test")
CHANCE_ACCURACY = 0.5  # binary high/low prediction
HIGH_PROBABILITY_CUTOFF = 0.5  # predicted 'high' when P(high) > this
DEFAULT_SCORED_EXCLUDE: tuple[str, ...] = ("refusal", "empty")

REPLY_COLUMNS: tuple[str, ...] = (
    "scenario_id",
    "persona",
    "trait",
    "level",
    "raw_reply",
    "n_new_tokens",
    "finish_reason",
    "generation",
)
SCENARIO_COLUMNS: tuple[str, ...] = ("scenario_id", "narrative", "person_x", "person_y")
OPENER_COLUMNS: tuple[str, ...] = ("scenario_id", "opener")

DATASET_COLUMNS: tuple[str, ...] = (
    "record_id",
    "scenario_id",
    "persona",
    "trait",
    "level",
    "split",
    "narrative",
    "person_x",
    "person_y",
    "opener",
    "raw_opener",
    "reply",
    "raw_reply",
    "n_new_tokens",
    "finish_reason",
    "flags",
    *FLAG_NAMES,
    "refusal_pattern",
    "near_duplicate_of",
    "near_duplicate_similarity",
    "generation",
)

_PERSONA_ORDER: dict[str, int] = {p.key: i for i, p in enumerate(PERSONAS)}


class DialogueDataError(ValueError):
    """A reply, scenario or opener table is unusable; the message names table, row and column."""


def _row_error(table: str, row: int, ident: str, column: str, problem: str) -> DialogueDataError:
    return DialogueDataError(f"{table} row {row} ({ident}), column {column!r}: {problem}")


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], table: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DialogueDataError(
            f"{table}: missing column(s) {missing}; it has {list(map(str, frame.columns))}"
        )


def _is_whole_number(value: object) -> bool:
    return (
        isinstance(value, int | float | np.integer | np.floating)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and int(value) == value
    )


def _is_missing(value: object) -> bool:
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


# --- cleaning ----------------------------------------------------------------------------

# Stage-direction verbs (base forms; inflections are matched by _is_action_word). A starred
# or parenthesised span inside a sentence is removed only when it starts with one of these
# or with the speaker's name, so "(if I'm free)" or "*really*" keep their content.
ACTION_WORDS: frozenset[str] = frozenset(
    {
        "beam", "bite", "blink", "blush", "bounce", "breathe", "cheer", "chuckle", "clap",
        "cough", "cringe", "cry", "exhale", "fidget", "frown", "gasp", "gesture", "giggle",
        "glance", "glare", "grin", "groan", "grumble", "gulp", "huff", "hug", "inhale", "laugh",
        "lean", "mumble", "mutter", "nod", "pause", "pout", "roll", "scoff", "scratch", "shake",
        "shrug", "sigh", "sip", "smile", "smirk", "snicker", "snort", "sob", "squeal", "stare",
        "stretch", "swallow", "wave", "whisper", "wince", "wink", "yawn", "looks", "looking",
        "hesitate", "hesitantly", "nervously", "excitedly", "sarcastically", "awkwardly",
    }
)  # fmt: skip
# Labels a model may put before the line when no speaker name is known (or besides it).
GENERIC_LABELS: tuple[str, ...] = (
    r"person\s?[xy]",
    r"reply",
    r"response",
    r"answer",
    r"assistant",
    r"speaker",
)
_LABEL_VERBS = r"says|said|replies|replied|responds|responded|answers|answered|asks|asked"
_DQ = '"\u201c\u201d'  # straight and curly double quotes
_DOUBLE_QUOTED_SEGMENTS = re.compile(rf"\s*(?:[{_DQ}][^{_DQ}]*[{_DQ}]\s*)+")
_DOUBLE_QUOTED_SEGMENT = re.compile(rf"[{_DQ}]([^{_DQ}]*)[{_DQ}]")
_STARRED = re.compile(r"\*+([^*\n]+?)\*+")
_BRACKETED = re.compile(r"\[[^\[\]]*\]")
_PARENTHESISED = re.compile(r"\(([^()]*)\)")
_REMOVED = "\x00"  # marks where a span was cut, so spacing is repaired only there
_SENTENCE_END = ".!?\u2026"
_QUOTE_AND_CLOSERS = "\"'\u201c\u201d\u2018\u2019)]"


def _is_action_word(word: str, speaker: str | None) -> bool:
    w = word.lower().strip(".,!?;:'\"\u2019")
    if not w:
        return False
    if speaker and w in {s.lower() for s in _speaker_names(speaker)}:
        return True
    candidates = {w}
    if w.endswith(("ies", "ied")):
        candidates.add(w[:-3] + "y")
    for suffix in ("ing", "es", "ed", "s", "d"):
        if w.endswith(suffix) and len(w) > len(suffix) + 2:
            stem = w[: -len(suffix)]
            candidates |= {stem, stem + "e"}
            if len(stem) >= 2 and stem[-1] == stem[-2]:
                candidates.add(stem[:-1])  # nodding -> nod
    return bool(candidates & ACTION_WORDS)


def _speaker_names(speaker: str) -> list[str]:
    """The full name and its first word ("Maya Lopez" may label herself "Maya")."""
    names = [speaker.strip()]
    first = speaker.strip().split()[0] if speaker.strip() else ""
    if first and first != names[0]:
        names.append(first)
    return [n for n in names if n]


def _at_sentence_start(text: str, start: int) -> bool:
    before = text[:start].rstrip().rstrip(_QUOTE_AND_CLOSERS + " ").rstrip(_REMOVED + " ")
    return before == "" or before[-1] in _SENTENCE_END


def _at_text_end(text: str, end: int) -> bool:
    return text[end:].strip(" \t\n" + _REMOVED + _QUOTE_AND_CLOSERS) == ""


def _strip_speaker_label(text: str, speaker: str | None) -> str:
    names = [re.escape(n) for n in _speaker_names(speaker)] if speaker else []
    names += list(GENERIC_LABELS)
    label = re.compile(
        r"^\s*[*_]*\s*(?:" + "|".join(names) + r")\s*[*_]*\s*(?:\([^)]*\)\s*)?"
        # closing bold right after the colon ("**Maya:** hi"), not an opening "*laughs*"
        r"(?:(?:" + _LABEL_VERBS + r")\b[^:\n]{0,30})?[*_]*\s*:(?:[*_]+(?=\s))?\s*",
        re.IGNORECASE,
    )
    return label.sub("", text, count=1)


def _strip_stage_directions(text: str, speaker: str | None) -> str:
    text = _BRACKETED.sub(_REMOVED, text)

    def starred(match: re.Match[str]) -> str:
        words = match.group(1).split()
        if not words:
            return _REMOVED
        boundary = _at_sentence_start(match.string, match.start()) or _at_text_end(
            match.string, match.end()
        )
        action = len(words) >= 3 or any(_is_action_word(w, speaker) for w in words)
        if boundary or action:
            return _REMOVED
        return match.group(1)  # emphasis inside a sentence: "I *really* mean it"

    text = _STARRED.sub(starred, text)

    def parenthesised(match: re.Match[str]) -> str:
        words = match.group(1).split()
        if not words:
            return _REMOVED
        first = words[1] if len(words) > 1 and words[0].lower().endswith("ly") else words[0]
        if _at_sentence_start(match.string, match.start()) or _is_action_word(first, speaker):
            return _REMOVED
        return match.group(0)  # a parenthetical remark is content: "(if I'm free)"

    text = _PARENTHESISED.sub(parenthesised, text)

    # A direction cut off by the token limit: "Sure! *grins and" or "(laughing" at the start.
    star = re.search(r"(?:^|\s)\*[^*]*$", text)
    if star:
        text = text[: star.start()] + _REMOVED
    text = text.replace("*", "")
    bracket = text.find("[")
    if bracket >= 0 and "]" not in text[bracket:]:
        text = text[:bracket] + _REMOVED
    paren = re.search(r"\(([^()]*)$", text)
    if paren:
        words = paren.group(1).split()
        if _at_sentence_start(text, paren.start()) or (
            words and _is_action_word(words[0], speaker)
        ):
            text = text[: paren.start()] + _REMOVED
    return text


def _strip_wrapping_quotes(text: str) -> str:
    text = text.strip()
    if _DOUBLE_QUOTED_SEGMENTS.fullmatch(text):
        # The whole reply is one or more quoted lines: '"Hi." "How are you?"'.
        return " ".join(m.group(1).strip() for m in _DOUBLE_QUOTED_SEGMENT.finditer(text))
    if sum(text.count(q) for q in _DQ) == 1 and (text[:1] in _DQ or text[-1:] in _DQ):
        return text.strip(_DQ)  # one unmatched quote, e.g. cut off by the token limit
    if (
        len(text) >= 3
        and text[0] in "'\u2018"
        and text[-1] in "'\u2019"
        and not text[1].isspace()
        and not text[-2].isspace()
    ):
        return text[1:-1]
    return text


def _tidy(text: str) -> str:
    # Where a span was cut: "Fine, *sighs*, ok" -> "Fine, ok"; "Sure *nods*." -> "Sure."
    text = re.sub(rf"([,;:])[\s{_REMOVED}]*{_REMOVED}[\s{_REMOVED}]*[,;:]", r"\1", text)
    text = re.sub(rf"\s*{_REMOVED}[\s{_REMOVED}]*(?=[,.!?;:\u2026])", "", text)
    text = re.sub(rf"\s*{_REMOVED}[\s{_REMOVED}]*", " ", text)
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r"^[,;:]+\s*", "", text)


def clean_reply(text: str, speaker: str | None = None) -> str:
    """The spoken content of a model's line.

    Removes stage directions (``*smiles*``, ``[laughs]``, ``(sighs)``), a leading speaker
    label (``Maya:``, ``**Maya:**``, ``Maya says:``, ``PersonY:``), quotes wrapping the
    whole reply (straight or curly, also several quoted sentences), and collapses
    whitespace. Content inside the sentence is kept: apostrophes, quoted words, and
    ``(...)`` remarks that are not actions.

    Heuristics, documented because they decide what is content:
    - ``[...]`` is always a direction.
    - ``*...*`` is a direction when it starts a sentence, ends the reply, has 3+ words, or
      contains an action word (``ACTION_WORDS``) or the speaker's name; otherwise it is
      emphasis and unwrapped (``I *really* do`` -> ``I really do``).
    - ``(...)`` is a direction when it starts a sentence or its first word is an action word
      or the speaker's name; otherwise it stays (``See you (if I'm free).``).
    - A direction left open by the token limit (``Sure! *grins and``) is cut to the end.
    """
    if not isinstance(text, str):
        raise TypeError(f"clean_reply expects a str, got {type(text).__name__}: {text!r}")
    previous = None
    cleaned = text
    # Labels, directions and quotes can nest in any order ('Maya: "Hi" *waves*'); repeat
    # until nothing changes (a few passes at most).
    for _ in range(6):
        if cleaned == previous:
            break
        previous = cleaned
        cleaned = _strip_speaker_label(cleaned, speaker)
        cleaned = _strip_stage_directions(cleaned, speaker)
        cleaned = _tidy(cleaned)
        cleaned = _strip_wrapping_quotes(cleaned)
        cleaned = _tidy(cleaned)
    return cleaned


def clean_opener(text: str, person_x: str | None = None) -> str:
    """PersonX's turn 0, cleaned like a reply (``person_x`` is the label to strip)."""
    return clean_reply(text, speaker=person_x)


# --- refusals ----------------------------------------------------------------------------

_I_CANT = (
    r"\bi(?:\s+(?:cannot|can't|cant|can not|won't be able to|will not be able to|won't|"
    r"will not|am unable to|am not able to|am not allowed to|am not permitted to)"
    r"|'m\s+(?:unable to|not able to|not allowed to|not permitted to))"
)
_END_OF_CLAUSE = r"(?=\s*(?:[.!?,;]|$))"

# (name, pattern) in the order they are tried; matched case-insensitively on the reply
# with curly apostrophes made straight and whitespace collapsed. Each targets wording an
# assistant uses when it refuses or steps out of the role, and avoids in-character
# speech: "I'm sorry you had a rough day", "I'm sorry, but I can't make it tonight",
# "I can't help it", "I don't have feelings for him" are not refusals. A bare "I'm sorry,
# but I can't." is ambiguous (declining an invitation) and is not flagged on its own;
# "I'm not able to help with that." is flagged even though a person could say it.
REFUSAL_PATTERNS: tuple[tuple[str, str], ...] = (
    (
        "as_an_ai",
        r"\bas an? (?:ai|a\.i\.|artificial intelligence)(?: language model| model| assistant"
        r"| system| chatbot)?\s*(?:,|\bi\b|developed|created|trained|designed|made|without)",
    ),
    ("as_a_language_model", r"\bas an? (?:large |ai |artificial intelligence )?language model\b"),
    (
        "i_am_an_ai",
        r"\bi(?:'m| am) (?:just |only |merely |not a human,? (?:but |i'm )?)?(?:an? )?"
        r"(?:ai|artificial intelligence|(?:large |ai )?language model|ai assistant|chatbot"
        r"|virtual assistant|computer program)\b",
    ),
    (
        "no_personal_experience",
        r"\bi (?:do not|don't) have (?:personal (?:feelings|emotions|opinions|experiences"
        r"|preferences|beliefs)|the ability to (?:feel|experience|have (?:feelings|emotions)))",
    ),
    ("cannot_role_play", _I_CANT + r"\s+(?:\w+\s+){0,3}?(?:role[- ]?play|impersonat)"),
    (
        "cannot_take_role",
        _I_CANT + r"\s+(?:\w+\s+){0,2}?(?:play|take on|assume) (?:the |this |that |a )?"
        r"(?:role|character|persona)\b",
    ),
    ("breaking_character", r"\b(?:break|breaking|step|stepping) (?:out of )?character\b"),
    (
        "cannot_help_with_that",
        _I_CANT + r"\s+(?:help|assist)(?: you)? with (?:that|this)(?: request| task| query"
        r"| question| prompt)?" + _END_OF_CLAUSE,
    ),
    (
        "cannot_assist",
        _I_CANT + r"\s+(?:assist (?:with|you)|provide (?:assistance|help|that information"
        r"|this information|that content|this content|a response)|comply\b"
        r"|fulfil+ (?:that|this|your|the) request)",
    ),
    (
        "cannot_generate_content",
        _I_CANT + r"\s+(?:generate|produce|create|write) (?:that |this |such |the requested "
        r"|any )?(?:kind of |type of )?(?:content|response|material|text)\b",
    ),
    (
        "cannot_engage",
        _I_CANT + r"\s+(?:engage in|participate in) (?:this|that|such|the|a) (?:\w+ )?"
        r"(?:conversation|discussion|scenario|request|activity|content|role)\b",
    ),
    (
        "not_comfortable",
        r"\bi(?:'m| am) not comfortable (?:\w+\s+){0,2}?(?:role[- ]?play|generat|creat"
        r"|engag|respond|with this request|with that request)"
        r"|\bi (?:don't|do not) feel comfortable (?:\w+\s+){0,2}?(?:role[- ]?play|generat"
        r"|creat|engag|respond)",
    ),
    (
        "policy",
        r"\b(?:content|usage|openai'?s?|use case) polic(?:y|ies)\b|\bagainst my (?:programming"
        r"|guidelines|ethical guidelines)\b|\bi(?:'m| am) (?:not )?programmed to\b"
        r"|\b(?:this|that|your) request (?:goes against|violates|is against)\b",
    ),
)
_COMPILED_REFUSALS = tuple((name, re.compile(p, re.IGNORECASE)) for name, p in REFUSAL_PATTERNS)


def _normalize_for_patterns(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("\u2019", "'").replace("\u2018", "'")).strip()


def refusal_reason(text: str) -> str | None:
    """The name of the first ``REFUSAL_PATTERNS`` entry the text matches, or None."""
    normalized = _normalize_for_patterns(text)
    for name, pattern in _COMPILED_REFUSALS:
        if pattern.search(normalized):
            return name
    return None


def is_refusal(text: str) -> bool:
    """True for an assistant-style refusal or a break of character (see ``REFUSAL_PATTERNS``).

    An empty reply is not a refusal: it carries the separate ``empty`` flag.
    """
    return refusal_reason(text) is not None


# --- near-duplicates ---------------------------------------------------------------------


def _normalize_for_similarity(text: str) -> str:
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    text = re.sub(r"[^\w\s']", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def _trigram_multiset(text: str) -> frozenset[str]:
    """Character 3-grams of the normalized text, the k-th repeat of a gram tagged with k.

    The weighted Jaccard of gram counts, sum(min) / sum(max), equals the plain Jaccard of
    these sets, which Python intersects in C (several times faster than comparing Counters).
    """
    norm = _normalize_for_similarity(text)
    grams = [norm] if 0 < len(norm) < 3 else [norm[i : i + 3] for i in range(len(norm) - 2)]
    counts = Counter(grams)
    if len(counts) == len(grams):
        return frozenset(grams)
    # "\x00" never occurs in normalized text, so a tagged repeat cannot equal a gram.
    return frozenset(
        gram if occurrence == 1 else f"{gram}\x00{occurrence}"
        for gram, count in counts.items()
        for occurrence in range(1, count + 1)
    )


def _multiset_jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a or not b:
        return 0.0
    shared = len(a & b)
    return shared / (len(a) + len(b) - shared)


def reply_similarity(a: str, b: str) -> float:
    """Weighted Jaccard similarity of character 3-gram counts of the normalized texts.

    Normalized = lower case, punctuation dropped, whitespace collapsed, so "Sure!" and
    "sure." are identical. Why this measure: it is symmetric and deterministic (difflib's
    ratio is neither guaranteed symmetric nor stable past 200 characters, where its
    'autojunk' heuristic starts ignoring frequent characters), linear in the text length
    (10,000 scenarios x 45 persona pairs stays cheap), robust to small edits and word
    order changes, and 1.0 exactly for identical normalized texts. Counts (not sets) keep
    "ha ha" apart from "ha ha ha ha". An empty text has similarity 0 with anything: empty
    replies carry the 'empty' flag instead.
    """
    return _multiset_jaccard(_trigram_multiset(a), _trigram_multiset(b))


def _check_threshold(threshold: float) -> None:
    if not (isinstance(threshold, int | float) and 0 < threshold <= 1):
        raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold!r}")


def near_duplicate_pairs(
    replies: pd.DataFrame, threshold: float, text_column: str = "reply"
) -> pd.DataFrame:
    """Pairs of replies to the same scenario, from different personas, with similarity >= threshold.

    Columns: scenario_id, persona_a, persona_b (persona_a first in PERSONAS order), row_a,
    row_b (index labels in ``replies``), similarity. Sorted by scenario, then personas.
    """
    _check_threshold(threshold)
    _require_columns(replies, ("scenario_id", "persona", text_column), "replies")
    if not replies.index.is_unique:
        raise DialogueDataError("replies: the index must be unique to name pair partners")
    rows: list[dict[str, Any]] = []
    for scenario_id, group in replies.groupby("scenario_id", sort=True):
        members = []
        for label, persona, text in zip(
            group.index, group["persona"], group[text_column], strict=True
        ):
            if not isinstance(text, str):
                raise DialogueDataError(
                    f"replies row {label!r} (scenario_id={scenario_id!r}, persona={persona!r}), "
                    f"column {text_column!r}: expected text, got {text!r}"
                )
            members.append((_PERSONA_ORDER.get(persona, len(_PERSONA_ORDER)), persona, label, text))
        members.sort(key=lambda m: (m[0], str(m[1])))
        grams = [_trigram_multiset(m[3]) for m in members]
        for i in range(len(members)):
            for j in range(i + 1, len(members)):
                if members[i][1] == members[j][1]:
                    continue  # the same persona twice is a data error, caught by build_dataset
                similarity = _multiset_jaccard(grams[i], grams[j])
                if similarity >= threshold:
                    rows.append(
                        {
                            "scenario_id": scenario_id,
                            "persona_a": members[i][1],
                            "persona_b": members[j][1],
                            "row_a": members[i][2],
                            "row_b": members[j][2],
                            "similarity": similarity,
                        }
                    )
    columns = ["scenario_id", "persona_a", "persona_b", "row_a", "row_b", "similarity"]
    return pd.DataFrame(rows, columns=columns)


def near_duplicate_partners(
    replies: pd.DataFrame, threshold: float, text_column: str = "reply"
) -> pd.DataFrame:
    """Per reply (same index as ``replies``): near_duplicate (bool), near_duplicate_of (the
    persona of its most similar partner, ties to the earlier persona; None without one) and
    near_duplicate_similarity (NaN without one). Every member of a pair is flagged."""
    pairs = near_duplicate_pairs(replies, threshold, text_column)
    best: dict[Any, tuple[float, int, str]] = {}
    for pair in pairs.itertuples(index=False):
        for row, partner in ((pair.row_a, pair.persona_b), (pair.row_b, pair.persona_a)):
            key = (-pair.similarity, _PERSONA_ORDER.get(partner, len(_PERSONA_ORDER)), partner)
            if row not in best or key < best[row]:
                best[row] = key
    flagged = [row in best for row in replies.index]
    partner = [best[row][2] if row in best else None for row in replies.index]
    similarity = [-best[row][0] if row in best else np.nan for row in replies.index]
    return pd.DataFrame(
        {
            "near_duplicate": pd.Series(flagged, index=replies.index, dtype=bool),
            "near_duplicate_of": pd.Series(partner, index=replies.index, dtype=object),
            "near_duplicate_similarity": pd.Series(similarity, index=replies.index, dtype=float),
        }
    )


def near_duplicate_flags(
    replies: pd.DataFrame, threshold: float, text_column: str = "reply"
) -> pd.Series:
    """Boolean per reply: it has a near-duplicate from another persona of its scenario."""
    return near_duplicate_partners(replies, threshold, text_column)["near_duplicate"]


# --- split -------------------------------------------------------------------------------


def split_by_scenario(
    scenario_ids: Iterable[str], test_fraction: float, seed: int
) -> dict[str, str]:
    """Scenario id -> 'train' | 'test'; every reply of a scenario follows its scenario.

    Each id is ranked by sha256(seed, id) and the lowest round(n * test_fraction) go to
    test, so the result depends only on the set of ids and the seed (not on input order
    or duplicates), and adding scenarios moves few existing ones. With two or more
    scenarios each split gets at least one; a single scenario goes to train.
    """
    if not (isinstance(test_fraction, int | float) and 0 < test_fraction < 1):
        raise ValueError(f"test_fraction must be strictly between 0 and 1, got {test_fraction!r}")
    unique: set[str] = set()
    for scenario_id in scenario_ids:
        if _is_missing(scenario_id) or str(scenario_id).strip() == "":
            raise DialogueDataError(f"split_by_scenario: missing scenario id {scenario_id!r}")
        unique.add(scenario_id)
    n = len(unique)
    if n == 0:
        return {}
    if n == 1:
        return {next(iter(unique)): "train"}
    n_test = min(n - 1, max(1, math.floor(n * test_fraction + 0.5)))

    def rank(scenario_id: str) -> tuple[str, str]:
        digest = hashlib.sha256(f"{seed}\x00{scenario_id}".encode()).hexdigest()
        return digest, str(scenario_id)

    ordered = sorted(unique, key=rank)
    test = set(ordered[:n_test])
    return {sid: ("test" if sid in test else "train") for sid in sorted(unique, key=str)}


# --- dataset -----------------------------------------------------------------------------


def generation_json(
    *,
    formula: str,
    alpha: float,
    warmup_tokens: int,
    sampling: Mapping[str, Any],
    seed: int,
    base_model: str,
    expert_model: str,
    anti_expert_model: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """The ``generation`` JSON of a reply: DExperts formula and alpha, warm-up, sampling
    parameters, seed and model ids (with adapter hashes where the caller has them)."""
    record: dict[str, Any] = {
        "formula": formula,
        "alpha": alpha,
        "warmup_tokens": warmup_tokens,
        "sampling": dict(sampling),
        "seed": seed,
        "base_model": base_model,
        "expert_model": expert_model,
        "anti_expert_model": anti_expert_model,
    }
    if extra:
        clash = sorted(set(extra) & set(record))
        if clash:
            raise ValueError(f"generation_json: extra keys {clash} would overwrite settings")
        record.update(extra)
    return json.dumps(record, sort_keys=True, default=str)


def _validated_scenarios(scenarios: pd.DataFrame) -> dict[str, dict[str, str]]:
    _require_columns(scenarios, SCENARIO_COLUMNS, "scenarios")
    table: dict[str, dict[str, str]] = {}
    for i, row in enumerate(scenarios[list(SCENARIO_COLUMNS)].itertuples(index=False), start=1):
        ident = f"scenario_id={row.scenario_id!r}"
        for column in SCENARIO_COLUMNS:
            value = getattr(row, column)
            if _is_missing(value) or not isinstance(value, str) or not value.strip():
                raise _row_error("scenarios", i, ident, column, f"expected text, got {value!r}")
        if row.scenario_id in table:
            raise _row_error("scenarios", i, ident, "scenario_id", "duplicate scenario id")
        table[row.scenario_id] = {c: getattr(row, c) for c in SCENARIO_COLUMNS[1:]}
    return table


def _validated_openers(openers: pd.DataFrame) -> dict[str, str]:
    _require_columns(openers, OPENER_COLUMNS, "openers")
    table: dict[str, str] = {}
    for i, (scenario_id, opener) in enumerate(
        zip(openers["scenario_id"], openers["opener"], strict=True), start=1
    ):
        ident = f"scenario_id={scenario_id!r}"
        if _is_missing(scenario_id):
            raise _row_error("openers", i, ident, "scenario_id", "missing scenario id")
        if _is_missing(opener) or not isinstance(opener, str):
            raise _row_error("openers", i, ident, "opener", f"expected text, got {opener!r}")
        if scenario_id in table:
            raise _row_error(
                "openers",
                i,
                ident,
                "scenario_id",
                "a second opener for this scenario; one opener is shared by all 10 personas",
            )
        table[scenario_id] = opener
    return table


def build_dataset(
    replies: pd.DataFrame,
    scenarios: pd.DataFrame,
    openers: pd.DataFrame,
    split_map: Mapping[str, str],
    near_duplicate_threshold: float = 0.9,
) -> pd.DataFrame:
    """One BIG5-CHAT record per reply, cleaned and flagged, never filtered.

    ``replies``: scenario_id, persona ('openness_high'), trait, level, raw_reply,
    n_new_tokens, finish_reason ('length' = cut by the token limit), generation (a JSON
    object string). ``scenarios``: scenario_id, narrative, person_x, person_y.
    ``openers``: scenario_id, opener (one per scenario). ``split_map``: scenario_id ->
    'train'|'test' (see ``split_by_scenario``).

    Columns: ``DATASET_COLUMNS``. ``flags`` lists the raised flags in ``FLAG_NAMES`` order;
    each flag is also a bool column. Refusal, empty and near-duplicate are judged on the
    cleaned reply. Rows are sorted by scenario_id, then persona in PERSONAS order.
    Raises DialogueDataError naming the table, row (1-based) and column of bad input.
    """
    _check_threshold(near_duplicate_threshold)
    _require_columns(replies, REPLY_COLUMNS, "replies")
    scenario_table = _validated_scenarios(scenarios)
    opener_table = _validated_openers(openers)

    records: list[dict[str, Any]] = []
    seen: dict[tuple[str, str], int] = {}
    for i, row in enumerate(replies[list(REPLY_COLUMNS)].itertuples(index=False), start=1):
        ident = f"scenario_id={row.scenario_id!r}, persona={row.persona!r}"

        def fail(column: str, problem: str, i: int = i, ident: str = ident) -> DialogueDataError:
            return _row_error("replies", i, ident, column, problem)

        try:
            persona = Persona.parse(str(row.persona))
        except ValueError as e:
            raise fail("persona", str(e)) from None
        if row.trait != persona.trait:
            raise fail("trait", f"{row.trait!r} does not match persona {persona.key!r}")
        if row.level != persona.level:
            raise fail("level", f"{row.level!r} does not match persona {persona.key!r}")
        scenario_id = row.scenario_id
        if scenario_id not in scenario_table:
            raise fail("scenario_id", f"scenario {scenario_id!r} is not in the scenarios table")
        if scenario_id not in opener_table:
            raise fail("scenario_id", f"scenario {scenario_id!r} has no opener")
        if scenario_id not in split_map:
            raise fail("scenario_id", f"scenario {scenario_id!r} is not in the split map")
        split = split_map[scenario_id]
        if split not in SPLITS:
            raise fail("scenario_id", f"split map gives {split!r}; expected one of {SPLITS}")
        if (scenario_id, persona.key) in seen:
            raise fail(
                "persona",
                f"a second reply for this scenario and persona (first at row "
                f"{seen[(scenario_id, persona.key)]})",
            )
        seen[(scenario_id, persona.key)] = i
        if _is_missing(row.raw_reply) or not isinstance(row.raw_reply, str):
            raise fail("raw_reply", f"expected text (possibly empty), got {row.raw_reply!r}")
        if _is_missing(row.finish_reason) or not isinstance(row.finish_reason, str):
            raise fail("finish_reason", f"expected a string, got {row.finish_reason!r}")
        if not _is_whole_number(row.n_new_tokens):
            raise fail("n_new_tokens", f"expected an integer, got {row.n_new_tokens!r}")
        try:
            generation = json.loads(row.generation)
        except (TypeError, json.JSONDecodeError) as e:
            raise fail("generation", f"not valid JSON ({e}): {row.generation!r}") from None
        if not isinstance(generation, dict):
            raise fail("generation", f"expected a JSON object, got {row.generation!r}")

        scenario = scenario_table[scenario_id]
        reply = clean_reply(row.raw_reply, speaker=scenario["person_y"])
        pattern = refusal_reason(reply) if reply else None
        records.append(
            {
                "record_id": f"{scenario_id}/{persona.key}",
                "scenario_id": scenario_id,
                "persona": persona.key,
                "trait": persona.trait,
                "level": persona.level,
                "split": split,
                **scenario,
                "opener": clean_opener(opener_table[scenario_id], scenario["person_x"]),
                "raw_opener": opener_table[scenario_id],
                "reply": reply,
                "raw_reply": row.raw_reply,
                "n_new_tokens": int(row.n_new_tokens),
                "finish_reason": row.finish_reason,
                "refusal": pattern is not None,
                "empty": reply == "",
                "truncated": row.finish_reason == "length",
                "refusal_pattern": pattern,
                "generation": json.dumps(generation, sort_keys=True),
                "_order": (str(scenario_id), _PERSONA_ORDER[persona.key]),
            }
        )

    if not records:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in DATASET_COLUMNS})
    records.sort(key=lambda r: r.pop("_order"))
    dataset = pd.DataFrame.from_records(records)
    partners = near_duplicate_partners(dataset, near_duplicate_threshold, text_column="reply")
    dataset = dataset.join(partners)
    dataset["flags"] = [
        [flag for flag in FLAG_NAMES if row[flag]]
        for row in dataset[list(FLAG_NAMES)].to_dict("records")
    ]
    for flag in FLAG_NAMES:
        dataset[flag] = dataset[flag].astype(bool)
    dataset["n_new_tokens"] = dataset["n_new_tokens"].astype("int64")
    # Same text dtype as the other optional text column (pandas 3: missing = NaN).
    dataset["near_duplicate_of"] = dataset["near_duplicate_of"].astype("str")
    dataset["refusal_pattern"] = dataset["refusal_pattern"].astype("str")
    return dataset[list(DATASET_COLUMNS)].reset_index(drop=True)


def flag_counts(dataset: pd.DataFrame) -> dict[str, int]:
    """How many records carry each flag, plus 'any' and 'total'."""
    _require_columns(dataset, FLAG_NAMES, "dataset")
    counts = {flag: int(dataset[flag].sum()) for flag in FLAG_NAMES}
    counts["any"] = int(dataset[list(FLAG_NAMES)].any(axis=1).sum())
    counts["total"] = len(dataset)
    return counts


def _json_value(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return [_json_value(v) for v in value.tolist()]
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value


def write_jsonl(df: pd.DataFrame, path: Path) -> Path:
    """Write one JSON object per row (UTF-8, lists stay lists, NaN -> null), atomically."""
    with atomic_file(Path(path)) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for record in df.to_dict(orient="records"):
            clean = {str(k): _json_value(v) for k, v in record.items()}
            out.write(json.dumps(clean, ensure_ascii=False, allow_nan=False) + "\n")
    return Path(path)


# --- quality -----------------------------------------------------------------------------


def _aligned_probabilities(dataset: pd.DataFrame, predicted: pd.DataFrame) -> pd.DataFrame:
    """P(high) per trait for each dataset row, in dataset order."""
    _require_columns(predicted, TRAITS, "predicted_high_probability")
    if "record_id" in predicted.columns:
        _require_columns(dataset, ("record_id",), "dataset")
        if not predicted["record_id"].is_unique:
            dup = predicted["record_id"][predicted["record_id"].duplicated()].iloc[0]
            raise DialogueDataError(f"predicted_high_probability: duplicate record_id {dup!r}")
        indexed = predicted.set_index("record_id")
        missing = dataset.loc[~dataset["record_id"].isin(indexed.index), "record_id"]
        if len(missing):
            raise DialogueDataError(
                f"predicted_high_probability: no prediction for record_id {missing.iloc[0]!r} "
                f"({len(missing)} missing)"
            )
        aligned = indexed.loc[dataset["record_id"], list(TRAITS)]
        aligned.index = dataset.index
    else:
        if not predicted.index.equals(dataset.index):
            raise DialogueDataError(
                "predicted_high_probability: without a record_id column its index must equal "
                "the dataset's index"
            )
        aligned = predicted[list(TRAITS)]
    aligned = aligned.astype(float)
    for trait in TRAITS:
        bad = aligned[trait].isna() | (aligned[trait] < 0) | (aligned[trait] > 1)
        if bad.any():
            label = aligned.index[bad.to_numpy()][0]
            ident = dataset.at[label, "record_id"] if "record_id" in dataset.columns else label
            raise DialogueDataError(
                f"predicted_high_probability row {ident!r}, column {trait!r}: expected a "
                f"probability in [0, 1], got {aligned.at[label, trait]!r}"
            )
    return aligned


def dialogue_quality_table(
    dataset: pd.DataFrame,
    predicted_high_probability: pd.DataFrame,
    scored_exclude: Sequence[str] = DEFAULT_SCORED_EXCLUDE,
    thresholds: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """One row per persona present in ``dataset``, in PERSONAS order.

    ``predicted_high_probability``: the trait classifier's P(high) per trait (columns
    openness..neuroticism) for each record, joined on a ``record_id`` column when it has
    one, else aligned on the dataset's index. A reply is predicted 'high' for a trait when
    P(high) > 0.5, or > ``thresholds[trait]`` when given (the classifier's own cut-offs,
    e.g. ``TraitClassifier.thresholds()`` for a regression score in [0, 1]).

    Replies flagged with any of ``scored_exclude`` (default refusal, empty) are not scored:
    their text is not the persona speaking. Rates and lengths use all replies.

    Columns: persona, trait, level, n_replies, n_scored, target_n_correct, target_accuracy
    (predicted level of the target trait == persona level), target_mean_p_high,
    target_binom_p (one-sided binomial test, accuracy > 0.5), for each trait
    ``offtarget_<trait>_mean_p_high`` and ``offtarget_<trait>_share_high`` (NaN for the
    persona's own trait; these should stay near the trait's base rate),
    words_mean/words_median/words_p90 (cleaned reply length in words), and
    refusal_rate, empty_rate, near_duplicate_rate, truncated_rate.
    """
    _require_columns(dataset, ("persona", "trait", "level", "reply", *FLAG_NAMES), "dataset")
    unknown = sorted(set(scored_exclude) - set(FLAG_NAMES))
    if unknown:
        raise ValueError(f"scored_exclude: unknown flag(s) {unknown}; expected among {FLAG_NAMES}")
    probabilities = _aligned_probabilities(dataset, predicted_high_probability)
    cut = {trait: HIGH_PROBABILITY_CUTOFF for trait in TRAITS}
    if thresholds is not None:
        missing = [t for t in TRAITS if t not in thresholds]
        if missing:
            raise ValueError(f"thresholds: no cut-off for trait(s) {missing}")
        cut = {trait: float(thresholds[trait]) for trait in TRAITS}
    excluded = (
        dataset[list(scored_exclude)].any(axis=1)
        if scored_exclude
        else pd.Series(False, index=dataset.index)
    )
    words = dataset["reply"].map(lambda s: len(s.split()) if isinstance(s, str) else 0)

    rows: list[dict[str, Any]] = []
    present = set(dataset["persona"])
    for persona in (p for p in PERSONAS if p.key in present):
        members = dataset["persona"] == persona.key
        scored = members & ~excluded
        p_scored = probabilities.loc[scored]
        n_replies, n_scored = int(members.sum()), int(scored.sum())
        predicted_high = p_scored[persona.trait] > cut[persona.trait]
        correct = predicted_high if persona.level == "high" else ~predicted_high
        n_correct = int(correct.sum())
        row: dict[str, Any] = {
            "persona": persona.key,
            "trait": persona.trait,
            "level": persona.level,
            "n_replies": n_replies,
            "n_scored": n_scored,
            "target_n_correct": n_correct,
            "target_accuracy": n_correct / n_scored if n_scored else np.nan,
            "target_mean_p_high": float(p_scored[persona.trait].mean()) if n_scored else np.nan,
            "target_binom_p": (
                float(binomtest(n_correct, n_scored, CHANCE_ACCURACY, alternative="greater").pvalue)
                if n_scored
                else np.nan
            ),
        }
        for trait in TRAITS:
            off = trait != persona.trait and n_scored > 0
            row[f"offtarget_{trait}_mean_p_high"] = float(p_scored[trait].mean()) if off else np.nan
            row[f"offtarget_{trait}_share_high"] = (
                float((p_scored[trait] > cut[trait]).mean()) if off else np.nan
            )
        member_words = words[members]
        row["words_mean"] = float(member_words.mean())
        row["words_median"] = float(member_words.median())
        row["words_p90"] = float(member_words.quantile(0.9))
        for flag in FLAG_NAMES:
            row[f"{flag}_rate"] = float(dataset.loc[members, flag].astype(bool).mean())
        rows.append(row)
    return pd.DataFrame(rows)


def target_accuracy_vs_chance(
    table: pd.DataFrame, margin: float, max_p_value: float | None = None
) -> pd.DataFrame:
    """The personas whose target accuracy is not clearly above chance (0.5).

    A persona is at chance when its accuracy <= 0.5 + ``margin``, when it has no scored
    reply, or (only if ``max_p_value`` is given) when its one-sided binomial p-value is
    >= ``max_p_value``. Returns persona, target_accuracy, n_scored, target_binom_p and
    ``reason``; empty when every persona is above chance.
    """
    if not (isinstance(margin, int | float) and 0 <= margin < 0.5):
        raise ValueError(f"margin must be in [0, 0.5), got {margin!r}")
    _require_columns(
        table, ("persona", "target_accuracy", "n_scored", "target_binom_p"), "quality table"
    )
    reasons: list[str | None] = []
    for accuracy, p_value in zip(table["target_accuracy"], table["target_binom_p"], strict=True):
        if pd.isna(accuracy):
            reasons.append("no scored replies")
        elif accuracy <= CHANCE_ACCURACY + margin:
            reasons.append(f"accuracy {accuracy:.3f} <= {CHANCE_ACCURACY + margin:.3f}")
        elif max_p_value is not None and p_value >= max_p_value:
            reasons.append(f"binomial p {p_value:.3g} >= {max_p_value}")
        else:
            reasons.append(None)
    out = table[["persona", "target_accuracy", "n_scored", "target_binom_p"]].copy()
    out["reason"] = reasons
    return out[out["reason"].notna()].reset_index(drop=True)


__all__ = [
    "ACTION_WORDS",
    "DATASET_COLUMNS",
    "FLAG_NAMES",
    "REFUSAL_PATTERNS",
    "DialogueDataError",
    "build_dataset",
    "clean_opener",
    "clean_reply",
    "dialogue_quality_table",
    "flag_counts",
    "generation_json",
    "is_refusal",
    "near_duplicate_flags",
    "near_duplicate_pairs",
    "near_duplicate_partners",
    "refusal_reason",
    "reply_similarity",
    "split_by_scenario",
    "target_accuracy_vs_chance",
    "write_jsonl",
]
