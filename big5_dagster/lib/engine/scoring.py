"""Option scoring: next-token log-probabilities of single-token answer options.

torch is imported where used: the definitions load without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from big5_dagster.lib.engine.chat import render_chat
from big5_dagster.lib.engine.generation import batches_by_length
from big5_dagster.lib.engine.inference import inference_mode
from big5_dagster.lib.engine.kv_decode import PrefixCache, common_prefix_length
from big5_dagster.lib.engine.loading import LoadedModel
from big5_dagster.lib.engine.types import Conversation, ProgressCallback

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class OptionScores:
    """Next-token log-probabilities of answer options, not renormalized.

    ``logprobs[i, k]`` is log p(option k | prompt i) under the full-vocabulary softmax, so
    ``exp(logprobs).sum(1)`` is the probability mass on the options; renormalize over the
    options yourself when you want a distribution over them.
    """

    options: tuple[str, ...]
    option_token_ids: tuple[int, ...]
    logprobs: np.ndarray
    """float64, shape (n_prompts, n_options)."""
    argmax_token_ids: np.ndarray
    """The most likely next token over the whole vocabulary, per prompt (may be no option)."""
    argmax_logprobs: np.ndarray
    prefix_tokens: int
    """How many leading tokens all prompts shared and were computed once (0 = no reuse)."""

    @property
    def option_mass(self) -> np.ndarray:
        """Probability mass on the options per prompt (how much the model 'answers' at all)."""
        return np.exp(self.logprobs).sum(axis=1)


def option_token_ids(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    prompt_ids: Sequence[Sequence[int]],
    options: Sequence[str],
) -> list[int]:
    """The single token of each option right after each prompt; raises when that is not so."""
    if not options:
        raise ValueError("options must not be empty")
    if len(set(options)) != len(options):
        raise ValueError(f"options must be distinct, got {list(options)}")
    ids: list[int] = []
    for option in options:
        alone = tokenizer(option, add_special_tokens=False)["input_ids"]
        if len(alone) != 1:
            pieces = tokenizer.convert_ids_to_tokens(alone)
            raise ValueError(
                f"option {option!r} is {len(alone)} tokens {pieces} for this tokenizer; each "
                "option must be exactly one token"
            )
        ids.append(alone[0])
    # In context an option can merge with the prompt's last token (e.g. 'Answer: ' + '1');
    # scoring the next position would then not score the option.
    joined = tokenizer([p + o for p in prompts for o in options], add_special_tokens=False)[
        "input_ids"
    ]
    for i, prompt in enumerate(prompts):
        for k, option in enumerate(options):
            expected = list(prompt_ids[i]) + [ids[k]]
            if joined[i * len(options) + k] != expected:
                raise ValueError(
                    f"prompt {i}: option {option!r} does not tokenize as one token after the "
                    f"prompt (the prompt ends with {prompt[-20:]!r}); end the prompt so the "
                    "option starts a new token, or include the separator in the option"
                )
    return ids


def left_padded(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows right-aligned in one tensor (pads on the left) and the mask of real tokens."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, row in enumerate(rows):
        ids[k, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[k, width - len(row) :] = 1
    return ids, mask


def left_padded_forward(loaded: LoadedModel, rows: Sequence[Sequence[int]], **kwargs: Any) -> Any:
    """One forward of token rows padded on the left, with positions counted from each row's
    first real token (so padding does not shift them); ``kwargs`` go to the model."""
    ids, mask = left_padded(rows, loaded.tokenizer.pad_token_id)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return loaded.model(
        input_ids=ids.to(loaded.device),
        attention_mask=mask.to(loaded.device),
        position_ids=positions.to(loaded.device),
        **kwargs,
    )


@inference_mode
def score_options(
    loaded: LoadedModel,
    prompts: Sequence[str | Conversation],
    options: Sequence[str],
    *,
    batch_size: int = 8,
    use_prefix_cache: bool = True,
    progress: ProgressCallback | None = None,
) -> OptionScores:
    """Log-probabilities of each single-token option at the position right after each prompt.

    A prompt is a conversation (rendered with the chat template and the assistant header) or
    an already rendered prompt string (used verbatim, no special tokens added). The KV cache of
    the prompts' longest common token prefix is computed once and copied for every batch, so
    only each prompt's own suffix is run; only the last position's logits are computed. Call
    once per group of prompts sharing a long prefix (e.g. per persona system prompt).
    """
    import torch

    tokenizer, model = loaded.tokenizer, loaded.model
    texts = [
        p if isinstance(p, str) else render_chat(tokenizer, p, index=i)
        for i, p in enumerate(prompts)
    ]
    if not texts:
        raise ValueError("score_options needs at least one prompt")
    prompt_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    for i, ids in enumerate(prompt_ids):
        if not ids:
            raise ValueError(f"prompt {i} is empty")
    option_ids = option_token_ids(tokenizer, texts, prompt_ids, options)

    # Every prompt keeps at least one token of its own: its last position gives the logits.
    prefix_len = common_prefix_length(prompt_ids) if use_prefix_cache else 0
    prefix_len = min(prefix_len, min(len(ids) for ids in prompt_ids) - 1)
    device = loaded.device
    suffixes = [ids[prefix_len:] for ids in prompt_ids]
    # Room for the longest suffix: each batch's forward writes into its copy in place.
    prefix_cache = (
        PrefixCache(model, prompt_ids[0][:prefix_len], reserve=max(len(s) for s in suffixes))
        if prefix_len > 0
        else None
    )

    option_index = torch.tensor(option_ids, device=device)
    logprobs = np.zeros((len(texts), len(option_ids)), dtype=np.float64)
    argmax_ids = np.zeros(len(texts), dtype=np.int64)
    argmax_lp = np.zeros(len(texts), dtype=np.float64)
    done = 0
    for batch in batches_by_length([len(s) for s in suffixes], batch_size):
        input_ids, suffix_mask = left_padded([suffixes[i] for i in batch], tokenizer.pad_token_id)
        # Pads sit between the shared prefix and each suffix: mask them and give the real
        # tokens the positions they have in the unpadded prompt.
        position_ids = (prefix_len + suffix_mask.cumsum(1) - 1).clamp(min=prefix_len)
        attention_mask = torch.cat(
            [torch.ones((len(batch), prefix_len), dtype=torch.long), suffix_mask], dim=1
        )
        cache = prefix_cache.expanded(len(batch)) if prefix_cache is not None else None
        out = model(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            position_ids=position_ids.to(device),
            cache=cache,
            use_cache=cache is not None,
            logits_to_keep=1,
        )
        step_logprobs = out.logits[:, -1, :].float().log_softmax(dim=-1)
        top_lp, top_id = step_logprobs.max(dim=-1)
        chosen = step_logprobs.index_select(1, option_index).double().cpu().numpy()
        for row, i in enumerate(batch):
            logprobs[i] = chosen[row]
            argmax_ids[i] = int(top_id[row])
            argmax_lp[i] = float(top_lp[row])
        done += len(batch)
        if progress is not None:
            progress(done, len(texts))
    return OptionScores(
        options=tuple(options),
        option_token_ids=tuple(option_ids),
        logprobs=logprobs,
        argmax_token_ids=argmax_ids,
        argmax_logprobs=argmax_lp,
        prefix_tokens=prefix_len,
    )
