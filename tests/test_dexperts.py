"""DExperts decoding on a tiny random-weight model with the real SmolLM2 tokenizer."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from model_fixtures import vary_weights
from transformers import LogitsProcessor

from big5_dagster.lib.dialogues.replies import reply_request
from big5_dagster.lib.engine.adapters import (
    BASE_ADAPTER,
    RowMaskedLora,
    lora_adapter,
    merged_expert_copy,
    random_lora_adapter,
)
from big5_dagster.lib.engine.chat import render_chat
from big5_dagster.lib.engine.dexperts import (
    DExpertsParams,
    DExpertsRequest,
    combine_logits,
    expert_path_of,
    generate_dexperts,
)
from big5_dagster.lib.engine.generation import generate_chat
from big5_dagster.lib.engine.kv_decode import DecodeStream
from big5_dagster.lib.engine.loading import load_model
from big5_dagster.lib.engine.sampling import SamplingParams
from big5_dagster.lib.engine.tokens import eos_token_ids
from big5_dagster.lib.traits import Persona

PERSONA = Persona("extraversion", "high")
SCENARIO = {
    "narrative": "Ana forgot Ben's birthday party. Ben calls her the next day.",
    "person_x": "Ben",
    "person_y": "Ana",
}
# Openers of different lengths: the batch is left-padded.
OPENERS = [
    "Hey.",
    "You missed my party yesterday, what happened?",
    "I waited for you all evening and everyone kept asking where you were, so tell me.",
]
GREEDY = SamplingParams(max_new_tokens=10, do_sample=False, seed=0)


WEIGHT_STD = 0.2


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """A 3M-parameter model gains nothing from threads, and on a busy 2-core machine the
    threads' spin-waiting made these tests several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    """A private load of the tiny model (tests attach adapters to it), with varied weights
    (``model_fixtures.vary_weights``) so that token lists differ where the logits do."""
    loaded = load_model(str(tiny_model_dir), device="cpu")
    vary_weights(loaded.model, std=WEIGHT_STD)
    return loaded


@pytest.fixture(scope="module")
def requests_() -> list[DExpertsRequest]:
    return [
        reply_request(SCENARIO, opener, PERSONA, expert_system_prompt="", classic=True)
        for opener in OPENERS
    ]


def token_lists(results) -> list[tuple[int, ...]]:
    return [r.token_ids for r in results]


class MaskTokens(LogitsProcessor):
    """Sets the given token ids to -inf (like a bad-words filter)."""

    def __init__(self, token_ids: list[int]) -> None:
        self.token_ids = token_ids

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[:, self.token_ids] = float("-inf")
        return scores


class RecordScores(LogitsProcessor):
    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def __call__(self, input_ids, scores):
        self.seen.append(scores.clone())
        return scores


# --- the combination -----------------------------------------------------------------------


@pytest.mark.parametrize("formula", ["paper", "dexperts"])
def test_combine_keeps_masked_tokens_masked_without_nan(formula):
    inf = float("-inf")
    base = torch.tensor([[1.0, inf, 2.0, inf, 0.5]])
    expert = torch.tensor([[0.5, inf, inf, 1.0, 2.0]])
    anti = torch.tensor([[inf, inf, 0.0, 1.0, 1.0]])
    combined = combine_logits(base, expert, anti, alpha=0.5, formula=formula)
    assert not torch.isnan(combined).any()
    assert not torch.isposinf(combined).any()
    # Masked in the base (index 1, 3, with -inf - -inf at index 1) and in the expert (index 2).
    assert combined[0, 1] == inf and combined[0, 2] == inf and combined[0, 3] == inf
    if formula == "paper":
        assert combined[0, 0].item() == pytest.approx(1.25)
        assert combined[0, 4].item() == pytest.approx(1.5)
    else:
        assert combined[0, 0] == inf  # the anti-expert masks it
        assert combined[0, 4].item() == pytest.approx(1.0)


def test_combine_with_alpha_zero_is_the_base_exactly():
    base = torch.randn(2, 50)
    combined = combine_logits(
        base, torch.randn(2, 50), torch.randn(2, 50), alpha=0.0, formula="dexperts"
    )
    assert torch.equal(combined, base)


# --- decoding ------------------------------------------------------------------------------


@pytest.mark.parametrize("formula", ["paper", "dexperts"])
def test_alpha_zero_reproduces_plain_greedy_generation(tiny, requests_, formula):
    sampling = SamplingParams(max_new_tokens=10, do_sample=False, repetition_penalty=1.3, seed=0)
    plain = generate_chat(tiny, [r.base_prompt for r in requests_], sampling, batch_size=3)
    params = DExpertsParams(formula=formula, alpha=0.0, warmup_tokens=2)
    with random_lora_adapter(tiny.model, seed=1) as peft_model:
        steered = generate_dexperts(
            peft_model, tiny.tokenizer, requests_, params, sampling, expert="expert", batch_size=3
        )
    assert token_lists(steered) == token_lists(plain)
    assert [r.text for r in steered] == [r.text for r in plain]
    assert [r.n_new_tokens for r in steered] == [len(r.token_ids) for r in plain]


def _prompt_ids(tokenizer, prompt) -> list[int]:
    text = prompt if isinstance(prompt, str) else render_chat(tokenizer, prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _last_logits(model, ids: list[int]) -> torch.Tensor:
    return model(input_ids=torch.tensor([ids])).logits[0, -1].double()


@torch.inference_mode()
def naive_dexperts(peft_model, tokenizer, requests, params, max_new_tokens, eos_ids):
    """The reference: one request at a time, no KV cache, no padding, greedy. At every step
    the base (adapter off) reads its full prompt plus the tokens generated so far, the
    expert (adapter on) its own prompt plus the same tokens, and the anti-expert likewise
    with its prompt; their last logits are combined by the formula written out here and
    the argmax is the next token."""
    outputs = []
    for request in requests:
        base = _prompt_ids(tokenizer, request.base_prompt)
        expert = _prompt_ids(tokenizer, request.expert_prompt)
        anti = _prompt_ids(tokenizer, request.anti_expert_prompt)
        generated: list[int] = []
        for step in range(max_new_tokens):
            with peft_model.disable_adapter():
                logits = _last_logits(peft_model, base + generated)
            if params.formula == "dexperts":
                steering = _last_logits(peft_model, expert + generated) - _last_logits(
                    peft_model, anti + generated
                )
                logits = logits + params.alpha * steering
            elif step >= params.warmup_tokens:
                logits = logits + params.alpha * _last_logits(peft_model, expert + generated)
            generated.append(int(logits.argmax()))
            if generated[-1] in eos_ids:
                break
        outputs.append(tuple(generated))
    return outputs


@pytest.mark.parametrize("formula", ["paper", "dexperts"])
def test_cached_batched_decoding_matches_a_naive_reference(tiny, requests_, formula):
    """Token for token, on one left-padded batch of prompts of unequal length, with the
    paper formula's warm-up: the cached, batched implementation against the reference."""
    params = DExpertsParams(formula=formula, alpha=1.5, warmup_tokens=3)
    sampling = SamplingParams(max_new_tokens=8, do_sample=False, seed=0)
    lengths = {len(_prompt_ids(tiny.tokenizer, r.base_prompt)) for r in requests_}
    assert len(lengths) == len(requests_)  # unequal prompts: the batch is left-padded
    eos_ids = eos_token_ids(tiny.model, tiny.tokenizer)
    with random_lora_adapter(tiny.model, seed=1) as peft_model:
        batched = generate_dexperts(
            peft_model, tiny.tokenizer, requests_, params, sampling, expert="expert", batch_size=3
        )
        expected = naive_dexperts(peft_model, tiny.tokenizer, requests_, params, 8, eos_ids)
        plain = naive_dexperts(
            peft_model,
            tiny.tokenizer,
            requests_,
            dataclasses.replace(params, alpha=0.0),
            8,
            eos_ids,
        )
    assert token_lists(batched) == expected
    # The expert changes the choice somewhere, so the combination was really exercised ...
    assert expected != plain
    if formula == "paper":
        # ... but never during the warm-up, where the base alone decides.
        assert all(e[:3] == p[:3] for e, p in zip(expected, plain, strict=True))
        assert any(e[3:] != p[3:] for e, p in zip(expected, plain, strict=True))


@pytest.mark.parametrize("formula", ["paper", "dexperts"])
def test_tokens_masked_before_the_combination_stay_masked(tiny, requests_, formula):
    params = DExpertsParams(formula=formula, alpha=1.0, warmup_tokens=0)
    with random_lora_adapter(tiny.model, seed=1) as peft_model:
        unmasked = generate_dexperts(
            peft_model, tiny.tokenizer, requests_, params, GREEDY, expert="expert"
        )
        # Mask exactly what the unmasked run chose, so the mask has to change the outcome.
        masked_ids = sorted({t for r in unmasked for t in r.token_ids})
        recorder = RecordScores()
        masked = generate_dexperts(
            peft_model,
            tiny.tokenizer,
            requests_,
            params,
            GREEDY,
            expert="expert",
            base_logits_processors=[MaskTokens(masked_ids)],
            logits_processors=[recorder],
        )
    assert len(recorder.seen) == GREEDY.max_new_tokens
    for scores in recorder.seen:
        assert not torch.isnan(scores).any()
        assert torch.isneginf(scores[:, masked_ids]).all()
    assert not {t for r in masked for t in r.token_ids} & set(masked_ids)


@pytest.mark.parametrize("formula", ["paper", "dexperts"])
def test_batched_lora_path_equals_two_model_path(tiny, requests_, formula):
    params = DExpertsParams(formula=formula, alpha=1.0, warmup_tokens=2)
    with random_lora_adapter(tiny.model, seed=1) as peft_model:
        assert expert_path_of(peft_model, "expert") == "batched_lora"
        batched = generate_dexperts(
            peft_model, tiny.tokenizer, requests_, params, GREEDY, expert="expert"
        )
        merged = merged_expert_copy(peft_model, "expert")
        # A PeftModel as the base: its base rows run without the adapter on this path too.
        peft_base_two_models = generate_dexperts(
            peft_model, tiny.tokenizer, requests_, params, GREEDY, expert=merged
        )
    assert expert_path_of(tiny.model, merged) == "two_models"
    two_models = generate_dexperts(
        tiny.model, tiny.tokenizer, requests_, params, GREEDY, expert=merged
    )
    assert token_lists(peft_base_two_models) == token_lists(two_models)
    plain = generate_chat(tiny, [r.base_prompt for r in requests_], GREEDY, batch_size=3)
    assert token_lists(batched) == token_lists(two_models)
    assert token_lists(batched) != token_lists(plain)  # the expert did steer


def test_shared_weights_path_equals_two_model_path(tiny, requests_):
    """Expert = the base model with its own prompt: one batched forward, or a copy stepped beside."""
    params = DExpertsParams(formula="dexperts", alpha=1.0)
    assert expert_path_of(tiny.model, tiny.model) == "shared_weights"
    shared = generate_dexperts(
        tiny.model, tiny.tokenizer, requests_, params, GREEDY, expert=tiny.model
    )
    separate = generate_dexperts(
        tiny.model, tiny.tokenizer, requests_, params, GREEDY, expert=copy.deepcopy(tiny.model)
    )
    assert token_lists(shared) == token_lists(separate)


def test_left_padded_batch_equals_single_rows(tiny, requests_):
    params = DExpertsParams(formula="dexperts", alpha=1.0)
    seen: list[tuple[int, int]] = []
    with random_lora_adapter(tiny.model, seed=1) as peft_model:
        batched = generate_dexperts(
            peft_model,
            tiny.tokenizer,
            requests_,
            params,
            GREEDY,
            expert="expert",
            batch_size=3,
            progress=lambda done, total: seen.append((done, total)),
        )
        singles = [
            generate_dexperts(
                peft_model, tiny.tokenizer, [r], params, GREEDY, expert="expert", batch_size=1
            )[0]
            for r in requests_
        ]
    assert token_lists(batched) == token_lists(singles)
    assert seen == [(3, 3)]


def test_seeded_sampling_is_reproducible(tiny, requests_):
    params = DExpertsParams(formula="paper", alpha=0.5, warmup_tokens=2)

    def sample(seed: int):
        sampling = SamplingParams(
            max_new_tokens=12, temperature=1.0, top_p=0.95, top_k=50, seed=seed
        )
        return token_lists(
            generate_dexperts(
                peft_model, tiny.tokenizer, requests_, params, sampling, expert="expert"
            )
        )

    with random_lora_adapter(tiny.model, seed=1) as peft_model:
        torch.manual_seed(123)  # the global RNG must not matter
        first = sample(seed=7)
        torch.manual_seed(456)
        again = sample(seed=7)
        other = sample(seed=8)
    assert first == again
    assert first != other


def test_eos_stops_a_row_and_the_others_go_on(tiny, requests_):
    params = DExpertsParams(formula="dexperts", alpha=1.0)
    with random_lora_adapter(tiny.model, seed=1) as peft_model:
        free = generate_dexperts(
            peft_model, tiny.tokenizer, requests_, params, GREEDY, expert="expert", eos_ids=[-1]
        )
        # Make the token row 1 chose third the end-of-sequence token.
        stop_token = free[1].token_ids[2]
        stopped = generate_dexperts(
            peft_model,
            tiny.tokenizer,
            requests_,
            params,
            GREEDY,
            expert="expert",
            eos_ids=[stop_token],
        )
    assert all(r.finish_reason == "length" and r.n_new_tokens == 10 for r in free)
    assert stopped[1].finish_reason == "eos"
    assert stopped[1].token_ids == free[1].token_ids[:3]
    assert stopped[1].n_new_tokens == 3
    for s, f in zip(stopped, free, strict=True):
        # Each row equals the free run up to its first stop token; rows without one run on.
        cut = next((k + 1 for k, t in enumerate(f.token_ids) if t == stop_token), None)
        assert s.token_ids == (f.token_ids if cut is None else f.token_ids[:cut])
        assert s.finish_reason == ("length" if cut is None else "eos")
    assert any(r.finish_reason == "length" for r in stopped)


def test_text_skips_special_tokens_and_the_eos(tiny, requests_):
    eos = tiny.tokenizer.eos_token_id
    with random_lora_adapter(tiny.model, seed=1) as peft_model:
        results = generate_dexperts(
            peft_model,
            tiny.tokenizer,
            requests_[:1],
            DExpertsParams(alpha=0.0),
            GREEDY,
            expert="expert",
            # Forcing EOS first: the reply is empty text, one token, finish 'eos'.
            base_logits_processors=[ForceToken(eos)],
        )
    assert results[0].token_ids == (eos,)
    assert results[0].text == ""
    assert results[0].finish_reason == "eos"


class ForceToken(LogitsProcessor):
    def __init__(self, token_id: int) -> None:
        self.token_id = token_id

    def __call__(self, input_ids, scores):
        forced = torch.full_like(scores, -math.inf)
        forced[:, self.token_id] = 0.0
        return forced


def test_adapter_is_removed_after_the_context(tiny, requests_):
    before = generate_chat(tiny, [r.base_prompt for r in requests_], GREEDY)
    with random_lora_adapter(tiny.model, seed=1):
        pass
    after = generate_chat(tiny, [r.base_prompt for r in requests_], GREEDY)
    assert token_lists(before) == token_lists(after)
    assert all(p.requires_grad for p in tiny.model.parameters())


# --- bad input -----------------------------------------------------------------------------


def test_dexperts_formula_needs_an_anti_expert_prompt(tiny, requests_):
    bad = [requests_[0], DExpertsRequest(base_prompt="Hello", expert_prompt="Hi")]
    with pytest.raises(ValueError, match=r"request 1: field 'anti_expert_prompt'"):
        generate_dexperts(
            tiny.model,
            tiny.tokenizer,
            bad,
            DExpertsParams(formula="dexperts"),
            GREEDY,
            expert=tiny.model,
        )


def test_unknown_adapter_and_plain_model_with_adapter_name_are_refused(tiny, requests_):
    with pytest.raises(ValueError, match="must be a peft PeftModel"):
        generate_dexperts(
            tiny.model, tiny.tokenizer, requests_, DExpertsParams(), GREEDY, expert="expert"
        )
    with (
        random_lora_adapter(tiny.model, seed=1) as peft_model,
        pytest.raises(ValueError, match=r"no adapter named 'nope'.*\['expert'\]"),
    ):
        generate_dexperts(
            peft_model, tiny.tokenizer, requests_, DExpertsParams(), GREEDY, expert="nope"
        )


def test_params_are_validated():
    with pytest.raises(ValueError, match="formula"):
        DExpertsParams(formula="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="warmup_tokens"):
        DExpertsParams(warmup_tokens=-1)
    with pytest.raises(ValueError, match="alpha"):
        DExpertsParams(alpha=float("nan"))


# --- benchmark -----------------------------------------------------------------------------


def test_bench_dexperts_rates_use_the_median_time_of_equal_token_counts(tiny, monkeypatch):
    """With a clock that makes every timed run take a known time, the rates are the tokens of
    one run over the median time (not the mean or the last), and the ratio is DExperts over
    plain, so a slower DExperts has a ratio below 1."""
    from big5_dagster.bench import dexperts as bench

    requests = bench.dialogue_bench_requests(tiny, 3, PERSONA, seed=0, opener_max_new_tokens=4)
    assert all(r.anti_expert_prompt is not None for r in requests)
    durations = {  # seconds of the three timed repeats; medians 2 (plain), 4 and 8
        "plain": iter([1.0, 2.0, 6.0]),
        "paper": iter([9.0, 4.0, 2.0]),
        "dexperts": iter([8.0, 30.0, 3.0]),
    }
    clock = {"now": 0.0}
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock["now"])

    def timed(name_of, real):
        def run(*args, **kwargs):
            result = real(*args, **kwargs)
            tokens = sum(r.n_new_tokens for r in result)
            if tokens == 3 * 4:  # a timed run, not the short warm-up
                clock["now"] += next(durations[name_of(args, kwargs)])
            return result

        return run

    monkeypatch.setattr(bench, "generate_chat", timed(lambda a, k: "plain", bench.generate_chat))
    monkeypatch.setattr(
        bench, "generate_dexperts", timed(lambda a, k: a[3].formula, bench.generate_dexperts)
    )
    figures = bench.bench_dexperts(tiny, None, requests, batch_size=2, max_new_tokens=4, repeats=3)
    assert figures["new_tokens_per_run"] == 3 * 4
    assert figures["plain"]["seconds"] == [1.0, 2.0, 6.0]
    assert figures["plain"]["tokens_per_second"] == pytest.approx(12 / 2.0)
    assert figures["dexperts"]["paper"]["tokens_per_second"] == pytest.approx(12 / 4.0)
    assert figures["dexperts"]["paper"]["ratio_to_plain"] == pytest.approx(0.5)
    assert figures["dexperts"]["dexperts"]["ratio_to_plain"] == pytest.approx(2.0 / 8.0)
    # The on-the-fly adapter is gone again.
    assert not hasattr(tiny.model, "peft_config")
    assert all(p.requires_grad for p in tiny.model.parameters())


def test_separate_anti_expert_adapter_batched_equals_two_models(tiny, requests_, tmp_path):
    """One adapter per level (expert and anti-expert weights of their own): the batched path
    with two adapters gives the tokens of three models stepped in lockstep."""
    folders = {}
    for name, seed in (("high", 3), ("low", 4)):
        with random_lora_adapter(tiny.model, seed=seed, adapter_name=name) as peft_model:
            peft_model.save_pretrained(tmp_path)
            folders[name] = tmp_path / name
    params = DExpertsParams(formula="dexperts", alpha=1.5)
    with lora_adapter(tiny.model, folders) as peft_model:
        batched = generate_dexperts(
            peft_model, tiny.tokenizer, requests_, params, GREEDY, expert="high", anti_expert="low"
        )
        same_adapter = generate_dexperts(
            peft_model, tiny.tokenizer, requests_, params, GREEDY, expert="high"
        )
        high, low = merged_expert_copy(peft_model, "high"), merged_expert_copy(peft_model, "low")
    separate = generate_dexperts(
        tiny.model, tiny.tokenizer, requests_, params, GREEDY, expert=high, anti_expert=low
    )
    assert token_lists(batched) == token_lists(separate)
    assert token_lists(batched) != token_lists(same_adapter)  # the anti-expert's weights matter


@pytest.mark.parametrize("formula", ["paper", "dexperts"])
def test_sampled_batched_lora_equals_two_models_and_does_not_depend_on_the_batch(
    tiny, requests_, formula
):
    """Each request samples from its own seeded stream, so the one-forward LoRA path (row
    masks) and two models stepped in lockstep draw the same tokens, in any batch size."""
    params = DExpertsParams(formula=formula, alpha=1.0, warmup_tokens=2)
    sampling = SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.95, seed=5)
    with random_lora_adapter(tiny.model, seed=1) as peft_model:
        path = DecodeStream(
            peft_model, [[1, 2]], pad_token_id=0, max_new_tokens=1, adapter_names=[BASE_ADAPTER]
        )
        assert path.lora is not None  # plain LoRA runs row-masked, not through peft's mixing
        batched = generate_dexperts(
            peft_model, tiny.tokenizer, requests_, params, sampling, expert="expert", batch_size=3
        )
        singles = generate_dexperts(
            peft_model, tiny.tokenizer, requests_, params, sampling, expert="expert", batch_size=1
        )
        merged = merged_expert_copy(peft_model, "expert")
    two_models = generate_dexperts(
        tiny.model, tiny.tokenizer, requests_, params, sampling, expert=merged
    )
    assert token_lists(batched) == token_lists(two_models) == token_lists(singles)
    other = generate_dexperts(
        tiny.model,
        tiny.tokenizer,
        requests_,
        params,
        dataclasses.replace(sampling, seed=6),
        expert=merged,
    )
    assert token_lists(other) != token_lists(two_models)


@pytest.mark.parametrize("formula", ["paper", "dexperts"])
def test_row_masked_lora_equals_peft_mixed_batches(tiny, requests_, formula, monkeypatch):
    """The row masks give every row exactly what peft's own mixed-adapter forward gives it
    (the path any LoRA the masks do not cover takes)."""
    params = DExpertsParams(formula=formula, alpha=1.0, warmup_tokens=2)
    with random_lora_adapter(tiny.model, seed=1) as peft_model:
        assert RowMaskedLora.supports(peft_model, [BASE_ADAPTER, "expert"])
        masked = generate_dexperts(
            peft_model, tiny.tokenizer, requests_, params, GREEDY, expert="expert"
        )
        monkeypatch.setattr(RowMaskedLora, "supports", staticmethod(lambda *args: False))
        mixed = generate_dexperts(
            peft_model, tiny.tokenizer, requests_, params, GREEDY, expert="expert"
        )
    assert token_lists(masked) == token_lists(mixed)


def test_row_masks_cover_plain_lora_on_linear_layers_only(tiny):
    from peft import LoraConfig, get_peft_model

    for config, covered in (
        (LoraConfig(r=2, target_modules=["q_proj", "v_proj"]), True),
        (LoraConfig(r=2, target_modules=["q_proj"], use_dora=True), False),
        (LoraConfig(r=2, target_modules=["q_proj", "embed_tokens"]), False),
    ):
        peft_model = get_peft_model(copy.deepcopy(tiny.model), config)
        assert RowMaskedLora.supports(peft_model, [BASE_ADAPTER, "default"]) is covered
    assert not RowMaskedLora.supports(tiny.model, [BASE_ADAPTER])  # not a PeftModel


# --- personas of several traits in one batch ---------------------------------------------------


def _saved_random_adapters(model, folder, seeds: dict[str, int]) -> dict[str, object]:
    folders = {}
    for name, seed in seeds.items():
        with random_lora_adapter(model, seed=seed, adapter_name=name) as peft_model:
            peft_model.save_pretrained(folder)
            folders[name] = folder / name
    return folders


@pytest.mark.parametrize("formula", ["paper", "dexperts"])
def test_an_adapter_per_request_equals_one_call_per_adapter(tiny, requests_, tmp_path, formula):
    """Rows with different experts (and anti-experts) in one batch: each row gets exactly its
    own adapters, so the tokens are those of one call per adapter pair."""
    folders = _saved_random_adapters(tiny.model, tmp_path, {"a": 3, "b": 4, "c": 5})
    params = DExpertsParams(formula=formula, alpha=1.5, warmup_tokens=1)
    experts, anti = ["a", "b", "a"], ["c", "a", "b"]
    with lora_adapter(tiny.model, folders) as peft_model:
        mixed = generate_dexperts(
            peft_model,
            tiny.tokenizer,
            requests_,
            params,
            GREEDY,
            expert=experts,
            anti_expert=anti,
            batch_size=3,
        )
        singles = [
            generate_dexperts(
                peft_model, tiny.tokenizer, [r], params, GREEDY, expert=e, anti_expert=a
            )[0]
            for r, e, a in zip(requests_, experts, anti, strict=True)
        ]
        uniform = generate_dexperts(
            peft_model, tiny.tokenizer, requests_, params, GREEDY, expert="a", anti_expert="c"
        )
        with pytest.raises(ValueError, match="2 adapters for 3 requests"):
            generate_dexperts(
                peft_model, tiny.tokenizer, requests_, params, GREEDY, expert=["a", "b"]
            )
        with pytest.raises(ValueError, match="no adapter named 'z'"):
            generate_dexperts(
                peft_model, tiny.tokenizer, requests_, params, GREEDY, expert=["a", "z", "a"]
            )
    assert token_lists(mixed) == token_lists(singles)
    assert token_lists(mixed) != token_lists(uniform)  # the per-row adapters mattered


def test_sweep_decodes_all_personas_in_one_batch_as_persona_by_persona(tiny, tmp_path, monkeypatch):
    """The DExperts sweep batches every persona of a setting into one call when the experts
    are LoRA adapters on the base (all traits' adapters attached at once); greedy, its
    replies are token for token those of one call per persona with only that trait's
    experts attached, so each persona got its own expert and anti-expert."""
    import pandas as pd

    from big5_dagster.lib.dialogues import sweep
    from big5_dagster.lib.engine import dexperts
    from big5_dagster.lib.experts.records import ExpertRecord, expert_names
    from big5_dagster.lib.prompts import reply_messages

    records = {}
    for i, trait in enumerate(("openness", "extraversion")):
        folder = tmp_path / trait
        _saved_random_adapters(tiny.model, folder, {"expert-high": 10 + i, "expert-low": 20 + i})
        records[trait] = ExpertRecord(
            trait=trait,
            mode="lora",
            adapters="per_level",
            experts=expert_names("per_level"),
            base_model="tiny",
            base_fingerprint=tiny.fingerprint,
            data_version="v",
            folder=folder,
            system_prompt="",
        )
    scenarios = [{**SCENARIO, "scenario_id": f"s{i}"} for i in range(2)]
    openers = {"s0": OPENERS[0], "s1": OPENERS[1]}
    personas = [Persona(t, lv) for t in records for lv in ("high", "low")]
    grid = sweep.sweep_grid([0.0, 2.0], ["paper", "dexperts"])
    calls = []
    real = dexperts.generate_dexperts
    monkeypatch.setattr(
        dexperts, "generate_dexperts", lambda *a, **k: calls.append(len(a[2])) or real(*a, **k)
    )
    replies = sweep.sweep_replies(
        tiny,
        records,
        pd.DataFrame(scenarios),
        openers,
        grid,
        GREEDY,
        warmup_tokens=1,
        expert_path="auto",
        personas=personas,
    )
    assert calls == [8, 8]  # one call per steered setting: 4 personas x 2 scenarios
    assert len(replies) == 3 * 8
    got = replies.set_index(["formula", "persona", "scenario_id"]).raw_reply

    for persona in personas:
        folder = records[persona.trait].folder
        plain = generate_chat(
            tiny, [reply_messages(r, openers[r["scenario_id"]], persona) for r in scenarios], GREEDY
        )
        for r, result in zip(scenarios, plain, strict=True):
            assert got[("none", persona.key, r["scenario_id"])] == result.text
        adapters = {name: folder / name for name in ("expert-high", "expert-low")}
        with lora_adapter(tiny.model, adapters) as peft_model:
            for formula in ("paper", "dexperts"):
                classic = formula == "dexperts"
                requests = [
                    reply_request(
                        r,
                        openers[r["scenario_id"]],
                        persona,
                        expert_system_prompt="",
                        classic=classic,
                    )
                    for r in scenarios
                ]
                expected = real(
                    peft_model,
                    tiny.tokenizer,
                    requests,
                    DExpertsParams(formula=formula, alpha=2.0, warmup_tokens=1),
                    GREEDY,
                    expert=f"expert-{persona.level}",
                    anti_expert=f"expert-{persona.opposite.level}" if classic else None,
                )
                for r, result in zip(scenarios, expected, strict=True):
                    assert got[(formula, persona.key, r["scenario_id"])] == result.text
    steered = replies[replies.formula == "paper"].raw_reply
    assert steered.nunique() > 2  # the personas' experts differ, so do their replies
