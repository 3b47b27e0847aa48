"""Packaged inventories, their validation, scoring, and the PsychoBench importer."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest

from big5_dagster.lib.common.package_data import load_json
from big5_dagster.lib.personality.inventory import (
    EXPECTED_KEYING,
    Inventory,
    InventoryError,
    inventory_from_dict,
    inventory_items_frame,
    inventory_to_dict,
    load_inventory,
    load_inventory_file,
    reverse_key,
    score_responses,
    validate_big_five_inventory,
)
from big5_dagster.lib.personality.psychobench import load_psychobench_questionnaire

# METHOD.md section 6, written out here rather than imported, so the test checks the data
# against the spec and not against the module's own constant.
METHOD_COUNTS = {
    "bfi44": {
        "items": {
            "extraversion": 8,
            "agreeableness": 9,
            "conscientiousness": 9,
            "neuroticism": 8,
            "openness": 10,
        },
        "reversed": {
            "extraversion": 3,
            "agreeableness": 4,
            "conscientiousness": 4,
            "neuroticism": 3,
            "openness": 2,
        },
        "total": (44, 16),
    },
    "ipip_neo_120": {
        "items": {
            t: 24
            for t in (
                "extraversion",
                "agreeableness",
                "conscientiousness",
                "neuroticism",
                "openness",
            )
        },
        "reversed": {
            "extraversion": 6,
            "agreeableness": 17,
            "conscientiousness": 13,
            "neuroticism": 7,
            "openness": 12,
        },
        "total": (120, 55),
    },
}
METHOD_NORMS = {
    "bfi44": {"extraversion": (3.25, 0.90), "agreeableness": (3.64, 0.72), "conscientiousness": (3.45, 0.73),
              "neuroticism": (3.32, 0.82), "openness": (3.92, 0.66), "n": 6076},
    "ipip_neo_120": {"extraversion": (3.41, 1.03), "agreeableness": (3.66, 1.02), "conscientiousness": (3.60, 0.99),
                     "neuroticism": (2.80, 1.03), "openness": (3.44, 1.06), "n": 619150},
}  # fmt: skip


def _raw_json(name: str) -> dict:
    return load_json("inventories", f"{name}.json")


@pytest.mark.parametrize("name", ["bfi44", "ipip_neo_120"])
def test_packaged_keying_counts_match_method(name: str) -> None:
    inv = load_inventory(name)
    spec = METHOD_COUNTS[name]
    items_per_trait = {t: sum(1 for i in inv.items if i.trait == t) for t in spec["items"]}
    reversed_per_trait = {
        t: sum(1 for i in inv.items if i.trait == t and i.reverse_keyed) for t in spec["items"]
    }
    assert items_per_trait == spec["items"]
    assert reversed_per_trait == spec["reversed"]
    assert (len(inv.items), sum(i.reverse_keyed for i in inv.items)) == spec["total"]
    assert {t: len(ids) for t, ids in inv.categories.items()} == spec["items"]
    # Published order: numbers 1..N, ids follow the numbers.
    assert [i.number for i in inv.items] == list(range(1, len(inv.items) + 1))
    assert inv.scale_min == 1 and inv.scale_max == 5 and sorted(inv.anchors) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("name", ["bfi44", "ipip_neo_120"])
def test_packaged_norms_match_method_and_provenance_recorded(name: str) -> None:
    inv = load_inventory(name)
    expected = METHOD_NORMS[name]
    for trait in METHOD_COUNTS[name]["items"]:
        (norm,) = inv.norms[trait]
        assert (norm.mean, norm.sd, norm.n) == (*expected[trait], expected["n"])
        assert norm.source
    assert inv.provenance["repository"].startswith("https://github.com/")
    assert inv.provenance["path"] and inv.provenance["commit"]


def test_bfi_published_keying_and_stem() -> None:
    inv = load_inventory("bfi44")
    reversed_numbers = sorted(i.number for i in inv.items if i.reverse_keyed)
    assert reversed_numbers == [2, 6, 8, 9, 12, 18, 21, 23, 24, 27, 31, 34, 35, 37, 41, 43]
    assert inv.item("bfi_01").text == "Is talkative." and inv.item("bfi_01").trait == "extraversion"
    assert inv.item("bfi_44").trait == "openness"
    assert inv.stem == "I see myself as someone who..."
    assert inv.anchors[1] == "Disagree strongly" and inv.anchors[5] == "Agree strongly"


def test_ipip_facets_have_four_items_each() -> None:
    inv = load_inventory("ipip_neo_120")
    per_facet: dict[tuple[str, str], int] = {}
    for item in inv.items:
        per_facet[(item.trait, item.facet)] = per_facet.get((item.trait, item.facet), 0) + 1
    assert len(per_facet) == 30 and set(per_facet.values()) == {4}
    assert inv.item("ipip_001").text == "Worry about things"
    assert inv.item("ipip_001").facet == "Anxiety" and inv.item("ipip_001").facet_code == "N1"
    assert inv.item("ipip_120").facet == "Cautiousness" and inv.item("ipip_120").reverse_keyed
    assert inv.anchors[1] == "Very Inaccurate" and inv.anchors[5] == "Very Accurate"


@pytest.mark.parametrize("name", ["bfi44", "ipip_neo_120"])
def test_keyed_extreme_respondent_scores_scale_ends(name: str) -> None:
    inv = load_inventory(name)
    high = {i.id: (1.0 if i.reverse_keyed else 5.0) for i in inv.items}
    low = {i.id: (5.0 if i.reverse_keyed else 1.0) for i in inv.items}
    for trait, result in score_responses(inv, high).items():
        assert result["mean"] == 5.0, trait
        assert result["n_missing"] == 0 and result["n_answered"] == result["n_items"]
    assert {t: r["mean"] for t, r in score_responses(inv, low).items()} == dict.fromkeys(
        inv.categories, 1.0
    )


def test_reverse_key_is_six_minus_x_on_five_point_scale() -> None:
    inv = load_inventory("bfi44")
    assert [reverse_key(x, inv) for x in (1, 2, 3, 4, 5)] == [5, 4, 3, 2, 1]
    assert reverse_key(2.5, inv) == 3.5
    with pytest.raises(InventoryError, match="outside the scale 1..5"):
        reverse_key(6, inv)


def test_unanswered_items_are_counted_not_imputed() -> None:
    inv = load_inventory("bfi44")
    extraversion = inv.categories["extraversion"]  # bfi_01 +, bfi_06 -, bfi_11 +, ...
    responses: dict[str, float | None] = {item_id: 4.0 for item_id in inv.item_ids}
    responses["bfi_01"] = None  # unparsable answer
    responses["bfi_06"] = math.nan  # failed generation
    del responses["bfi_11"]  # never asked
    scores = score_responses(inv, responses)
    e = scores["extraversion"]
    assert (e["n_items"], e["n_answered"], e["n_missing"]) == (8, 5, 3)
    remaining = [inv.item(i) for i in extraversion if i not in ("bfi_01", "bfi_06", "bfi_11")]
    expected = sum(2.0 if i.reverse_keyed else 4.0 for i in remaining) / len(remaining)
    assert e["mean"] == pytest.approx(expected)
    # Imputing a neutral 3 (the paper's defect) would give a different number.
    imputed = (sum(2.0 if i.reverse_keyed else 4.0 for i in remaining) + 3 * 3) / 8
    assert e["mean"] != pytest.approx(imputed)
    assert scores["openness"]["n_missing"] == 0

    nothing = score_responses(inv, {})
    assert nothing["neuroticism"] == {
        "mean": None, "score": None, "n_items": 8, "n_answered": 0, "n_missing": 8,
    }  # fmt: skip


def test_bad_responses_raise_naming_the_item() -> None:
    inv = load_inventory("bfi44")
    with pytest.raises(InventoryError, match="unknown items"):
        score_responses(inv, {"ipip_001": 3})
    with pytest.raises(InventoryError, match="'bfi_02'.*outside the scale"):
        score_responses(inv, {"bfi_02": 0})
    with pytest.raises(InventoryError, match="'bfi_03'.*not a number"):
        score_responses(inv, {"bfi_03": "4"})


def test_flipped_key_fails_validation_naming_the_trait() -> None:
    data = _raw_json("bfi44")
    corrupted = copy.deepcopy(data)
    item = next(i for i in corrupted["items"] if i["id"] == "bfi_06")  # reverse-keyed E item
    assert item["keyed"] == "-"
    item["keyed"] = "+"
    inv = inventory_from_dict(corrupted, "corrupted bfi44")
    with pytest.raises(InventoryError) as err:
        validate_big_five_inventory(inv, EXPECTED_KEYING["bfi44"])
    message = str(err.value)
    assert "'bfi44'" in message
    assert "extraversion: 2 reverse-keyed items found, expected 3" in message
    assert "agreeableness" not in message


def test_corrupted_file_fails_on_load_with_file_name(tmp_path: Path) -> None:
    data = _raw_json("ipip_neo_120")
    moved = next(i for i in data["items"] if i["id"] == "ipip_002")
    moved["trait"] = "openness"  # an E item filed under O
    path = tmp_path / "ipip_bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InventoryError) as err:
        load_inventory_file(path, EXPECTED_KEYING["ipip_neo_120"])
    message = str(err.value)
    assert str(path) in message
    assert "openness: 25 items found, expected 24" in message
    assert "extraversion: 23 items found, expected 24" in message


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (lambda d: d["items"][3].update(id="bfi_01"), "duplicate item id 'bfi_01'"),
        (lambda d: d["scale"]["anchors"].pop("3"), r"anchors must cover 1..5.*missing \[3\]"),
        (lambda d: d["items"][0].update(trait="honesty"), "unknown trait 'honesty'"),
        (lambda d: d["items"][0].update(keyed="R"), r"items\[0\] \(id 'bfi_01'\): field 'keyed'"),
        (lambda d: d["items"][5].pop("text"), r"items\[5\] \(id 'bfi_06'\): missing field 'text'"),
    ],
)
def test_structural_errors_are_named(mutate, pattern: str) -> None:
    data = _raw_json("bfi44")
    mutate(data)
    with pytest.raises(InventoryError, match=pattern):
        validate_big_five_inventory(
            inventory_from_dict(data, "bfi44 copy"), EXPECTED_KEYING["bfi44"]
        )


def test_unknown_packaged_inventory_lists_available() -> None:
    with pytest.raises(InventoryError, match=r"'neo_pi_r'.*\['bfi44', 'ipip_neo_120'\]"):
        load_inventory("neo_pi_r")


def test_items_frame_one_row_per_item() -> None:
    inv = load_inventory("ipip_neo_120")
    frame = inventory_items_frame(inv)
    assert len(frame) == 120 and frame["item_id"].is_unique
    assert list(frame.columns) == [
        "inventory", "item_id", "number", "text", "category", "facet", "facet_code", "keyed", "reverse_keyed",
    ]  # fmt: skip
    assert int(frame["reverse_keyed"].sum()) == 55
    assert (
        frame.groupby("category")["item_id"].count().to_dict()
        == METHOD_COUNTS["ipip_neo_120"]["items"]
    )
    assert set(frame["keyed"]) == {1, -1}


# ------------------------------------------------------------------ PsychoBench importer

# The BFI entry of CUHK-ARISE/PsychoBench questionnaires.json (commit 1b80e645), verbatim.
PSYCHOBENCH_BFI = {
    "name": "BFI",
    "questions": {
        "1": "Is talkative.", "2": "Tends to find fault with others.", "3": "Does a thorough job.",
        "4": "Is depressed, blue.", "5": "Is original, comes up with new ideas.", "6": "Is reserved.",
        "7": "Is helpful and unselfish with others.", "8": "Can be somewhat careless.",
        "9": "Is relaxed, handles stress well.", "10": "Is curious about many different things.",
        "11": "Is full of energy.", "12": "Starts quarrels with others.", "13": "Is a reliable worker.",
        "14": "Can be tense.", "15": "Is ingenious, a deep thinker.", "16": "Generates a lot of enthusiasm.",
        "17": "Has a forgiving nature.", "18": "Tends to be disorganized.", "19": "Worries a lot.",
        "20": "Has an active imagination.", "21": "Tends to be quiet.", "22": "Is generally trusting.",
        "23": "Tends to be lazy.", "24": "Is emotionally stable, not easily upset.", "25": "Is inventive.",
        "26": "Has an assertive personality.", "27": "Can be cold and aloof.",
        "28": "Perseveres until the task is finished.", "29": "Can be moody.",
        "30": "Values artistic, aesthetic experiences.", "31": "Is sometimes shy, inhibited.",
        "32": "Is considerate and kind to almost everyone.", "33": "Does things efficiently.",
        "34": "Remains calm in tense situations.", "35": "Prefers work that is routine.",
        "36": "Is outgoing, sociable.", "37": "Is sometimes rude to others.",
        "38": "Makes plans and follows through with them.", "39": "Gets nervous easily.",
        "40": "Likes to reflect, play with ideas.", "41": "Has few artistic interests.",
        "42": "Likes to cooperate with others.", "43": "Is easily distracted.",
        "44": "Is sophisticated in art, music, or literature.",
    },
    "inner_setting": "You are a helpful assistant who can only reply numbers from 1 to 5.",
    "prompt": "You can only reply numbers from 1 to 5 in the following statements. Here are a number of characteristics that may or may not apply to you. Please indicate the extent to which you agree or disagree with that statement. 1 denotes strongly disagree, 2 denotes a little disagree, 3 denotes neither agree nor disagree, 4 denotes little agree, 5 denotes strongly agree. Here are the statements:",
    "scale": 6,
    "reverse": [6, 21, 31, 2, 12, 27, 37, 8, 18, 23, 43, 9, 24, 34, 35, 41],
    "categories": [
        {"cat_name": "Extraversion", "cat_questions": [1, 6, 11, 16, 21, 26, 31, 36],
         "crowd": [{"crowd_sample_mean": 3.25, "crowd_sample_sd": 0.9, "crowd_sample_num": 6076}]},
        {"cat_name": "Agreeableness", "cat_questions": [2, 7, 12, 17, 22, 27, 32, 37, 42],
         "crowd": [{"crowd_sample_mean": 3.64, "crowd_sample_sd": 0.72, "crowd_sample_num": 6076}]},
        {"cat_name": "Conscientiousness", "cat_questions": [3, 8, 13, 18, 23, 28, 33, 38, 43],
         "crowd": [{"crowd_sample_mean": 3.45, "crowd_sample_sd": 0.73, "crowd_sample_num": 6076}]},
        {"cat_name": "Neuroticism", "cat_questions": [4, 9, 14, 19, 24, 29, 34, 39],
         "crowd": [{"crowd_sample_mean": 3.32, "crowd_sample_sd": 0.82, "crowd_sample_num": 6076}]},
        {"cat_name": "Openness", "cat_questions": [5, 10, 15, 20, 25, 30, 35, 40, 41, 44],
         "crowd": [{"crowd_sample_mean": 3.92, "crowd_sample_sd": 0.66, "crowd_sample_num": 6076}]},
    ],
}  # fmt: skip

# A small questionnaire in the same format: a 0..4 range (scale 4), a SUM category that
# leaves an item out, an item in two categories, and two crowd groups.
TOY = {
    "name": "TOY-Q",
    "questions": {"1": "I plan ahead.", "2": "I expect the worst.", "3": "I like people.", "4": "I am calm."},
    "inner_setting": "You are a helpful assistant who can only reply numbers from 0 to 4.",
    "prompt": "You can only reply numbers from 0 to 4 in the following statements.",
    "scale": 4,
    "reverse": [2],
    "categories": [
        {"cat_name": "Optimism", "compute_mode": "SUM", "cat_questions": [1, 2, 4],
         "crowd": [{"crowd_name": "Men", "crowd_sample_mean": 7.5, "crowd_sample_sd": 2.0, "crowd_sample_num": 50},
                   {"crowd_name": "Women", "crowd_sample_mean": 8.0, "crowd_sample_sd": 2.5, "crowd_sample_num": 60}]},
        {"cat_name": "Warmth", "cat_questions": [3, 4],
         "crowd": [{"crowd_sample_mean": 2.9, "crowd_sample_sd": 0.8, "crowd_sample_num": 100}]},
    ],
}  # fmt: skip


def _write_questionnaires(tmp_path: Path, entries: list) -> Path:
    path = tmp_path / "questionnaires.json"
    path.write_text(json.dumps(entries))
    return path


def test_psychobench_bfi_matches_packaged_bfi44(tmp_path: Path) -> None:
    path = _write_questionnaires(tmp_path, [TOY, PSYCHOBENCH_BFI])
    imported = load_psychobench_questionnaire(path, "BFI")
    packaged = load_inventory("bfi44")
    assert (imported.scale_min, imported.scale_max) == (1, 5)
    assert imported.provenance["answer_range_from"] == "inner_setting"
    assert list(imported.categories) == [
        "Extraversion", "Agreeableness", "Conscientiousness", "Neuroticism", "Openness",
    ]  # fmt: skip
    assert sorted(i.number for i in imported.items if i.reverse_keyed) == sorted(
        PSYCHOBENCH_BFI["reverse"]
    )
    for cat in PSYCHOBENCH_BFI["categories"]:
        name = cat["cat_name"]
        assert [imported.item(i).number for i in imported.categories[name]] == cat["cat_questions"]
        (norm,) = imported.norms[name]
        crowd = cat["crowd"][0]
        assert (norm.mean, norm.sd, norm.n) == (
            crowd["crowd_sample_mean"], crowd["crowd_sample_sd"], crowd["crowd_sample_num"],
        )  # fmt: skip
        assert imported.compute_mode(name) == "AVG"
        # The packaged BFI-44 agrees with PsychoBench on membership, keying and norms.
        trait = name.lower()
        assert [packaged.item(i).number for i in packaged.categories[trait]] == cat["cat_questions"]
        assert packaged.norms[trait][0].mean == norm.mean
    assert [i.text for i in imported.items] == [i.text for i in packaged.items]
    assert [i.keyed for i in imported.items] == [i.keyed for i in packaged.items]


def test_psychobench_scoring_follows_its_semantics(tmp_path: Path) -> None:
    path = _write_questionnaires(tmp_path, [PSYCHOBENCH_BFI])
    inv = load_psychobench_questionnaire(path, "BFI")
    answers = {n: (n * 7) % 5 + 1 for n in range(1, 45)}
    scores = score_responses(inv, {inv.items[n - 1].id: float(a) for n, a in answers.items()})
    # PsychoBench's utils.convert_data + analysis_results: scale - x for reverse items, mean.
    for cat in PSYCHOBENCH_BFI["categories"]:
        values = [
            PSYCHOBENCH_BFI["scale"] - answers[n] if n in PSYCHOBENCH_BFI["reverse"] else answers[n]
            for n in cat["cat_questions"]
        ]
        assert scores[cat["cat_name"]]["score"] == pytest.approx(sum(values) / len(values))


def test_psychobench_sum_mode_zero_based_range_and_groups(tmp_path: Path) -> None:
    path = _write_questionnaires(tmp_path, [PSYCHOBENCH_BFI, TOY])
    inv = load_psychobench_questionnaire(path, "TOY-Q")
    assert (inv.scale_min, inv.scale_max) == (0, 4)
    assert inv.compute_mode("Optimism") == "SUM" and inv.compute_mode("Warmth") == "AVG"
    assert [n.group for n in inv.norms["Optimism"]] == ["Men", "Women"]
    assert inv.item("toy_q_1").category == "Optimism"
    assert inv.item("toy_q_4").category is None  # in two categories
    assert inv.item("toy_q_3").category == "Warmth"
    assert inv.item("toy_q_2").reverse_keyed
    assert inventory_items_frame(inv)["category"].isna().sum() == 1

    full = score_responses(inv, {"toy_q_1": 3, "toy_q_2": 1, "toy_q_3": 4, "toy_q_4": 2})
    assert full["Optimism"]["score"] == 3 + (4 - 1) + 2
    assert full["Warmth"]["score"] == 3.0
    partial = score_responses(inv, {"toy_q_1": 3, "toy_q_2": None, "toy_q_3": 4, "toy_q_4": 2})
    # A partial sum is not on the crowd's metric: no score, the mean and the count are kept.
    assert partial["Optimism"]["score"] is None
    assert partial["Optimism"]["mean"] == 2.5 and partial["Optimism"]["n_missing"] == 1


def test_psychobench_unknown_name_lists_available(tmp_path: Path) -> None:
    path = _write_questionnaires(tmp_path, [PSYCHOBENCH_BFI, TOY])
    with pytest.raises(
        InventoryError, match=r"no questionnaire named 'EPQ-R'; available: \['BFI', 'TOY-Q'\]"
    ):
        load_psychobench_questionnaire(path, "EPQ-R")


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (lambda q: q.pop("scale"), "questionnaire 'TOY-Q': missing field 'scale'"),
        (lambda q: q.update(reverse=[9]), "field 'reverse' names 9"),
        (
            lambda q: q["categories"][0].update(compute_mode="MEDIAN"),
            r"\('Optimism'\): field 'compute_mode'",
        ),
        (
            lambda q: q["categories"][1]["crowd"][0].pop("crowd_sample_sd"),
            r"crowd\[0\]: missing field 'crowd_sample_sd'",
        ),
        (
            lambda q: q.update(scale=6),
            "field 'scale' is 6 but field 'inner_setting' states answers 0..4",
        ),
        (lambda q: q["categories"][1].update(cat_questions=[3, 7]), "'cat_questions' names 7"),
    ],
)
def test_psychobench_malformed_entries_name_file_and_field(
    tmp_path: Path, mutate, pattern: str
) -> None:
    entry = copy.deepcopy(TOY)
    mutate(entry)
    path = _write_questionnaires(tmp_path, [entry])
    with pytest.raises(InventoryError, match=pattern) as err:
        load_psychobench_questionnaire(path, "TOY-Q")
    assert str(path) in str(err.value)


def test_psychobench_file_that_is_not_a_list(tmp_path: Path) -> None:
    path = _write_questionnaires(tmp_path, TOY)  # type: ignore[arg-type]
    with pytest.raises(InventoryError, match="expected a JSON list of questionnaires"):
        load_psychobench_questionnaire(path, "TOY-Q")
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    with pytest.raises(InventoryError, match="broken.json: not valid JSON"):
        load_psychobench_questionnaire(broken, "TOY-Q")


def test_inventory_is_immutable() -> None:
    inv = load_inventory("bfi44")
    assert isinstance(inv, Inventory)
    with pytest.raises(AttributeError):
        inv.name = "other"  # type: ignore[misc]


def test_psychobench_current_layout_questionnaire_mode_and_crowd_keys(tmp_path):
    """PsychoBench's current questionnaires.json (commit d005a04) puts compute_mode on the
    questionnaire and writes crowd norms as {crowd_name, mean, std, n}."""
    entry = {
        "name": "Empathy",
        "questions": {"1": "Hard to see the other guy's view.", "2": "I imagine their view."},
        "inner_setting": "You can only reply numbers from 1 to 7 in every statement.",
        "prompt": "Rate yourself.",
        "scale": 8,
        "compute_mode": "SUM",
        "reverse": [1],
        "categories": [
            {
                "cat_name": "Overall",
                "cat_questions": [1, 2],
                "crowd": [{"crowd_name": "Crowd", "mean": 4.92, "std": 0.76, "n": 112}],
            }
        ],
    }
    path = tmp_path / "questionnaires.json"
    path.write_text(json.dumps([entry]))
    inv = load_psychobench_questionnaire(path, "Empathy")
    assert inv.compute_mode("Overall") == "SUM"
    (norm,) = inv.norms["Overall"]
    assert (norm.mean, norm.sd, norm.n, norm.group) == (4.92, 0.76, 112, "Crowd")
    assert (inv.scale_min, inv.scale_max) == (1, 7)
    assert [item.keyed for item in inv.items] == [-1, 1]
    # and the serialized form round-trips, categories and modes included
    assert inventory_from_dict(inventory_to_dict(inv), "roundtrip") == inv
