"""Administering inventories under conditions: rows, provenance, scorers, caching."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from big5_dagster.lib.engine import respondent
from big5_dagster.lib.engine.chat import render_chat
from big5_dagster.lib.engine.generation import GenerationResult
from big5_dagster.lib.engine.scoring import OptionScores, option_token_ids
from big5_dagster.lib.personality.administration import administration_plan, map_back
from big5_dagster.lib.personality.analysis import reliability_by_condition
from big5_dagster.lib.personality.answers import (
    PROVENANCE_COLUMNS,
    AdministrationSettings,
    GenerationSettings,
    administer,
    answer_quality,
    answer_rows,
    apply_min_option_mass,
    plan_answers,
)
from big5_dagster.lib.personality.conditions import Condition, conditions_for
from big5_dagster.lib.personality.inventory import load_inventory
from big5_dagster.lib.prompts import persona_description, persona_instruction
from big5_dagster.lib.traits import PERSONAS, Persona

OPENNESS_HIGH, OPENNESS_LOW = Persona("openness", "high"), Persona("openness", "low")
FAST = GenerationSettings(max_new_tokens=3, temperature=0.8)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # The tiny model's matrices are too small to gain from threads, and on a busy 2-core
    # machine torch's spinning thread pool made these tests several times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tiny_backend):
    return tiny_backend.load()


@pytest.fixture(scope="module")
def bfi():
    return load_inventory("bfi44")


@pytest.fixture(scope="module")
def bfi_small(bfi):
    # Four items keep the model-backed tests fast; the plan and prompts work on any subset.
    return dataclasses.replace(bfi, items=bfi.items[:4])


def description_conditions(personas=(OPENNESS_HIGH, OPENNESS_LOW)) -> list[Condition]:
    return conditions_for("prompt_description", personas)


# --------------------------------------------------------------------------- conditions


def test_conditions_for_each_method(tiny):
    (base,) = conditions_for("base")
    assert (base.method, base.persona, base.system, base.adapter_seed) == (
        "base",
        "none",
        None,
        None,
    )
    # No system turn: SmolLM2's template puts its default system prompt in (kept on purpose).
    prompt = render_chat(tiny.tokenizer, base.messages(load_inventory("bfi44"), "bfi_01", "normal"))
    assert "You are a helpful AI assistant named SmolLM" in prompt

    described = conditions_for("prompt_description")
    assert [c.persona for c in described] == [p.key for p in PERSONAS]
    assert described[0].system == persona_description(PERSONAS[0])

    demos = {p.key: [f"{p.key} reply {i}" for i in range(10)] for p in PERSONAS}
    shown = conditions_for("prompt_demonstrations", PERSONAS, demos)
    assert shown[3].demonstrations == tuple(demos[PERSONAS[3].key]) and shown[3].system is None
    with pytest.raises(ValueError, match=r"demonstrations_by_persona\['openness_high'\] holds 9"):
        conditions_for("prompt_demonstrations", PERSONAS, {**demos, "openness_high": ["x"] * 9})
    with pytest.raises(ValueError, match="no entry for persona 'openness_low'"):
        conditions_for("prompt_demonstrations", PERSONAS, {"openness_high": ["x"] * 10})

    trained = conditions_for("sft", PERSONAS, adapter_seeds={1: "hashB", 0: "hashA"})
    assert len(trained) == 20
    assert [(c.adapter_seed, c.adapter_version) for c in trained[:1] + trained[10:11]] == [
        (0, "hashA"),
        (1, "hashB"),
    ]
    assert trained[0].system == persona_instruction(PERSONAS[0])
    assert trained[0].label == "sft/openness_high/seed0"
    with pytest.raises(ValueError, match="needs adapter_seeds"):
        conditions_for("dpo", PERSONAS)
    with pytest.raises(ValueError, match="unknown method 'lora'"):
        conditions_for("lora")
    with pytest.raises(ValueError, match="needs adapter_seed and adapter_version"):
        Condition(method="dpo", persona="openness_high", adapter_seed=0)
    with pytest.raises(ValueError, match="not of the form"):
        Condition(method="prompt_description", persona="openness", system="x")


# --------------------------------------------------------------------------- rows


def test_answer_rows_carry_provenance_and_unique_keys(bfi):
    plan = administration_plan(bfi, n_runs=2, seed=3)
    settings = AdministrationSettings("model-fp", FAST)
    (condition,) = conditions_for("sft", [OPENNESS_HIGH], adapter_seeds={4: "adapter-v1"})
    rows = answer_rows(condition, bfi, plan, ["logprob", "generate"], settings)
    # Sampled answers once per run; a log-probability answer once per prompt (run 0, no seed).
    generated, scored = rows[rows.scorer == "generate"], rows[rows.scorer == "logprob"]
    assert len(generated) == len(plan) == 2 * 2 * 44
    assert len(scored) == 2 * 44 and set(scored["run"]) == {0}
    assert scored["call_seed"].isna().all() and generated["call_seed"].notna().all()
    assert rows["cache_key"].is_unique
    assert not rows[list(PROVENANCE_COLUMNS)].drop(columns=["call_seed"]).isna().any().any()
    assert set(rows["adapter_version"]) == {"adapter-v1"} and set(rows["adapter_seed"]) == {4}
    # A key changes with the model, the adapter, the prompt, the scorer settings and the seed.
    other_model = answer_rows(condition, bfi, plan, ["logprob"], AdministrationSettings("fp2"))
    longer = AdministrationSettings("model-fp", dataclasses.replace(FAST, max_new_tokens=9))
    logprob_keys = set(rows.loc[rows["scorer"] == "logprob", "cache_key"])
    generate_keys = set(rows.loc[rows["scorer"] == "generate", "cache_key"])
    assert logprob_keys.isdisjoint(other_model["cache_key"])
    assert generate_keys.isdisjoint(
        answer_rows(condition, bfi, plan, ["generate"], longer)["cache_key"]
    )
    # ...but not with generation settings for the logprob scorer, which does not use them.
    assert logprob_keys == set(answer_rows(condition, bfi, plan, ["logprob"], longer)["cache_key"])
    with pytest.raises(ValueError, match="unknown scorer 'vote'"):
        answer_rows(condition, bfi, plan, ["vote"], settings)


# --------------------------------------------------------------------------- fake scorers


def test_logprob_answers_map_back_in_reversed_order(tiny, bfi_small, monkeypatch):
    """A fake model that always puts 60% on the number labelled 'Agree a little' (scale 4)."""
    option_ids = [tiny.tokenizer.convert_tokens_to_ids(str(v)) for v in range(1, 6)]

    def fake_score_options(loaded, prompts, options, *, batch_size, **_):
        logprobs = []
        for conversation in prompts:
            text = conversation[-1]["content"]
            presented = int(
                next(line for line in text.splitlines() if "= Agree a little" in line)[0]
            )
            probs = np.full(5, 0.05)
            probs[presented - 1] = 0.6  # 0.8 on the options, 0.2 elsewhere
            logprobs.append(np.log(probs))
        n = len(prompts)
        return OptionScores(
            options=tuple(options),
            option_token_ids=tuple(option_ids),
            logprobs=np.array(logprobs),
            argmax_token_ids=np.full(n, option_ids[0]),
            argmax_logprobs=np.zeros(n),
            prefix_tokens=0,
        )

    monkeypatch.setattr(respondent, "score_options", fake_score_options)
    rows = administer(
        tiny,
        description_conditions(),
        [bfi_small],
        n_runs=2,
        seed=0,
        scorers=["logprob"],
        batch_size=4,
    )
    # One answer per prompt (2 conditions x 2 orders x 4 items), not one per run.
    assert len(rows) == 2 * 2 * 4 and rows["messages_hash"].is_unique
    assert set(rows["option_order"]) == {"normal", "reversed"}
    assert np.allclose(rows["p_4"].to_numpy(float), 0.75)  # 0.6 / 0.8, in both orders
    assert np.allclose(rows["p_2"].to_numpy(float), 0.0625)
    assert np.allclose(rows["option_mass"].to_numpy(float), 0.8)
    assert (rows["argmax_score"] == 4).all()
    expected = (1 + 2 + 3 + 5) * 0.0625 + 4 * 0.75
    assert np.allclose(rows["value"].to_numpy(float), expected)
    assert (rows["value"] == rows["expected_score"]).all()
    # The presented number of the argmax is 4 in normal order and 2 in reversed order.
    presented = rows.groupby("option_order")["presented_value"].unique()
    assert list(presented["normal"]) == [4] and list(presented["reversed"]) == [2]
    assert (rows["parse_status"] == "ok").all() and rows["raw_text"].isna().all()


def test_generate_failures_are_counted_never_imputed(tiny, bfi_small, monkeypatch):
    """A fake generator: replies by the item's position in the prompt's item list."""
    replies = ["I'd say 4.", "Four.", "7", ""]
    item_ids = [item.id for item in bfi_small.items]
    seen_seeds: list[int] = []

    def fake_generate(loaded, conversations, params, *, batch_size, seeds, **_):
        seen_seeds.extend(seeds)
        out = []
        for conversation in conversations:
            text = conversation[-1]["content"]
            index = next(k for k, item in enumerate(bfi_small.items) if item.text in text)
            out.append(
                GenerationResult(
                    text=replies[index], n_new_tokens=2, finish_reason="eos", token_ids=(1, 2)
                )
            )
        return out

    monkeypatch.setattr(respondent, "generate_with_shared_prefix", fake_generate)
    (base,) = conditions_for("base")
    rows = administer(
        tiny, [base], [bfi_small], n_runs=1, seed=0, scorers=["generate"], generation=FAST
    )
    by_item = rows.set_index(["item_id", "option_order"])
    assert by_item.loc[(item_ids[0], "normal"), "value"] == 4
    assert (
        by_item.loc[(item_ids[0], "reversed"), "value"] == 2
    )  # presented 4 means 'Disagree a little'
    assert by_item.loc[(item_ids[0], "reversed"), "presented_value"] == 4
    for item_id, status in zip(item_ids[1:], ["no_number", "out_of_range", "empty"], strict=True):
        for order in ("normal", "reversed"):
            assert by_item.loc[(item_id, order), "parse_status"] == status
            assert pd.isna(by_item.loc[(item_id, order), "value"])
            assert pd.isna(by_item.loc[(item_id, order), "presented_value"])
    assert by_item.loc[(item_ids[1], "normal"), "raw_text"] == "Four."
    # Every reply is sampled with its row's call seed, recorded per answer.
    assert sorted(seen_seeds) == sorted(rows["call_seed"])
    assert (rows["generation_seed"] == rows["call_seed"]).all()
    quality = answer_quality(rows)
    assert quality[["n_answers", "n_failed", "n_low_mass"]].values.tolist() == [[8, 6, 0]]
    assert quality["failure_rate"].iloc[0] == 0.75


# --------------------------------------------------------------------------- real tiny model


def test_administer_on_the_tiny_model_fills_both_scorers(tiny, bfi_small):
    conditions = description_conditions()
    rows = administer(
        tiny, conditions, [bfi_small], n_runs=2, seed=5, generation=FAST, batch_size=3
    )
    planned = plan_answers(
        tiny.fingerprint, conditions, [bfi_small], n_runs=2, seed=5, generation=FAST
    )
    assert list(rows["cache_key"]) == list(planned["cache_key"])
    assert (
        not rows[list(PROVENANCE_COLUMNS)]
        .isna()
        .drop(columns=["adapter_seed", "adapter_version", "call_seed"])
        .any()
        .any()
    )
    assert rows["call_seed"].isna().eq(rows["scorer"] == "logprob").all()
    assert rows["adapter_seed"].isna().all()
    logprob = rows[rows["scorer"] == "logprob"]
    p = logprob[[f"p_{v}" for v in range(1, 6)]].to_numpy(float)
    assert np.allclose(p.sum(axis=1), 1.0)
    assert ((logprob["option_mass"] > 0) & (logprob["option_mass"] < 1)).all()
    # The logprob answer does not depend on the run: one row per prompt.
    assert logprob["messages_hash"].is_unique and len(logprob) == 2 * 2 * 4
    # A random-weight model puts about 5/49152 of its mass on the options: no answer at all.
    assert (logprob["option_mass"] < 0.01).all()
    assert (logprob["parse_status"] == "low_mass").all() and logprob["value"].isna().all()
    assert logprob["expected_score"].notna().all()  # kept, so another minimum can read it
    generated = rows[rows["scorer"] == "generate"]
    assert generated["raw_text"].notna().all() and (generated["max_new_tokens"] == 3).all()
    assert set(generated["parse_status"]) <= {
        "ok",
        "empty",
        "no_number",
        "not_integer",
        "out_of_range",
    }
    failed = generated["parse_status"] != "ok"
    assert (
        generated.loc[failed, "value"].isna().all()
        and generated.loc[~failed, "value"].notna().all()
    )
    ok = generated[~failed]
    mapped = [
        map_back(int(v), o, bfi_small)
        for v, o in zip(ok["presented_value"], ok["option_order"], strict=True)
    ]
    assert ok["value"].tolist() == mapped
    # Per-row seeds: another batch size gives the same replies.
    again = administer(
        tiny,
        conditions,
        [bfi_small],
        n_runs=2,
        seed=5,
        scorers=["generate"],
        generation=FAST,
        batch_size=8,
    )
    assert again["raw_text"].tolist() == generated["raw_text"].tolist()


def test_cache_recomputes_only_what_changed(tiny, bfi_small, monkeypatch):
    calls: list[tuple[str, int]] = []

    def counting(name):
        real = getattr(respondent, name)

        def wrapper(loaded, prompts, *args, **kwargs):
            calls.append((name, len(prompts)))
            return real(loaded, prompts, *args, **kwargs)

        monkeypatch.setattr(respondent, name, wrapper)

    for name in (
        "generate_and_score_with_shared_prefix",
        "generate_with_shared_prefix",
        "score_options",
    ):
        counting(name)
    conditions = description_conditions()
    kwargs = dict(n_runs=1, seed=0, generation=FAST, batch_size=4)
    first = administer(tiny, conditions, [bfi_small], **kwargs)
    # Per condition and option order: 4 generations whose first step gives the 4 logprob answers.
    assert calls == [("generate_and_score_with_shared_prefix", 4)] * 4
    stored = set(first["cache_key"])

    calls.clear()
    rerun = administer(tiny, conditions, [bfi_small], cached_keys=stored, **kwargs)
    assert rerun.empty and list(rerun.columns) == list(first.columns) and calls == []

    changed = [
        conditions[0],
        dataclasses.replace(conditions[1], system="You are very low in openness."),
    ]
    calls.clear()
    partial = administer(tiny, changed, [bfi_small], cached_keys=stored, **kwargs)
    assert set(partial["condition"]) == {changed[1].label}
    assert len(partial) == len(first[first["condition"] == changed[1].label]) == 16
    assert calls == [("generate_and_score_with_shared_prefix", 4)] * 2
    assert set(partial["cache_key"]).isdisjoint(stored)

    # New generation settings recompute the generated answers only.
    calls.clear()
    longer = dataclasses.replace(FAST, max_new_tokens=4)
    regenerated = administer(
        tiny, conditions, [bfi_small], cached_keys=stored, **{**kwargs, "generation": longer}
    )
    assert set(regenerated["scorer"]) == {"generate"} and len(regenerated) == 16
    assert calls == [("generate_with_shared_prefix", 4)] * 4

    # Logprob answers alone are scored directly, and agree with the generation's first step.
    calls.clear()
    generated_keys = set(first.loc[first["scorer"] == "generate", "cache_key"])
    rescored = administer(tiny, conditions, [bfi_small], cached_keys=generated_keys, **kwargs)
    assert calls == [("score_options", 4)] * 4
    fused = first[first["scorer"] == "logprob"]
    assert list(rescored["cache_key"]) == list(fused["cache_key"])
    for column in ("expected_score", "option_mass", "p_1", "p_5"):
        assert np.allclose(
            rescored[column].to_numpy(float), fused[column].to_numpy(float), atol=1e-5
        )


def _fake_option_scores(masses: dict[str, float]):
    """A fake score_options: per item text, the given option mass spread over the options
    with 'Agree a little' (scale 4) the most probable."""

    def fake(loaded, prompts, options, *, batch_size, **_):
        logprobs = []
        for conversation in prompts:
            text = conversation[-1]["content"]
            mass = next(m for item_text, m in masses.items() if item_text in text)
            presented = int(
                next(line for line in text.splitlines() if "= Agree a little" in line)[0]
            )
            probs = np.full(5, 0.1 * mass)
            probs[presented - 1] = 0.6 * mass
            logprobs.append(np.log(probs))
        n = len(prompts)
        return OptionScores(
            options=tuple(options),
            option_token_ids=tuple(range(5)),
            logprobs=np.array(logprobs),
            argmax_token_ids=np.zeros(n, dtype=int),
            argmax_logprobs=np.zeros(n),
            prefix_tokens=0,
        )

    return fake


def test_low_option_mass_is_a_counted_failure_and_rereadable(tiny, bfi_small, monkeypatch):
    masses = dict(zip([i.text for i in bfi_small.items], [0.5, 0.2, 0.05, 0.01], strict=True))
    monkeypatch.setattr(respondent, "score_options", _fake_option_scores(masses))
    rows = administer(
        tiny, description_conditions(), [bfi_small], n_runs=1, seed=0, scorers=["logprob"],
        min_option_mass=0.1,
    )  # fmt: skip
    low = rows["option_mass"] < 0.1
    assert low.sum() == 2 * 2 * 2  # two items x two conditions x two orders
    assert (rows.loc[low, "parse_status"] == "low_mass").all() and rows.loc[
        low, "value"
    ].isna().all()
    assert (rows.loc[~low, "parse_status"] == "ok").all()
    assert np.allclose(rows.loc[~low, "value"].to_numpy(float), 0.1 * (1 + 2 + 3 + 5) / 1 + 0.6 * 4)
    quality = answer_quality(rows, by=("scorer",)).iloc[0]
    assert (quality["n_answers"], quality["n_low_mass"], quality["n_failed"]) == (16, 8, 0)
    assert quality["low_mass_rate"] == 0.5
    # Another minimum re-reads the stored mass: no model needed, nothing recomputed.
    lenient = apply_min_option_mass(rows, 0.0)
    assert (lenient["parse_status"] == "ok").all()
    assert np.allclose(lenient["value"].to_numpy(float), lenient["expected_score"].to_numpy(float))


def test_deterministic_answers_are_not_copied_per_run(tiny, bfi, monkeypatch):
    """n_runs = 5 gives 5 sampled answers per prompt but one log-probability answer, so the
    reliability of a log-probability condition counts its independent answer vectors only."""
    monkeypatch.setattr(
        respondent, "score_options", _fake_option_scores({i.text: 0.8 for i in bfi.items})
    )

    def fake_generate(loaded, conversations, params, *, batch_size, seeds, **_):
        return [
            GenerationResult(
                text=str(1 + s % 5), n_new_tokens=1, finish_reason="eos", token_ids=(1,)
            )
            for s in seeds
        ]

    monkeypatch.setattr(respondent, "generate_with_shared_prefix", fake_generate)
    conditions = description_conditions()
    kwargs = dict(n_runs=5, seed=0, generation=FAST, batch_size=8)
    scored = administer(tiny, conditions, [bfi], scorers=["logprob"], **kwargs)
    sampled = administer(tiny, conditions, [bfi], scorers=["generate"], **kwargs)
    assert len(scored) == 2 * 2 * 44 and set(scored["run"]) == {0}
    assert len(sampled) == 5 * 2 * 2 * 44 and set(sampled["run"]) == set(range(5))
    # The log-probability keys do not depend on the number of runs: nothing to recompute.
    one_run = plan_answers(
        tiny.fingerprint, conditions, [bfi], n_runs=1, seed=0, scorers=["logprob"]
    )
    assert set(one_run["cache_key"]) == set(scored["cache_key"])
    reliability = reliability_by_condition(pd.concat([scored, sampled]), [bfi]).set_index(
        ["scorer", "trait"]
    )
    # 2 personas x 2 orders = 4 answer vectors; 5 copies of each would have made 20.
    assert (reliability.loc["logprob", "n_respondents"] == 4).all()
    assert (reliability.loc["logprob", "n_complete"] == 4).all()  # what the omega gate counts
    assert (reliability.loc["generate", "n_respondents"] == 20).all()


def test_one_call_never_mixes_adapters(tiny, bfi_small):
    sft = conditions_for("sft", [OPENNESS_HIGH], adapter_seeds={0: "a", 1: "b"})
    with pytest.raises(ValueError, match="call it once per adapter"):
        administer(tiny, sft, [bfi_small], n_runs=1, seed=0)
    with pytest.raises(ValueError, match="call it once per adapter"):
        administer(tiny, [*conditions_for("base"), sft[0]], [bfi_small], n_runs=1, seed=0)
    with pytest.raises(ValueError, match=r"conditions repeat \['base'\]"):
        administer(tiny, conditions_for("base") * 2, [bfi_small], n_runs=1, seed=0)


def test_options_are_single_tokens_after_the_assistant_header(tiny):
    # The real SmolLM2 tokenizer: '1'..'5' each start a new token after 'assistant\n'.
    (base,) = conditions_for("base")
    (described,) = description_conditions([OPENNESS_HIGH])
    prompts = []
    for name in ("bfi44", "ipip_neo_120"):
        inv = load_inventory(name)
        for condition in (base, described):
            for order in ("normal", "reversed"):
                prompts.append(
                    render_chat(tiny.tokenizer, condition.messages(inv, inv.items[0].id, order))
                )
    ids = tiny.tokenizer(prompts, add_special_tokens=False)["input_ids"]
    options = ["1", "2", "3", "4", "5"]
    assert option_token_ids(tiny.tokenizer, prompts, ids, options) == [
        tiny.tokenizer.convert_tokens_to_ids(o) for o in options
    ]
