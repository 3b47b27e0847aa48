"""SFT examples and DPO pairs follow the dataset's split and never use flagged replies."""

import pandas as pd
import pytest
from transformers import AutoTokenizer

from big5_dagster.lib.training.examples import dpo_pairs, sft_examples, training_split
from big5_dagster.lib.training.pair_order import mirrored_couples
from big5_dagster.lib.traits import PERSONAS


@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer_dir):
    return AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)


def dataset(n_scenarios: int = 6) -> pd.DataFrame:
    rows = []
    for s in range(n_scenarios):
        for p in PERSONAS:
            rows.append(
                {
                    "record_id": f"s{s}/{p.key}",
                    "scenario_id": f"s{s}",
                    "persona": p.key,
                    "trait": p.trait,
                    "level": p.level,
                    "split": "test" if s == 0 else "train",
                    "opener": f"Hello from scenario {s}",
                    "reply": f"{p.key} reply to {s}",
                    "refusal": False,
                    "empty": False,
                    "near_duplicate": False,
                    "truncated": False,
                }
            )
    return pd.DataFrame(rows)


def test_validation_is_carved_from_train_scenarios_only():
    data = dataset(12)
    split = training_split(data, validation_fraction=0.2, seed=1)
    by_scenario = data.assign(split=split).groupby("scenario_id")["split"].nunique()
    assert (by_scenario == 1).all()  # a scenario never spans two splits
    assert set(split[data.split == "test"]) == {"test"}
    assert (split == "validation").any() and (split == "train").any()
    assert training_split(data.sample(frac=1, random_state=3), 0.2, 1).sort_index().equals(split)


def test_sft_examples_put_the_persona_in_the_system_turn(tokenizer):
    examples, dropped = sft_examples(dataset(), tokenizer, validation_fraction=0.2, seed=1)
    assert len(examples) == 60 and dropped["total"] == 0
    row = examples[examples.persona == "extraversion_low"].iloc[0]
    assert "Extraversion - low" in row.prompt and row.prompt.index(
        "Extraversion"
    ) < row.prompt.index("Hello")
    assert row.prompt.rstrip().endswith("assistant")  # the completion starts the assistant turn
    assert row.completion == f"extraversion_low reply to {row.scenario_id[1:]}"


def test_dpo_pairs_oppose_levels_and_drop_flagged_sides(tokenizer):
    data = dataset()
    data.loc[data.record_id == "s2/openness_low", "refusal"] = True
    pairs, dropped = dpo_pairs(data, tokenizer, validation_fraction=0.2, seed=1)
    # both directions of the openness pair in scenario 2 are dropped and counted
    assert dropped == {"missing_opposite": 0, "flagged": 2, "total": 2}
    assert len(pairs) == 58
    pair = pairs[pairs.pair_id == "s3/neuroticism_high"].iloc[0]
    assert (
        pair.chosen == "neuroticism_high reply to 3"
        and pair.rejected == "neuroticism_low reply to 3"
    )
    assert (pairs.chosen != pairs.rejected).all()
    sft, sft_dropped = sft_examples(data, tokenizer, 0.2, 1)
    assert sft_dropped["refusal"] == 1 and len(sft) == 59


def test_mirrored_couples_put_each_pair_beside_its_swapped_twin(tokenizer):
    data = dataset()
    data.loc[data.record_id == "s2/openness_low", "refusal"] = True  # no openness couple in s2
    pairs, _ = dpo_pairs(data, tokenizer, validation_fraction=0.2, seed=1)
    train = pairs[pairs.split == "train"].sample(frac=1, random_state=0)  # any input order
    ordered = mirrored_couples(train, cap=None, seed=7)
    assert len(ordered) == len(train) and set(ordered.pair_id) == set(train.pair_id)
    for k in range(0, len(ordered), 2):
        a, b = ordered.iloc[k], ordered.iloc[k + 1]
        # the same scenario and trait, the other level: the same two replies swapped
        assert (a.scenario_id, a.trait) == (b.scenario_id, b.trait) and a.level != b.level
        assert (a.chosen, a.rejected) == (b.rejected, b.chosen)
    # the couples' order is seeded and does not depend on the input order
    assert (
        ordered.pair_id.tolist() == mirrored_couples(train.sort_index(), None, 7).pair_id.tolist()
    )
    assert ordered.pair_id.tolist() != mirrored_couples(train, None, 8).pair_id.tolist()
    capped = mirrored_couples(train, cap=7, seed=7)  # an odd cap keeps whole couples
    assert capped.pair_id.tolist() == ordered.pair_id.tolist()[:6]


def test_demonstrations_come_from_unflagged_train_replies():
    from big5_dagster.lib.training.examples import demonstrations_by_persona

    data = dataset(12)
    data.loc[data.record_id == "s3/openness_high", "near_duplicate"] = True
    demos = demonstrations_by_persona(data, n=5, seed=7)
    assert set(demos) == {p.key for p in PERSONAS}
    assert all(len(v) == 5 for v in demos.values())
    assert "openness_high reply to 3" not in demos["openness_high"]  # flagged
    assert all(not r.endswith(" to 0") for v in demos.values() for r in v)  # scenario 0 is test
    assert demos == demonstrations_by_persona(data, n=5, seed=7)  # seeded
    with pytest.raises(ValueError, match="usable train replies"):
        demonstrations_by_persona(data, n=12, seed=7)
