"""Expressed personality can fail: a model that writes the instructed persona's trait markers
scores high, one that ignores the persona scores at chance; replies are cached by content."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest

from big5_dagster.lib.corpora.labels import label_and_split
from big5_dagster.lib.corpora.synthetic_posts import generate_posts, post_phrases
from big5_dagster.lib.engine.generation import GenerationResult
from big5_dagster.lib.engine.sampling import SamplingParams
from big5_dagster.lib.experts.classifier import make_classifier
from big5_dagster.lib.experts.classifier_spec import ClassifierSpec
from big5_dagster.lib.personality import expressed, self_report
from big5_dagster.lib.personality.conditions import conditions_for
from big5_dagster.lib.prompts import persona_description
from big5_dagster.lib.traits import PERSONAS, TRAITS

N_SCENARIOS = 24
SAMPLING = SamplingParams(max_new_tokens=8, temperature=0.7, seed=3)


@pytest.fixture(scope="module")
def classifier():
    posts = label_and_split(generate_posts(1500, seed=5), split_seed=42, test_fraction=0.1)
    return make_classifier(ClassifierSpec()).fit(posts)


@pytest.fixture(scope="module")
def scenarios() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "scenario_id": [f"eval-{i:05d}" for i in range(N_SCENARIOS)],
            "opener": [f"Hey, how was your week number {i}?" for i in range(N_SCENARIOS)],
            "person_y": "Sam",
        }
    )


class FakeRespondent:
    """Writes two marker clauses of a persona: the instructed one (``follows``), or one drawn
    from the row's seed alone, whatever the prompt says (``ignores``)."""

    model_id = fingerprint = "fake"
    tokenizer = None

    def __init__(self, follows: bool) -> None:
        self.follows = follows
        self.by_system = {persona_description(p): p for p in PERSONAS}
        self.calls = 0

    def generate_with_shared_prefix(self, conversations, params, *, batch_size, seeds=None):
        self.calls += 1
        markers = post_phrases().markers
        out = []
        for conversation, seed in zip(conversations, seeds, strict=True):
            rng = random.Random(seed)
            system = conversation[0]["content"] if conversation[0]["role"] == "system" else ""
            persona = self.by_system.get(system) if self.follows else None
            persona = persona or PERSONAS[rng.randrange(len(PERSONAS))]
            clauses = markers[(persona.trait, persona.level)].clauses
            text = ". ".join(rng.sample(list(clauses), 2)) + "."
            out.append(GenerationResult(text, 8, "length", (1,) * 8))
        return out


def replies_of(respondent, conditions, scenarios, classifier, cached=frozenset(), batch=8):
    plan = expressed.plan_replies("fake", conditions, scenarios, SAMPLING)
    new = expressed.write_replies(
        respondent,
        conditions,
        plan,
        SAMPLING,
        dict.fromkeys(scenarios.scenario_id, "Sam"),
        batch_size=batch,
        cached_keys=cached,
    )
    return plan, expressed.rated(new, classifier.predict_high_probability(new.reply.tolist()))


def test_a_model_that_writes_the_persona_scores_high(classifier, scenarios):
    conditions = conditions_for("prompt_description")
    _, replies = replies_of(FakeRespondent(True), conditions, scenarios, classifier)
    assert len(replies) == len(PERSONAS) * N_SCENARIOS
    accuracy = expressed.accuracy_table(replies)
    assert (accuracy.target_accuracy >= 0.85).all()
    assert (accuracy.binom_p < 0.01).all()
    assert (accuracy.p_high_ci_low <= accuracy.mean_p_high).all()
    high = accuracy[accuracy.level == "high"]
    assert (high.p_high_ci_low > 0.5).all()
    separation = expressed.separation_table(replies)
    assert list(separation.trait) == list(TRAITS)
    assert (separation.diff_ci_low > 0).all()
    assert (separation.spearman_rho > 0.5).all() and (separation.spearman_p < 0.01).all()


def test_a_model_that_ignores_the_persona_scores_at_chance(classifier, scenarios):
    conditions = conditions_for("prompt_description")
    _, replies = replies_of(FakeRespondent(False), conditions, scenarios, classifier)
    accuracy = expressed.accuracy_table(replies).set_index("persona")
    separation = expressed.separation_table(replies)
    # the same reply to a scenario whatever the persona: no separation at all ...
    assert np.allclose(separation.difference, 0) and np.allclose(separation.diff_ci_high, 0)
    assert separation.spearman_rho.abs().max() < 0.2
    # ... and each trait's two personas split one reply set: their accuracies sum to 1
    for trait in TRAITS:
        pair = accuracy.loc[[f"{trait}_high", f"{trait}_low"], "target_accuracy"]
        assert pair.sum() == pytest.approx(1.0)
    assert (accuracy.binom_p < 0.01).sum() <= 2


def test_base_is_one_reply_set_read_against_every_persona(classifier, scenarios):
    _, replies = replies_of(FakeRespondent(True), conditions_for("base"), scenarios, classifier)
    assert len(replies) == N_SCENARIOS and set(replies.persona) == {"none"}
    accuracy = expressed.accuracy_table(replies)
    assert list(accuracy.persona) == [p.key for p in PERSONAS]
    assert accuracy.scored_against_every_persona.all()
    assert expressed.separation_table(replies).empty


def test_replies_are_cached_by_content(classifier, scenarios):
    model = FakeRespondent(True)
    conditions = conditions_for("prompt_description")
    plan, first = replies_of(model, conditions, scenarios, classifier)
    assert plan.cache_key.is_unique
    calls = model.calls
    _, again = replies_of(model, conditions, scenarios, classifier, set(first.cache_key))
    assert again.empty and model.calls == calls  # nothing recomputed
    # another sampling setting is another key for every row
    other = expressed.plan_replies(
        "fake", conditions, scenarios, SamplingParams(max_new_tokens=9, seed=3)
    )
    assert not set(other.cache_key) & set(plan.cache_key)
    # the row seed depends on the scenario, not on the condition: common random numbers
    assert plan.groupby("scenario_id").row_seed.nunique().eq(1).all()


def test_self_report_beside_behaviour_says_which_moves():
    expressed_sep = pd.DataFrame(
        {
            "method": "sft",
            "adapter_seed": 1,
            "trait": ["openness", "neuroticism", "extraversion"],
            "difference": [0.4, 0.01, -0.3],
            "diff_ci_low": [0.2, -0.1, -0.5],
            "diff_ci_high": [0.6, 0.12, -0.1],
        }
    )
    inventory = pd.DataFrame(
        {
            "scorer": "logprob",
            "method": "sft",
            "inventory": "bfi44",
            "target_trait": ["openness", "neuroticism", "extraversion"],
            "trait": ["openness", "neuroticism", "extraversion"],
            "is_target": True,
            "difference": [0.05, 0.8, 0.6],
            "diff_ci_low": [-0.1, 0.3, 0.2],
            "diff_ci_high": [0.2, 1.3, 1.0],
        }
    )
    table = self_report.self_report_vs_behaviour(inventory, expressed_sep).set_index("trait")
    assert table.loc["openness", "verdict"] == "writes it, does not report it"
    assert table.loc["neuroticism", "verdict"] == "reports it, does not write it"
    assert table.loc["extraversion", "verdict"] == "both, in opposite directions"
    assert not table.loc["extraversion", "same_sign"]


def test_replies_share_calls_across_personas_unless_demonstrations_make_a_long_prefix(
    classifier, scenarios
):
    # prompt_description: 240 rows in calls of 48, across personas
    model = FakeRespondent(True)
    replies_of(model, conditions_for("prompt_description"), scenarios, classifier, batch=48)
    assert model.calls == len(PERSONAS) * N_SCENARIOS // 48
    # prompt_demonstrations: one call per persona, its demonstrations prefilled once
    demos = {p.key: [f"{p.key} example {i}" for i in range(10)] for p in PERSONAS}
    model = FakeRespondent(True)
    conditions = conditions_for("prompt_demonstrations", demonstrations_by_persona=demos)
    replies_of(model, conditions, scenarios, classifier, batch=48)
    assert model.calls == len(PERSONAS)


def test_a_reply_is_the_same_whichever_personas_share_its_call(tiny_model_dir, scenarios):
    from big5_dagster.lib.engine.loading import load_model

    loaded = load_model(str(tiny_model_dir), device="cpu")
    conditions = conditions_for("prompt_description", PERSONAS[:3])
    few = scenarios.head(4)
    person_y = dict.fromkeys(few.scenario_id, "Sam")
    params = SamplingParams(max_new_tokens=6, temperature=1.0, top_p=0.9, seed=3)
    plan = expressed.plan_replies(loaded.fingerprint, conditions, few, params)
    # batch 5: calls cut across personas and scenarios
    together = expressed.write_replies(loaded, conditions, plan, params, person_y, batch_size=5)
    for condition in conditions:
        alone = expressed.write_replies(loaded, [condition], plan, params, person_y, batch_size=4)
        mine = together.set_index("cache_key").loc[alone.cache_key]
        assert mine.raw_reply.tolist() == alone.raw_reply.tolist(), condition.label
    assert together.groupby("scenario_id").raw_reply.nunique().gt(1).any()
