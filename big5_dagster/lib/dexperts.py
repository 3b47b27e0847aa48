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
  anti-expert rows run in ONE forward pass with one KV cache. With a peft ``PeftModel`` the
  rows choose their weights through peft's mixed-adapter batch inference
  (``adapter_names=["__base__", ..., "<adapter>", ...]``), so a LoRA expert costs one forward
  of a larger batch, not a second model.
- two models (``expert`` is a separate causal LM sharing the tokenizer): the expert is stepped
  in lockstep with the base, each with its own KV cache.

Every model is fed only the newest token per step (KV caches; the original re-ran the expert
over the whole sequence each step, about 10x slower). Rows are left-padded; position ids
count only real tokens, so a row's tokens do not depend on the other rows in its batch.
Rows that end (EOS) are dropped from the batch and their caches, the others go on.

Speed: identical prompts (the expert prompt is the same for every request of a persona) are
prefilled once, so the prefill costs about what plain generation's does. A decode step of
the embedded SmolLM2 on a CPU costs nearly the same for 8, 16 or 24 rows (reading the weights
dominates); the extra cost is peft's per-layer mixed-batch indexing, which grows with the
number of LoRA-wrapped layers. Measured (bench.bench_dexperts, 1 torch thread, busy 2-core
machine, batch 8, 64 new tokens): paper formula 0.74x, classic 0.66x plain generation speed.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import (
    DynamicCache,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from big5_dagster.lib.model import (
    Conversation,
    GenerationResult,
    ProgressCallback,
    SamplingParams,
    eos_token_ids,
    render_chat,
)
from big5_dagster.lib.prompts import expert_messages, reply_messages
from big5_dagster.lib.traits import Persona

Formula = Literal["paper", "dexperts"]
ExpertPath = Literal["batched_lora", "shared_weights", "two_models"]
Prompt = str | Conversation

BASE_ADAPTER = "__base__"
"""peft's name for 'no adapter' in mixed-adapter batches."""
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


def persona_reply_request(
    scenario: Mapping[str, str], opener: str, persona: Persona
) -> DExpertsRequest:
    """PersonY's reply in ``scenario`` steered towards ``persona`` (METHOD.md section 4).

    The anti-expert prompt is the expert instruction at the opposite level of the same trait.
    """
    return DExpertsRequest(
        base_prompt=reply_messages(scenario, opener, persona),
        expert_prompt=expert_messages(persona),
        anti_expert_prompt=expert_messages(persona.opposite),
    )


# --------------------------------------------------------------------------------------
# The combination
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Experts held as LoRA adapters
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _restoring_base_model(model: PreTrainedModel) -> Iterator[None]:
    """Undo peft's in-place changes to ``model`` on exit (modules and requires_grad flags)."""
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    was_training = model.training
    try:
        yield
    finally:
        for name, parameter in model.named_parameters():
            if name in requires_grad:
                parameter.requires_grad_(requires_grad[name])
        model.train(was_training)


@contextlib.contextmanager
def lora_adapter(model: PreTrainedModel, adapters: Mapping[str, Path]) -> Iterator[PeftModel]:
    """``model`` with the LoRA adapters (name -> saved folder) attached, as a peft PeftModel.

    peft injects the adapters into ``model``'s modules in place; on exit they are unloaded
    again and ``model`` computes exactly what it did before. Do not use ``model`` elsewhere
    (other threads) while adapters are attached: rows without ``adapter_names`` would use one.
    """
    if not adapters:
        raise ValueError("lora_adapter needs at least one adapter")
    for path in adapters.values():
        if not (Path(path) / "adapter_config.json").is_file():
            raise FileNotFoundError(
                f"{path} is not a peft adapter folder (no adapter_config.json in it)"
            )
    (first_name, first_path), *others = adapters.items()
    with _restoring_base_model(model):
        peft_model = PeftModel.from_pretrained(model, str(first_path), adapter_name=first_name)
        for name, path in others:
            peft_model.load_adapter(str(path), adapter_name=name)
        peft_model.eval()
        try:
            yield peft_model
        finally:
            peft_model.unload()


@contextlib.contextmanager
def random_lora_adapter(
    model: PreTrainedModel,
    *,
    seed: int,
    r: int = 8,
    lora_alpha: int = 16,
    target_modules: str | Sequence[str] = "all-linear",
    adapter_name: str = "expert",
) -> Iterator[PeftModel]:
    """``model`` with a seeded LoRA adapter whose A and B weights are random and non-zero.

    For tests and speed measurements: a LoRA layer costs the same whatever its weights' values,
    and an adapter that changes the logits is what makes the expert differ from the base.
    Unloaded again on exit, like :func:`lora_adapter`.
    """
    config = LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=0.0,
        target_modules=target_modules if isinstance(target_modules, str) else list(target_modules),
        init_lora_weights=False,  # random B as well as A: the adapter changes the outputs
    )
    with _restoring_base_model(model), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, config, adapter_name=adapter_name)
        peft_model.eval()
        try:
            yield peft_model
        finally:
            peft_model.unload()


def merged_expert_copy(peft_model: PeftModel, adapter_name: str = "expert") -> PreTrainedModel:
    """A separate model equal to ``peft_model``'s base with ``adapter_name`` merged in.

    Deep-copies the whole model (memory: one more model); the input stays untouched. Used for
    the two-model path when the expert was trained as a LoRA adapter.
    """
    duplicate = copy.deepcopy(peft_model)
    duplicate.set_adapter(adapter_name)
    merged = duplicate.merge_and_unload(adapter_names=[adapter_name])
    return merged.eval()


# --------------------------------------------------------------------------------------
# Incremental decoding with a KV cache over left-padded rows
# --------------------------------------------------------------------------------------


def _model_device(model: Any) -> torch.device:
    return next(model.parameters()).device


class _DecodeStream:
    """One model's batched incremental decode: left-padded prompts, then one token per step.

    Rows with the same prompt and adapter (the expert prompt is the same for every request of
    a persona) are run once in the prefill and their cache rows copied. The attention mask is
    allocated once for the whole generation and sliced each step; pads keep mask 0 and do not
    count in the position ids, so every row's real tokens sit at the positions they would have
    alone.
    """

    def __init__(
        self,
        model: Any,
        prompt_ids: Sequence[Sequence[int]],
        *,
        pad_token_id: int,
        max_new_tokens: int,
        adapter_names: Sequence[str] | None = None,
    ) -> None:
        self.model = model
        self.device = _model_device(model)
        width = max(len(ids) for ids in prompt_ids)
        rows = len(prompt_ids)
        mask = torch.zeros((rows, width + max_new_tokens), dtype=torch.long)
        for row, ids in enumerate(prompt_ids):
            mask[row, width - len(ids) : width] = 1
        mask[:, width:] = 1  # every generated token is attended (a finished row leaves the batch)
        self.attention_mask = mask.to(self.device)
        self.length = width
        positions = (mask[:, :width].cumsum(1) - 1).clamp(min=0)
        self.next_position = (positions[:, -1:] + 1).to(self.device)
        self.adapter_names = list(adapter_names) if adapter_names is not None else None

        keys = [
            (self.adapter_names[row] if self.adapter_names else None, tuple(ids))
            for row, ids in enumerate(prompt_ids)
        ]
        first_row: dict[tuple[str | None, tuple[int, ...]], int] = {}
        for row, key in enumerate(keys):
            first_row.setdefault(key, row)
        self._unique_rows = list(first_row.values())
        index_of = {key: i for i, key in enumerate(first_row)}
        self._expand = torch.tensor([index_of[key] for key in keys], device=self.device)
        self._prompt_ids = [list(prompt_ids[row]) for row in self._unique_rows]
        self._pad_token_id = pad_token_id
        self.cache = DynamicCache(config=model.config)

    def prefill(self) -> torch.Tensor:
        """Run the prompts; the next-token logits of every row, shape (rows, vocab)."""
        unique_rows = self._unique_rows
        width = self.length
        input_ids = torch.full((len(unique_rows), width), self._pad_token_id, dtype=torch.long)
        for i, ids in enumerate(self._prompt_ids):
            input_ids[i, width - len(ids) :] = torch.as_tensor(ids, dtype=torch.long)
        rows = torch.tensor(unique_rows, device=self.device)
        mask = self.attention_mask.index_select(0, rows)[:, :width]
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        adapter_names = self.adapter_names
        if adapter_names is not None:
            adapter_names = [adapter_names[row] for row in unique_rows]
        output = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=mask,
            position_ids=positions,
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,  # only the last position's logits are ever used
            **({"adapter_names": adapter_names} if adapter_names is not None else {}),
        )
        del self._prompt_ids
        if len(unique_rows) < len(self._expand):
            self.cache.batch_select_indices(self._expand)  # copy the shared prompts' rows
        return output.logits[:, -1, :].index_select(0, self._expand)

    def _forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        extra: dict[str, Any] = {}
        if self.adapter_names is not None:
            extra["adapter_names"] = self.adapter_names
        output = self.model(
            input_ids=input_ids,
            attention_mask=self.attention_mask[:, : self.length],
            position_ids=position_ids,
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,  # only the last position's logits are ever used
            **extra,
        )
        return output.logits[:, -1, :]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row; the next-token logits of every row."""
        self.length += 1
        logits = self._forward(tokens.to(self.device).view(-1, 1), self.next_position)
        self.next_position = self.next_position + 1
        return logits

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Drop every row not in ``rows`` (ascending indices) from the batch and its cache."""
        rows = rows.to(self.device)
        self.cache.batch_select_indices(rows)
        self.attention_mask = self.attention_mask.index_select(0, rows)
        self.next_position = self.next_position.index_select(0, rows)
        if self.adapter_names is not None:
            self.adapter_names = [self.adapter_names[i] for i in rows.tolist()]


@dataclass(frozen=True)
class _Plan:
    """Which model runs which rows."""

    path: ExpertPath
    expert_model: Any | None
    adapter_name: str | None
    anti_model: Any | None = None
    """two_models: a separate anti-expert model (else the expert runs the anti prompts)."""
    anti_adapter_name: str | None = None
    """batched_lora: the anti-expert's own adapter (else the expert's adapter)."""


def _plan(
    model: PreTrainedModel | PeftModel,
    expert: str | PreTrainedModel,
    anti_expert: str | PreTrainedModel | None = None,
) -> _Plan:
    plan = _expert_plan(model, expert)
    if anti_expert is None:
        return plan
    if isinstance(anti_expert, str):
        if plan.path != "batched_lora":
            raise ValueError(
                f"anti_expert={anti_expert!r} names a LoRA adapter, so expert must name one too"
            )
        if anti_expert not in model.peft_config:
            raise ValueError(
                f"the model holds no adapter named {anti_expert!r}; its adapters are "
                f"{sorted(model.peft_config)}"
            )
        return _Plan(plan.path, None, plan.adapter_name, anti_adapter_name=anti_expert)
    if plan.path != "two_models":
        raise ValueError("a separate anti-expert model needs a separate expert model too")
    return _Plan(plan.path, plan.expert_model, None, anti_model=anti_expert)


def _expert_plan(model: PreTrainedModel | PeftModel, expert: str | PreTrainedModel) -> _Plan:
    if isinstance(expert, str):
        if not isinstance(model, PeftModel):
            raise ValueError(
                f"expert={expert!r} names a LoRA adapter, so the model must be a peft PeftModel "
                f"holding it; got {type(model).__name__} (attach one with lora_adapter())"
            )
        available = sorted(model.peft_config)
        if expert not in available:
            raise ValueError(
                f"the model holds no adapter named {expert!r}; its adapters are {available}"
            )
        return _Plan("batched_lora", None, expert)
    if expert is model:
        return _Plan("shared_weights", None, None)
    if not callable(getattr(expert, "forward", None)):
        raise TypeError(
            f"expert must be an adapter name or a causal LM, got {type(expert).__name__}"
        )
    return _Plan("two_models", expert, None)


def expert_path_of(model: PreTrainedModel | PeftModel, expert: str | PreTrainedModel) -> ExpertPath:
    """Which execution path :func:`generate_dexperts` takes for this model and expert."""
    return _plan(model, expert).path


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


def _sampling_processors(
    sampling: SamplingParams,
) -> tuple[LogitsProcessorList, LogitsProcessorList]:
    """(penalties, warpers) in the order transformers' generate applies them."""
    penalties = LogitsProcessorList()
    if sampling.repetition_penalty != 1.0:
        penalties.append(RepetitionPenaltyLogitsProcessor(sampling.repetition_penalty))
    warpers = LogitsProcessorList()
    if sampling.do_sample:
        if sampling.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(sampling.temperature))
        if sampling.top_k != 0:
            warpers.append(TopKLogitsWarper(top_k=sampling.top_k))
        if sampling.top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p=sampling.top_p))
    return penalties, warpers


@torch.inference_mode()
def generate_dexperts(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[DExpertsRequest],
    params: DExpertsParams,
    sampling: SamplingParams,
    *,
    expert: str | PreTrainedModel,
    anti_expert: str | PreTrainedModel | None = None,
    batch_size: int = 8,
    progress: ProgressCallback | None = None,
    base_logits_processors: Sequence[LogitsProcessor] = (),
    logits_processors: Sequence[LogitsProcessor] = (),
    eos_ids: Sequence[int] | None = None,
) -> list[GenerationResult]:
    """Generate one reply per request with DExperts steering, in input order.

    ``expert`` selects the path: an adapter name (``model`` is a peft PeftModel holding it:
    batched LoRA path); ``model`` itself (expert = the base weights with the expert's prompt:
    batched); or a separate causal LM sharing the tokenizer (two-model path, the expert runs
    as it is, with its active adapter if it is a PeftModel). When ``model`` is a PeftModel its
    base rows always run without adapters (peft's ``"__base__"``). ``anti_expert`` (classic
    formula) is by default the expert itself with the anti-expert prompt; an adapter name or
    a separate model gives the anti-expert weights of its own (e.g. one adapter per level).

    Per step: ``base_logits_processors`` run on the base logits (e.g. masks), then the
    combination (:func:`combine_logits`; -inf stays -inf), then repetition penalty,
    ``logits_processors``, and with sampling temperature, top-k and top-p (transformers'
    classes, transformers' order). The processors see the base rows' token ids (padded prompt
    plus generated tokens). Greedy when ``sampling.do_sample`` is false, otherwise sampled from
    a generator seeded with ``sampling.seed`` (the same call gives the same texts). A row ends at
    an end-of-sequence token (kept in ``token_ids``, not in ``text``) or after
    ``sampling.max_new_tokens``. Requests are batched by base prompt length;
    ``progress(done, total)`` is called after each batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not requests:
        return []
    plan = _plan(model, expert, anti_expert)
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
    penalties, warpers = _sampling_processors(sampling)
    device = _model_device(model)
    generator = torch.Generator(device=device).manual_seed(sampling.seed)

    order = sorted(range(len(requests)), key=lambda i: (len(base_ids[i]), i))
    results: list[GenerationResult | None] = [None] * len(requests)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        generated = _decode_batch(
            model,
            plan,
            [base_ids[i] for i in batch],
            [expert_ids[i] for i in batch],
            [anti_ids[i] for i in batch] if classic else None,
            params=params,
            sampling=sampling,
            pad_token_id=pad_token_id,
            eos_ids=eos_ids,
            generator=generator,
            base_processors=LogitsProcessorList(base_logits_processors),
            post_processors=LogitsProcessorList([*penalties, *logits_processors]),
            warpers=warpers,
        )
        for row, index in enumerate(batch):
            tokens, stopped = generated[row]
            text_tokens = tokens[:-1] if stopped else tokens
            results[index] = GenerationResult(
                text=tokenizer.decode(text_tokens, skip_special_tokens=True),
                n_new_tokens=len(tokens),
                finish_reason="eos" if stopped else "length",
                token_ids=tuple(tokens),
            )
        if progress is not None:
            progress(min(start + batch_size, len(order)), len(order))
    return [r for r in results if r is not None]


def _decode_batch(
    model: Any,
    plan: _Plan,
    base_ids: list[list[int]],
    expert_ids: list[list[int]],
    anti_ids: list[list[int]] | None,
    *,
    params: DExpertsParams,
    sampling: SamplingParams,
    pad_token_id: int,
    eos_ids: Sequence[int],
    generator: torch.Generator,
    base_processors: LogitsProcessorList,
    post_processors: LogitsProcessorList,
    warpers: LogitsProcessorList,
) -> list[tuple[list[int], bool]]:
    """Generated tokens and whether it stopped at EOS, per row of one batch."""
    n = len(base_ids)
    device = _model_device(model)
    max_new = sampling.max_new_tokens
    expert_groups = [expert_ids] if anti_ids is None else [expert_ids, anti_ids]
    groups = 1 + len(expert_groups)  # row blocks: base, expert[, anti-expert]

    # A PeftModel's own adapters never touch the base rows: they run as "__base__".
    base_is_peft = isinstance(model, PeftModel)
    expert_rows = [ids for group in expert_groups for ids in group]
    if plan.path == "two_models":
        base_stream = _DecodeStream(
            model,
            base_ids,
            pad_token_id=pad_token_id,
            max_new_tokens=max_new,
            adapter_names=[BASE_ADAPTER] * n if base_is_peft else None,
        )
        if plan.anti_model is not None and anti_ids is not None:
            streams = [
                base_stream,
                _DecodeStream(
                    plan.expert_model, expert_ids, pad_token_id=pad_token_id, max_new_tokens=max_new
                ),
                _DecodeStream(
                    plan.anti_model, anti_ids, pad_token_id=pad_token_id, max_new_tokens=max_new
                ),
            ]
            blocks_per_stream = [1, 1, 1]
        else:
            streams = [
                base_stream,
                _DecodeStream(
                    plan.expert_model,
                    expert_rows,
                    pad_token_id=pad_token_id,
                    max_new_tokens=max_new,
                ),
            ]
            blocks_per_stream = [1, groups - 1]
    else:
        adapter_names = None
        if plan.path == "batched_lora":
            anti_name = plan.anti_adapter_name or plan.adapter_name
            adapter_names = [BASE_ADAPTER] * n + [plan.adapter_name] * n
            if anti_ids is not None:
                adapter_names += [anti_name] * n
        elif base_is_peft:  # shared weights: the expert is the base with its own prompt
            adapter_names = [BASE_ADAPTER] * (n + len(expert_rows))
        streams = [
            _DecodeStream(
                model,
                [*base_ids, *expert_rows],
                pad_token_id=pad_token_id,
                max_new_tokens=max_new,
                adapter_names=adapter_names,
            )
        ]
        blocks_per_stream = [groups]

    # The processors' view of the sequence: the base prompts left-padded as generate() pads them.
    width = max(len(ids) for ids in base_ids)
    sequences = torch.full((n, width), pad_token_id, dtype=torch.long, device=device)
    for row, ids in enumerate(base_ids):
        sequences[row, width - len(ids) :] = torch.as_tensor(ids, dtype=torch.long)
    eos_tensor = torch.as_tensor(list(eos_ids), dtype=torch.long, device=device)

    outputs: list[list[int]] = [[] for _ in range(n)]
    stopped = [False] * n
    active = list(range(n))  # batch rows still generating, in stream row order
    logits = [stream.prefill() for stream in streams]
    for step in range(max_new):
        blocks = [
            block
            for stream_logits, count in zip(logits, blocks_per_stream, strict=True)
            for block in stream_logits.to(device).float().chunk(count, dim=0)
        ]
        scores = base_processors(sequences, blocks[0])
        if params.steers_at(step):
            scores = combine_logits(
                scores,
                blocks[1],
                blocks[2] if len(blocks) > 2 else None,
                alpha=params.alpha,
                formula=params.formula,
            )
        scores = post_processors(sequences, scores)
        if sampling.do_sample:
            scores = warpers(sequences, scores)
            next_tokens = torch.multinomial(
                torch.softmax(scores, dim=-1), 1, generator=generator
            ).squeeze(1)
        else:
            next_tokens = scores.argmax(dim=-1)
        sequences = torch.cat([sequences, next_tokens[:, None]], dim=1)
        for position, token in enumerate(next_tokens.tolist()):
            outputs[active[position]].append(token)
        if step == max_new - 1:
            break
        finished = torch.isin(next_tokens, eos_tensor)
        if bool(finished.any()):
            for position in finished.nonzero().flatten().tolist():
                stopped[active[position]] = True
            keep = (~finished).nonzero().flatten()
            if keep.numel() == 0:
                break
            active = [active[i] for i in keep.tolist()]
            sequences = sequences.index_select(0, keep)
            next_tokens = next_tokens.index_select(0, keep)
            rows_before = int(finished.numel())
            for stream, count in zip(streams, blocks_per_stream, strict=True):
                stream.keep_rows(torch.cat([keep + block * rows_before for block in range(count)]))
        logits = [
            stream.step(next_tokens.repeat(count))
            for stream, count in zip(streams, blocks_per_stream, strict=True)
        ]
    # The last token may be EOS without the loop having checked it (max_new reached).
    for row in range(n):
        if not stopped[row] and outputs[row] and outputs[row][-1] in eos_ids:
            stopped[row] = True
    return [(outputs[row], stopped[row]) for row in range(n)]
