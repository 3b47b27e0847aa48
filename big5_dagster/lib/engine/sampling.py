"""Sampling settings and the logits processors that sample, built in one place.

transformers' ``generate()`` applies repetition penalty, then temperature, top-k and top-p;
the shared-prefix generation (``engine.shared_prefix``) and DExperts decoding
(``engine.dexperts``) build the same processors here, in the same order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


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


def sampling_warpers(params: SamplingParams) -> LogitsProcessorList:
    """Temperature, top-k and top-p, in the order generate() applies them when sampling;
    empty for greedy decoding."""
    warpers = LogitsProcessorList()
    if params.do_sample:
        if params.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(params.temperature))
        if params.top_k > 0:
            warpers.append(TopKLogitsWarper(top_k=params.top_k))
        if params.top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p=params.top_p))
    return warpers


def repetition_penalties(params: SamplingParams) -> LogitsProcessorList:
    """The repetition penalty generate() applies before the warpers (empty at 1.0)."""
    penalties = LogitsProcessorList()
    if params.repetition_penalty != 1.0:
        penalties.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    return penalties


class PerRowSampler(LogitsProcessor):
    """Turns greedy decoding into sampling with one random stream per row.

    At each step row i draws one uniform number from its own ``torch.Generator`` (seeded with
    ``seeds[i]``) and picks the token where it falls in the cumulative softmax of the
    processed scores (inverse-CDF sampling, exact for the distribution those scores define;
    filtered tokens at -inf have probability 0 and are never picked). The scores come back
    as 0 for the picked token and -inf elsewhere, so greedy decoding emits it. Row i uses only
    its own stream, one draw per generated token, so its reply depends on its prompt and
    seed, not on which other rows share its batch. Run it last, after the warpers.
    """

    def __init__(self, seeds: Iterable[int]) -> None:
        self.seeds = [int(s) for s in seeds]
        self._generators: list[torch.Generator] | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != len(self.seeds):
            raise ValueError(f"got {scores.shape[0]} rows of scores for {len(self.seeds)} seeds")
        if self._generators is None:
            self._generators = [torch.Generator().manual_seed(s) for s in self.seeds]
        uniform = torch.cat(
            [torch.rand(1, generator=g, dtype=torch.float64) for g in self._generators]
        )
        cdf = scores.double().softmax(dim=-1).cumsum(dim=-1)
        # side 'right': the first token whose cumulative mass exceeds u * total, which always
        # has positive probability (u = 0 cannot land on a leading zero-probability token).
        target = (uniform.to(cdf.device) * cdf[:, -1]).unsqueeze(1)
        picked = torch.searchsorted(cdf, target, right=True).clamp(max=scores.shape[1] - 1)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, picked, 0.0)
        return out


def row_seeds(seed: int, n: int) -> list[int]:
    """``n`` well-spread 32-bit seeds derived from one ``seed`` (one per prompt, by index)."""
    return (
        [int(s) for s in np.random.SeedSequence([int(seed), n]).generate_state(n, np.uint32)]
        if n
        else []
    )


@contextlib.contextmanager
def seeded(seed: int, device: str) -> Iterator[None]:
    """Seed torch's RNG for one call without disturbing the caller's RNG state."""
    # manual_seed seeds every GPU, so fork them all (a device_map may spread the model).
    devices = list(range(torch.cuda.device_count())) if device.startswith("cuda") else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
