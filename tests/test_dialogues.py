"""BIG5-CHAT dataset assembly: cleaning, refusals, near-duplicates, split, records, quality."""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest

from big5_dagster.lib.dialogues.cleaning import clean_opener, clean_reply
from big5_dagster.lib.dialogues.dataset import (
    build_dataset,
    flag_counts,
    generation_json,
    split_by_scenario,
    write_jsonl,
)
from big5_dagster.lib.dialogues.quality import (
    dialogue_quality_table,
    personas_short_of,
    target_accuracy_vs_chance,
)
from big5_dagster.lib.dialogues.refusals import is_refusal, refusal_reason
from big5_dagster.lib.dialogues.schema import DATASET_COLUMNS, FLAG_NAMES, DialogueDataError
from big5_dagster.lib.dialogues.similarity import (
    near_duplicate_flags,
    near_duplicate_pairs,
    near_duplicate_partners,
    reply_similarity,
)
from big5_dagster.lib.traits import PERSONAS, TRAITS

# --- cleaning ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "speaker", "expected"),
    [
        ('Maya: "Sure, I\'d love to!"', "Maya", "Sure, I'd love to!"),
        ('"Sure!" *smiles* "Let\'s go."', "Maya", "Sure! Let's go."),
        ("*smiles warmly* Hi Tom, I don't know.", "Maya", "Hi Tom, I don't know."),
        (
            "\u201cHonestly? I think it\u2019s great.\u201d",
            None,
            "Honestly? I think it\u2019s great.",
        ),
        ("**Maya:** Oh wow, that sounds amazing!", "Maya", "Oh wow, that sounds amazing!"),
        ("Maya says: I guess so.", "Maya", "I guess so."),
        ("maya replies: fine.", "Maya", "fine."),
        ("Maya (smiling): Of course!", "Maya", "Of course!"),
        ("Maya: Hey.", "Maya Lopez", "Hey."),
        ("PersonY: Nope.", None, "Nope."),
        ("(laughs) Oh come on, Tom.", "Maya", "Oh come on, Tom."),
        ("Oh come on (rolls eyes), that's silly.", "Maya", "Oh come on, that's silly."),
        ("(Maya laughs) You're kidding.", "Maya", "You're kidding."),
        ("Fine, *sighs*, whatever you want.", "Maya", "Fine, whatever you want."),
        ("Sure *nods*.", "Maya", "Sure."),
        ("[nods] Yeah, okay.", None, "Yeah, okay."),
        ("Sure thing. [laughs]", None, "Sure thing."),
        ("Great... *looks away* I mean, sure.", None, "Great... I mean, sure."),
        # a starred word that is no known action is still a direction at a sentence boundary
        ("*thinking* Hmm, maybe.", None, "Hmm, maybe."),
        ("Okay then. *leaves*", None, "Okay then."),
        # cut off by the token limit inside a direction or a quote
        ("Sure! *grins and", "Maya", "Sure!"),
        ('"Wait, what do you mean', None, "Wait, what do you mean"),
        ("'I don't know, maybe.'", None, "I don't know, maybe."),
        ("  Hello\n\n  there   friend  ", None, "Hello there friend"),
        ("*sighs*", "Maya", ""),
        ("", None, ""),
    ],
)
def test_clean_reply_removes_directions_labels_and_wrapping_quotes(raw, speaker, expected):
    assert clean_reply(raw, speaker) == expected


@pytest.mark.parametrize(
    "kept",
    [
        'She told me "never again" and I believed her.',
        '"Yes," she said, "no."',
        "It's 5 o'clock; don't be late.",
        "I'd love to come (if I'm free).",
        "Don't worry, we'll figure it out... somehow.",
        "Maya told me that: no way.",
    ],
)
def test_clean_reply_keeps_content_in_the_middle(kept):
    assert clean_reply(kept, "Tom") == kept


def test_clean_reply_unwraps_emphasis_inside_a_sentence():
    assert clean_reply("I *really* don't want to go.") == "I really don't want to go."
    assert clean_reply("I love it *so much*!") == "I love it so much!"


def test_clean_reply_is_idempotent():
    raw = 'Maya: *laughs* "Oh, you\'re (not) serious, are you?" [winks]'
    once = clean_reply(raw, "Maya")
    assert once == "Oh, you're (not) serious, are you?"
    assert clean_reply(once, "Maya") == once


def test_clean_reply_rejects_non_text():
    with pytest.raises(TypeError, match="expects a str"):
        clean_reply(None)  # type: ignore[arg-type]


def test_clean_opener_strips_person_x_label():
    assert clean_opener('Tom: "Hey Maya, got a minute?"', "Tom") == "Hey Maya, got a minute?"
    # PersonX's name is not PersonY's: a label naming someone else is content.
    assert clean_opener("Maya: hi", "Tom") == "Maya: hi"


# --- refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "I'm sorry, but I can't assist with that request.",
        "I\u2019m sorry, but I can\u2019t fulfill that request.",
        "As an AI language model, I don't have personal opinions.",
        "AS AN AI, I CAN'T FEEL EMOTIONS.",
        "I cannot role-play as this character.",
        "I can't continue this roleplay.",
        "I'm not able to help with that.",
        "I won't be able to help you with this request.",
        "Sorry, I can't comply.",
        "I'm sorry, but I cannot provide a response to this.",
        "I can't generate that kind of content.",
        "I'm just an AI, so I can't go to parties.",
        "I don't have personal experiences, but I can help.",
        "This request goes against my guidelines.",
        "I'm unable to participate in this conversation.",
        "I'm not comfortable role-playing this scenario.",
        "Let me step out of character for a moment.",
    ],
)
def test_refusals_and_breaking_character_are_detected(text):
    assert is_refusal(text), text
    assert refusal_reason(text) is not None


@pytest.mark.parametrize(
    "text",
    [
        "I'm sorry you had a rough day.",
        "I'm sorry to hear that, it must be hard.",
        "I'm sorry, but I can't make it tonight.",
        "I'm sorry, but I can't.",
        "Sorry, I can't come to the party.",
        "I can't help it, I love parties!",
        "I can't help you move this weekend, sorry.",
        "I can't believe you did that!",
        "I can't write the report tonight.",
        "I can't pretend everything is fine.",
        "I can't continue like this.",
        "I'm not able to lend you money right now.",
        "I don't have feelings for him anymore.",
        "As an AI researcher, I find this fascinating.",
        "As an assistant manager, I have to say no.",
        "I can't play the piano.",
    ],
)
def test_in_character_apologies_and_refusals_are_not_flagged(text):
    assert not is_refusal(text), (text, refusal_reason(text))


def test_empty_reply_is_not_a_refusal():
    assert not is_refusal("")
    assert not is_refusal("   ")


# --- near-duplicates ---------------------------------------------------------------------


def test_reply_similarity_is_symmetric_and_one_for_identical_text():
    a = "I'd love to go, it sounds like so much fun!"
    b = "Honestly, parties drain me. I'll stay home and read."
    assert reply_similarity(a, a) == 1.0
    assert reply_similarity(a, "i'd LOVE to go -- it sounds like so much fun") == 1.0
    assert reply_similarity(a, b) == reply_similarity(b, a)
    assert reply_similarity(a, b) < 0.3
    assert 0.7 < reply_similarity(a, "I'd love to go, it sounds like so much fun, Tom!") < 1.0
    assert reply_similarity("", "") == 0.0
    assert reply_similarity("ha ha", "ha ha ha ha") < 1.0


def _replies_for_near_dupes() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "scenario_id": ["s1", "s1", "s1", "s2", "s2"],
            "persona": [
                "openness_high",
                "openness_low",
                "extraversion_high",
                "openness_high",
                "openness_low",
            ],
            "reply": [
                "Sure, let's try the new Thai place tonight!",
                "Sure, let's try the new Thai place tonight.",
                "Oh my gosh YES, and let's invite everyone we know!",
                "Sure, let's try the new Thai place tonight!",  # same text, other scenario
                "No. I'm staying in.",
            ],
        },
        index=[10, 11, 12, 13, 14],
    )


def test_duplicated_reply_across_two_personas_is_flagged_on_both():
    replies = _replies_for_near_dupes()
    flags = near_duplicate_flags(replies, threshold=0.9)
    assert flags.dtype == bool
    assert flags.index.equals(replies.index)
    assert flags.to_dict() == {10: True, 11: True, 12: False, 13: False, 14: False}
    partners = near_duplicate_partners(replies, threshold=0.9)
    assert partners.loc[10, "near_duplicate_of"] == "openness_low"
    assert partners.loc[11, "near_duplicate_of"] == "openness_high"
    assert partners.loc[10, "near_duplicate_similarity"] == 1.0
    assert partners.loc[12, "near_duplicate_of"] is None
    assert np.isnan(partners.loc[12, "near_duplicate_similarity"])
    pairs = near_duplicate_pairs(replies, threshold=0.9)
    assert pairs[["scenario_id", "persona_a", "persona_b", "row_a", "row_b"]].values.tolist() == [
        ["s1", "openness_high", "openness_low", 10, 11]
    ]


def test_near_duplicate_threshold_is_inclusive_and_validated():
    replies = _replies_for_near_dupes()
    similarity = reply_similarity(replies.loc[10, "reply"], replies.loc[12, "reply"])
    assert near_duplicate_flags(replies, threshold=similarity)[12]
    assert not near_duplicate_flags(replies, threshold=min(1.0, similarity + 1e-9))[12]
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ValueError, match="threshold"):
            near_duplicate_flags(replies, threshold=bad)


def test_near_duplicate_partner_is_the_most_similar_one():
    replies = pd.DataFrame(
        {
            "scenario_id": ["s1"] * 3,
            "persona": ["openness_high", "openness_low", "neuroticism_low"],
            "reply": [
                "We could go hiking today",
                "We could go hiking today!",
                "We could go hiking",
            ],
        }
    )
    partners = near_duplicate_partners(replies, threshold=0.5)
    assert partners["near_duplicate"].tolist() == [True, True, True]
    assert partners["near_duplicate_of"].tolist() == [
        "openness_low",
        "openness_high",
        "openness_high",  # tie on similarity with openness_low: the earlier persona
    ]


# --- split -------------------------------------------------------------------------------


def test_split_is_scenario_level_seeded_and_order_independent():
    ids = [f"soda-{i}" for i in range(200)]
    split = split_by_scenario(ids, test_fraction=0.1, seed=7)
    assert set(split) == set(ids)
    assert set(split.values()) == {"train", "test"}
    assert sum(v == "test" for v in split.values()) == 20

    shuffled = ids[:]
    random.Random(3).shuffle(shuffled)
    # Order and repetition (replies list a scenario once per persona) do not matter.
    assert split_by_scenario(shuffled + shuffled, test_fraction=0.1, seed=7) == split
    assert split_by_scenario(iter(ids), test_fraction=0.1, seed=7) == split
    other = split_by_scenario(ids, test_fraction=0.1, seed=8)
    assert other != split
    assert sum(v == "test" for v in other.values()) == 20


def test_split_has_no_leak_between_train_and_test_records():
    ids = [f"s{i}" for i in range(30)]
    split = split_by_scenario(ids, test_fraction=0.2, seed=1)
    replies = pd.DataFrame(
        [(sid, p.key) for sid in ids for p in PERSONAS], columns=["scenario_id", "persona"]
    )
    replies["split"] = replies["scenario_id"].map(split)
    train = set(replies.loc[replies["split"] == "train", "scenario_id"])
    test = set(replies.loc[replies["split"] == "test", "scenario_id"])
    assert train and test
    assert not train & test
    assert train | test == set(ids)


def test_split_puts_a_scenario_in_each_split_when_possible():
    assert sorted(split_by_scenario(["a", "b"], test_fraction=0.01, seed=0).values()) == [
        "test",
        "train",
    ]
    assert sorted(split_by_scenario(["a", "b"], test_fraction=0.99, seed=0).values()) == [
        "test",
        "train",
    ]
    assert split_by_scenario(["only"], test_fraction=0.5, seed=0) == {"only": "train"}
    assert split_by_scenario([], test_fraction=0.5, seed=0) == {}
    for bad in (0, 1, -0.5, 2):
        with pytest.raises(ValueError, match="test_fraction"):
            split_by_scenario(["a", "b"], test_fraction=bad, seed=0)
    with pytest.raises(DialogueDataError, match="missing scenario id"):
        split_by_scenario(["a", None], test_fraction=0.5, seed=0)


def test_adding_scenarios_keeps_most_existing_assignments():
    ids = [f"s{i}" for i in range(100)]
    before = split_by_scenario(ids, test_fraction=0.2, seed=5)
    after = split_by_scenario(ids + [f"s{i}" for i in range(100, 110)], test_fraction=0.2, seed=5)
    moved = sum(before[s] != after[s] for s in ids)
    assert moved <= 5


# --- dataset -----------------------------------------------------------------------------

GENERATION = generation_json(
    formula="paper",
    alpha=0.5,
    warmup_tokens=5,
    sampling={"do_sample": True, "temperature": 0.7, "top_p": 0.9},
    seed=42,
    base_model="SmolLM2-135M-Instruct",
    expert_model="experts/openness@abc123",
)


def _scenarios() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "scenario_id": ["s1", "s2", "s3"],
            "narrative": [
                "Tom invites Maya to a gallery opening.",
                "Lee asks Ana to help plan a trip.",
                "Sam tells Jo about a new job.",
            ],
            "person_x": ["Tom", "Lee", "Sam"],
            "person_y": ["Maya", "Ana", "Jo"],
        }
    )


def _openers() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "scenario_id": ["s3", "s1", "s2"],
            "opener": ['Sam: "I got the job!"', "Want to come to the opening?", "*waves* Help?"],
        }
    )


def _replies() -> pd.DataFrame:
    rows = []
    for sid in ("s2", "s1"):  # not in sorted order on purpose
        for i, persona in enumerate(reversed(PERSONAS)):
            rows.append(
                {
                    "scenario_id": sid,
                    "persona": persona.key,
                    "trait": persona.trait,
                    "level": persona.level,
                    "raw_reply": f"Reply number {i} to {sid}: topic {i * 7} about item {sid}-{i}.",
                    "n_new_tokens": 20 + i,
                    "finish_reason": "stop",
                    "generation": GENERATION,
                }
            )
    replies = pd.DataFrame(rows)

    def set_reply(sid, persona, text, finish="stop"):
        mask = (replies["scenario_id"] == sid) & (replies["persona"] == persona)
        replies.loc[mask, "raw_reply"] = text
        replies.loc[mask, "finish_reason"] = finish

    set_reply("s1", "openness_high", 'Maya: *beams* "A gallery? I\'d adore that, Tom!"')
    set_reply("s1", "openness_low", "I'm sorry, but I can't assist with that request.")
    set_reply("s1", "extraversion_low", "*shrugs*")
    set_reply("s1", "agreeableness_high", "Of course! I'd be happy to help you out, really.")
    set_reply("s1", "agreeableness_low", "Of course! I'd be happy to help you out, really!")
    set_reply("s2", "conscientiousness_high", "Let me draft an itinerary first and", "length")
    set_reply("s2", "neuroticism_high", "I'm sorry you're stressed, Lee. Me too, honestly.")
    return replies


def _split() -> dict[str, str]:
    return {"s1": "train", "s2": "test", "s3": "train"}


def test_build_dataset_cleans_flags_and_counts_without_dropping():
    replies = _replies()
    dataset = build_dataset(replies, _scenarios(), _openers(), _split(), 0.9)
    assert list(dataset.columns) == list(DATASET_COLUMNS)
    assert len(dataset) == len(replies) == 20  # flagged replies are kept

    # sorted by scenario, then persona in PERSONAS order
    assert dataset["scenario_id"].tolist() == ["s1"] * 10 + ["s2"] * 10
    assert dataset["persona"].tolist()[:10] == [p.key for p in PERSONAS]
    rec = dataset.set_index("record_id")

    first = rec.loc["s1/openness_high"]
    assert first["reply"] == "A gallery? I'd adore that, Tom!"
    assert first["raw_reply"].startswith("Maya: *beams*")
    assert first["narrative"] == "Tom invites Maya to a gallery opening."
    assert (first["person_x"], first["person_y"], first["split"]) == ("Tom", "Maya", "train")
    assert first["flags"] == []

    refusal = rec.loc["s1/openness_low"]
    assert refusal["refusal"] and refusal["flags"] == ["refusal"]
    assert refusal["refusal_pattern"] == "cannot_help_with_that"
    assert not rec.loc["s2/neuroticism_high", "refusal"]  # in-character apology

    empty = rec.loc["s1/extraversion_low"]
    assert empty["reply"] == "" and empty["empty"] and not empty["refusal"]
    assert empty["flags"] == ["empty"]

    truncated = rec.loc["s2/conscientiousness_high"]
    assert truncated["truncated"] and truncated["flags"] == ["truncated"]
    assert truncated["split"] == "test"

    for persona, partner in (
        ("agreeableness_high", "agreeableness_low"),
        ("agreeableness_low", "agreeableness_high"),
    ):
        dup = rec.loc[f"s1/{persona}"]
        assert dup["near_duplicate"] and dup["flags"] == ["near_duplicate"]
        assert dup["near_duplicate_of"] == partner
        assert dup["near_duplicate_similarity"] == 1.0

    assert flag_counts(dataset) == {
        "refusal": 1,
        "empty": 1,
        "near_duplicate": 2,
        "truncated": 1,
        "any": 5,
        "total": 20,
    }
    for flag in FLAG_NAMES:
        assert dataset[flag].dtype == bool
        assert dataset[flag].tolist() == [flag in f for f in dataset["flags"]]


def test_build_dataset_shares_one_cleaned_opener_and_records_generation():
    dataset = build_dataset(_replies(), _scenarios(), _openers(), _split())
    s1 = dataset[dataset["scenario_id"] == "s1"]
    assert s1["opener"].nunique() == 1
    assert s1["opener"].iloc[0] == "Want to come to the opening?"
    s2 = dataset[dataset["scenario_id"] == "s2"]
    assert s2["opener"].iloc[0] == "Help?"
    assert s2["raw_opener"].iloc[0] == "*waves* Help?"
    generation = json.loads(dataset["generation"].iloc[0])
    assert generation["formula"] == "paper"
    assert generation["alpha"] == 0.5
    assert generation["warmup_tokens"] == 5
    assert generation["sampling"]["temperature"] == 0.7
    assert generation["seed"] == 42
    assert generation["expert_model"] == "experts/openness@abc123"


def test_build_dataset_is_independent_of_input_row_order():
    replies = _replies()
    a = build_dataset(replies, _scenarios(), _openers(), _split())
    b = build_dataset(replies.sample(frac=1, random_state=0), _scenarios(), _openers(), _split())
    pd.testing.assert_frame_equal(a, b)


def _with(frame: pd.DataFrame, row: int, column: str, value) -> pd.DataFrame:
    frame = frame.copy()
    frame[column] = frame[column].astype(object)
    frame.at[frame.index[row], column] = value
    return frame


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda r: _with(r, 2, "scenario_id", "s404"),
            r"replies row 3 \(scenario_id='s404'.*column 'scenario_id': scenario 's404' is not in the scenarios table",
        ),
        (lambda r: _with(r, 0, "generation", "{not json"), r"replies row 1 .*'generation'"),
        (lambda r: _with(r, 0, "generation", "[1, 2]"), r"row 1 .*expected a JSON object"),
        (
            lambda r: _with(r, 4, "trait", "openness"),
            r"replies row 5 .*'trait'.*does not match",
        ),
        (lambda r: _with(r, 1, "persona", "openness_medium"), r"row 2 .*'persona'"),
        (lambda r: _with(r, 3, "raw_reply", None), r"row 4 .*'raw_reply'"),
        (lambda r: _with(r, 3, "finish_reason", None), r"row 4 .*'finish_reason'"),
        (lambda r: _with(r, 3, "n_new_tokens", 2.5), r"row 4 .*'n_new_tokens'"),
        (lambda r: _with(r, 3, "n_new_tokens", "many"), r"row 4 .*'n_new_tokens'"),
        (
            lambda r: pd.concat([r, r.iloc[[0]]], ignore_index=True),
            r"replies row 21 .*a second reply for this scenario and persona \(first at row 1\)",
        ),
        (
            lambda r: r.drop(columns=["finish_reason"]),
            r"replies: missing column\(s\) \['finish_reason'\]",
        ),
    ],
)
def test_build_dataset_bad_replies_name_row_and_column(mutate, message):
    with pytest.raises(DialogueDataError, match=message):
        build_dataset(mutate(_replies()), _scenarios(), _openers(), _split())


def test_build_dataset_checks_scenarios_openers_and_split_map():
    replies = _replies()
    no_s2 = _scenarios()[lambda f: f["scenario_id"] != "s2"]
    with pytest.raises(DialogueDataError, match="scenario 's2' is not in the scenarios table"):
        build_dataset(replies, no_s2, _openers(), _split())
    with pytest.raises(DialogueDataError, match="scenario 's1' has no opener"):
        build_dataset(replies, _scenarios(), _openers().iloc[[0, 2]], _split())
    two_openers = pd.concat([_openers(), pd.DataFrame({"scenario_id": ["s1"], "opener": ["Hi"]})])
    with pytest.raises(DialogueDataError, match=r"openers row 4 .*a second opener"):
        build_dataset(replies, _scenarios(), two_openers, _split())
    with pytest.raises(DialogueDataError, match="scenario 's2' is not in the split map"):
        build_dataset(replies, _scenarios(), _openers(), {"s1": "train"})
    with pytest.raises(DialogueDataError, match="split map gives 'dev'"):
        build_dataset(replies, _scenarios(), _openers(), {"s1": "train", "s2": "dev"})
    blank = _with(_scenarios(), 1, "person_y", " ")
    with pytest.raises(
        DialogueDataError, match=r"scenarios row 2 \(scenario_id='s2'\), column 'person_y'"
    ):
        build_dataset(replies, blank, _openers(), _split())


def test_write_jsonl_keeps_lists_and_writes_null_for_missing(tmp_path):
    dataset = build_dataset(_replies(), _scenarios(), _openers(), _split())
    path = write_jsonl(dataset, tmp_path / "out" / "big5_chat.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(dataset)
    records = [json.loads(line) for line in lines]
    assert list(records[0]) == list(DATASET_COLUMNS)
    by_id = {r["record_id"]: r for r in records}
    assert by_id["s1/openness_low"]["flags"] == ["refusal"]
    assert by_id["s1/openness_high"]["flags"] == []
    assert by_id["s1/openness_high"]["near_duplicate_of"] is None
    assert by_id["s1/openness_high"]["near_duplicate_similarity"] is None
    assert by_id["s1/agreeableness_high"]["near_duplicate_similarity"] == 1.0
    assert by_id["s1/openness_high"]["refusal"] is False
    assert isinstance(by_id["s1/openness_high"]["n_new_tokens"], int)
    assert list(tmp_path.joinpath("out").iterdir()) == [path]  # no temporary file left


def test_write_jsonl_failure_leaves_previous_file(tmp_path):
    path = tmp_path / "out" / "d.jsonl"
    write_jsonl(pd.DataFrame({"a": [1], "b": [["x", "y"]]}), path)
    before = path.read_text()
    assert json.loads(before) == {"a": 1, "b": ["x", "y"]}
    with pytest.raises(TypeError):
        write_jsonl(pd.DataFrame({"a": [object()]}), path)
    assert path.read_text() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["d.jsonl"]


# --- quality -----------------------------------------------------------------------------


def _quality_inputs() -> tuple[pd.DataFrame, pd.DataFrame]:
    # openness_high: 4 scored replies (P(openness high) 0.9, 0.6, 0.4, 0.7) + 1 refusal;
    # openness_low: 2 replies (0.2 correct, 0.8 wrong).
    dataset = pd.DataFrame(
        {
            "record_id": ["a", "b", "c", "d", "e", "f", "g"],
            "persona": ["openness_high"] * 5 + ["openness_low"] * 2,
            "trait": ["openness"] * 7,
            "level": ["high"] * 5 + ["low"] * 2,
            "reply": [
                "one two three",
                "one two three four five",
                "one",
                "one two",
                "I'm sorry, but I can't assist with that.",
                "a b c d",
                "",
            ],
            "refusal": [False, False, False, False, True, False, False],
            "empty": [False] * 7,
            "near_duplicate": [False, True, False, False, False, False, False],
            "truncated": [False, False, False, True, False, False, False],
        }
    )
    p = pd.DataFrame(
        {
            "record_id": ["g", "f", "e", "d", "c", "b", "a"],  # other order: joined by id
            "openness": [0.8, 0.2, 0.1, 0.7, 0.4, 0.6, 0.9],
            "conscientiousness": [0.5, 0.5, 0.9, 0.2, 0.6, 0.4, 0.8],
            "extraversion": [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1],
            "agreeableness": [0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9],
            "neuroticism": [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5],
        }
    )
    return dataset, p


def test_quality_accuracy_matches_hand_computed_example():
    dataset, probabilities = _quality_inputs()
    table = dialogue_quality_table(dataset, probabilities).set_index("persona")
    assert list(table.index) == ["openness_high", "openness_low"]

    high = table.loc["openness_high"]
    assert (high["n_replies"], high["n_scored"], high["target_n_correct"]) == (5, 4, 3)
    assert high["target_accuracy"] == pytest.approx(0.75)
    assert high["target_mean_p_high"] == pytest.approx((0.9 + 0.6 + 0.4 + 0.7) / 4)
    assert high["target_binom_p"] == pytest.approx(5 / 16)  # P(X >= 3), X ~ Bin(4, 0.5)
    # off-target: conscientiousness P(high) of a,b,c,d = 0.8, 0.4, 0.6, 0.2
    assert high["offtarget_conscientiousness_mean_p_high"] == pytest.approx(0.5)
    assert high["offtarget_conscientiousness_share_high"] == pytest.approx(0.5)
    assert high["offtarget_extraversion_share_high"] == 0.0
    assert high["offtarget_agreeableness_share_high"] == 1.0
    assert high["offtarget_neuroticism_share_high"] == 0.0  # 0.5 is not > 0.5
    assert np.isnan(high["offtarget_openness_mean_p_high"])
    # lengths and rates over all 5 replies: words 3, 5, 1, 2, 8
    assert high["words_mean"] == pytest.approx(19 / 5)
    assert high["words_median"] == 3.0
    assert high["words_p90"] == pytest.approx(6.8)
    assert high["refusal_rate"] == pytest.approx(0.2)
    assert high["near_duplicate_rate"] == pytest.approx(0.2)
    assert high["truncated_rate"] == pytest.approx(0.2)
    assert high["empty_rate"] == 0.0

    low = table.loc["openness_low"]
    assert (low["n_scored"], low["target_n_correct"]) == (2, 1)
    assert low["target_accuracy"] == pytest.approx(0.5)
    assert low["target_binom_p"] == pytest.approx(0.75)


def test_quality_uses_the_classifiers_own_thresholds_when_given():
    dataset, probabilities = _quality_inputs()
    cut = dict.fromkeys(TRAITS, 0.5) | {"openness": 0.65, "neuroticism": 0.45}
    table = dialogue_quality_table(dataset, probabilities, thresholds=cut).set_index("persona")
    # openness_high P = 0.9, 0.6, 0.4, 0.7: above 0.65 only 0.9 and 0.7
    assert table.loc["openness_high", "target_accuracy"] == pytest.approx(0.5)
    # openness_low P = 0.2, 0.8: 0.2 is low, 0.8 is high
    assert table.loc["openness_low", "target_accuracy"] == pytest.approx(0.5)
    assert table.loc["openness_high", "offtarget_neuroticism_share_high"] == 1.0
    with pytest.raises(ValueError, match="no cut-off"):
        dialogue_quality_table(dataset, probabilities, thresholds={"openness": 0.5})


def test_quality_aligns_on_index_without_record_id():
    dataset, probabilities = _quality_inputs()
    by_index = probabilities.set_index("record_id").loc[dataset["record_id"]].reset_index(drop=True)
    table = dialogue_quality_table(dataset, by_index)
    expected = dialogue_quality_table(dataset, probabilities)
    pd.testing.assert_frame_equal(table, expected)
    with pytest.raises(DialogueDataError, match="index must equal"):
        dialogue_quality_table(dataset, by_index.iloc[:-1])


def test_quality_rejects_missing_or_invalid_predictions():
    dataset, probabilities = _quality_inputs()
    with pytest.raises(DialogueDataError, match="no prediction for record_id 'g'"):
        dialogue_quality_table(dataset, probabilities[probabilities["record_id"] != "g"])
    bad = probabilities.copy()
    bad.loc[bad["record_id"] == "c", "openness"] = 1.5
    with pytest.raises(DialogueDataError, match=r"row 'c', column 'openness'.*\[0, 1\]"):
        dialogue_quality_table(dataset, bad)
    with pytest.raises(DialogueDataError, match=r"missing column\(s\) \['neuroticism'\]"):
        dialogue_quality_table(dataset, probabilities.drop(columns=["neuroticism"]))


def test_target_accuracy_vs_chance_reports_personas_at_chance():
    dataset, probabilities = _quality_inputs()
    table = dialogue_quality_table(dataset, probabilities)
    at_chance = target_accuracy_vs_chance(table, margin=0.05)
    assert at_chance["persona"].tolist() == ["openness_low"]
    assert at_chance["reason"].iloc[0].startswith("accuracy 0.500")
    # 3/4 correct is above 0.55 but not significant at small n
    strict = target_accuracy_vs_chance(table, margin=0.05, max_p_value=0.05)
    assert strict["persona"].tolist() == ["openness_high", "openness_low"]
    assert target_accuracy_vs_chance(table, margin=0.3)["persona"].tolist() == [
        "openness_high",
        "openness_low",
    ]
    with pytest.raises(ValueError, match="margin"):
        target_accuracy_vs_chance(table, margin=0.6)


def test_reaching_the_target_accuracy_exactly_passes():
    # dialogue_quality's target is accuracy >= 0.75: openness_high's 3/4 reaches it.
    table = dialogue_quality_table(*_quality_inputs())
    short = personas_short_of(table, 0.75)
    assert short["persona"].tolist() == ["openness_low"]
    assert short["reason"].iloc[0] == "accuracy 0.500 < 0.750"
    assert personas_short_of(table, 0.76)["persona"].tolist() == ["openness_high", "openness_low"]
    # 3/4 reaches 0.75 but is not significant at p < 0.01
    assert personas_short_of(table, 0.75, 0.01)["persona"].tolist() == [
        "openness_high",
        "openness_low",
    ]
    with pytest.raises(ValueError, match="min_accuracy"):
        personas_short_of(table, 0.5)


def test_persona_with_only_flagged_replies_counts_as_at_chance():
    dataset, probabilities = _quality_inputs()
    dataset.loc[dataset["persona"] == "openness_low", "empty"] = True
    table = dialogue_quality_table(dataset, probabilities)
    low = table.set_index("persona").loc["openness_low"]
    assert low["n_scored"] == 0 and np.isnan(low["target_accuracy"])
    at_chance = target_accuracy_vs_chance(table, margin=0.0)
    assert at_chance.set_index("persona").loc["openness_low", "reason"] == "no scored replies"


def test_quality_on_built_dataset_covers_every_persona():
    dataset = build_dataset(_replies(), _scenarios(), _openers(), _split())
    rng = np.random.default_rng(0)
    probabilities = pd.DataFrame(rng.uniform(size=(len(dataset), 5)), columns=list(TRAITS))
    probabilities["record_id"] = dataset["record_id"]
    table = dialogue_quality_table(dataset, probabilities)
    assert table["persona"].tolist() == [p.key for p in PERSONAS]
    assert table["n_replies"].sum() == len(dataset)
    # refusal and empty replies are not scored
    assert table["n_scored"].sum() == len(dataset) - 2
    assert table["refusal_rate"].sum() == pytest.approx(0.5)  # 1 of openness_low's 2
