"""The model backend resource: a thin Dagster wrapper over big5_dagster.lib.engine.

Importing this module loads no model and not even torch or transformers (about 4 s), so
loading the Dagster definitions stays fast: the engine is imported on first use. The model
is loaded on the first call that needs it and cached per process, keyed by the settings,
so steps running in one process share it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import PrivateAttr

from big5_dagster.config import ModelSettings

if TYPE_CHECKING:
    from transformers import LogitsProcessor

    from big5_dagster.lib.engine.generation import GenerationResult
    from big5_dagster.lib.engine.loading import LoadedModel
    from big5_dagster.lib.engine.sampling import SamplingParams
    from big5_dagster.lib.engine.scoring import OptionScores
    from big5_dagster.lib.engine.types import Conversation, ProgressCallback

_CacheKey = tuple[str | None, ...]
_PROCESS_CACHE: dict[_CacheKey, LoadedModel] = {}
_PROCESS_CACHE_LOCK = threading.Lock()


def clear_model_cache() -> None:
    """Forget every model loaded in this process (frees memory once nothing else holds them)."""
    with _PROCESS_CACHE_LOCK:
        _PROCESS_CACHE.clear()


class ModelBackend(dg.ConfigurableResource, ModelSettings):
    """Generation, option scoring and the loaded (model, tokenizer) for every stage.

    The Hugging Face token, when a gated hub model needs one, is read from the HF_TOKEN
    environment variable at load time; it is never a config field.
    """

    models_dir: str
    """Where the embedded model is converted once (e.g. assets_data/models)."""

    _loaded: Any = PrivateAttr(default=None)  # LoadedModel once loaded

    def _cache_key(self) -> _CacheKey:
        return (self.base_model, self.revision, self.dtype, self.device, self.models_dir)

    def load(self, *, cached: bool = True) -> LoadedModel:
        """The loaded model. Cached per process and shared: do not mutate it. ``cached=False``
        loads a private copy (for training, which wraps the model with adapters)."""
        if not cached:
            return self._load_uncached()
        if self._loaded is None:
            key = self._cache_key()
            with _PROCESS_CACHE_LOCK:
                if key not in _PROCESS_CACHE:
                    _PROCESS_CACHE[key] = self._load_uncached()
                self._loaded = _PROCESS_CACHE[key]
        return self._loaded

    def _load_uncached(self) -> LoadedModel:
        from big5_dagster.lib.engine.loading import load_model

        return load_model(
            self.base_model,
            models_dir=Path(self.models_dir),
            revision=self.revision,
            dtype=self.dtype,
            device=self.device,
        )

    def respondent(self) -> Any:
        """What answers the inventories: the transformers model, or with backend 'vllm' a
        vLLM engine (lib.engine.vllm_engine.VllmModel), started once per process."""
        if self.backend == "transformers":
            return self.load()
        from big5_dagster.lib.engine.vllm_engine import VllmModel

        key = ("vllm", *self._cache_key())
        with _PROCESS_CACHE_LOCK:
            if key not in _PROCESS_CACHE:
                _PROCESS_CACHE[key] = VllmModel.load(
                    self.base_model,
                    models_dir=Path(self.models_dir),
                    revision=self.revision,
                    dtype="bfloat16" if self.dtype in ("float32", "auto") else self.dtype,
                    gpu_memory_utilization=self.gpu_memory_utilization,
                )
            return _PROCESS_CACHE[key]

    def model_id(self) -> str:
        """The model's id, without loading it."""
        from big5_dagster.lib.engine.loading import resolve_model_source

        return resolve_model_source(self.base_model, Path(self.models_dir))[1]

    def fingerprint(self) -> str:
        """Content-based identity of the model for lineage (loads it)."""
        return self.load().fingerprint

    def generate(
        self,
        conversations: Sequence[Conversation],
        params: SamplingParams,
        *,
        batch_size: int = 8,
        progress: ProgressCallback | None = None,
        logits_processors: Sequence[LogitsProcessor] = (),
    ) -> list[GenerationResult]:
        """Reply to each chat conversation; see lib.engine.generation.generate_chat."""
        from big5_dagster.lib.engine.generation import generate_chat

        return generate_chat(
            self.load(),
            conversations,
            params,
            batch_size=batch_size,
            progress=progress,
            logits_processors=logits_processors,
        )

    def score_options(
        self,
        prompts: Sequence[str | Conversation],
        options: Sequence[str],
        *,
        batch_size: int = 8,
        use_prefix_cache: bool = True,
        progress: ProgressCallback | None = None,
    ) -> OptionScores:
        """Next-token log-probabilities of single-token options; see lib.engine.scoring."""
        from big5_dagster.lib.engine.scoring import score_options

        return score_options(
            self.load(),
            prompts,
            options,
            batch_size=batch_size,
            use_prefix_cache=use_prefix_cache,
            progress=progress,
        )
