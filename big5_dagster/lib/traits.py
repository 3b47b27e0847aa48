"""The Big Five traits, levels and personas, in the paper's order (O, C, E, A, N)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TRAITS: tuple[str, ...] = (
    "openness",
    "conscientiousness",
    "extraversion",
    "agreeableness",
    "neuroticism",
)
TRAIT_CODES: dict[str, str] = {
    "openness": "O",
    "conscientiousness": "C",
    "extraversion": "E",
    "agreeableness": "A",
    "neuroticism": "N",
}
CODE_TO_TRAIT: dict[str, str] = {code: trait for trait, code in TRAIT_CODES.items()}
LEVELS: tuple[str, ...] = ("high", "low")

Trait = Literal["openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism"]
Level = Literal["high", "low"]


def trait_from_code(code: str) -> str:
    """'O' -> 'openness'; accepts a full trait name too. Raises ValueError naming the allowed codes."""
    name = code.strip().lower()
    if name in TRAIT_CODES:
        return name
    upper = name.upper()
    if upper in CODE_TO_TRAIT:
        return CODE_TO_TRAIT[upper]
    raise ValueError(
        f"unknown trait code {code!r}: expected one of {sorted(CODE_TO_TRAIT)} or {list(TRAITS)}"
    )


@dataclass(frozen=True, order=True)
class Persona:
    """One of the 10 personas: a trait and a level (high or low)."""

    trait: str
    level: str

    def __post_init__(self) -> None:
        if self.trait not in TRAITS:
            raise ValueError(f"unknown trait {self.trait!r}: expected one of {list(TRAITS)}")
        if self.level not in LEVELS:
            raise ValueError(f"unknown level {self.level!r}: expected one of {list(LEVELS)}")

    @property
    def key(self) -> str:
        return f"{self.trait}_{self.level}"

    @property
    def opposite(self) -> Persona:
        return Persona(self.trait, "low" if self.level == "high" else "high")

    @classmethod
    def parse(cls, key: str) -> Persona:
        """'openness_high' -> Persona('openness', 'high')."""
        trait, sep, level = key.rpartition("_")
        if not sep:
            raise ValueError(f"persona key {key!r} is not of the form <trait>_<high|low>")
        return cls(trait, level)


PERSONAS: tuple[Persona, ...] = tuple(Persona(t, lv) for t in TRAITS for lv in LEVELS)
