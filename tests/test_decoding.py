"""The decode loop's pieces: exact candidate top-p sampling, the in-place KV cache, the loop
against transformers' generate(), row independence, and stop rules."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from model_fixtures import vary_weights
from transformers import (
    DynamicCache,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from big5_dagster.lib.engine.candidate_sampler import CandidateSampler, nucleus_mask
from big5_dagster.lib.engine.chat import render_chat
from big5_dagster.lib.engine.generation import generate_chat
from big5_dagster.lib.engine.growing_layer import GrowingLayer
from big5_dagster.lib.engine.kv_decode import PrefixCache, decode_rows, kv_cache
from big5_dagster.lib.engine.loading import load_model
from big5_dagster.lib.engine.sampling import SamplingParams
from big5_dagster.lib.engine.tokens import eos_token_ids

PROMPTS = [
    [{"role": "user", "content": "Hi."}],
    [{"role": "user", "content": "Tell me about your weekend plans, please, in a few words."}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Colour?"}],
    [{"role": "user", "content": "Name a fruit and say why you like it."}],
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    torch.set_num_threads(1)
    loaded = load_model(str(tiny_model_dir), device="cpu")
    vary_weights(loaded.model)
    return loaded


def _ids(tiny, conversations) -> list[list[int]]:
    tok = tiny.tokenizer
    return [tok(render_chat(tok, c), add_special_tokens=False)["input_ids"] for c in conversations]


def _kept_by_transformers(scores, temperature, top_k, top_p) -> torch.Tensor:
    out = TemperatureLogitsWarper(temperature)(None, scores) if temperature != 1 else scores
    if top_k:
        out = TopKLogitsWarper(top_k)(None, out)
    if top_p < 1:
        out = TopPLogitsWarper(top_p)(None, out)
    return torch.isfinite(out)


# --- CandidateSampler -----------------------------------------------------------------------


def test_nucleus_rule_is_transformers_rule():
    scores = torch.randn(32, 200, generator=torch.Generator().manual_seed(1)) * 3
    for top_p in (0.5, 0.9, 0.99):
        values, indices = scores.sort(descending=True)
        keep = nucleus_mask(values.double().softmax(-1), top_p)
        mine = torch.zeros_like(keep).scatter(1, indices, keep)
        assert torch.equal(mine, _kept_by_transformers(scores, 1.0, 0, top_p))


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"), [(0.7, 0, 0.9), (1.0, 0, 0.95), (1.0, 40, 0.9)]
)
def test_draws_stay_in_transformers_kept_set_also_when_the_candidates_are_too_few(
    temperature, top_k, top_p
):
    # Peaked and flat rows: the flat ones need more than 16 candidates and take the full sort.
    scores = torch.randn(64, 500, generator=torch.Generator().manual_seed(0))
    scores = scores * torch.linspace(0.5, 6, 64)[:, None]
    kept = _kept_by_transformers(scores, temperature, top_k, top_p)
    fallbacks = 0
    for seed in range(20):
        sampler = CandidateSampler(
            range(seed * 64, seed * 64 + 64),
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            candidates=16,
        )
        drawn = sampler.draw(scores)
        assert kept[torch.arange(64), drawn].all()
        fallbacks += sampler.fallback_rows
    assert fallbacks > 0 or top_k  # the full-sort branch ran (top-k never needs it)


@pytest.mark.parametrize(("top_p", "candidates"), [(0.9, 2), (1.0, 2), (1.0, 256)])
def test_draws_follow_the_filtered_softmax(top_p, candidates):
    # softmax(log [1, 2, 3, 4]) = 0.1 .. 0.4; top_p 0.9 drops the 0.1 token. With 2 candidates
    # the nucleus is wider than the candidates (fallback) and at top_p 1 the draws past the
    # candidates' 0.7 of the mass come from the tail.
    n = 8000
    scores = torch.log(torch.tensor([[4.0, 1.0, 3.0, 2.0]])).repeat(n, 1)
    sampler = CandidateSampler(range(n), top_p=top_p, candidates=candidates)
    share = torch.bincount(sampler.draw(scores), minlength=4).double() / n
    expected = torch.tensor([0.4, 0.1, 0.3, 0.2], dtype=torch.float64)
    if top_p < 1:
        expected = torch.tensor([4 / 9, 0.0, 3 / 9, 2 / 9], dtype=torch.float64)
    assert torch.allclose(share, expected, atol=0.02)  # > 3.7 standard errors
    if top_p < 1:
        assert share[1] == 0  # outside the nucleus: never drawn
    if candidates == 2:
        assert sampler.fallback_rows > 0.2 * n


def test_masked_tokens_are_never_drawn():
    scores = torch.zeros(500, 6)
    scores[:, [0, 3]] = float("-inf")
    for top_p, n_kept in ((0.5, 2), (1.0, 4)):  # four equal tokens: top_p 0.5 keeps two
        drawn = set(CandidateSampler(range(500), top_p=top_p, candidates=2).draw(scores).tolist())
        assert drawn <= {1, 2, 4, 5} and len(drawn) == n_kept


def test_a_row_draw_depends_on_its_seed_only():
    scores = torch.randn(3, 100, generator=torch.Generator().manual_seed(2))
    for _ in range(5):
        batch = CandidateSampler([5, 6, 7], temperature=0.8, top_p=0.9)
        alone = CandidateSampler([6], temperature=0.8, top_p=0.9)
        assert batch.draw(scores)[1] == alone.draw(scores[1:2])[0]
    # Dropping rows keeps each remaining row's own stream.
    sampler = CandidateSampler([5, 6, 7])
    sampler.draw(scores)
    sampler.keep_rows([2])
    reference = CandidateSampler([7])
    reference.draw(scores[2:3])
    assert sampler.draw(scores[2:3]) == reference.draw(scores[2:3])


# --- the KV cache ----------------------------------------------------------------------------


def test_growing_cache_gives_generate_the_same_greedy_tokens(tiny):
    tokenizer, model = tiny.tokenizer, tiny.model
    enc = tokenizer(["Hello there, how are you", "Hi"], padding=True, return_tensors="pt")
    config = SamplingParams(max_new_tokens=12, do_sample=False, seed=0).generation_config(
        [-1], tokenizer.pad_token_id
    )
    with torch.inference_mode():
        dynamic = model.generate(**enc, generation_config=config, cache=DynamicCache())
        grown = model.generate(**enc, generation_config=config, cache=kv_cache(model.config, 4))
    assert torch.equal(dynamic, grown)  # reserve 4 < 12 new tokens: the buffers grew


def test_growing_layer_reindexes_rows_and_crops():
    layer = GrowingLayer(reserve=2)
    keys = torch.arange(2 * 1 * 3 * 2, dtype=torch.float32).view(2, 1, 3, 2)
    layer.update(keys, -keys)
    layer.update(keys[:, :, :1] + 100, -keys[:, :, :1] - 100)  # fills the spare room
    layer.update(keys[:, :, :1] + 200, -keys[:, :, :1] - 200)  # grows
    assert layer.get_seq_length() == 5 and layer.keys.shape == (2, 1, 5, 2)
    expected = torch.cat([keys, keys[:, :, :1] + 100, keys[:, :, :1] + 200], dim=2)
    assert torch.equal(layer.keys, expected) and torch.equal(layer.values, -expected)
    layer.batch_select_indices(torch.tensor([1]))
    assert torch.equal(layer.keys, expected[1:])
    layer.crop(-2)
    assert torch.equal(layer.keys, expected[1:, :, :3])


# --- the decode loop against generate() -------------------------------------------------------


def _generate_reference(tiny, ids, max_new_tokens, penalty=1.0):
    """transformers' generate(), one prompt at a time, greedy: the reference."""
    eos = eos_token_ids(tiny.model, tiny.tokenizer)
    config = SamplingParams(
        max_new_tokens=max_new_tokens, do_sample=False, repetition_penalty=penalty, seed=0
    ).generation_config(eos, tiny.tokenizer.pad_token_id)
    with torch.inference_mode():
        out = tiny.model.generate(input_ids=torch.tensor([ids]), generation_config=config)
    new = out[0, len(ids) :].tolist()
    return new[: next((k + 1 for k, t in enumerate(new) if t in eos), len(new))]


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_decode_rows_greedy_equals_generate_with_and_without_a_shared_prefix(tiny, penalty):
    prompts = _ids(tiny, PROMPTS)
    prompts.append(prompts[1])  # identical prompts share their prefill
    eos = eos_token_ids(tiny.model, tiny.tokenizer)
    expected = [_generate_reference(tiny, ids, 10, penalty) for ids in prompts]
    processors = [RepetitionPenaltyLogitsProcessor(penalty)] if penalty != 1.0 else []
    for share_prefix in (True, False):
        for compact in (0.0, 0.5):  # rows leave the batch at once, or in bulk
            got = decode_rows(
                tiny.model,
                prompts,
                max_new_tokens=10,
                eos_ids=eos,
                pad_token_id=tiny.tokenizer.pad_token_id,
                processors=processors,
                share_prefix=share_prefix,
                compact_fraction=compact,
            )
            assert [d.tokens for d in got] == expected
    prefix = PrefixCache(tiny.model, prompts[0][:5], reserve=4)  # too little room: grows
    got = decode_rows(
        tiny.model,
        prompts,
        max_new_tokens=10,
        eos_ids=eos,
        pad_token_id=tiny.tokenizer.pad_token_id,
        processors=processors,
        prefix=prefix,
    )
    assert [d.tokens for d in got] == expected
    assert len({tuple(e) for e in expected}) > 2  # the varied weights give varied replies


def test_generate_chat_greedy_equals_generate_and_ends_rows_at_eos(tiny):
    params = SamplingParams(max_new_tokens=14, do_sample=False, repetition_penalty=1.2, seed=0)
    results = generate_chat(tiny, PROMPTS, params, batch_size=3)
    expected = [_generate_reference(tiny, ids, 14, 1.2) for ids in _ids(tiny, PROMPTS)]
    assert [list(r.token_ids) for r in results] == expected
    eos = eos_token_ids(tiny.model, tiny.tokenizer)
    for r in results:
        assert r.finish_reason == ("eos" if r.token_ids[-1] in eos else "length")


def test_sampled_replies_do_not_depend_on_the_batch(tiny):
    params = SamplingParams(max_new_tokens=8, temperature=0.9, top_p=0.9, top_k=50, seed=3)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    by_three = generate_chat(tiny, PROMPTS, params, batch_size=3)
    assert torch.equal(torch.rand(3), expected_next)  # the global RNG is not used
    one_by_one = generate_chat(tiny, PROMPTS, params, batch_size=1)
    assert [r.token_ids for r in by_three] == [r.token_ids for r in one_by_one]
    other = generate_chat(tiny, PROMPTS, dataclasses.replace(params, seed=4), batch_size=3)
    assert [r.token_ids for r in other] != [r.token_ids for r in by_three]


def test_a_stop_rule_ends_rows_as_prefixes_of_the_unstopped_generation(tiny):
    prompts = _ids(tiny, PROMPTS)
    sampler = lambda: CandidateSampler(range(len(prompts)), temperature=1.0)  # noqa: E731
    common = dict(
        max_new_tokens=10,
        eos_ids=[-1],  # no end-of-turn token: every row runs to the rule or the cap
        pad_token_id=tiny.tokenizer.pad_token_id,
    )
    full = decode_rows(tiny.model, prompts, sampler=sampler(), **common)
    stopped = decode_rows(
        tiny.model,
        prompts,
        sampler=sampler(),
        stop=lambda tokens: len(tokens) >= 2 + tokens[0] % 3,
        **common,
    )
    for f, s in zip(full, stopped, strict=True):
        assert f.finish_reason == "length" and len(f.tokens) == 10
        assert s.finish_reason == "stop"
        assert s.tokens == f.tokens[: len(s.tokens)]
        assert len(s.tokens) == 2 + s.tokens[0] % 3
    assert len({len(s.tokens) for s in stopped}) > 1  # rows ended at different steps
