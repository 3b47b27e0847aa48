"""Reasoning benchmarks through lm-evaluation-harness: local task sets, runs, by-trait analysis."""

from __future__ import annotations

import json
import math
import os
import random
import re
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from big5_dagster.lib.reasoning import analysis as R_analysis
from big5_dagster.lib.reasoning import harness as R_harness
from big5_dagster.lib.reasoning import items as R_items
from big5_dagster.lib.reasoning import task_set as R_task_set
from big5_dagster.lib.reasoning import tasks as R_tasks

SYSTEM = (
    "You are a helpful assistant with the following Big Five personality traits: Openness - high"
)


# --------------------------------------------------------------------------------------
# Generators: seeded, varied, correct by construction
# --------------------------------------------------------------------------------------


def test_social_items_are_seeded_and_correct_by_construction():
    items = R_items.generate_social_items(30, seed=5)
    assert items == R_items.generate_social_items(30, seed=5)
    assert items != R_items.generate_social_items(30, seed=6)
    assert len({(i["context"], i["question"]) for i in items}) == 30
    assert {i["question_type"] for i in items} == {"feel", "next", "react"}
    assert len({i["situation"] for i in items}) >= 20  # every situation before any repeats
    situations = {s.key: s for s in R_items.item_banks().situations}
    for item in items:
        choices, label = item["choices"], item["label"]
        assert len(choices) == 3 and len(set(choices)) == 3 and 0 <= label < 3
        situation = situations[item["situation"]]
        if item["question_type"] == "feel":
            assert choices[label] == situation.feel
            wrong_valence = {
                s.feel for s in R_items.item_banks().situations if s.valence != situation.valence
            }
            assert set(choices) - {situation.feel} <= wrong_valence
        else:
            # the right action is this situation's template filled in; distractors are
            # other situations' actions
            template = getattr(situation, item["question_type"])
            pattern = re.sub(r"\\\{\w+\\\}", ".+", re.escape(template))
            matches = [bool(re.fullmatch(pattern, c)) for c in choices]
            assert matches == [i == label for i in range(3)], (template, choices)
    assert [i["label"] for i in items].count(0) < 30  # the answer position is shuffled


def test_commonsense_items_have_one_right_answer_among_five():
    items = R_items.generate_commonsense_items(40, seed=1)
    assert items == R_items.generate_commonsense_items(40, seed=1)
    answers = {
        relation: dict(pairs) for relation, (_, pairs) in R_items.item_banks().relations.items()
    }
    for item in items:
        choices = item["choices"]
        assert len(choices) == 5 and len(set(choices)) == 5
        subjects = [s for s, a in answers[item["relation"]].items() if s in item["question"]]
        assert subjects, item["question"]
        subject = max(subjects, key=len)
        assert choices[item["label"]] == answers[item["relation"]][subject]
        others = set(answers[item["relation"]].values()) - {choices[item["label"]]}
        assert set(choices) - {choices[item["label"]]} <= others
    assert len({i["relation"] for i in items}) == len(R_items.item_banks().relations)


def test_arithmetic_solutions_compute_the_answer():
    items = R_items.generate_arithmetic_items(60, seed=3)
    assert items == R_items.generate_arithmetic_items(60, seed=3)
    step = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)\.")
    ops = {"+": int.__add__, "-": int.__sub__, "*": int.__mul__, "/": int.__floordiv__}
    for item in items:
        steps = step.findall(item["solution"])
        assert 1 <= len(steps) <= 2, item
        for a, op, b, c in steps:
            if op == "/":
                assert int(a) % int(b) == 0, item  # sharing divides evenly by construction
            assert ops[op](int(a), int(b)) == int(c), item
        assert int(steps[-1][3]) == item["answer"] > 0
        for a, _, b, _ in steps[:1]:  # the operands come from the question
            assert a in item["question"] and b in item["question"]
    assert len({i["kind"] for i in items}) >= 6


# --------------------------------------------------------------------------------------
# The task directory
# --------------------------------------------------------------------------------------


def test_write_local_tasks_writes_lm_eval_configs_and_a_manifest(tmp_path):
    target = tmp_path / "tasks"
    manifest = R_task_set.write_local_tasks(target, n_items=7, seed=2, n_shots=3)
    assert [t["name"] for t in manifest["tasks"]] == list(R_tasks.LOCAL_TASK_NAMES)
    by_name = {t["name"]: t for t in manifest["tasks"]}
    assert by_name["arithmetic_word"]["num_fewshot"] == 3
    assert by_name["arithmetic_word"]["n_fewshot_pool"] == 8
    assert by_name["social_mc"]["num_fewshot"] == by_name["commonsense_mc"]["num_fewshot"] == 0
    assert by_name["social_mc"]["output_type"] == "multiple_choice"
    assert by_name["social_mc"]["metrics"] == ["acc", "acc_norm"]
    assert by_name["arithmetic_word"]["filters"] == [R_tasks.STRICT_FILTER, R_tasks.FLEXIBLE_FILTER]
    assert manifest == R_task_set.load_manifest(target)

    for entry in manifest["tasks"]:
        config = yaml.safe_load((target / entry["yaml"]).read_text())
        assert config["task"] == entry["name"] and config["dataset_path"] == "json"
        for split, path in config["dataset_kwargs"]["data_files"].items():
            assert Path(path) == target.resolve() / entry["data_files"][split]
        rows = (target / entry["data_files"]["test"]).read_text().splitlines()
        assert len(rows) == entry["n_items"] == 7
    arithmetic = target / "arithmetic_word.fewshot.jsonl"
    fewshot = {json.loads(r)["question"] for r in arithmetic.read_text().splitlines()}
    test = {
        json.loads(r)["question"]
        for r in (target / "arithmetic_word.test.jsonl").read_text().splitlines()
    }
    assert not fewshot & test

    # Same inputs, same versions; a new seed changes the data and every version, and the
    # folder is replaced whole (no stale files from the previous write).
    again = R_task_set.write_local_tasks(target, n_items=7, seed=2, n_shots=3)
    assert [t["version"] for t in again["tasks"]] == [t["version"] for t in manifest["tasks"]]
    (target / "stale.txt").write_text("x")
    other = R_task_set.write_local_tasks(target, n_items=7, seed=9, n_shots=3)
    assert all(
        a["version"] != b["version"] for a, b in zip(other["tasks"], manifest["tasks"], strict=True)
    )
    assert not (target / "stale.txt").exists()
    assert not list(tmp_path.glob(".tasks.*"))

    with pytest.raises(R_tasks.ReasoningError, match="n_items"):
        R_task_set.write_local_tasks(target, n_items=0, seed=2, n_shots=3)


def test_a_moved_task_directory_is_reported(tmp_path):
    manifest = R_task_set.write_local_tasks(tmp_path / "a", n_items=2, seed=0, n_shots=1)
    (tmp_path / "a").rename(tmp_path / "b")
    with pytest.raises(R_tasks.ReasoningError, match=r"tasks\[0\] \(social_mc\).*does not exist"):
        R_task_set.benchmark_tasks(manifest)
    (tmp_path / "b" / "social_mc.test.jsonl").unlink()
    with pytest.raises(R_tasks.ReasoningError, match="manifest.json: tasks"):
        R_task_set.load_manifest(tmp_path / "b")


def test_strict_and_flexible_extraction_grade_through_lm_eval(tmp_path):
    """The arithmetic config's filters and metric, applied by lm_eval's own task object."""
    from lm_eval.api.instance import Instance
    from lm_eval.tasks import TaskManager

    R_task_set.write_local_tasks(tmp_path, n_items=3, seed=0, n_shots=2)
    with R_harness.hub_offline():
        manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
        task = manager.load(["arithmetic_word"])["tasks"]["arithmetic_word"]
    doc = task.test_docs()[0]
    n = doc["answer"]

    def grade(text: str) -> dict[str, float]:
        scores = {}
        for ensemble in task._filters:
            inst = Instance("generate_until", doc, ("", {}), 0, resps=[text])
            ensemble.apply([inst])
            scores[ensemble.name] = task.process_results(doc, inst.filtered_resps[ensemble.name])[
                "exact_match"
            ]
        return scores

    assert grade(f"2 + 3 = 5. The answer is {n}.") == {
        R_tasks.STRICT_FILTER: 1,
        R_tasks.FLEXIBLE_FILTER: 1,
    }
    assert grade(f"The answer is {n}. Then add 1000 more.") == {
        R_tasks.STRICT_FILTER: 1,
        R_tasks.FLEXIBLE_FILTER: 0,
    }
    assert grade(f"So we get {n}") == {R_tasks.STRICT_FILTER: 0, R_tasks.FLEXIBLE_FILTER: 1}
    assert grade(f"The answer is {n + 1}.") == {
        R_tasks.STRICT_FILTER: 0,
        R_tasks.FLEXIBLE_FILTER: 0,
    }


# --------------------------------------------------------------------------------------
# The paper's task list
# --------------------------------------------------------------------------------------


def test_paper_tasks_match_lm_eval_task_configs():
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    tasks = {t.name: t for t in R_tasks.paper_tasks()}
    assert list(tasks) == [
        "social_iqa", "commonsense_qa", "piqa", "mathqa", "mmlu", "gpqa_main_zeroshot",
        "gsm8k", "truthfulqa_mc2",
    ]  # fmt: skip
    assert {name: t.num_fewshot for name, t in tasks.items()} == {
        **{name: 0 for name in tasks},
        "gsm8k": 5,
    }
    assert tasks["gsm8k"].primary == (
        ("exact_match", R_tasks.STRICT_FILTER),
        ("exact_match", R_tasks.FLEXIBLE_FILTER),
    )
    assert sum(len(t.primary) for t in tasks.values()) == 9  # the paper's 9 benchmarks
    assert all(t.include_path is None and t.version is None for t in tasks.values())

    # Index only the folders that define these tasks (the full index takes ~20 s).
    root = Path(lm_eval.__file__).parent / "tasks"
    folders = ["siqa", "commonsense_qa", "piqa", "mathqa", "mmlu/default", "gpqa/zeroshot"]
    folders += ["gsm8k", "truthfulqa"]
    manager = TaskManager(include_path=[str(root / f) for f in folders], include_defaults=False)
    assert "mmlu" in manager.all_groups
    for name, task in tasks.items():
        entry = manager.task_index.get(name)
        assert entry is not None, name
        if task.is_group:
            continue
        config = load_yaml(entry.yaml_path, resolve_func=False, recursive=True)
        assert config["output_type"] == task.output_type, name
        assert {m["metric"] for m in config["metric_list"]} >= set(task.metrics), name
        filters = {f["name"] for f in config.get("filter_list", [])} or {R_tasks.NO_FILTER}
        assert filters == set(task.filters), name


# --------------------------------------------------------------------------------------
# Running lm_eval on the tiny random-weight model
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_loaded(tiny_model_dir):
    from big5_dagster.lib.engine.loading import load_model

    return load_model(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="module")
def local_tasks(tmp_path_factory):
    return R_task_set.write_local_tasks(
        tmp_path_factory.mktemp("reasoning_tasks"), n_items=4, seed=0, n_shots=2, max_gen_toks=8
    )


def _run(loaded, tasks, **overrides):
    kwargs = dict(
        system_instruction=SYSTEM, apply_chat_template=True, limit=None, batch_size=8, seed=1
    )
    return R_harness.run_reasoning(loaded.model, loaded.tokenizer, tasks, **{**kwargs, **overrides})


@pytest.fixture(scope="module")
def base_run(tiny_loaded, local_tasks):
    """One run of the local tasks, recording connection attempts and the caller's RNG."""
    attempts = []
    guarded = socket.socket.connect

    def record(self, address):
        attempts.append(address)
        return guarded(self, address)

    offline_before = os.environ.pop("HF_HUB_OFFLINE", None)
    socket.socket.connect = record
    random.seed(123)
    expected_next = random.random()
    random.seed(123)
    try:
        results, samples = _run(tiny_loaded, local_tasks)
        caller_rng_kept = random.random() == expected_next
        env_restored = "HF_HUB_OFFLINE" not in os.environ
    finally:
        socket.socket.connect = guarded
        if offline_before is not None:
            os.environ["HF_HUB_OFFLINE"] = offline_before
    return (
        results,
        samples,
        {
            "attempts": attempts,
            "caller_rng_kept": caller_rng_kept,
            "env_restored": env_restored,
        },
    )


def test_local_tasks_run_end_to_end_offline(local_tasks, base_run):
    results, samples, checks = base_run
    assert checks["caller_rng_kept"]  # lm_eval's global seeding was undone
    assert checks["env_restored"]  # offline only for the run
    assert not [a for a in checks["attempts"] if isinstance(a, tuple)], checks["attempts"]

    keys = set(zip(results["task"], results["metric"], results["filter"], strict=True))
    assert keys == {
        ("social_mc", "acc", "none"),
        ("social_mc", "acc_norm", "none"),
        ("commonsense_mc", "acc", "none"),
        ("commonsense_mc", "acc_norm", "none"),
        ("arithmetic_word", "exact_match", R_tasks.STRICT_FILTER),
        ("arithmetic_word", "exact_match", R_tasks.FLEXIBLE_FILTER),
    }
    assert (results["n"] == 4).all()
    assert results["stderr"].map(math.isfinite).all()
    assert results["value"].between(0, 1).all()
    assert dict(zip(results["task"], results["n_shot"], strict=False)) == {
        "social_mc": 0,
        "commonsense_mc": 0,
        "arithmetic_word": 2,
    }
    versions = {t["name"]: t["version"] for t in local_tasks["tasks"]}
    assert (results["task_version"] == results["task"].map(versions)).all()
    assert results["chat_template"].all()
    assert results["system_instruction_hash"].nunique() == 1
    assert results.loc[results["primary"], "metric"].tolist().count("acc") == 2

    # one sample row per doc and filter, with each metric, prompt and response
    assert samples.groupby("task").size().to_dict() == {
        "social_mc": 4,
        "commonsense_mc": 4,
        "arithmetic_word": 8,
    }
    assert samples["prompt"].str.contains(SYSTEM, regex=False).all()
    arithmetic = samples[samples["task"] == "arithmetic_word"]
    # 2 few-shot answers as assistant turns, the test question last
    assert arithmetic["prompt"].map(lambda p: p.count("The answer is")).eq(2).all()
    assert arithmetic["response"].map(lambda r: isinstance(r, str)).all()
    assert arithmetic["exact_match"].isin([0.0, 1.0]).all()
    multiple_choice = samples[samples["task"] != "arithmetic_word"]
    assert multiple_choice["acc"].notna().all() and multiple_choice["acc_norm"].notna().all()
    lls = multiple_choice["choice_loglikelihoods"].map(json.loads)
    assert (
        lls.map(len) == multiple_choice["task"].map({"social_mc": 3, "commonsense_mc": 5})
    ).all()
    # acc is lm_eval's argmax over the logged choice log-likelihoods vs the target
    argmax = lls.map(lambda v: int(np.argmax(v)))
    assert ((argmax == multiple_choice["target"].astype(int)) == multiple_choice["acc"].eq(1)).all()
    mean_acc = multiple_choice.groupby("task")["acc"].mean()
    reported = results[results["metric"] == "acc"].set_index("task")["value"]
    assert np.allclose(mean_acc.sort_index(), reported.sort_index())


def test_known_exact_scores_when_every_choice_ties(tiny_loaded, tmp_path):
    """All choices identical: lm_eval computes them in one forward pass, they tie exactly,
    and np.argmax picks choice 0, so acc = share of items whose gold index is 0."""
    labels = [0, 0, 0, 1, 2, 1]
    rows = [
        {"question": f"Item {i}: which one?", "choices": ["the same answer"] * 3, "label": label}
        for i, label in enumerate(labels)
    ]
    task = R_task_set.LocalTaskData(
        "tie_mc",
        R_task_set.multiple_choice_config("Question: {{question}}", n_choices=3),
        rows,
        primary=(("acc", R_tasks.NO_FILTER),),
    )
    manifest = R_task_set.write_task_set(tmp_path / "tie", [task])

    results, samples = _run(
        tiny_loaded, manifest, system_instruction=None, apply_chat_template=False
    )
    scores = results.set_index("metric")
    assert scores.loc["acc", "value"] == 0.5 and scores.loc["acc_norm", "value"] == 0.5
    assert scores.loc["acc", "stderr"] == pytest.approx(np.std([1, 1, 1, 0, 0, 0], ddof=1) / 6**0.5)
    assert not results["chat_template"].any() and results["system_instruction_hash"].isna().all()
    assert (samples["prediction"] == "0").all()
    assert not samples["prompt"].str.contains("<|im_start|>", regex=False).any()

    # A response cache answers a rerun without the model.
    cache = tmp_path / "cache" / "responses.sqlite"
    first, _ = _run(tiny_loaded, manifest, limit=4, request_cache=cache)

    def no_forward(*_):
        raise AssertionError("the model ran although every request was cached")

    handle = tiny_loaded.model.register_forward_pre_hook(no_forward)
    try:
        limited, limited_samples = _run(
            tiny_loaded, manifest, limit=4, log_samples=False, request_cache=cache
        )
    finally:
        handle.remove()
    pd.testing.assert_frame_equal(
        first.drop(columns="eval_seconds"), limited.drop(columns="eval_seconds")
    )
    scores = limited.set_index("metric")
    assert scores.loc["acc", "value"] == 0.75 and (limited["n"] == 4).all()
    assert scores.loc["acc", "stderr"] == pytest.approx(0.25)  # sd [1,1,1,0] = 0.5, / sqrt(4)
    assert limited_samples.empty


def test_letter_choices_cost_one_forward_pass_per_item(tiny_loaded, tmp_path):
    manifest = R_task_set.write_local_tasks(
        tmp_path, n_items=4, seed=0, n_shots=0, choice_format="letter", max_gen_toks=4
    )
    social = [t for t in R_task_set.benchmark_tasks(manifest) if t.name == "social_mc"]
    assert social[0].metrics == ("acc",)  # acc_norm would equal acc for 1-letter choices
    calls = []
    handle = tiny_loaded.model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        results, samples = _run(tiny_loaded, social, batch_size=4)
    finally:
        handle.remove()
    # 4 items x 3 letters = 12 requests, scored from 4 contexts: one batch of 4 rows
    assert len(calls) == 1
    assert results["metric"].tolist() == ["acc"] and results["n"].tolist() == [4]
    assert samples["prompt"].str.contains("\nA. .*\nB. .*\nC. .*\nAnswer:", regex=True).all()
    assert samples["choice_loglikelihoods"].map(lambda v: len(json.loads(v))).eq(3).all()


def test_an_adapter_attached_by_the_caller_is_evaluated(tiny_model_dir, local_tasks, base_run):
    from peft import LoraConfig, get_peft_model

    from big5_dagster.lib.engine.loading import load_model

    private = load_model(str(tiny_model_dir), device="cpu")
    # init_lora_weights=False: random B, so the adapter really changes the outputs
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(private.model, config)
    multiple_choice = [
        t for t in R_task_set.benchmark_tasks(local_tasks) if t.output_type == "multiple_choice"
    ]
    results, samples = R_harness.run_reasoning(
        peft_model,
        private.tokenizer,
        multiple_choice,
        system_instruction=SYSTEM,
        apply_chat_template=True,
        limit=2,
        batch_size=8,
        seed=1,
    )
    assert set(results["task"]) == {"social_mc", "commonsense_mc"}
    base_samples = base_run[1]
    key = ["task", "doc_id", "filter"]
    merged = samples.merge(base_samples, on=key, suffixes=("", "_base"))
    mc = merged[merged["choice_loglikelihoods"].notna()]
    assert len(mc) == 4  # 2 items of each multiple-choice task
    assert (mc["prompt"] == mc["prompt_base"]).all()  # same prompts ...
    assert (mc["choice_loglikelihoods"] != mc["choice_loglikelihoods_base"]).all()  # ... new model
    with peft_model.disable_adapter():
        _, again = R_harness.run_reasoning(
            peft_model,
            private.tokenizer,
            multiple_choice,
            system_instruction=SYSTEM,
            apply_chat_template=True,
            limit=2,
            batch_size=8,
            seed=1,
        )
    merged = again.merge(base_samples, on=key, suffixes=("", "_base"))
    mc = merged[merged["choice_loglikelihoods"].notna()]
    assert len(mc) == 4
    lls = mc["choice_loglikelihoods"].map(json.loads)
    base = mc["choice_loglikelihoods_base"].map(json.loads)
    assert all(np.allclose(a, b, atol=1e-4) for a, b in zip(lls, base, strict=True))


# --------------------------------------------------------------------------------------
# High versus low per trait
# --------------------------------------------------------------------------------------


def _condition_rows() -> pd.DataFrame:
    rows = []

    def add(method, persona, seed, task, value, stderr=0.1, metric="acc", n=50, filt="none"):
        rows.append(
            dict(
                method=method, persona=persona, adapter_seed=seed, task=task, metric=metric,
                filter=filt, value=value, stderr=stderr, n=n,
            )
        )  # fmt: skip

    add("base", None, None, "social", 0.5)
    add("base", "none", None, "gsm", 0.5)
    # prompt_description: no adapter seed; 2 benchmarks
    for trait, (h1, l1, h2, l2) in {
        "conscientiousness": (0.7, 0.5, 0.4, 0.3),  # high better on both
        "agreeableness": (0.6, 0.6, 0.2, 0.3),  # tie, then low better
        "extraversion": (0.4, 0.5, 0.3, 0.5),  # low better on both
        "neuroticism": (0.6, 0.5, 0.5, 0.4),  # high better on both: against the paper
        "openness": (0.5, 0.4, 0.5, 0.4),
    }.items():
        add("prompt_description", f"{trait}_high", None, "social", h1)
        add("prompt_description", f"{trait}_low", None, "social", l1)
        add(
            "prompt_description",
            f"{trait}_high",
            None,
            "gsm",
            h2,
            metric="exact_match",
            filt="strict-match",
        )
        add(
            "prompt_description",
            f"{trait}_low",
            None,
            "gsm",
            l2,
            metric="exact_match",
            filt="strict-match",
        )
    # sft: two adapter seeds
    for seed, (h, low) in {1: (0.8, 0.5), 2: (0.6, 0.5)}.items():
        add("sft", "conscientiousness_high", seed, "social", h, stderr=0.03)
        add("sft", "conscientiousness_low", seed, "social", low, stderr=0.04)
    return pd.DataFrame(rows)


def test_reasoning_by_trait_differences_and_intervals():
    table = R_analysis.reasoning_by_trait(_condition_rows())
    assert set(table["method"]) == {"prompt_description", "sft"}  # base has no persona
    one = table[
        (table["method"] == "prompt_description")
        & (table["trait"] == "conscientiousness")
        & (table["task"] == "social")
    ].iloc[0]
    assert one["diff"] == pytest.approx(0.2)
    assert one["se"] == pytest.approx(math.sqrt(0.1**2 + 0.1**2))
    assert one["ci_low"] == pytest.approx(0.2 - 1.959964 * math.sqrt(0.02), abs=1e-6)
    assert one["n_seeds"] == 1 and one["n_high"] == 50
    gsm = table[(table["task"] == "gsm") & (table["trait"] == "extraversion")].iloc[0]
    assert gsm["benchmark"] == "gsm:exact_match:strict-match" and gsm["diff"] == pytest.approx(-0.2)

    sft = table[table["method"] == "sft"].iloc[0]
    diffs = np.array([0.3, 0.1])
    assert sft["diff"] == pytest.approx(0.2) and sft["n_seeds"] == 2
    assert sft["se_seeds"] == pytest.approx(diffs.std(ddof=1) / math.sqrt(2))
    assert sft["se_items"] == pytest.approx(math.sqrt(0.03**2 + 0.04**2))
    assert sft["se"] == pytest.approx(math.hypot(sft["se_seeds"], sft["se_items"]))
    assert sft["n_high"] == 100

    openness = table[table["trait"] == "openness"]
    assert openness["preferred_level"].isna().all()
    assert openness["in_preferred_direction"].isna().all()


def _samples(correct: dict[tuple[str, str, int | None], list[int]], task: str = "social"):
    """Per-sample logs: (method, persona, seed) -> 0/1 per item of ``task``."""
    return pd.DataFrame(
        [
            dict(method=method, persona=persona, adapter_seed=seed, benchmark=task,
                 task=f"{task}_leaf", doc_id=doc, filter="none", acc=float(v), n_shot=0)
            for (method, persona, seed), values in correct.items()
            for doc, v in enumerate(values)
        ]
    )  # fmt: skip


def test_reasoning_differences_are_paired_over_the_items():
    """The same 10 items under both personas: high is right exactly where low is, plus two
    more items. Paired, the difference 0.2 has the SE of the per-item differences; unpaired
    (the two runs' stderrs) it would be much wider."""
    low = [1, 0, 1, 1, 0, 0, 1, 0, 1, 0]
    high = [1, 1, 1, 1, 0, 1, 1, 0, 1, 0]
    samples = _samples(
        {
            ("prompt_description", "conscientiousness_high", None): high,
            ("prompt_description", "conscientiousness_low", None): low,
        }
    )
    rows = _condition_rows()
    table = R_analysis.reasoning_by_trait(rows, samples)
    one = table[
        (table["method"] == "prompt_description")
        & (table["trait"] == "conscientiousness")
        & (table["task"] == "social")
    ].iloc[0]
    d = np.array(high) - np.array(low)
    assert one["pairing"] == "paired_items" and one["n_items"] == 10
    assert one["diff"] == pytest.approx(0.2)
    assert one["se_items"] == pytest.approx(d.std(ddof=1) / math.sqrt(10))
    assert one["se"] == pytest.approx(one["se_items"]) and one["se"] < math.sqrt(0.02)
    assert one["ci_low"] == pytest.approx(0.2 - 1.959964 * one["se"], abs=1e-6)
    # A benchmark without per-sample values keeps the unpaired interval.
    gsm = table[(table["task"] == "gsm") & (table["trait"] == "conscientiousness")].iloc[0]
    assert gsm["pairing"] == "unpaired" and gsm["se"] == pytest.approx(math.sqrt(0.02))


def test_paired_reasoning_differences_across_adapter_seeds():
    seed_rows = {
        ("sft", "conscientiousness_high", 1): [1, 1, 1, 1, 0, 1, 1, 0],
        ("sft", "conscientiousness_low", 1): [1, 0, 1, 1, 0, 0, 1, 0],
        ("sft", "conscientiousness_high", 2): [1, 0, 1, 1, 0, 0, 1, 1],
        ("sft", "conscientiousness_low", 2): [1, 0, 1, 1, 0, 0, 1, 0],
    }
    table = R_analysis.reasoning_by_trait(_condition_rows(), _samples(seed_rows))
    sft = table[table["method"] == "sft"].iloc[0]
    d1 = (
        np.array(seed_rows[("sft", "conscientiousness_high", 1)])
        - seed_rows[("sft", "conscientiousness_low", 1)]
    )
    d2 = (
        np.array(seed_rows[("sft", "conscientiousness_high", 2)])
        - seed_rows[("sft", "conscientiousness_low", 2)]
    )
    per_seed = np.array([d1.mean(), d2.mean()])
    item_means = (d1 + d2) / 2
    assert sft["pairing"] == "paired_items" and sft["n_seeds"] == 2 and sft["n_items"] == 8
    assert sft["diff"] == pytest.approx(per_seed.mean())
    assert sft["se_seeds"] == pytest.approx(per_seed.std(ddof=1) / math.sqrt(2))
    assert sft["se_items"] == pytest.approx(item_means.std(ddof=1) / math.sqrt(8))
    assert sft["se"] == pytest.approx(math.hypot(sft["se_seeds"], sft["se_items"]))


def test_direction_count_follows_the_paper():
    counts = R_analysis.trait_direction_counts(R_analysis.reasoning_by_trait(_condition_rows()))
    prompt = counts[counts["method"] == "prompt_description"].set_index("trait")
    assert prompt.loc[
        "conscientiousness", ["n_benchmarks", "n_in_preferred_direction"]
    ].tolist() == [2, 2]
    assert prompt.loc["agreeableness", ["n_in_preferred_direction", "n_ties"]].tolist() == [0, 1]
    assert prompt.loc["extraversion", "n_in_preferred_direction"] == 2  # low E preferred
    assert prompt.loc["neuroticism", "n_in_preferred_direction"] == 0  # low N preferred
    assert prompt.loc["extraversion", "preferred_level"] == "low"
    assert (prompt["n_significant"] == 0).all()  # |diff| <= 0.2 with se 0.14
    sft = counts[counts["method"] == "sft"].set_index("trait")
    assert sft.loc["conscientiousness", ["n_benchmarks", "n_in_preferred_direction"]].tolist() == [
        1,
        1,
    ]
    assert sft.loc["agreeableness", "n_benchmarks"] == 0
    assert "openness" not in set(counts["trait"])


def test_reasoning_by_trait_rejects_bad_tables():
    rows = _condition_rows()
    with pytest.raises(R_tasks.ReasoningError, match=r"missing column\(s\) \['stderr'\]"):
        R_analysis.reasoning_by_trait(rows.drop(columns="stderr"))
    bad = rows.copy()
    bad.loc[3, "persona"] = "openness_medium"
    with pytest.raises(R_tasks.ReasoningError, match="row 3: field 'persona'"):
        R_analysis.reasoning_by_trait(bad)
    with pytest.raises(R_tasks.ReasoningError, match="more than one row for method='sft'"):
        R_analysis.reasoning_by_trait(pd.concat([rows, rows.tail(1)], ignore_index=True))
    bad = rows.copy().astype({"value": object})
    bad.loc[2, "value"] = "high"
    with pytest.raises(R_tasks.ReasoningError, match="row 2: field 'value' is not numeric"):
        R_analysis.reasoning_by_trait(bad)
