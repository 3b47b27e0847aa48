"""PersonY's DExperts-steered replies for one persona, one batch of scenarios at a time."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from big5_dagster.lib.common.hashing import hash_json
from big5_dagster.lib.dialogues.cleaning import clean_reply
from big5_dagster.lib.dialogues.dataset import generation_json
from big5_dagster.lib.engine import dexperts
from big5_dagster.lib.engine.dexperts import DExpertsParams, DExpertsRequest
from big5_dagster.lib.engine.sampling import SamplingParams
from big5_dagster.lib.prompts import expert_messages, reply_messages
from big5_dagster.lib.traits import Persona


def batch_seed(seed: int, persona: Persona, batch_index: int) -> int:
    """Each batch samples from its own seed, so a resumed partition reproduces the rest."""
    return int(hash_json([seed, persona.key, batch_index]), 16) % (2**31)


def reply_batches(rows: Sequence[Mapping[str, Any]], batch_size: int) -> list[list[Any]]:
    """Scenario rows in consecutive batches (the unit of sampling seeds and of resuming)."""
    return [list(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)]


def reply_request(
    scenario: Mapping[str, str],
    opener: str,
    persona: Persona,
    *,
    expert_system_prompt: str | None,
    classic: bool,
) -> DExpertsRequest:
    """PersonY's reply in ``scenario`` steered towards ``persona`` (METHOD.md section 4): the
    base sees the role-play prompt, the expert its instruction with the system turn it was
    trained with, the anti-expert (classic formula only) the opposite level's instruction."""
    return DExpertsRequest(
        base_prompt=reply_messages(scenario, opener, persona),
        expert_prompt=expert_messages(persona, expert_system_prompt),
        anti_expert_prompt=(
            expert_messages(persona.opposite, expert_system_prompt) if classic else None
        ),
    )


def persona_reply_batch(
    decoder: Any,
    tokenizer: Any,
    batch: Sequence[Mapping[str, Any]],
    openers: Mapping[str, str],
    persona: Persona,
    params: DExpertsParams,
    sampling: SamplingParams,
    *,
    expert: Any,
    anti_expert: Any | None,
    models: Mapping[str, Any],
    expert_system_prompt: str | None = None,
) -> pd.DataFrame:
    """One batch of replies as rows of the replies table (raw and cleaned reply, tokens,
    finish reason and the ``generation`` JSON with formula, sampling, seed and models).

    ``models``: base_model, expert_model, anti_expert_model (classic formula) and extra
    generation fields (e.g. the expert path) recorded in ``generation``.
    """
    classic = params.formula == "dexperts"
    requests = [
        reply_request(
            row,
            openers[row["scenario_id"]],
            persona,
            expert_system_prompt=expert_system_prompt,
            classic=classic,
        )
        for row in batch
    ]
    results = dexperts.generate_dexperts(
        decoder,
        tokenizer,
        requests,
        params,
        sampling,
        expert=expert,
        anti_expert=anti_expert if classic else None,
        batch_size=len(batch),
    )
    generation = generation_json(
        formula=params.formula,
        alpha=params.alpha,
        warmup_tokens=params.warmup_tokens,
        sampling=dataclasses.asdict(sampling),
        seed=sampling.seed,
        base_model=models["base_model"],
        expert_model=models["expert_model"],
        anti_expert_model=models.get("anti_expert_model") if classic else None,
        extra=models.get("extra"),
    )
    return pd.DataFrame(
        {
            "scenario_id": [row["scenario_id"] for row in batch],
            "persona": persona.key,
            "trait": persona.trait,
            "level": persona.level,
            "raw_reply": [r.text for r in results],
            "reply": [
                clean_reply(r.text, row["person_y"]) for r, row in zip(results, batch, strict=True)
            ],
            "n_new_tokens": [r.n_new_tokens for r in results],
            "finish_reason": [r.finish_reason for r in results],
            "generation": generation,
        }
    )
