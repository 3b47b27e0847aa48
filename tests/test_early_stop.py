"""Generate-and-parse stops once the answer is decided, and that never changes the answer."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch
from model_fixtures import vary_weights

from big5_dagster.lib.engine import respondent
from big5_dagster.lib.engine.candidate_sampler import CandidateSampler
from big5_dagster.lib.engine.chat import render_chat
from big5_dagster.lib.engine.generation import GenerationResult, cut_at_stop
from big5_dagster.lib.engine.kv_decode import decode_rows
from big5_dagster.lib.engine.loading import load_model
from big5_dagster.lib.engine.tokens import eos_token_ids
from big5_dagster.lib.personality.answer_reading import answer_decided, first_integer
from big5_dagster.lib.personality.answers import GenerationSettings, administer
from big5_dagster.lib.personality.conditions import conditions_for
from big5_dagster.lib.personality.inventory import load_inventory


@pytest.mark.parametrize(
    ("text", "decided"),
    [
        ("", False),
        ("I would say", False),
        ("4", False),
        ("4\n", True),
        ("45 because", True),
        ("4.", False),
        ("4. I", True),
        ("4.0", False),
        ("4.05", False),
        ("4.0 ", True),
        ("3.5", False),
        ("3.5 ", True),
        ("-2,", True),
        ("Answer: 3/5", True),
    ],
)
def test_answer_decided_cases(text, decided):
    assert answer_decided(text) is decided


def test_no_continuation_changes_a_decided_answer():
    # Random texts over the characters the rule looks at; every decided prefix must read as
    # the whole text reads, whatever follows.
    rng = random.Random(0)
    alphabet = "0123456789..--  a\n/"
    checked = 0
    for _ in range(4000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        for cut in range(len(text) + 1):
            if answer_decided(text[:cut]):
                assert first_integer(text[:cut]) == first_integer(text), (text, cut)
                checked += 1
    assert checked > 5000


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    torch.set_num_threads(1)
    loaded = load_model(str(tiny_model_dir), device="cpu")
    vary_weights(loaded.model)
    return loaded


class FavourNumbers:
    """Makes digits, '.', and ' ' likely, so a random-weight model writes numbers."""

    def __init__(self, tokenizer):
        ids = {tokenizer.convert_tokens_to_ids(t) for t in [*"0123456789", ".", "Ġ"]}
        self.ids = sorted(i for i in ids if i is not None and i >= 0)

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[:, self.ids] += 6.0
        return scores


def test_stopped_replies_parse_as_the_whole_replies_do(tiny):
    tok = tiny.tokenizer
    prompts = [
        tok(render_chat(tok, [{"role": "user", "content": f"Rate item {i}."}]))["input_ids"]
        for i in range(12)
    ]
    common = dict(
        max_new_tokens=24,
        eos_ids=eos_token_ids(tiny.model, tok),
        pad_token_id=tok.pad_token_id,
        processors=[FavourNumbers(tok)],
    )
    full = decode_rows(tiny.model, prompts, sampler=CandidateSampler(range(12)), **common)
    stopped = decode_rows(
        tiny.model,
        prompts,
        sampler=CandidateSampler(range(12)),
        stop=lambda tokens: answer_decided(tok.decode(tokens, skip_special_tokens=True)),
        **common,
    )
    n_stopped = 0
    for f, s in zip(full, stopped, strict=True):
        assert s.tokens == f.tokens[: len(s.tokens)]
        whole = tok.decode([t for t in f.tokens if t not in common["eos_ids"]])
        assert first_integer(tok.decode(s.tokens, skip_special_tokens=True)) == first_integer(whole)
        n_stopped += s.finish_reason == "stop"
    assert n_stopped >= 6  # most rows wrote a number and ended right after it
    assert sum(len(s.tokens) for s in stopped) < sum(len(f.tokens) for f in full)
    # An engine that generates to the end is cut where the loop would have stopped.
    for f, s in zip(full, stopped, strict=True):
        result = GenerationResult(
            text="",
            n_new_tokens=len(f.tokens),
            finish_reason=f.finish_reason if f.finish_reason != "stop" else "length",
            token_ids=tuple(f.tokens),
        )
        cut = cut_at_stop(tok, result, answer_decided)
        assert (cut.token_ids, cut.finish_reason) == (tuple(s.tokens), s.finish_reason)


def test_administration_passes_the_stop_rule_and_keys_it(tiny_backend, monkeypatch):
    seen = []
    real = respondent.generate_with_shared_prefix

    def spy(*args, **kwargs):
        seen.append(kwargs.get("stop"))
        return real(*args, **kwargs)

    monkeypatch.setattr(respondent, "generate_with_shared_prefix", spy)
    bfi = load_inventory("bfi44")
    bfi = dataclasses.replace(bfi, items=bfi.items[:2])
    kwargs = dict(n_runs=1, seed=0, scorers=["generate"], orders=["normal"])
    settings = GenerationSettings(max_new_tokens=4)
    assert settings.stop_when_decided and GenerationSettings().max_new_tokens == 128
    stopping = administer(
        tiny_backend.load(), conditions_for("base"), [bfi], generation=settings, **kwargs
    )
    running = administer(
        tiny_backend.load(),
        conditions_for("base"),
        [bfi],
        generation=dataclasses.replace(settings, stop_when_decided=False),
        **kwargs,
    )
    assert seen == [answer_decided, None]
    # The setting is part of the answers' identity: no cached row crosses over.
    assert not set(stopping["cache_key"]) & set(running["cache_key"])
