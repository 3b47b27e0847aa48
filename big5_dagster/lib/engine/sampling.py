"""Sampling settings and the repetition penalty, built in one place.

transformers' ``generate()`` applies repetition penalty, then temperature, top-k and top-p,
then draws. Every decode loop here (``engine.kv_decode``: plain, shared-prefix and DExperts
generation) applies the same penalty, then ``engine.candidate_sampler.CandidateSampler``,
which does temperature, top-k, top-p and the draw exactly as transformers defines them, over
the top few hundred logits instead of a sort of the whole vocabulary, with one seeded random
stream per row. transformers is imported where used: the definitions load without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from transformers import GenerationConfig, LogitsProcessorList


@dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """Every decoding setting, passed explicitly (the model's generation config sets none).

    ``do_sample=False`` is greedy decoding and ignores temperature, top_p and top_k.
    """

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    """0 disables top-k filtering."""
    repetition_penalty: float = 1.0
    do_sample: bool = True
    seed: int

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(
                f"SamplingParams.max_new_tokens must be >= 1, got {self.max_new_tokens}"
            )
        if self.temperature <= 0:
            raise ValueError(
                f"SamplingParams.temperature must be > 0 (use do_sample=False for greedy), "
                f"got {self.temperature}"
            )
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"SamplingParams.top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ValueError(
                f"SamplingParams.repetition_penalty must be > 0, got {self.repetition_penalty}"
            )

    def generation_config(
        self, eos_token_ids: Sequence[int], pad_token_id: int
    ) -> GenerationConfig:
        """A transformers GenerationConfig with every decoding value set."""
        from transformers import GenerationConfig

        values: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "repetition_penalty": self.repetition_penalty,
            "eos_token_id": list(eos_token_ids),
            "pad_token_id": pad_token_id,
            "num_beams": 1,
        }
        if self.do_sample:
            # Neutral values for the filters SamplingParams does not expose, so none can leak
            # in from a checkpoint's generation_config.json.
            values.update(
                temperature=self.temperature,
                top_p=self.top_p,
                top_k=self.top_k,
                min_p=0.0,
                typical_p=1.0,
                epsilon_cutoff=0.0,
                eta_cutoff=0.0,
            )
        return GenerationConfig(**values)


def repetition_penalties(params: SamplingParams) -> LogitsProcessorList:
    """The repetition penalty generate() applies before the warpers (empty at 1.0). It
    touches only the tokens of each row's sequence (a gather and a scatter), not the vocabulary."""
    from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

    penalties = LogitsProcessorList()
    if params.repetition_penalty != 1.0:
        penalties.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    return penalties


def row_seeds(seed: int, n: int) -> list[int]:
    """``n`` well-spread 32-bit seeds derived from one ``seed`` (one per prompt, by index)."""
    return (
        [int(s) for s in np.random.SeedSequence([int(seed), n]).generate_state(n, np.uint32)]
        if n
        else []
    )
