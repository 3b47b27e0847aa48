"""Continuation NLL (the sweeps' perplexity) against an unpadded forward of each row."""

from __future__ import annotations

import math

import pytest
import torch
from model_fixtures import vary_weights

from big5_dagster.lib.engine.likelihood import continuation_nll, perplexities
from big5_dagster.lib.engine.loading import load_model


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir), device="cpu")
    vary_weights(loaded.model, std=0.5)
    return loaded


def reference_nll(loaded, prompt: str, continuation: str) -> float:
    """-mean log p of the continuation's tokens, one row alone (no padding)."""
    tok = loaded.tokenizer
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    reply_ids = tok(continuation, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logits = loaded.model(input_ids=torch.tensor([prompt_ids + reply_ids])).logits[0]
    scores = logits[len(prompt_ids) - 1 : -1].float().log_softmax(dim=-1)
    return float(-scores[torch.arange(len(reply_ids)), torch.tensor(reply_ids)].mean())


def test_batched_nll_matches_each_row_alone(tiny):
    # Rows of different lengths share a left-padded batch: an off-by-one in the target slice
    # or in the padded positions would move every figure.
    prompts = ["Hello there, how", "A much longer prompt about the weather in the", "Hi"]
    replies = [" are you today?", " mountains", " there friend, long time"]
    nll, counts = continuation_nll(tiny, prompts, replies, batch_size=3)
    for i, (p, r) in enumerate(zip(prompts, replies, strict=True)):
        assert counts[i] == len(tiny.tokenizer(r, add_special_tokens=False)["input_ids"])
        assert nll[i] == pytest.approx(reference_nll(tiny, p, r), abs=1e-4)
    assert perplexities(nll)[0] == pytest.approx(math.exp(nll[0]))


def test_an_empty_continuation_has_no_nll(tiny):
    nll, counts = continuation_nll(tiny, ["Hello"], [""])
    assert counts[0] == 0 and math.isnan(nll[0])
