"""How likely a model finds a given continuation of a prompt: the mean negative
log-likelihood of its tokens and the perplexity (fluency of generated replies)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from big5_dagster.lib.engine.chat import render_chat
from big5_dagster.lib.engine.generation import batches_by_length
from big5_dagster.lib.engine.inference import inference_mode
from big5_dagster.lib.engine.loading import LoadedModel
from big5_dagster.lib.engine.scoring import left_padded_forward
from big5_dagster.lib.engine.types import Conversation


@inference_mode
def continuation_nll(
    loaded: LoadedModel,
    prompts: Sequence[str | Conversation],
    continuations: Sequence[str],
    *,
    batch_size: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: (mean NLL in nats per token, number of tokens) of ``continuations[i]`` after
    ``prompts[i]`` (a conversation, rendered with its assistant header, or a rendered string).

    The continuation is tokenized on its own, as a reply after the assistant header is; an
    empty continuation has 0 tokens and NaN NLL. Rows are left-padded with positions counted
    over real tokens only, so a row's value does not depend on its batch.
    """
    import torch

    if len(prompts) != len(continuations):
        raise ValueError(f"got {len(prompts)} prompts for {len(continuations)} continuations")
    tokenizer = loaded.tokenizer
    texts = [
        p if isinstance(p, str) else render_chat(tokenizer, p, index=i)
        for i, p in enumerate(prompts)
    ]
    prompt_ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    reply_ids = [
        tokenizer(c, add_special_tokens=False)["input_ids"] if c else [] for c in continuations
    ]
    nll = np.full(len(texts), np.nan)
    counts = np.array([len(r) for r in reply_ids], dtype=np.int64)
    scored = [i for i in range(len(texts)) if counts[i]]
    for batch in batches_by_length([len(prompt_ids[i]) + counts[i] for i in scored], batch_size):
        rows = [scored[k] for k in batch]
        sequences = [prompt_ids[i] + reply_ids[i] for i in rows]
        # Rows end together (left padding): the last `keep` positions predict every reply
        # token. The prompts' logits would be most of the head's work and memory.
        keep = int(max(counts[i] for i in rows)) + 1
        logits = left_padded_forward(loaded, sequences, logits_to_keep=keep).logits.float()
        for row, index in enumerate(rows):
            n = int(counts[index])
            # The token at position t is predicted by the logits at t - 1.
            scores = logits[row, keep - n - 1 : keep - 1].log_softmax(dim=-1)
            targets = torch.tensor(reply_ids[index], dtype=torch.long, device=scores.device)
            nll[index] = float(-scores.gather(1, targets[:, None]).mean())
    return nll, counts


def perplexities(nll: np.ndarray) -> np.ndarray:
    """exp(mean NLL) per row (NaN stays NaN)."""
    return np.array([math.exp(v) if np.isfinite(v) else np.nan for v in nll])
