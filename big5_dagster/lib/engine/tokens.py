"""Special token ids: pad/eos set on load, and every id that ends a reply."""

from __future__ import annotations

from typing import TYPE_CHECKING

from big5_dagster.lib.engine.types import ModelBackendError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def set_special_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """pad == eos when the tokenizer has no pad token (SmolLM2: '<|im_end|>'), also in the model's
    generation config so trl and lm-eval see the same ids. No sampling defaults are set: every
    generation here passes its sampling parameters explicitly."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    gen = model.generation_config
    if gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id
    if gen.eos_token_id is None:
        gen.eos_token_id = tokenizer.eos_token_id
    if gen.bos_token_id is None and tokenizer.bos_token_id is not None:
        gen.bos_token_id = tokenizer.bos_token_id


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """All ids that end a reply: the generation config's eos ids and the tokenizer's eos."""
    configured = model.generation_config.eos_token_id
    ids = configured if isinstance(configured, list) else [configured]
    ids = [i for i in ids if i is not None]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ModelBackendError("the model defines no end-of-sequence token")
    return ids
