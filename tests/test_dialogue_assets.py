"""The BIG5-CHAT dataset as assets, end to end on the tiny random-weight model."""

import json
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest

from big5_dagster import paths
from big5_dagster.config import load_settings
from big5_dagster.definitions import build_definitions
from big5_dagster.lib.engine import dexperts
from big5_dagster.lib.personality.methods import METHODS, STEERING_METHODS
from big5_dagster.lib.traits import PERSONAS, TRAITS

N_SCENARIOS = 6
EXPRESSED = {"n_scenarios": 3, "max_new_tokens": 4, "batch_size": 4, "n_demonstrations": 2}
SMALL = {
    "psychgenerator_posts": {"n_posts": 600},
    "soda_scenarios": {"n_scenarios": N_SCENARIOS},
    "trait_experts": {
        "max_examples": 16,
        "max_length": 48,
        "gate_prefixes": 4,
        "gate_max_new_tokens": 4,
    },
    "dexperts_sweep": {"alphas": [0.0, 1.0], "n_scenarios": 2},
    "scenario_openers": {"opener_max_new_tokens": 6, "batch_size": 4},
    "big5_chat_replies": {"max_new_tokens": 5, "batch_size": 2},
    "sft_adapter": {"max_length": 96, "seeds": [1, 2], "save_steps": 2},
    "dpo_adapter": {"max_length": 96, "seeds": [1], "dpo_init": "sft", "max_dpo_pairs": 16},
    # Both inventories and both scorers (the paper profile's), unlike the tiny defaults: the
    # MTMM validity and the generate-and-parse answers are then built end to end too.
    "personality_inventories": {"inventories": ["bfi44", "ipip_neo_120"]},
    "inventory_responses": {
        "scorers": ["logprob", "generate"],
        "batch_size": 32,
        "max_new_tokens": 3,
        "n_demonstrations": 2,
        "option_orders": ["normal"],
        # The random-weight model puts about 5/49152 of its mass on the options: with the
        # default minimum every log-probability answer would be low_mass.
        "min_option_mass": 0.0,
    },
    "trait_correlations": {"bootstrap_samples": 20},
    "evaluation_scenarios": EXPRESSED,
    "expressed_personality": EXPRESSED,
    "reasoning_tasks": {"n_social": 2, "n_commonsense": 2, "n_arithmetic": 2, "n_shots": 1},
    "reasoning_results": {"max_gen_toks": 4, "limit": 2, "n_demonstrations": 2},
    "steering_sweep": {"sweep_layers": [0], "sweep_coefs": [1.0], "sweep_n_scenarios": 2},
    "persona_projections": {"monitor_n_scenarios": 2},
}


def run_config(*assets: str) -> dict:
    ops = {a: {"config": SMALL[a]} for a in assets if a in SMALL}
    if "trait_experts" in assets:  # the quality gate shares the experts' settings
        ops["trait_experts_expert_quality_gate"] = {"config": SMALL["trait_experts"]}
    return {"ops": ops}


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_backend):
    """Corpora, classifier, experts and openers, materialized once for this module."""
    root = tmp_path_factory.mktemp("dialogue_data")
    home = tmp_path_factory.mktemp("dialogue_home")
    settings = load_settings()
    # The tiny random model has 2 decoder layers: layer 0 is the one steering layer.
    # persona_projections rebuilds expressed_personality's conditions from the settings: 6
    # scenarios leave fewer than the default 10 demonstrations per persona.
    settings = settings.model_copy(
        update={
            "steering": settings.steering.model_copy(update={"layer": 0}),
            "expressed": settings.expressed.model_copy(update={"n_demonstrations": 2}),
        }
    )
    defs = build_definitions(settings, root, resources={"model": tiny_backend})
    instance = dg.DagsterInstance.ephemeral(tempdir=str(home))
    assets = list(defs.assets) + list(defs.asset_checks)

    def materialize(selection, partition=None, raise_on_error=True):
        return dg.materialize(
            assets,
            selection=selection,
            instance=instance,
            resources=defs.resources,
            partition_key=partition,
            run_config=run_config(*selection),
            raise_on_error=raise_on_error,
        )

    for name in ("psychgenerator_posts", "soda_scenarios", "trait_classifier", "scenario_openers"):
        materialize([name])
    gate = {}
    for trait in TRAITS:
        result = materialize(["trait_experts"], trait)
        (evaluation,) = result.get_asset_check_evaluations()
        gate[trait] = evaluation
    return {"root": root, "materialize": materialize, "defs": defs, "gate": gate}


def test_experts_are_trained_per_trait_with_a_quality_gate(built):
    root = built["root"]
    for trait in TRAITS:
        record = json.loads((root / "trait_experts" / trait / "expert.json").read_text())
        assert record["experts"] == {"high": "expert-high", "low": "expert-low"}
        assert record["system_prompt"] == ""  # recorded: every use prompts them alike
        for folder in set(record["experts"].values()):
            assert (root / "trait_experts" / trait / folder / "adapter_config.json").exists()
        evaluation = built["gate"][trait]
        assert evaluation.check_name == "expert_quality_gate"
        assert {"on_target_accuracy_high", "on_target_accuracy_low"} <= set(evaluation.metadata)
        assert evaluation.severity == dg.AssetCheckSeverity.WARN
    with duckdb.connect(str(paths.warehouse_path(root)), read_only=True) as con:
        gate = con.execute("SELECT * FROM expert_gate").df()
        completions = con.execute("SELECT count(*) FROM expert_gate_completions").fetchone()[0]
    assert len(gate) == 2 * len(TRAITS) and set(gate.requested_level) == {"high", "low"}
    assert (gate.n == 4).all() and completions == 2 * 4 * len(TRAITS)


def test_dexperts_sweep_runs_alpha_by_formula_with_fluency(built):
    result = built["materialize"](["dexperts_sweep"])
    root = built["root"]
    with duckdb.connect(str(paths.warehouse_path(root)), read_only=True) as con:
        summary = con.execute("SELECT * FROM dexperts_sweep").df()
        replies = con.execute("SELECT * FROM dexperts_sweep_replies").df()
    # alpha 0 once (plain), then each formula at alpha 1, for all 10 personas
    assert sorted(set(zip(summary.formula, summary.alpha, strict=True))) == [
        ("dexperts", 1.0),
        ("none", 0.0),
        ("paper", 1.0),
    ]
    assert len(summary) == 3 * len(PERSONAS) and (summary.n == 2).all()
    assert len(replies) == 3 * len(PERSONAS) * 2
    scored = replies[replies.reply_tokens > 0]
    assert (scored.perplexity > 1).all()
    (materialization,) = result.get_asset_materialization_events()
    plot = materialization.materialization.metadata["plot"].value
    assert plot.startswith("![") and "data:image/png;base64," in plot


def test_interrupted_persona_partition_resumes_without_duplicates(built, monkeypatch):
    real = dexperts.generate_dexperts
    calls = {"n": 0}

    def dies_on_second_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill")
        return real(*args, **kwargs)

    monkeypatch.setattr(dexperts, "generate_dexperts", dies_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        built["materialize"](["big5_chat_replies"], "agreeableness_low")
    partial = list((built["root"] / "big5_chat_replies" / "agreeableness_low").glob(".chunks-*/*"))
    assert len(partial) == 1  # the first batch survived the kill

    calls["n"] = 10  # no more failures; count the batches the rerun generates
    built["materialize"](["big5_chat_replies"], "agreeableness_low")
    assert calls["n"] == 10 + (N_SCENARIOS // 2) - 1  # only the missing batches ran
    replies = pd.read_parquet(
        built["root"] / "big5_chat_replies" / "agreeableness_low" / "replies.parquet"
    )
    assert sorted(replies.scenario_id) == sorted(set(replies.scenario_id))
    assert len(replies) == N_SCENARIOS
    with duckdb.connect(str(paths.warehouse_path(built["root"])), read_only=True) as con:
        n = con.execute(
            "SELECT count(*), count(DISTINCT scenario_id) FROM big5_chat_replies "
            "WHERE persona = 'agreeableness_low'"
        ).fetchone()
    assert n == (N_SCENARIOS, N_SCENARIOS)


@pytest.fixture(scope="module")
def with_dataset(built):
    for persona in PERSONAS:
        built["materialize"](["big5_chat_replies"], persona.key)
    built["quality"] = built["materialize"](["big5_chat_dataset", "dialogue_quality"])
    return built


def test_dataset_has_every_reply_and_no_scenario_in_two_splits(with_dataset):
    result = with_dataset["quality"]
    root = with_dataset["root"]
    dataset = pd.read_parquet(root / "big5_chat_dataset" / "all" / "big5_chat.parquet")
    assert len(dataset) == N_SCENARIOS * len(PERSONAS)
    assert (dataset.groupby("scenario_id")["split"].nunique() == 1).all()
    assert set(dataset.split) == {"train", "test"}
    # every persona of a scenario shares the one opener
    assert (dataset.groupby("scenario_id")["opener"].nunique() == 1).all()
    lines = (root / "big5_chat_dataset" / "all" / "big5_chat.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    assert len(lines) == len(dataset)
    assert {
        "scenario_id",
        "trait",
        "level",
        "narrative",
        "person_x",
        "person_y",
        "opener",
        "reply",
        "flags",
    } <= set(record)
    generation = json.loads(record["generation"])
    assert (generation["formula"], generation["alpha"]) == ("dexperts", 1.0)  # the tiny default

    quality = pd.read_parquet(root / "dialogue_quality" / "all" / "dialogue_quality.parquet")
    assert quality.persona.tolist() == [p.key for p in PERSONAS]
    assert (quality.train_usable_filtered <= quality.train_usable).all()
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert set(checks) == {"target_accuracy_above_chance", "target_accuracy_reached"}
    # 6 scenarios a persona cannot reach p < 0.01 (0.5 ** 6 > 0.01): the target check warns.
    reached = checks["target_accuracy_reached"]
    assert not reached.passed and reached.severity == dg.AssetCheckSeverity.WARN


@pytest.fixture(scope="module")
def with_adapters(with_dataset):
    result = with_dataset["materialize"](["sft_examples", "dpo_preference_pairs"])
    with_dataset["pairs_check"] = result.get_asset_check_evaluations()
    with_dataset["materialize"](["sft_adapter"])
    with_dataset["materialize"](["dpo_adapter"])
    return with_dataset


def test_training_sets_and_adapters_materialize(with_adapters):
    root = with_adapters["root"]
    (check,) = with_adapters["pairs_check"]
    assert check.check_name == "preference_pairs_are_valid" and check.passed
    examples = pd.read_parquet(root / "sft_examples" / "all" / "sft_examples.parquet")
    dataset = pd.read_parquet(root / "big5_chat_dataset" / "all" / "big5_chat.parquet")
    # the SFT splits refine the dataset's split: test stays test, validation comes from train
    merged = examples.merge(dataset[["record_id", "split"]], on="record_id", suffixes=("", "_ds"))
    assert (merged.split_ds == "test").eq(merged.split == "test").all()

    for asset, seeds in (("sft_adapter", ["1", "2"]), ("dpo_adapter", ["1"])):
        record = json.loads((root / asset / "all" / "adapters.json").read_text())
        assert sorted(record["seeds"]) == seeds
        for seed in seeds:
            assert (root / asset / "all" / f"seed-{seed}" / "adapter_config.json").exists()
        reports = json.loads((root / asset / "all" / "reports.json").read_text())
        assert all(r["steps"] >= 1 and r["loss_curve"] for r in reports)
    # different seeds give different adapters (the seed reaches the LoRA initialisation)
    sft = json.loads((root / "sft_adapter" / "all" / "adapters.json").read_text())["seeds"]
    assert sft["1"]["version"] != sft["2"]["version"]
    dpo_reports = json.loads((root / "dpo_adapter" / "all" / "reports.json").read_text())
    assert "rewards/accuracies" in dpo_reports[0]["metrics"]


def upstream_assets(warehouse: Path, asset: str) -> set[str]:
    """Every asset reachable upstream of ``asset``'s latest materialization in lineage."""
    with duckdb.connect(str(warehouse), read_only=True) as con:
        edges = con.execute(
            "SELECT m.asset, i.input_asset FROM lineage.materializations m "
            "JOIN lineage.inputs i USING (materialization_id)"
        ).fetchall()
    parents: dict[str, set[str]] = {}
    for child, parent in edges:
        parents.setdefault(child, set()).add(parent)
    seen, todo = set(), [asset]
    while todo:
        for parent in parents.get(todo.pop(), ()):
            if parent not in seen:
                seen.add(parent)
                todo.append(parent)
    return seen


def test_every_method_is_evaluated_and_reported_with_lineage(with_adapters):
    materialize, root = with_adapters["materialize"], with_adapters["root"]
    materialize(["personality_inventories", "reasoning_tasks"])
    materialize(["evaluation_scenarios", "persona_vectors"])
    for method in METHODS:
        materialize(["inventory_responses", "reasoning_results", "expressed_personality"], method)
    materialize(
        ["inventory_scores", "psychometric_reliability", "trait_correlations", "reasoning_by_trait"]
    )
    materialize(["self_report_vs_behaviour", "dexperts_sweep"])
    materialize(["steering_sweep", "persona_projections"])
    result = materialize(["big5_report"])
    warehouse = paths.warehouse_path(root)
    with duckdb.connect(str(warehouse), read_only=True) as con:
        scored = con.execute(
            "SELECT DISTINCT method FROM inventory_scores WHERE scorer = 'logprob'"
        ).fetchall()
        reasoned = con.execute("SELECT DISTINCT method FROM reasoning_results").fetchall()
        counts = con.execute(
            "SELECT method, count(DISTINCT persona) FROM inventory_answers GROUP BY method"
        ).fetchall()
        expressed = con.execute(
            "SELECT method, count(DISTINCT persona), count(*) FROM expressed_replies GROUP BY 1"
        ).fetchall()
        evaluation = con.execute("SELECT scenario_id FROM evaluation_scenarios").fetchall()
        training = con.execute("SELECT scenario_id FROM soda_scenarios").fetchall()
        accuracy = con.execute("SELECT * FROM expressed_accuracy").df()
        verdicts = con.execute("SELECT * FROM self_report_vs_behaviour").df()
    assert {m for (m,) in scored} == set(METHODS) == {m for (m,) in reasoned}
    # every method but base answers as each of the 10 personas
    assert dict(counts) == {m: (1 if m == "base" else 10) for m in METHODS}
    # ... and writes replies to held-out scenarios under each (sft: two adapter seeds)
    n_eval = EXPRESSED["n_scenarios"]
    per_method = {m: (p, n) for m, p, n in expressed}
    assert per_method["base"] == (1, n_eval) and per_method["prompt_description"] == (
        10,
        10 * n_eval,
    )
    assert per_method["sft"] == (10, 2 * 10 * n_eval)
    assert len(evaluation) == n_eval and not set(evaluation) & set(training)
    # base is read against every persona; each method reports all 10
    assert accuracy.groupby(["method", "adapter_seed"], dropna=False).size().eq(10).all()
    assert set(verdicts.method) == {
        "prompt_description",
        "prompt_demonstrations",
        "sft",
        "dpo",
        *STEERING_METHODS,
    }
    # steering: no instruction, and the vector version, layer and coef in every row
    with duckdb.connect(str(warehouse), read_only=True) as con:
        steered = con.execute(
            "SELECT DISTINCT method, adapter_version FROM inventory_answers "
            "WHERE method LIKE 'steering_%'"
        ).fetchall()
    assert sorted(m for m, _ in steered) == sorted(list(STEERING_METHODS) * 10)  # a vector each
    for method, version in steered:
        variant, _, persona, rest = version.split(":", 3)
        assert variant == STEERING_METHODS[method] and rest.startswith("layer0:coef")
        assert persona in {p.key for p in PERSONAS}
    assert "persona_vectors" in upstream_assets(warehouse, "inventory_scores")
    with duckdb.connect(str(warehouse), read_only=True) as con:
        sweep = con.execute("SELECT DISTINCT formula, alpha FROM steering_sweep").fetchall()
        monitored = con.execute(
            "SELECT method, count(*) FROM persona_projections GROUP BY 1"
        ).fetchall()
    # unsteered, grounded at the one sweep layer, prompted at the steering layer
    assert sorted(sweep) == [("grounded@L0", 1.0), ("none", 0.0), ("prompted@L0", 1.0)]
    # every condition's prompt on the first 2 evaluation scenarios (sft: two seeds)
    assert dict(monitored) == {
        m: 2 * (1 if m == "base" else 20 if m == "sft" else 10) for m in METHODS
    }

    # the numbers trace back through the adapters and the dataset to the corpora
    upstream = upstream_assets(warehouse, "inventory_scores")
    assert {"inventory_responses", "sft_adapter", "dpo_adapter", "big5_chat_dataset"} <= upstream
    assert {"psychgenerator_posts", "soda_scenarios", "personality_inventories"} <= upstream
    assert {"reasoning_tasks", "sft_adapter"} <= upstream_assets(warehouse, "reasoning_by_trait")

    (materialization,) = result.get_asset_materialization_events()
    metadata = materialization.materialization.metadata
    assert metadata["sections_missing"].value == 0
    assert "expert gate: experts" in metadata["signal_ledger"].value
    page = (root / "big5_report" / "all" / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') >= 10
    assert 'src="http' not in page and "<link" not in page  # self-contained
    sections = ["signal_ledger", "findings", "dataset", "dexperts_sweep", "expressed"]
    sections += ["self_report", "inventory_scores", "correlations", "reasoning", "lineage"]
    sections += ["steering"]
    for section in sections:
        assert f'id="{section}"' in page
    # the ledger opens, the findings follow, lineage closes
    assert (
        page.index('id="signal_ledger"') < page.index('id="findings"') < page.index('id="dataset"')
    )
    assert page.index('id="reasoning"') < page.index('id="lineage"')
    assert "incomplete" not in page
