"""Item prompts, counterbalanced plans, the answer parse rule and option-probability answers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from big5_dagster.lib.personality.administration import (
    administration_plan,
    item_messages,
    map_back,
    messages_hash,
    options_block,
)
from big5_dagster.lib.personality.answer_reading import (
    PARSE_STATUSES,
    logprob_answer,
    logprob_answers,
    option_mass_status,
    parse_answer,
    parse_answers,
)
from big5_dagster.lib.personality.inventory import InventoryError, load_inventory
from big5_dagster.lib.personality.scores import score_table


@pytest.fixture(scope="module")
def bfi():
    return load_inventory("bfi44")


@pytest.fixture(scope="module")
def ipip():
    return load_inventory("ipip_neo_120")


# --------------------------------------------------------------------------- option order


def test_reversed_order_maps_back_to_the_scale(bfi) -> None:
    assert [map_back(p, "reversed", bfi) for p in (1, 2, 3, 4, 5)] == [5, 4, 3, 2, 1]
    assert [map_back(p, "normal", bfi) for p in (1, 2, 3, 4, 5)] == [1, 2, 3, 4, 5]
    presented = np.array([1, 5, 2])
    assert map_back(presented, "reversed", bfi).tolist() == [5, 1, 4]
    with pytest.raises(ValueError, match=r"unknown option order 'backwards'"):
        map_back(1, "backwards", bfi)


def test_reversed_options_list_the_highest_anchor_as_1(bfi) -> None:
    normal = options_block(bfi, "normal").splitlines()
    reversed_ = options_block(bfi, "reversed").splitlines()
    assert normal[0] == "1 = Disagree strongly" and normal[-1] == "5 = Agree strongly"
    assert reversed_[0] == "1 = Agree strongly" and reversed_[-1] == "5 = Disagree strongly"
    # Every presented number's label is the anchor of the scale value it maps back to.
    for line in reversed_:
        number, label = line.split(" = ")
        assert bfi.anchors[map_back(int(number), "reversed", bfi)] == label


# --------------------------------------------------------------------------- messages


def test_item_messages_layout_and_shared_prefix(bfi) -> None:
    first, second = bfi.items[0], bfi.items[1]
    a = item_messages(bfi, first, "reversed", persona_system="You are calm.")
    b = item_messages(bfi, second, "reversed", persona_system="You are calm.")
    assert [m["role"] for m in a] == ["system", "user"]
    assert a[0] == b[0] == {"role": "system", "content": "You are calm."}
    user = a[1]["content"]
    assert user.startswith(bfi.instructions)
    assert "1 = Agree strongly" in user
    assert f"Statement: I see myself as someone who... {first.text}" in user
    assert user.endswith("Answer with a single number from 1 to 5.")
    # Everything before the item text is identical across items: one KV prefix serves all.
    cut = user.index(first.text)
    assert b[1]["content"][:cut] == user[:cut]
    assert a != b and messages_hash(a) != messages_hash(b)
    # The two option orders share the system turn and the instructions only.
    normal = item_messages(bfi, first, "normal", persona_system="You are calm.")
    assert normal[1]["content"].startswith(bfi.instructions)
    assert normal[1]["content"] != user


def test_item_messages_without_persona_and_with_demonstrations(bfi) -> None:
    base = item_messages(bfi, bfi.items[0], "normal")
    assert [m["role"] for m in base] == ["user"]
    demo = item_messages(
        bfi, bfi.items[0], "normal", persona_system="P.", demonstrations=["Hi there!", " Sure. "]
    )
    assert demo[0]["content"] == "P.\n\nHere are examples of how you talk:\n1. Hi there!\n2. Sure."
    only_demo = item_messages(bfi, bfi.items[0], "normal", demonstrations=["Hey."])
    assert only_demo[0]["content"] == "Here are examples of how you talk:\n1. Hey."
    with pytest.raises(ValueError, match="demonstrations is empty"):
        item_messages(bfi, bfi.items[0], "normal", demonstrations=[])
    with pytest.raises(ValueError, match=r"demonstrations\[1\] is empty"):
        item_messages(bfi, bfi.items[0], "normal", demonstrations=["ok", "  "])


def test_inventory_without_anchors_cannot_be_administered(bfi) -> None:
    bare = dataclasses.replace(bfi, anchors={})
    with pytest.raises(InventoryError, match="has no scale anchors"):
        item_messages(bare, bare.items[0], "normal")


# --------------------------------------------------------------------------- plan


def test_plan_counterbalances_with_a_seed_per_call(bfi) -> None:
    plan = administration_plan(bfi, n_runs=3, seed=11)
    n = len(bfi.items)
    assert len(plan) == 3 * 2 * n
    for (run, order), cell in plan.groupby(["run", "option_order"]):
        # One item per call: every item once, in inventory order (the order of independent
        # calls cannot change an answer, so it is not shuffled).
        assert cell["item_id"].tolist() == list(bfi.item_ids), (run, order)
    assert {"run_seed", "position"}.isdisjoint(plan.columns)
    pd.testing.assert_frame_equal(plan, administration_plan(bfi, n_runs=3, seed=11))
    # Every call samples with its own seed; another seed gives other call seeds.
    assert plan["call_seed"].is_unique
    other = administration_plan(bfi, n_runs=3, seed=12)
    assert set(other["call_seed"]).isdisjoint(plan["call_seed"])
    # The same (seed, run, order, item) gives the same call seed in a longer plan.
    longer = administration_plan(bfi, n_runs=4, seed=11)
    assert longer["call_seed"].iloc[: len(plan)].tolist() == plan["call_seed"].tolist()
    only_reversed = administration_plan(bfi, n_runs=1, seed=11, orders=("reversed",))
    assert set(only_reversed["option_order"]) == {"reversed"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_runs": 0, "seed": 1}, "n_runs must be a positive integer"),
        ({"n_runs": 2, "seed": -1}, "seed must be a non-negative integer"),
        ({"n_runs": 2, "seed": 1, "orders": ("normal", "normal")}, "lists an order twice"),
        ({"n_runs": 2, "seed": 1, "orders": ("upside",)}, "unknown option order 'upside'"),
    ],
)
def test_plan_rejects_bad_arguments(bfi, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        administration_plan(bfi, **kwargs)


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I'd say 4.", (4, "ok")),
        ("4", (4, "ok")),
        ("  5\n", (5, "ok")),
        ("4/5", (4, "ok")),
        ("3 or 4", (3, "ok")),
        ("4.0", (4, "ok")),
        ("2. Disagree a little", (2, "ok")),
        ("3-4", (3, "ok")),
        ("", (None, "empty")),
        ("   ", (None, "empty")),
        (None, (None, "empty")),
        ("maybe", (None, "no_number")),
        ("four", (None, "no_number")),
        ("45", (None, "out_of_range")),
        ("0", (None, "out_of_range")),
        ("-2", (None, "out_of_range")),
        ("3.5", (None, "not_integer")),
    ],
)
def test_parse_rule(bfi, text, expected) -> None:
    assert parse_answer(text, bfi) == expected
    assert expected[1] in PARSE_STATUSES


def test_parse_answers_maps_back_and_never_imputes(bfi) -> None:
    parsed = parse_answers(
        ["1", "1", "maybe", "I'd say 2."], ["normal", "reversed", "normal", "reversed"], bfi
    )
    assert parsed["presented_value"].tolist() == [1, 1, pd.NA, 2]
    assert parsed["value"].tolist() == [1.0, 5.0, pd.NA, 4.0]
    assert parsed["parse_status"].tolist() == ["ok", "ok", "no_number", "ok"]


# --------------------------------------------------------------------------- option scoring


def test_logprob_answer_maps_presented_options_back(bfi) -> None:
    presented = np.log([0.4, 0.1, 0.1, 0.1, 0.1])  # 0.8 of the mass on the options
    normal = logprob_answer(presented, "normal", bfi)
    assert normal["option_mass"] == pytest.approx(0.8)
    assert normal["expected_score"] == pytest.approx(1.8 / 0.8)
    assert normal["argmax_score"] == 1.0
    assert normal["probabilities"][1] == pytest.approx(0.5)
    reversed_ = logprob_answer(presented, "reversed", bfi)
    assert reversed_["expected_score"] == pytest.approx(3.0 / 0.8)
    assert reversed_["argmax_score"] == 5.0
    assert reversed_["probabilities"] == pytest.approx(
        {1: 0.125, 2: 0.125, 3: 0.125, 4: 0.125, 5: 0.5}
    )
    assert sum(reversed_["probabilities"].values()) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("logprobs", "message"),
    [
        ([[-1.0, -1.0, -1.0, -1.0]], r"shape \(n, 5\)"),
        ([[0.5, -1.0, -1.0, -1.0, -1.0]], "not a set of log-probabilities"),
        ([[np.nan, -1.0, -1.0, -1.0, -1.0]], "not a set of log-probabilities"),
        ([[-0.1, -0.1, -1.0, -1.0, -1.0]], "mass"),
        ([[-np.inf] * 5], "no probability"),
    ],
)
def test_logprob_answers_rejects_bad_input(bfi, logprobs, message) -> None:
    with pytest.raises(ValueError, match=message):
        logprob_answers(np.array(logprobs), ["normal"], bfi)


# --------------------------------------------------------------------------- end to end


# The BFI-44 scoring key as published (John & Srivastava 1999; "R" items reverse-scored),
# written out here so that the test does not take the keying from the code it checks.
BFI_REVERSE_SCORED = {6, 21, 31, 2, 12, 27, 37, 8, 18, 23, 43, 9, 24, 34, 35, 41}


def _number_labelled(prompt_text: str, label: str) -> int:
    """The number the prompt's option list shows beside ``label`` ('4 = Agree a little')."""
    for line in prompt_text.splitlines():
        number, sep, text = line.partition(" = ")
        if sep and text == label:
            return int(number)
    raise AssertionError(f"no option {label!r} in the prompt")


def test_ideal_respondent_reading_the_prompts_scores_5_on_every_trait() -> None:
    """A respondent who agrees strongly with every statement of a trait and disagrees strongly
    with every reverse-scored one, reading the numbers off the option list it is shown,
    scores 5 on every trait through both answer paths, in both option orders."""
    inv = load_inventory("bfi44")
    plan = administration_plan(inv, n_runs=1, seed=3)
    presented = []
    for item_id, order in zip(plan["item_id"], plan["option_order"], strict=True):
        item = inv.item(item_id)
        prompt = item_messages(inv, item, order)[-1]["content"]
        wanted = "Disagree strongly" if item.number in BFI_REVERSE_SCORED else "Agree strongly"
        presented.append(_number_labelled(prompt, wanted))
    # In reversed order 'Agree strongly' is presented as 1: the answers differ by order.
    assert set(presented) == {1, 5}
    parsed = parse_answers([f"I'd say {p}." for p in presented], plan["option_order"].tolist(), inv)
    assert (parsed["parse_status"] == "ok").all()
    logprobs = np.full((len(plan), 5), np.log(1e-6))
    logprobs[np.arange(len(plan)), np.array(presented) - 1] = np.log(0.9)
    scored = logprob_answers(logprobs, plan["option_order"].tolist(), inv)
    for values in (parsed["value"], scored["argmax_score"], scored["expected_score"]):
        responses = plan.assign(method="sft", persona="openness_high", value=values.to_numpy())
        scores = score_table(responses, inv)
        assert set(scores["option_order"]) == {"normal", "reversed"} and len(scores) == 2 * 5
        assert scores["score"].to_numpy() == pytest.approx(5.0, abs=1e-4)
        assert (scores["n_failed"] == 0).all() and (scores["n_absent"] == 0).all()


@pytest.mark.parametrize("name", ["bfi44", "ipip_neo_120"])
def test_inventories_reverse_score_as_many_items_as_published(name) -> None:
    # METHOD.md section 6: BFI E 3, A 4, C 4, N 3, O 2; IPIP-NEO-120 E 6, A 17, C 13, N 7, O 12.
    published = {
        "bfi44": {"extraversion": 3, "agreeableness": 4, "conscientiousness": 4,
                  "neuroticism": 3, "openness": 2},
        "ipip_neo_120": {"extraversion": 6, "agreeableness": 17, "conscientiousness": 13,
                         "neuroticism": 7, "openness": 12},
    }[name]  # fmt: skip
    inv = load_inventory(name)
    reversed_ = {t: sum(inv.item(i).keyed == -1 for i in ids) for t, ids in inv.categories.items()}
    assert reversed_ == published
    if name == "bfi44":
        assert {i.number for i in inv.items if i.keyed == -1} == BFI_REVERSE_SCORED


def test_option_mass_below_the_minimum_is_low_mass() -> None:
    status = option_mass_status(np.array([0.5, 0.1, 0.0999, 0.0]), 0.1)
    assert status.tolist() == ["ok", "ok", "low_mass", "low_mass"]
    assert option_mass_status(np.array([0.0]), 0.0).tolist() == ["ok"]
    with pytest.raises(ValueError, match=r"min_option_mass must be in \[0, 1\)"):
        option_mass_status(np.array([0.5]), 1.0)
