"""DExperts decoding: steer a base model's next-token logits with a trait expert (METHOD.md 4).

Pure logic (no Dagster). At every step the base model scores the next token from its own
prompt (the role-play reply prompt) and the expert scores it from *its own* prompt (the
trait-level instruction) followed by the tokens the base has generated so far:

- formula ``"paper"`` (what BIG5-CHAT used): ``base + alpha * expert``, applied only after the
  first ``warmup_tokens`` generated tokens (before that the base alone decides);
- formula ``"dexperts"`` (Liu et al. 2021): ``base + alpha * (expert - anti_expert)``, where the
  anti-expert is the same expert prompted with the opposite trait level.

Two execution paths give the same tokens:

- batched (``expert`` is an adapter name, or the base model object itself): base, expert and
  anti-expert rows run in ONE forward pass with one KV cache. With a peft ``PeftModel`` each
  row gets its own adapter (``"__base__"`` for the base rows) through
  ``engine.adapters.RowMaskedLora`` (every adapter on every row, its delta masked to its own
  rows), so a LoRA expert costs one forward of a larger batch, not a second model.
- two models (``expert`` is a separate causal LM sharing the tokenizer): the expert is stepped
  in lockstep with the base, each with its own KV cache.

Every model is fed only the newest token per step (``engine.kv_decode``; the original re-ran
the expert over the whole sequence each step, about 10x slower). Rows are left-padded;
position ids count only real tokens, so a row's tokens do not depend on the other rows in
its batch. Rows that end (EOS) leave the batch and their caches, the others go on.

Speed: identical prompts (the expert prompt is the same for every request of a persona) are
prefilled once, so the prefill costs about what plain generation's does. Each step is one
forward of 2 (paper) or 3 (classic) times the rows; where the machine's matmul is compute-
bound at those row counts, that, not the weights read, sets DExperts' cost against plain
decoding (``big5 bench all`` prints both beside this machine's matmul limit).

torch, transformers and peft are imported where used: the definitions load without them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from big5_dagster.lib.engine.adapters import BASE_ADAPTER
from big5_dagster.lib.engine.chat import render_chat
from big5_dagster.lib.engine.generation import GenerationResult, generation_result
from big5_dagster.lib.engine.inference import inference_mode
from big5_dagster.lib.engine.kv_decode import DecodeStream, decode
from big5_dagster.lib.engine.sampling import SamplingParams, repetition_penalties, row_seeds
from big5_dagster.lib.engine.tokens import eos_token_ids
from big5_dagster.lib.engine.types import Conversation, ProgressCallback

if TYPE_CHECKING:
    import torch
    from peft import PeftModel
    from transformers import (
        LogitsProcessor,
        LogitsProcessorList,
        PreTrainedModel,
        PreTrainedTokenizerBase,
    )

    from big5_dagster.lib.engine.candidate_sampler import CandidateSampler

Formula = Literal["paper", "dexperts"]


ExpertPath = Literal["batched_lora", "shared_weights", "two_models"]


Prompt = str | Conversation


FORMULAS: tuple[str, ...] = ("paper", "dexperts")


@dataclass(frozen=True, kw_only=True)
class DExpertsParams:
    """How the expert's logits are combined with the base's."""

    formula: Formula = "paper"
    alpha: float = 0.5
    warmup_tokens: int = 5
    """paper formula: this many first tokens come from the base alone (ignored by 'dexperts')."""

    def __post_init__(self) -> None:
        if self.formula not in FORMULAS:
            raise ValueError(
                f"DExpertsParams.formula must be one of {list(FORMULAS)}, got {self.formula!r}"
            )
        if not math.isfinite(self.alpha):
            raise ValueError(f"DExpertsParams.alpha must be a finite number, got {self.alpha}")
        if self.warmup_tokens < 0:
            raise ValueError(f"DExpertsParams.warmup_tokens must be >= 0, got {self.warmup_tokens}")

    def steers_at(self, step: int) -> bool:
        """Whether the expert takes part in choosing generated token number ``step`` (0-based)."""
        return self.formula == "dexperts" or step >= self.warmup_tokens


@dataclass(frozen=True)
class DExpertsRequest:
    """One reply to generate: the base's prompt and the expert's (and anti-expert's) prompts.

    A prompt is a conversation (rendered with the chat template plus the assistant header) or
    an already rendered string (used verbatim, no special tokens added).
    """

    base_prompt: Prompt
    expert_prompt: Prompt
    anti_expert_prompt: Prompt | None = None
    """Needed by the 'dexperts' formula only."""


def combine_logits(
    base: torch.Tensor,
    expert: torch.Tensor,
    anti_expert: torch.Tensor | None,
    *,
    alpha: float,
    formula: Formula,
) -> torch.Tensor:
    """``base + alpha * expert`` ('paper') or ``base + alpha * (expert - anti_expert)``.

    A token that any input masks (-inf, or any non-finite value) is -inf in the result; the
    arithmetic runs only on finite entries, so no -inf - -inf = NaN and no +inf can appear.
    The result is float32 (or float64 when ``base`` is float64).
    """
    import torch

    dtype = torch.float64 if base.dtype == torch.float64 else torch.float32
    base = base.to(dtype)
    expert = expert.to(device=base.device, dtype=dtype)
    if base.shape != expert.shape:
        raise ValueError(
            f"base logits {tuple(base.shape)} and expert logits {tuple(expert.shape)} differ in "
            "shape: the expert must share the base's tokenizer and vocabulary size"
        )
    finite = torch.isfinite(base) & torch.isfinite(expert)
    if formula == "paper":
        steering = expert
    elif formula == "dexperts":
        if anti_expert is None:
            raise ValueError("the 'dexperts' formula needs anti-expert logits")
        anti_expert = anti_expert.to(device=base.device, dtype=dtype)
        if anti_expert.shape != base.shape:
            raise ValueError(
                f"anti-expert logits {tuple(anti_expert.shape)} differ in shape from the base "
                f"logits {tuple(base.shape)}"
            )
        finite &= torch.isfinite(anti_expert)
        steering = expert - anti_expert
    else:
        raise ValueError(f"formula must be one of {list(FORMULAS)}, got {formula!r}")
    # Zeroing the masked entries first keeps every operand finite; the mask is put back after.
    combined = torch.where(finite, base, 0.0) + alpha * torch.where(finite, steering, 0.0)
    return combined.masked_fill_(~finite, float("-inf"))


@dataclass(frozen=True)
class _Plan:
    """Which model runs which rows."""

    path: ExpertPath
    expert_model: Any | None
    adapter_names: tuple[str, ...] | None
    """batched_lora: the expert adapter of each request."""
    anti_model: Any | None = None
    """two_models: a separate anti-expert model (else the expert runs the anti prompts)."""
    anti_adapter_names: tuple[str, ...] | None = None
    """batched_lora: the anti-expert adapter of each request (else the expert's adapter)."""


Adapters = str | Sequence[str]
"""One adapter name for every request, or one per request (personas of several traits in
one batch: every adapter is attached, each row runs its own)."""


def _adapter_names(
    model: PreTrainedModel | PeftModel, names: Adapters, n_requests: int, what: str
) -> tuple[str, ...]:
    from peft import PeftModel

    per_request = (names,) * n_requests if isinstance(names, str) else tuple(names)
    if len(per_request) != n_requests:
        raise ValueError(
            f"{what} names {len(per_request)} adapters for {n_requests} requests: give one "
            "name, or one per request"
        )
    if not isinstance(model, PeftModel):
        raise ValueError(
            f"{what}={per_request[0]!r} names a LoRA adapter, so the model must be a peft "
            f"PeftModel holding it; got {type(model).__name__} (attach one with lora_adapter())"
        )
    available = sorted(model.peft_config)
    missing = sorted(set(per_request) - set(available))
    if missing:
        raise ValueError(
            f"the model holds no adapter named {missing[0]!r}; its adapters are {available}"
        )
    return per_request


def _plan(
    model: PreTrainedModel | PeftModel,
    expert: Adapters | PreTrainedModel,
    anti_expert: Adapters | PreTrainedModel | None,
    n_requests: int,
) -> _Plan:
    if isinstance(expert, (str, list, tuple)):
        plan = _Plan("batched_lora", None, _adapter_names(model, expert, n_requests, "expert"))
    elif expert is model:
        plan = _Plan("shared_weights", None, None)
    elif callable(getattr(expert, "forward", None)):
        plan = _Plan("two_models", expert, None)
    else:
        raise TypeError(
            f"expert must be an adapter name or a causal LM, got {type(expert).__name__}"
        )
    if anti_expert is None:
        return plan
    if isinstance(anti_expert, (str, list, tuple)):
        if plan.path != "batched_lora":
            raise ValueError(
                f"anti_expert={anti_expert!r} names a LoRA adapter, so expert must name one too"
            )
        anti = _adapter_names(model, anti_expert, n_requests, "anti_expert")
        return _Plan(plan.path, None, plan.adapter_names, anti_adapter_names=anti)
    if plan.path != "two_models":
        raise ValueError("a separate anti-expert model needs a separate expert model too")
    return _Plan(plan.path, plan.expert_model, None, anti_model=anti_expert)


def expert_path_of(model: PreTrainedModel | PeftModel, expert: str | PreTrainedModel) -> ExpertPath:
    """Which execution path :func:`generate_dexperts` takes for this model and expert."""
    return _plan(model, expert, None, 1).path


def _tokenize(
    tokenizer: PreTrainedTokenizerBase, prompt: Prompt, what: str, index: int
) -> list[int]:
    try:
        text = prompt if isinstance(prompt, str) else render_chat(tokenizer, prompt, index=index)
    except ValueError as e:
        raise ValueError(f"request {index}: {what}: {e}") from e
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"request {index}: {what} is empty")
    return ids


@inference_mode
def generate_dexperts(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[DExpertsRequest],
    params: DExpertsParams,
    sampling: SamplingParams,
    *,
    expert: Adapters | PreTrainedModel,
    anti_expert: Adapters | PreTrainedModel | None = None,
    batch_size: int = 8,
    progress: ProgressCallback | None = None,
    base_logits_processors: Sequence[LogitsProcessor] = (),
    logits_processors: Sequence[LogitsProcessor] = (),
    eos_ids: Sequence[int] | None = None,
) -> list[GenerationResult]:
    """Generate one reply per request with DExperts steering, in input order.

    ``expert`` selects the path: an adapter name, or one per request (``model`` is a peft
    PeftModel holding them: batched LoRA path, each row with its own adapter); ``model``
    itself (expert = the base weights with the expert's prompt: batched); or a separate causal LM sharing the tokenizer (two-model path, the expert runs
    as it is, with its active adapter if it is a PeftModel). When ``model`` is a PeftModel its
    base rows always run without adapters (peft's ``"__base__"``). ``anti_expert`` (classic
    formula) is by default the expert itself with the anti-expert prompt; an adapter name (or
    one per request) or a separate model gives the anti-expert weights of its own (e.g. one
    adapter per level).

    Per step: ``base_logits_processors`` run on the base logits (e.g. masks), then the
    combination (:func:`combine_logits`; -inf stays -inf), then repetition penalty,
    ``logits_processors``, and with sampling temperature, top-k and top-p (transformers'
    classes, transformers' order). The processors see the base rows' token ids (padded prompt
    plus generated tokens). Greedy when ``sampling.do_sample`` is false, otherwise sampled
    (``CandidateSampler``) with one random stream per request, seeded by
    ``row_seeds(sampling.seed, len(requests))[i]``, so a reply does not depend on its batch. A row ends at
    an end-of-sequence token (kept in ``token_ids``, not in ``text``) or after
    ``sampling.max_new_tokens``. Requests are batched by base prompt length;
    ``progress(done, total)`` is called after each batch.
    """
    from transformers import LogitsProcessorList

    from big5_dagster.lib.engine.candidate_sampler import CandidateSampler

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not requests:
        return []
    plan = _plan(model, expert, anti_expert, len(requests))
    classic = params.formula == "dexperts"
    base_ids, expert_ids, anti_ids = [], [], []
    for i, request in enumerate(requests):
        base_ids.append(_tokenize(tokenizer, request.base_prompt, "base_prompt", i))
        expert_ids.append(_tokenize(tokenizer, request.expert_prompt, "expert_prompt", i))
        if classic:
            if request.anti_expert_prompt is None:
                raise ValueError(
                    f"request {i}: field 'anti_expert_prompt' is missing; the 'dexperts' "
                    "formula needs one for every request"
                )
            anti_ids.append(
                _tokenize(tokenizer, request.anti_expert_prompt, "anti_expert_prompt", i)
            )
    if eos_ids is None:
        eos_ids = eos_token_ids(model, tokenizer)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    penalties = repetition_penalties(sampling)
    # One random stream per request (by index): a reply does not depend on its batch.
    seeds = row_seeds(sampling.seed, len(requests))

    order = sorted(range(len(requests)), key=lambda i: (len(base_ids[i]), i))
    results: list[GenerationResult | None] = [None] * len(requests)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        decoded = _decode_batch(
            model,
            plan,
            batch,
            [base_ids[i] for i in batch],
            [expert_ids[i] for i in batch],
            [anti_ids[i] for i in batch] if classic else None,
            params=params,
            max_new_tokens=sampling.max_new_tokens,
            pad_token_id=pad_token_id,
            eos_ids=eos_ids,
            sampler=CandidateSampler.for_params(sampling, [seeds[i] for i in batch])
            if sampling.do_sample
            else None,
            base_processors=LogitsProcessorList(base_logits_processors),
            post_processors=LogitsProcessorList([*penalties, *logits_processors]),
        )
        for row, index in enumerate(batch):
            results[index] = generation_result(tokenizer, decoded[row])
        if progress is not None:
            progress(min(start + batch_size, len(order)), len(order))
    return [r for r in results if r is not None]


def _decode_batch(
    model: Any,
    plan: _Plan,
    batch: list[int],
    base_ids: list[list[int]],
    expert_ids: list[list[int]],
    anti_ids: list[list[int]] | None,
    *,
    params: DExpertsParams,
    max_new_tokens: int,
    pad_token_id: int,
    eos_ids: Sequence[int],
    sampler: CandidateSampler | None,
    base_processors: LogitsProcessorList,
    post_processors: LogitsProcessorList,
) -> list[Any]:
    """The decoded rows of one batch (``kv_decode.Decoded``), in order; ``batch`` holds the
    requests' indices (for their adapters)."""
    from peft import PeftModel

    n = len(base_ids)
    expert_groups = [expert_ids] if anti_ids is None else [expert_ids, anti_ids]
    groups = 1 + len(expert_groups)  # row blocks: base, expert[, anti-expert]

    def stream(target: Any, prompts: list[list[int]], names: list[str] | None) -> DecodeStream:
        return DecodeStream(
            target,
            prompts,
            pad_token_id=pad_token_id,
            max_new_tokens=max_new_tokens,
            adapter_names=names,
        )

    # A PeftModel's own adapters never touch the base rows: they run as "__base__".
    base_is_peft = isinstance(model, PeftModel)
    expert_rows = [ids for group in expert_groups for ids in group]
    streams: list[tuple[DecodeStream, int]]
    if plan.path == "two_models":
        base_stream = stream(model, base_ids, [BASE_ADAPTER] * n if base_is_peft else None)
        if plan.anti_model is not None and anti_ids is not None:
            streams = [
                (base_stream, 1),
                (stream(plan.expert_model, expert_ids, None), 1),
                (stream(plan.anti_model, anti_ids, None), 1),
            ]
        else:
            streams = [(base_stream, 1), (stream(plan.expert_model, expert_rows, None), groups - 1)]
    else:
        adapter_names = None
        if plan.path == "batched_lora":
            experts = [plan.adapter_names[i] for i in batch]
            anti = plan.anti_adapter_names or plan.adapter_names
            adapter_names = [BASE_ADAPTER] * n + experts
            if anti_ids is not None:
                adapter_names += [anti[i] for i in batch]
        elif base_is_peft:  # shared weights: the expert is the base with its own prompt
            adapter_names = [BASE_ADAPTER] * (n + len(expert_rows))
        streams = [(stream(model, [*base_ids, *expert_rows], adapter_names), groups)]

    def scores(step: int, sequences: torch.Tensor, blocks: list[torch.Tensor]) -> torch.Tensor:
        combined = base_processors(sequences, blocks[0])
        if params.steers_at(step):
            combined = combine_logits(
                combined,
                blocks[1],
                blocks[2] if len(blocks) > 2 else None,
                alpha=params.alpha,
                formula=params.formula,
            )
        return post_processors(sequences, combined)

    # The processors see the base prompts left-padded, then the generated tokens.
    return decode(
        streams,
        base_ids,
        max_new_tokens=max_new_tokens,
        eos_ids=eos_ids,
        pad_token_id=pad_token_id,
        scores=scores,
        sampler=sampler,
    )
