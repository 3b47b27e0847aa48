"""Activation steering: the forward hook, its removal, and persona vectors (lib.engine.steering)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from model_fixtures import vary_weights

from big5_dagster.lib.engine.adapters import random_lora_adapter
from big5_dagster.lib.engine.generation import generate_chat
from big5_dagster.lib.engine.loading import load_model
from big5_dagster.lib.engine.sampling import SamplingParams
from big5_dagster.lib.engine.scoring import score_options
from big5_dagster.lib.engine.steering import (
    PersonaVectors,
    SteeringBackendError,
    added_to_layer,
    decoder_layers,
    steered,
)
from big5_dagster.lib.personality.trait_directions import compute_persona_vectors, contrast_replies

PROMPTS = [
    [{"role": "user", "content": "How do you feel about parties?"}],
    [{"role": "user", "content": "Tell me about your weekend plans, please."}],
]
GREEDY = SamplingParams(max_new_tokens=6, do_sample=False, seed=0)


@pytest.fixture(scope="module")
def varied(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir), device="cpu")
    vary_weights(loaded.model)
    return loaded


def hidden(loaded) -> int:
    return loaded.model.config.hidden_size


def steering_hooks(module) -> int:
    """Forward hooks of ours on ``module`` (transformers installs output-capturing ones too)."""
    return sum("added_to_layer" in h.__qualname__ for h in module._forward_hooks.values())


def last_logits(loaded, prompt) -> torch.Tensor:
    from big5_dagster.lib.engine.chat import render_chat

    text = render_chat(loaded.tokenizer, prompt)
    ids = loaded.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        return loaded.model(input_ids=ids).logits[0, -1].float().log_softmax(-1)


def test_zero_coefficient_changes_no_token_and_no_option_probability(varied):
    plain_tokens = [r.token_ids for r in generate_chat(varied, PROMPTS, GREEDY, batch_size=2)]
    plain_scores = score_options(varied, PROMPTS, ["1", "2", "3"], batch_size=2)
    with steered(varied, 0, torch.zeros(hidden(varied))) as model:
        tokens = [r.token_ids for r in generate_chat(model, PROMPTS, GREEDY, batch_size=2)]
        scores = score_options(model, PROMPTS, ["1", "2", "3"], batch_size=2)
    assert tokens == plain_tokens
    assert torch.equal(torch.as_tensor(scores.logprobs), torch.as_tensor(plain_scores.logprobs))


def test_a_planted_direction_moves_its_tokens_logit_with_the_sign(varied):
    token = varied.tokenizer(" happy", add_special_tokens=False)["input_ids"][0]
    direction = varied.model.get_output_embeddings().weight[token].detach().float()
    direction = direction / direction.norm()
    plain = last_logits(varied, PROMPTS[0])[token]
    with steered(varied, 0, 20.0 * direction):
        up = last_logits(varied, PROMPTS[0])[token]
    with steered(varied, 0, -20.0 * direction):
        down = last_logits(varied, PROMPTS[0])[token]
    assert up > plain + 1.0
    assert down < plain - 1.0


def test_the_hook_adds_to_the_hidden_state_after_its_layer(varied):
    """What the next layer reads is hidden_states[layer + 1] (the state the directions are
    computed from) plus the vector."""
    ids = torch.tensor([[1, 2, 3, 4]])
    vector = torch.randn(hidden(varied), generator=torch.Generator().manual_seed(0))
    seen = []
    handle = decoder_layers(varied.model)[1].register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(args[0] if args else kwargs["hidden_states"]),
        with_kwargs=True,
    )
    try:
        with torch.inference_mode():
            plain = varied.model(input_ids=ids, output_hidden_states=True).hidden_states
            with added_to_layer(varied.model, 0, vector):
                varied.model(input_ids=ids)
    finally:
        handle.remove()
    torch.testing.assert_close(seen[0], plain[1])
    torch.testing.assert_close(seen[1], plain[1] + vector, atol=1e-5, rtol=1e-5)


def test_the_hook_is_gone_after_a_call_that_raised(varied):
    before = last_logits(varied, PROMPTS[0])
    layer = decoder_layers(varied.model)[0]
    with (
        pytest.raises(RuntimeError, match="inside"),
        steered(varied, 0, 50.0 * torch.ones(hidden(varied))),
    ):
        assert steering_hooks(layer) == 1
        raise RuntimeError("raised inside the steered block")
    assert steering_hooks(layer) == 0
    torch.testing.assert_close(last_logits(varied, PROMPTS[0]), before)


def test_steering_reaches_the_layers_through_a_peft_wrapper(varied):
    with random_lora_adapter(varied.model, seed=1) as peft_model:
        assert decoder_layers(peft_model) is decoder_layers(varied.model)
        with added_to_layer(peft_model, 0, torch.ones(hidden(varied))):
            assert steering_hooks(decoder_layers(varied.model)[0]) == 1
    assert steering_hooks(decoder_layers(varied.model)[0]) == 0


def test_the_last_layer_is_not_a_steering_layer(varied):
    with (
        pytest.raises(ValueError, match="out of range"),
        added_to_layer(varied.model, 1, torch.zeros(hidden(varied))),
    ):
        pass


def test_a_model_without_hooks_fails_naming_the_backend_setting():
    class VllmModel:  # what ModelBackend.respondent() returns with backend 'vllm'
        pass

    with (
        pytest.raises(SteeringBackendError, match="model.backend"),
        steered(VllmModel(), 0, torch.zeros(4)),
    ):
        pass


def dialogues() -> pd.DataFrame:
    rows = []
    for n, scenario in enumerate(["s1", "s2", "s3"]):
        for trait in ("openness", "extraversion"):
            for level in ("high", "low"):
                if scenario == "s3" and level == "low":
                    continue  # no low reply: not a contrast pair
                rows.append(
                    {
                        "scenario_id": scenario,
                        "split": "train",
                        "trait": trait,
                        "level": level,
                        "opener": f"Hello number {n}.",
                        "reply": f"I {'love' if level == 'high' else 'hate'} this, truly {n}.",
                        "refusal": False,
                        "empty": False,
                        "near_duplicate": False,
                    }
                )
    return pd.DataFrame(rows)


def test_contrast_replies_keep_only_scenarios_with_both_levels():
    rows = contrast_replies(dialogues(), "openness", None, seed=0)
    assert sorted(rows.scenario_id.unique()) == ["s1", "s2"]
    assert rows.groupby("scenario_id")["level"].apply(sorted).tolist() == [["high", "low"]] * 2
    assert len(contrast_replies(dialogues(), "openness", 1, seed=0)) == 2


def test_persona_vectors_round_trip_and_sign(varied, tmp_path):
    vectors = compute_persona_vectors(
        varied, dialogues(), max_scenarios=None, seed=0, traits=("openness", "extraversion")
    )
    assert vectors.layers == (0,)
    assert vectors.n_scenarios == {"openness": 2, "extraversion": 2}
    assert vectors.directions["grounded"].shape == (2, 1, hidden(varied))
    back = PersonaVectors.load(vectors.save(tmp_path / "v.safetensors"))
    assert back.traits == vectors.traits and back.n_scenarios == vectors.n_scenarios
    torch.testing.assert_close(back.directions["prompted"], vectors.directions["prompted"])
    high = back.steering_vector("grounded", "openness", "high", 0, 2.0)
    low = back.steering_vector("grounded", "openness", "low", 0, 2.0)
    torch.testing.assert_close(high, -low)
    assert float(high.norm()) == pytest.approx(2.0 * float(back.typical_norm[0]), rel=1e-5)
    summary = back.summary()
    assert set(summary.columns) >= {"trait", "layer", "norm_grounded", "norm_prompted", "cosine"}
    assert summary.cosine.between(-1.0001, 1.0001).all()


def test_steering_conditions_give_no_instruction_and_name_their_vector():
    from big5_dagster.lib.personality.conditions import by_model_change, conditions_for

    conditions = conditions_for("steering_prompted", steering=(3, 0.5, "abc123"))
    assert len(conditions) == 10
    assert all(c.system is None and c.demonstrations is None for c in conditions)
    assert conditions[0].model_version == "prompted:abc123:openness_high:layer3:coef0.5"
    # every persona's prompts are the same: the persona's vector must keep their answers'
    # cache keys apart
    assert len({c.model_version for c in conditions}) == 10
    assert conditions[0].adapter_identity == ("none", None, None)
    # each persona has its own vector: one model change per condition
    assert [len(g) for g in by_model_change(conditions)] == [1] * 10
    assert [len(g) for g in by_model_change(conditions_for("prompt_description"))] == [10]
    with pytest.raises(ValueError, match="needs steering"):
        conditions_for("steering_grounded")


def test_the_sweep_grid_and_the_choice_of_a_fluent_setting():
    from big5_dagster.lib.personality.steering_grid import chosen_setting, steering_grid

    grid = steering_grid([4, 8], [1.0, 0.5], chosen_layer=8)
    assert grid[:2] == [("grounded", 4, 0.5), ("grounded", 4, 1.0)]
    assert grid[-2:] == [("prompted", 8, 0.5), ("prompted", 8, 1.0)]
    with pytest.raises(ValueError, match="> 0"):
        steering_grid([4], [0.0], 4)
    curve = pd.DataFrame(
        {
            "formula": ["grounded@L4", "grounded@L4", "grounded@L4", "prompted@L4"],
            "alpha": [0.0, 0.5, 2.0, 0.5],
            "target_accuracy": [0.5, 0.7, 0.95, 0.99],
            "perplexity_median": [10.0, 12.0, 80.0, 11.0],
            "distinct_2": [0.9, 0.85, 0.3, 0.9],
        }
    )
    # coef 2 is the most accurate but no longer fluent; prompted settings are not chosen
    assert chosen_setting(curve).alpha.tolist() == [0.5]


def test_the_sweep_steers_every_persona_and_shares_the_plain_reply(varied):
    from big5_dagster.lib.personality.steering_grid import steering_sweep_replies
    from big5_dagster.lib.traits import PERSONAS

    vectors = compute_persona_vectors(
        varied, dialogues(), max_scenarios=None, seed=0, traits=("openness", "extraversion")
    )
    scenarios = pd.DataFrame(
        {"scenario_id": ["t1", "t2"], "opener": ["Hi there.", "What now?"], "person_y": ["Ann"] * 2}
    )
    personas = [p for p in PERSONAS if p.trait in ("openness", "extraversion")]
    replies = steering_sweep_replies(
        varied, vectors, scenarios, [("grounded", 0, 4.0)], GREEDY, personas=personas
    )
    assert len(replies) == 2 * len(personas) * 2
    plain = replies[replies.formula == "none"]
    assert plain.groupby("scenario_id").raw_reply.nunique().eq(1).all()
    high = replies[(replies.formula == "grounded@L0") & (replies.persona == "openness_high")]
    low = replies[(replies.formula == "grounded@L0") & (replies.persona == "openness_low")]
    assert high.raw_reply.tolist() != low.raw_reply.tolist()  # the sign reaches generation


def test_the_batched_sweep_gives_each_persona_what_its_own_call_gives(varied):
    """A setting's personas decode as one batch with a vector per row: every reply must be
    the one a steered call for that persona alone writes (same vector, same seed), sampled
    and greedy. A row steered with its neighbour's vector, or merged with an identical
    prompt of another persona, changes the tokens."""
    from big5_dagster.lib.personality.steering_grid import steering_sweep_replies
    from big5_dagster.lib.traits import PERSONAS

    vectors = compute_persona_vectors(
        varied, dialogues(), max_scenarios=None, seed=0, traits=("openness", "extraversion")
    )
    scenarios = pd.DataFrame(
        {"scenario_id": ["t1", "t2"], "opener": ["Hi there.", "What now?"], "person_y": ["Ann"] * 2}
    )
    personas = [p for p in PERSONAS if p.trait in ("openness", "extraversion")]
    conversations = [[{"role": "user", "content": o}] for o in scenarios.opener]
    sampled = SamplingParams(max_new_tokens=8, temperature=1.0, top_p=0.9, seed=3)
    for params in (GREEDY, sampled):
        # batch 3: the chunks cut across personas and scenarios
        replies = steering_sweep_replies(
            varied,
            vectors,
            scenarios,
            [("grounded", 0, 4.0)],
            params,
            batch_size=3,
            personas=personas,
        )
        steered_rows = replies[replies.formula == "grounded@L0"]
        distinct = set()
        for persona in personas:
            vector = vectors.steering_vector("grounded", persona.trait, persona.level, 0, 4.0)
            with steered(varied, 0, vector):
                alone = generate_chat(varied, conversations, params, batch_size=2)
            batched = steered_rows[steered_rows.persona == persona.key].raw_reply.tolist()
            assert batched == [r.text for r in alone], persona.key
            distinct.add(tuple(batched))
        assert len(distinct) > 1  # the personas' vectors really differ in what they write


def test_per_row_vectors_refuse_a_batch_of_another_size(varied):
    vectors = torch.zeros(3, hidden(varied))
    with (
        pytest.raises(ValueError, match="for 3 rows but layer 0 got a batch of"),
        steered(varied, 0, vectors),
    ):
        generate_chat(varied, PROMPTS, GREEDY, batch_size=2)
    assert steering_hooks(decoder_layers(varied.model)[0]) == 0


def test_expressed_steering_rows_share_batches_and_write_what_each_persona_writes_alone(varied):
    """expressed_personality's steering partition decodes every persona's rows together, a
    vector per row: each reply must be the one the persona's own steered call writes (the
    per-condition path), and the personas must still differ."""
    from big5_dagster.defs.evaluation import condition_vector
    from big5_dagster.lib.personality import expressed
    from big5_dagster.lib.personality.conditions import conditions_for
    from big5_dagster.lib.traits import PERSONAS

    vectors = compute_persona_vectors(
        varied, dialogues(), max_scenarios=None, seed=0, traits=("openness", "extraversion")
    )
    personas = [p for p in PERSONAS if p.trait in ("openness", "extraversion")]
    conditions = conditions_for("steering_grounded", personas, steering=(0, 4.0, "v1"))
    scenarios = pd.DataFrame(
        {"scenario_id": ["e1", "e2", "e3"], "opener": ["Hi there.", "What now?", "Well?"]}
    )
    person_y = dict.fromkeys(scenarios.scenario_id, "Ann")
    params = SamplingParams(max_new_tokens=8, temperature=1.0, top_p=0.9, seed=3)
    plan = expressed.plan_replies(varied.fingerprint, conditions, scenarios, params)
    added = {c.label: condition_vector(c, vectors)[1] for c in conditions}
    # batch 5: the calls cut across personas and scenarios
    batched = expressed.write_replies(
        varied, conditions, plan, params, person_y, batch_size=5, steering=(0, added)
    ).set_index("cache_key")
    for condition in conditions:
        with steered(varied, 0, added[condition.label]):
            alone = expressed.write_replies(
                varied, [condition], plan, params, person_y, batch_size=3
            )
        assert batched.loc[alone.cache_key, "raw_reply"].tolist() == alone.raw_reply.tolist()
    assert plan.cache_key.is_unique  # the personas' identical prompts keep their own keys
    assert batched.groupby("condition").raw_reply.apply(tuple).nunique() > 1


def test_batched_states_match_each_row_alone(varied):
    """Rows of different lengths share a left-padded batch; each row's states must be those
    of its own unpadded forward (a shifted slice or position would move every projection)."""
    from big5_dagster.lib.engine.chat import render_chat
    from big5_dagster.lib.engine.steering import last_prompt_states, reply_states, steering_layers

    replies = [" I love them, the louder the better.", " Quiet."]
    last = last_prompt_states(varied, PROMPTS, batch_size=2)
    means, norms = reply_states(varied, PROMPTS, replies, batch_size=2)
    layers = steering_layers(varied.model)
    tok = varied.tokenizer
    for row, (prompt, reply) in enumerate(zip(PROMPTS, replies, strict=True)):
        prompt_ids = tok(render_chat(tok, prompt), add_special_tokens=False)["input_ids"]
        reply_ids = tok(reply, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            alone = varied.model(
                input_ids=torch.tensor([prompt_ids + reply_ids]), output_hidden_states=True
            ).hidden_states
        for k, layer in enumerate(layers):
            states = alone[layer + 1][0].float()
            assert torch.allclose(last[row, k], states[len(prompt_ids) - 1], atol=1e-4)
            reply_part = states[len(prompt_ids) :]
            assert torch.allclose(means[row, k], reply_part.mean(0), atol=1e-4)
            assert norms[row, k] == pytest.approx(float(reply_part.norm(dim=-1).mean()), abs=1e-3)
