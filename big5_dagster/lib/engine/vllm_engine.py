"""A vLLM implementation of the respondent interface (generation and option scoring) for GPUs.

Installed with the ``gpu`` extra (``pip install -e '.[gpu]'``); vLLM is imported only when a
``VllmModel`` is created, so the package imports without it. The interface is the one the
inventory administration uses with the transformers backend (``engine.respondent``):

- ``generate_with_shared_prefix(conversations, params, *, batch_size, seeds)``: chat replies,
  one seed per conversation (vLLM seeds each request, so a reply does not depend on what
  else is in the batch); vLLM's prefix caching reuses the shared system prompt.
- ``score_options(prompts, options, *, batch_size)``: log p(option | prompt) under the full
  softmax, read as the prompt log-probability of the option appended to the prompt (exact;
  vLLM's sampled-token logprobs only cover the top-k), and the argmax token from a greedy
  one-token request.
- ``with_lora(name, path)``: the same engine answering through a LoRA adapter (vLLM's LoRA
  support, ``enable_lora``), as peft adapters do on the transformers path.

DExperts and training need the model's logits and gradients and stay on transformers.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from big5_dagster.lib.engine.chat import render_chat
from big5_dagster.lib.engine.embedded import ensure_embedded_model
from big5_dagster.lib.engine.generation import GenerationResult, cut_at_stop
from big5_dagster.lib.engine.loading import (
    fingerprint_of,
    folder_fingerprint_parts,
    resolve_model_source,
)
from big5_dagster.lib.engine.sampling import SamplingParams
from big5_dagster.lib.engine.scoring import OptionScores, option_token_ids
from big5_dagster.lib.engine.types import Conversation, ModelBackendError


def vllm_available() -> bool:
    """True when vLLM is importable and a CUDA device is visible."""
    try:
        import torch
        import vllm  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def _lora_id(path: str) -> int:
    # vLLM identifies adapters by a positive int; derive it from the path so it is stable.
    return int(hashlib.sha256(path.encode()).hexdigest()[:7], 16) + 1


@dataclasses.dataclass(frozen=True)
class VllmModel:
    """A vLLM engine with the identity fields the pipeline records in lineage."""

    llm: Any = dataclasses.field(repr=False)
    tokenizer: Any = dataclasses.field(repr=False)
    model_id: str
    fingerprint: str
    dtype: str
    device: str = "cuda"
    eos_token_ids: tuple[int, ...] = ()
    lora: Any = None
    """The vllm LoRARequest every call uses (None: the base model)."""

    @classmethod
    def load(
        cls,
        base_model: str,
        *,
        models_dir: Path | None = None,
        revision: str | None = None,
        dtype: str = "bfloat16",
        max_lora_rank: int = 16,
        gpu_memory_utilization: float = 0.85,
        max_model_len: int = 4096,
        seed: int = 0,
    ) -> VllmModel:
        """Start a vLLM engine for ``base_model`` ('embedded', a checkpoint folder or a hub id;
        a gated hub model reads HF_TOKEN from the environment, as huggingface_hub does)."""
        if not vllm_available():
            raise ModelBackendError(
                "model.backend 'vllm' needs vLLM and a CUDA GPU: pip install -e '.[gpu]' on a "
                "GPU machine, or use backend 'transformers'"
            )
        from transformers import GenerationConfig
        from vllm import LLM

        kind, model_id = resolve_model_source(base_model, models_dir)
        location = str(ensure_embedded_model(models_dir)) if kind == "embedded" else model_id
        parts: dict[str, Any] = {
            "model_id": model_id,
            "revision": revision,
            "dtype": dtype,
            "backend": "vllm",
        }
        if kind != "hub":
            parts["content"] = folder_fingerprint_parts(Path(location))
        llm = LLM(
            model=location,
            revision=revision,
            dtype=dtype,
            enable_lora=True,
            max_lora_rank=max_lora_rank,
            enable_prefix_caching=True,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            seed=seed,
        )
        tokenizer = llm.get_tokenizer()
        eos = {tokenizer.eos_token_id}
        try:
            configured = GenerationConfig.from_pretrained(location, revision=revision).eos_token_id
            eos.update(configured if isinstance(configured, list) else [configured])
        except OSError:  # no generation_config.json: the tokenizer's eos alone
            pass
        return cls(
            llm=llm,
            tokenizer=tokenizer,
            model_id=model_id,
            fingerprint=fingerprint_of(parts),
            dtype=dtype,
            eos_token_ids=tuple(sorted(i for i in eos if i is not None)),
        )

    def with_lora(self, name: str, path: str | Path) -> VllmModel:
        from vllm.lora.request import LoRARequest

        request = LoRARequest(name, _lora_id(str(path)), str(path))
        return dataclasses.replace(self, lora=request)

    def _prompt_ids(
        self, prompts: Sequence[str | Conversation]
    ) -> tuple[list[str], list[list[int]]]:
        texts = [
            p if isinstance(p, str) else render_chat(self.tokenizer, p, index=i)
            for i, p in enumerate(prompts)
        ]
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return texts, [list(x) for x in ids]

    def _run(self, token_lists: Sequence[Sequence[int]], params: Any) -> list[Any]:
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=list(ids)) for ids in token_lists]
        return self.llm.generate(prompts, params, lora_request=self.lora, use_tqdm=False)

    def generate_with_shared_prefix(
        self,
        conversations: Sequence[Conversation],
        params: SamplingParams,
        *,
        batch_size: int = 8,  # vLLM schedules its own batches
        seeds: Sequence[int] | None = None,
        stop: Callable[[str], bool] | None = None,
    ) -> list[GenerationResult]:
        """vLLM generates each reply to its end; with ``stop`` the reply is then cut where the
        transformers engine would have stopped it (the same text and finish reason)."""
        from vllm import SamplingParams as VllmSampling

        _, prompt_ids = self._prompt_ids(conversations)
        seeds = list(seeds) if seeds is not None else [params.seed] * len(prompt_ids)
        requests = [
            VllmSampling(
                n=1,
                max_tokens=params.max_new_tokens,
                temperature=params.temperature if params.do_sample else 0.0,
                top_p=params.top_p if params.do_sample else 1.0,
                top_k=params.top_k if params.do_sample and params.top_k > 0 else -1,
                repetition_penalty=params.repetition_penalty,
                seed=int(seed),
                stop_token_ids=list(self.eos_token_ids),
                skip_special_tokens=True,
            )
            for seed in seeds
        ]
        outputs = self._run(prompt_ids, requests)
        results = []
        for output in outputs:
            completion = output.outputs[0]
            tokens = tuple(completion.token_ids)
            stopped = completion.finish_reason == "stop"
            results.append(
                GenerationResult(
                    text=completion.text,
                    n_new_tokens=len(tokens),
                    finish_reason="eos" if stopped else "length",
                    token_ids=tokens,
                )
            )
        if stop is not None:
            results = [cut_at_stop(self.tokenizer, r, stop) for r in results]
        return results

    def score_options(
        self,
        prompts: Sequence[str | Conversation],
        options: Sequence[str],
        *,
        batch_size: int = 8,
        **_: Any,
    ) -> OptionScores:
        from vllm import SamplingParams as VllmSampling

        texts, prompt_ids = self._prompt_ids(prompts)
        if not texts:
            raise ValueError("score_options needs at least one prompt")
        option_ids = option_token_ids(self.tokenizer, texts, prompt_ids, options)
        with_option = [ids + [o] for ids in prompt_ids for o in option_ids]
        scored = self._run(with_option, VllmSampling(max_tokens=1, prompt_logprobs=0))
        logprobs = np.empty((len(texts), len(option_ids)), dtype=np.float64)
        for n, output in enumerate(scored):
            i, k = divmod(n, len(option_ids))
            last = output.prompt_logprobs[-1]  # {token id: Logprob} at the option's position
            logprobs[i, k] = float(last[option_ids[k]].logprob)
        greedy = self._run(prompt_ids, VllmSampling(max_tokens=1, temperature=0.0, logprobs=1))
        argmax_ids, argmax_logprobs = [], []
        for output in greedy:
            token = output.outputs[0].token_ids[0]
            argmax_ids.append(token)
            argmax_logprobs.append(float(output.outputs[0].logprobs[0][token].logprob))
        return OptionScores(
            options=tuple(options),
            option_token_ids=tuple(option_ids),
            logprobs=logprobs,
            argmax_token_ids=np.asarray(argmax_ids),
            argmax_logprobs=np.asarray(argmax_logprobs),
            prefix_tokens=0,  # vLLM's prefix cache does the reuse, outside our accounting
        )

    def generate_and_score_with_shared_prefix(
        self,
        conversations: Sequence[Conversation],
        params: SamplingParams,
        options: Sequence[str],
        *,
        batch_size: int = 8,
        seeds: Sequence[int] | None = None,
        stop: Callable[[str], bool] | None = None,
    ) -> tuple[list[GenerationResult], OptionScores]:
        results = self.generate_with_shared_prefix(
            conversations, params, batch_size=batch_size, seeds=seeds, stop=stop
        )
        return results, self.score_options(conversations, options, batch_size=batch_size)


def compare_with_transformers(
    engine: VllmModel,
    loaded: Any,
    conversations: Sequence[Conversation],
    options: Sequence[str],
    *,
    max_new_tokens: int = 16,
) -> dict[str, Any]:
    """Figures that say whether vLLM answers as the transformers model does: greedy tokens
    (how many leading tokens agree) and option probabilities renormalized over the options."""
    from big5_dagster.lib.engine.generation import generate_chat
    from big5_dagster.lib.engine.scoring import score_options

    greedy = SamplingParams(max_new_tokens=max_new_tokens, do_sample=False, seed=0)
    ours = engine.generate_with_shared_prefix(conversations, greedy, seeds=[0] * len(conversations))
    theirs = generate_chat(loaded, conversations, greedy, batch_size=len(conversations))
    agree = []
    for a, b in zip(ours, theirs, strict=True):
        n = 0
        for x, y in zip(a.token_ids, b.token_ids, strict=False):
            if x != y:
                break
            n += 1
        agree.append(n)
    v = engine.score_options(conversations, options)
    t = score_options(loaded, conversations, options, batch_size=len(conversations))

    def normalized(lp: np.ndarray) -> np.ndarray:
        p = np.exp(lp - lp.max(axis=1, keepdims=True))
        return p / p.sum(axis=1, keepdims=True)

    return {
        "leading_tokens_equal": agree,
        "max_new_tokens": max_new_tokens,
        "option_prob_max_abs_diff": float(
            np.abs(normalized(v.logprobs) - normalized(t.logprobs)).max()
        ),
        "option_argmax_equal": bool((v.logprobs.argmax(axis=1) == t.logprobs.argmax(axis=1)).all()),
        "option_mass_vllm": v.option_mass.round(4).tolist(),
        "option_mass_transformers": t.option_mass.round(4).tolist(),
    }
