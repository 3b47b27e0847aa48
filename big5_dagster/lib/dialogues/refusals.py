"""Assistant-style refusals and breaking character, from a documented pattern list."""

from __future__ import annotations

import re

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
