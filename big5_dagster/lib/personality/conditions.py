"""The conditions a method partition evaluates (METHOD.md section 6).

A *condition* is one way of setting the model up: the base model, a prompting baseline
(trait description, or 10 example replies) for one persona, a LoRA adapter (SFT/DPO,
one training seed) selected by the persona instruction it was trained with, or a persona
vector added to the residual stream (steering, no instruction).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from big5_dagster.lib.personality.administration import (
    item_messages,
)
from big5_dagster.lib.personality.inventory import Inventory
from big5_dagster.lib.personality.methods import (
    ADAPTER_METHODS,
    METHODS,
    NO_PERSONA,
    STEERING_METHODS,
)
from big5_dagster.lib.prompts import persona_description, persona_instruction
from big5_dagster.lib.traits import PERSONAS, Persona

N_DEMONSTRATIONS = 10


@dataclass(frozen=True)
class Condition:
    """One model set-up to administer the inventories under.

    ``system`` is the system turn's persona text; None leaves the system turn out, and then
    SmolLM2's chat template injects its default system prompt ("You are a helpful AI
    assistant named SmolLM, trained by Hugging Face"): the base condition is the model as a
    user meets it. ``demonstrations`` (the demonstration baseline) go into the system turn
    below ``system``. ``adapter_seed``/``adapter_version`` identify the LoRA adapter of an
    SFT/DPO condition (training seed, hash of the adapter weights); the caller attaches it.
    ``steering`` is a steering condition's (layer, coef, persona vector file version): the
    caller adds the persona's direction there (sign from its level) and gives no instruction.
    """

    method: str
    persona: str
    adapter_seed: int | None = None
    system: str | None = None
    demonstrations: tuple[str, ...] | None = None
    adapter_version: str | None = None
    steering: tuple[int, float, str] | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}: expected one of {list(METHODS)}")
        if self.demonstrations is not None:
            if isinstance(self.demonstrations, str):
                raise TypeError(f"{self.label}: demonstrations must be a list of strings")
            object.__setattr__(self, "demonstrations", tuple(self.demonstrations))
        if self.method == "base":
            if self.persona != NO_PERSONA:
                raise ValueError(
                    f"the base condition has persona {NO_PERSONA!r}, got {self.persona!r}"
                )
        else:
            Persona.parse(self.persona)  # raises naming the expected form
        needs_adapter = self.method in ADAPTER_METHODS
        if needs_adapter and (self.adapter_seed is None or not self.adapter_version):
            raise ValueError(
                f"{self.label}: an {self.method} condition needs adapter_seed and adapter_version"
            )
        if not needs_adapter and (
            self.adapter_seed is not None or self.adapter_version is not None
        ):
            raise ValueError(f"{self.label}: only sft/dpo conditions have an adapter")
        is_steering = self.method in STEERING_METHODS
        if is_steering and (self.steering is None or self.system is not None):
            raise ValueError(
                f"{self.label}: a steering condition needs steering (layer, coef, vector "
                "version) and no system text"
            )
        if not is_steering and self.steering is not None:
            raise ValueError(f"{self.label}: only steering conditions add a persona vector")
        if self.method == "prompt_demonstrations" and not self.demonstrations:
            raise ValueError(f"{self.label}: the demonstrations baseline needs demonstrations")
        if self.method != "prompt_demonstrations" and self.demonstrations is not None:
            raise ValueError(f"{self.label}: only prompt_demonstrations takes demonstrations")

    @property
    def label(self) -> str:
        """A readable id: 'base', 'prompt_description/openness_high', 'sft/openness_high/seed1'."""
        parts = [self.method] if self.method == "base" else [self.method, self.persona]
        if self.adapter_seed is not None:
            parts.append(f"seed{self.adapter_seed}")
        return "/".join(parts)

    @property
    def model_version(self) -> str | None:
        """What the model is changed by, for cache keys and the rows' adapter_version: the
        adapter weights hash (sft/dpo), the steering vector (variant, file version, persona: a
        steering condition's prompts are every persona's), layer and coef, or None."""
        if self.steering is not None:
            layer, coef, version = self.steering
            variant = STEERING_METHODS[self.method]
            return f"{variant}:{version}:{self.persona}:layer{layer}:coef{coef:g}"
        return self.adapter_version

    @property
    def adapter_identity(self) -> tuple[str, int | None, str | None]:
        """What must be attached to the model: ('none', None, None) for no adapter."""
        if self.method not in ADAPTER_METHODS:
            return ("none", None, None)
        return (self.method, self.adapter_seed, self.adapter_version)

    def messages(self, inv: Inventory, item_id: str, order: str) -> list[dict[str, str]]:
        """The chat prompt of one item in one option order under this condition."""
        return item_messages(inv, inv.item(item_id), order, self.system, self.demonstrations)


def conditions_for(
    method: str,
    personas: Sequence[Persona] = PERSONAS,
    demonstrations_by_persona: Mapping[str, Sequence[str]] | None = None,
    adapter_seeds: Mapping[int, str] | None = None,
    *,
    n_demonstrations: int = N_DEMONSTRATIONS,
    steering: tuple[int, float, str] | None = None,
) -> list[Condition]:
    """The conditions one method partition evaluates.

    - base: one condition, persona 'none', no system turn (the chat template's default
      system prompt applies, see ``Condition``);
    - prompt_description: per persona, system = ``persona_description(persona)``;
    - prompt_demonstrations: per persona, the persona's ``n_demonstrations`` BIG5-CHAT
      replies from ``demonstrations_by_persona`` (persona key -> replies), exactly that many;
    - sft / dpo: per persona and adapter seed, system = ``persona_instruction(persona)`` (the
      instruction the adapters were trained with); ``adapter_seeds`` maps each training seed
      to its adapter version (weights hash);
    - steering_*: per persona, no system turn (the vector replaces the instruction) and
      ``steering`` = (layer, coef, persona vector version).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: expected one of {list(METHODS)}")
    if method == "base":
        return [Condition(method="base", persona=NO_PERSONA)]
    if not personas:
        raise ValueError(f"method {method!r} needs at least one persona")
    if method == "prompt_description":
        return [
            Condition(method=method, persona=p.key, system=persona_description(p)) for p in personas
        ]
    if method == "prompt_demonstrations":
        if demonstrations_by_persona is None:
            raise ValueError("prompt_demonstrations needs demonstrations_by_persona")
        conditions = []
        for p in personas:
            if p.key not in demonstrations_by_persona:
                raise ValueError(f"demonstrations_by_persona has no entry for persona {p.key!r}")
            replies = list(demonstrations_by_persona[p.key])
            if len(replies) != n_demonstrations:
                raise ValueError(
                    f"demonstrations_by_persona[{p.key!r}] holds {len(replies)} replies, "
                    f"expected {n_demonstrations}"
                )
            conditions.append(
                Condition(method=method, persona=p.key, demonstrations=tuple(replies))
            )
        return conditions
    if method in STEERING_METHODS:
        if steering is None:
            raise ValueError(f"method {method!r} needs steering (layer, coef, vector version)")
        return [Condition(method=method, persona=p.key, steering=steering) for p in personas]
    if not adapter_seeds:
        raise ValueError(
            f"method {method!r} needs adapter_seeds (training seed -> adapter version)"
        )
    return [
        Condition(
            method=method,
            persona=p.key,
            adapter_seed=int(seed),
            system=persona_instruction(p),
            adapter_version=version,
        )
        for seed, version in sorted(adapter_seeds.items())
        for p in personas
    ]


def by_model_change(conditions: Sequence[Condition]) -> list[list[Condition]]:
    """The conditions grouped by the change the model needs, in order: one group per adapter
    seed (None: no adapter), and every steering condition on its own (its own vector)."""
    groups: dict[tuple[int | None, str | None], list[Condition]] = {}
    for condition in conditions:
        key = (condition.adapter_seed, condition.label if condition.steering else None)
        groups.setdefault(key, []).append(condition)
    return list(groups.values())
