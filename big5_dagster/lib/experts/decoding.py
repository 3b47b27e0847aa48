"""The trained experts at work: attached to the base model (LoRA) or loaded as separate
models, completing held-out prefixes, and set up for DExperts decoding."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from big5_dagster.lib.engine.adapters import lora_adapter
from big5_dagster.lib.engine.loading import LoadedModel, load_model
from big5_dagster.lib.engine.sampling import SamplingParams
from big5_dagster.lib.experts.examples import complete_prefixes
from big5_dagster.lib.experts.records import ExpertRecord
from big5_dagster.lib.training.adapted import load_adapted_model
from big5_dagster.lib.traits import LEVELS, Persona

EXPERT_PATHS: tuple[str, ...] = ("auto", "batched_lora", "two_models")


@contextlib.contextmanager
def attached_experts(loaded: LoadedModel, record: ExpertRecord) -> Iterator[object]:
    """The base model with the trait's LoRA expert(s) attached (adapter name = folder name)."""
    if not record.is_lora_on(loaded.fingerprint):
        raise ValueError(
            f"{record.folder}: the experts are not LoRA adapters on the pipeline's base model "
            f"(mode {record.mode!r}); load them as separate models"
        )
    adapters = {name: record.folder / name for name in record.folder_names}
    with lora_adapter(loaded.model, adapters) as peft_model:
        yield peft_model


def load_expert_models(record: ExpertRecord, device: str) -> dict[str, object]:
    """Level -> a separate expert model (full fine-tunes, or LoRA on another base, merged)."""
    models: dict[str, object] = {}
    for level, name in record.experts.items():
        if name not in models:
            if record.mode == "full":
                models[name] = load_model(str(record.folder / name), device=device).model
            else:
                models[name] = load_adapted_model(
                    record.base_model, record.folder / name, device=device, merge=True
                ).model
        models[level] = models[name]
    return {level: models[level] for level in record.experts}


def expert_completions(
    loaded: LoadedModel, record: ExpertRecord, prefixes: pd.DataFrame, sampling: SamplingParams
) -> pd.DataFrame:
    """Held-out prefixes completed by the trait's expert(s) at high and at low."""
    frames = []
    if record.is_lora_on(loaded.fingerprint):
        with attached_experts(loaded, record) as peft_model:
            for level in LEVELS:
                peft_model.set_adapter(record.experts[level])
                expert = dataclasses.replace(loaded, model=peft_model)
                frames.append(
                    _completions_at(
                        expert, record.trait, prefixes, level, sampling, record.system_prompt
                    )
                )
    else:
        separate = load_expert_models(record, device=str(loaded.device))
        for level in LEVELS:
            expert = dataclasses.replace(loaded, model=separate[level])
            frames.append(
                _completions_at(
                    expert, record.trait, prefixes, level, sampling, record.system_prompt
                )
            )
    return pd.concat(frames, ignore_index=True)


def _completions_at(
    expert: LoadedModel,
    trait: str,
    prefixes: pd.DataFrame,
    level: str,
    sampling: SamplingParams,
    system_prompt: str | None,
) -> pd.DataFrame:
    outputs = complete_prefixes(
        expert, trait, prefixes.prefix.tolist(), level, sampling, system_prompt=system_prompt
    )
    return pd.DataFrame(
        {
            "post_id": prefixes.post_id,
            "true_level": prefixes.level,
            "target_level": level,
            "prefix": prefixes.prefix,
            "completion": [o.text for o in outputs],
            "n_new_tokens": [o.n_new_tokens for o in outputs],
            "finish_reason": [o.finish_reason for o in outputs],
        }
    )


@contextlib.contextmanager
def expert_for_decoding(
    loaded: LoadedModel, record: ExpertRecord, persona: Persona, expert_path: str
) -> Iterator[tuple[object, object, object | None, str]]:
    """(model to decode with, expert, anti-expert or None, path name) for generate_dexperts.

    LoRA experts on the pipeline's own base model run batched with the base rows in one
    forward (peft mixed adapters); other experts are separate models stepped in lockstep.
    The anti-expert is the opposite level's expert when it has weights of its own.
    """
    names = record.experts
    level, opposite = persona.level, persona.opposite.level
    if record.is_lora_on(loaded.fingerprint) and expert_path in ("auto", "batched_lora"):
        with attached_experts(loaded, record) as peft_model:
            anti = names[opposite] if names[opposite] != names[level] else None
            yield peft_model, names[level], anti, "batched_lora"
        return
    if expert_path == "batched_lora":
        raise ValueError(
            "dialogues.expert_path is 'batched_lora' but the experts are not LoRA adapters on "
            f"the pipeline's base model (mode {record.mode!r}, base {record.base_model!r})"
        )
    models = load_expert_models(record, device=str(loaded.device))
    anti = models[opposite] if models[opposite] is not models[level] else None
    yield loaded.model, models[level], anti, "two_models"


@dataclass(frozen=True)
class DecodingGroup:
    """Personas whose DExperts replies can be decoded in one batch, with their experts."""

    personas: tuple[Persona, ...]
    decoder: object
    """The model to decode with (the base, with every group's LoRA expert attached)."""
    path: str
    experts: Mapping[str, object]
    """Persona key -> the expert (adapter name, or a separate model)."""
    anti_experts: Mapping[str, object | None]
    """Persona key -> the anti-expert with weights of its own, or None."""

    def expert_arguments(self, personas: Sequence[Persona]) -> tuple[object, object | None]:
        """generate_dexperts' ``expert`` and ``anti_expert`` for requests of these personas
        (one per request): adapter names per request on the batched path, else the one
        persona's models."""
        if self.path != "batched_lora":
            (key,) = {p.key for p in personas}
            return self.experts[key], self.anti_experts[key]
        experts = [self.experts[p.key] for p in personas]
        # Without weights of its own the anti-expert is the expert with the opposite prompt.
        anti = [self.anti_experts[p.key] or self.experts[p.key] for p in personas]
        return experts, anti


def persona_batches(
    loaded: LoadedModel,
    records: Mapping[str, ExpertRecord],
    personas: Sequence[Persona],
    expert_path: str,
) -> list[tuple[Persona, ...]]:
    """The personas whose DExperts replies can share a batch: all of them when every expert
    is a LoRA adapter on the pipeline's own base model (and the path allows it), else one
    persona per batch (separate expert models)."""
    lora = all(records[p.trait].is_lora_on(loaded.fingerprint) for p in personas)
    if lora and expert_path in ("auto", "batched_lora"):
        return [tuple(personas)]
    return [(p,) for p in personas]


@contextlib.contextmanager
def decoding_group(
    loaded: LoadedModel,
    records: Mapping[str, ExpertRecord],
    personas: Sequence[Persona],
    expert_path: str,
) -> Iterator[DecodingGroup]:
    """The experts of ``personas`` (one of :func:`persona_batches`) ready for DExperts
    decoding in this block: every trait's LoRA adapters attached at once (named
    ``<trait>-<folder>``), or one persona's experts from :func:`expert_for_decoding`."""
    if len(personas) == 1:
        (persona,) = personas
        with expert_for_decoding(loaded, records[persona.trait], persona, expert_path) as (
            decoder,
            expert,
            anti_expert,
            path,
        ):
            yield DecodingGroup(
                (persona,),
                decoder,
                path,
                experts={persona.key: expert},
                anti_experts={persona.key: anti_expert},
            )
        return
    if persona_batches(loaded, records, personas, expert_path) != [tuple(personas)]:
        raise ValueError(
            "personas decode in one batch only when every expert is a LoRA adapter on the "
            f"pipeline's base model and dialogues.expert_path allows it (it is {expert_path!r})"
        )
    traits = sorted({p.trait for p in personas})
    adapters = {
        f"{trait}-{name}": records[trait].folder / name
        for trait in traits
        for name in records[trait].folder_names
    }

    def adapter(persona: Persona, level: str | None) -> str | None:
        return f"{persona.trait}-{records[persona.trait].experts[level]}" if level else None

    with lora_adapter(loaded.model, adapters) as peft_model:
        yield DecodingGroup(
            tuple(personas),
            peft_model,
            "batched_lora",
            experts={p.key: adapter(p, p.level) for p in personas},
            anti_experts={
                p.key: adapter(p, records[p.trait].anti_expert_level(p)) for p in personas
            },
        )
