"""What answers the inventories: a typed protocol, met by the transformers model and by vLLM.

The inventory administration makes three calls, each over prompts that share a long
prefix (one condition's system turn and instructions). A transformers ``LoadedModel`` goes
through ``engine.shared_prefix`` and ``engine.scoring``; ``engine.vllm_engine.VllmModel``
has the same methods.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from big5_dagster.lib.engine.generation import GenerationResult
from big5_dagster.lib.engine.loading import LoadedModel
from big5_dagster.lib.engine.sampling import SamplingParams
from big5_dagster.lib.engine.scoring import OptionScores, score_options
from big5_dagster.lib.engine.shared_prefix import (
    generate_and_score_with_shared_prefix,
    generate_with_shared_prefix,
)
from big5_dagster.lib.engine.types import Conversation


@runtime_checkable
class Respondent(Protocol):
    """Generation and option scoring over prompts sharing a prefix, with identity for lineage."""

    model_id: str
    fingerprint: str
    dtype: str
    """The dtype the weights run in (what ``dtype: auto`` chose), for lineage."""
    tokenizer: Any

    def generate_with_shared_prefix(
        self,
        conversations: Sequence[Conversation],
        params: SamplingParams,
        *,
        batch_size: int,
        seeds: Sequence[int] | None = None,
        stop: Callable[[str], bool] | None = None,
    ) -> list[GenerationResult]: ...

    def generate_and_score_with_shared_prefix(
        self,
        conversations: Sequence[Conversation],
        params: SamplingParams,
        options: Sequence[str],
        *,
        batch_size: int,
        seeds: Sequence[int] | None = None,
        stop: Callable[[str], bool] | None = None,
    ) -> tuple[list[GenerationResult], OptionScores]: ...

    def score_options(
        self, prompts: Sequence[str | Conversation], options: Sequence[str], *, batch_size: int
    ) -> OptionScores: ...


@dataclass(frozen=True)
class TransformersRespondent:
    """A transformers model (possibly with a peft adapter attached) as a :class:`Respondent`."""

    loaded: LoadedModel

    @property
    def model_id(self) -> str:
        return self.loaded.model_id

    @property
    def fingerprint(self) -> str:
        return self.loaded.fingerprint

    @property
    def dtype(self) -> str:
        return self.loaded.dtype

    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer

    def generate_with_shared_prefix(
        self,
        conversations: Sequence[Conversation],
        params: SamplingParams,
        *,
        batch_size: int,
        seeds: Sequence[int] | None = None,
        stop: Callable[[str], bool] | None = None,
    ) -> list[GenerationResult]:
        return generate_with_shared_prefix(
            self.loaded, conversations, params, batch_size=batch_size, seeds=seeds, stop=stop
        )

    def generate_and_score_with_shared_prefix(
        self,
        conversations: Sequence[Conversation],
        params: SamplingParams,
        options: Sequence[str],
        *,
        batch_size: int,
        seeds: Sequence[int] | None = None,
        stop: Callable[[str], bool] | None = None,
    ) -> tuple[list[GenerationResult], OptionScores]:
        return generate_and_score_with_shared_prefix(
            self.loaded,
            conversations,
            params,
            options,
            batch_size=batch_size,
            seeds=seeds,
            stop=stop,
        )

    def score_options(
        self, prompts: Sequence[str | Conversation], options: Sequence[str], *, batch_size: int
    ) -> OptionScores:
        return score_options(self.loaded, prompts, options, batch_size=batch_size)


def respondent_of(model: LoadedModel | Respondent) -> Respondent:
    """The respondent answering through ``model``: a loaded transformers model is wrapped."""
    return TransformersRespondent(model) if isinstance(model, LoadedModel) else model
