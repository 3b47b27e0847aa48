"""Cleaning a model's line: strip stage directions, speaker labels and wrapping quotes,
keeping the spoken content intact (``clean_reply``, ``clean_opener``)."""

from __future__ import annotations

import re

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
