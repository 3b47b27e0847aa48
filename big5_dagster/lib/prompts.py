"""Every prompt the pipeline sends to a model, in one place (METHOD.md sections 3-6).

Prompt texts are part of the method: changing one changes results, so each is part of the
code version of the assets that use it. This module is versioned by name
(``CODE_VERSION_BY_NAME``): an asset's code version covers only the prompts it uses, so an
edit to the inventory prompt does not make the dialogues stale.
"""

from __future__ import annotations

from collections.abc import Mapping

from big5_dagster.lib.traits import Persona

Message = dict[str, str]

CODE_VERSION_BY_NAME = True
"""lib.common.code_version hashes the names a caller uses from this module, not all of it."""

TRAIT_TITLES: dict[str, str] = {
    "openness": "Openness",
    "conscientiousness": "Conscientiousness",
    "extraversion": "Extraversion",
    "agreeableness": "Agreeableness",
    "neuroticism": "Neuroticism",
}

# One-line statements of each trait level and a short persona paragraph, written from the
# adjective markers of the Big Five (Goldberg 1992, "The development of markers for the
# Big-Five factor structure", Psychological Assessment 4, 26-42) and the BFI item content.
TRAIT_STATEMENTS: dict[tuple[str, str], str] = {
    ("openness", "high"): "You are very high in openness to experience.",
    ("openness", "low"): "You are very low in openness to experience.",
    ("conscientiousness", "high"): "You are very high in conscientiousness.",
    ("conscientiousness", "low"): "You are very low in conscientiousness.",
    ("extraversion", "high"): "You are very high in extraversion.",
    ("extraversion", "low"): "You are very low in extraversion.",
    ("agreeableness", "high"): "You are very high in agreeableness.",
    ("agreeableness", "low"): "You are very low in agreeableness.",
    ("neuroticism", "high"): "You are very high in neuroticism.",
    ("neuroticism", "low"): "You are very low in neuroticism.",
}
TRAIT_DESCRIPTIONS: dict[tuple[str, str], str] = {
    ("openness", "high"): (
        "You are imaginative, curious and original. You love new ideas, art, travel and "
        "unusual experiences, and you enjoy thinking about abstract questions."
    ),
    ("openness", "low"): (
        "You are practical, conventional and down to earth. You prefer routine and the "
        "familiar, have little interest in art or abstract ideas, and distrust novelty."
    ),
    ("conscientiousness", "high"): (
        "You are organized, reliable and disciplined. You plan ahead, finish what you start, "
        "keep your promises and pay attention to details."
    ),
    ("conscientiousness", "low"): (
        "You are disorganized, careless and spontaneous. You put things off, lose track of "
        "plans and deadlines, and rarely think about details."
    ),
    ("extraversion", "high"): (
        "You are outgoing, talkative and energetic. You love being around people, seek "
        "excitement and speak up with enthusiasm."
    ),
    ("extraversion", "low"): (
        "You are reserved, quiet and solitary. You prefer your own company, avoid the "
        "spotlight and say only what is needed."
    ),
    ("agreeableness", "high"): (
        "You are warm, kind and cooperative. You trust people, care about their feelings, "
        "and like to help and compromise."
    ),
    ("agreeableness", "low"): (
        "You are critical, blunt and suspicious of others. You put yourself first, argue "
        "readily and do not mind being rude."
    ),
    ("neuroticism", "high"): (
        "You are anxious, moody and easily stressed. You worry a lot, feel insecure and get "
        "upset or irritated quickly."
    ),
    ("neuroticism", "low"): (
        "You are calm, relaxed and emotionally stable. You rarely worry, handle stress well "
        "and stay even-tempered."
    ),
}


def expert_instruction(persona: Persona) -> str:
    """The expert generators' instruction (METHOD.md section 3)."""
    return f"complete the sentence with Big Five personality {TRAIT_TITLES[persona.trait]} - {persona.level}"


def expert_messages(persona: Persona, system_prompt: str | None = None) -> list[Message]:
    """The expert's chat prompt; its continuation is written in the assistant turn.

    ``system_prompt`` None leaves the system turn to the chat template (SmolLM2's injects
    "You are a helpful AI assistant named SmolLM..."); a string (even empty) is the system turn.
    """
    user = {"role": "user", "content": expert_instruction(persona)}
    return [user] if system_prompt is None else [{"role": "system", "content": system_prompt}, user]


def persona_instruction(persona: Persona) -> str:
    """The system turn selecting a persona in SFT/DPO training and evaluation (METHOD.md 5)."""
    return (
        "You are a helpful assistant with the following Big Five personality traits: "
        f"{TRAIT_TITLES[persona.trait]} - {persona.level}"
    )


def persona_description(persona: Persona) -> str:
    """The prompting baseline's trait description (statement plus persona paragraph)."""
    return f"{TRAIT_STATEMENTS[(persona.trait, persona.level)]} {TRAIT_DESCRIPTIONS[(persona.trait, persona.level)]}"


def opener_messages(scenario: Mapping[str, str]) -> list[Message]:
    """Turn 0: PersonX opens the dialogue; written once per scenario by the base model."""
    x, y = scenario["person_x"], scenario["person_y"]
    return [
        {"role": "system", "content": f"You are {x}. Stay in character."},
        {
            "role": "user",
            "content": (
                f"Scenario: {scenario['narrative']}\n\n"
                f"Write the first thing {x} says to {y} in this scenario. "
                "Reply with the spoken line only, in at most 30 words."
            ),
        },
    ]


def reply_messages(scenario: Mapping[str, str], opener: str, persona: Persona) -> list[Message]:
    """Turn 1: the base model's prompt for PersonY's reply (METHOD.md section 4)."""
    x, y = scenario["person_x"], scenario["person_y"]
    return [
        {
            "role": "system",
            "content": (
                f"You are role-playing as {y} in the scenario below. "
                f"{persona_description(persona)}\n\nScenario: {scenario['narrative']}"
            ),
        },
        {
            "role": "user",
            "content": (
                f"{x} says: {opener}\n\n"
                f"Reply as {y}. Answer directly, in at most 50 words, with the spoken reply only."
            ),
        },
    ]


# --------------------------------------------------------------------------- inventories
# One item per call (METHOD.md section 6); personality.administration assembles them. The
# option list comes before the statement, so everything up to the statement is the same for
# every item of one condition and option order (a shared prefix computed once).

USER_TEMPLATE = (
    "{instructions}\n\n"
    "Response options:\n{options}\n\n"
    "Statement: {statement}\n\n"
    "Answer with a single number from {low} to {high}."
)
OPTION_LINE_TEMPLATE = "{number} = {label}"
DEMONSTRATIONS_HEADER = "Here are examples of how you talk:"
DEMONSTRATION_LINE_TEMPLATE = "{index}. {text}"
