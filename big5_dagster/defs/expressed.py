"""Expressed personality: held-out evaluation scenarios, every method's replies to them rated
by the trait classifier, and self-report (inventories) set beside behaviour (replies)."""

import contextlib

import dagster as dg
import pandas as pd

from big5_dagster.config import ExpressedSettings, Settings, with_defaults
from big5_dagster.defs import artifacts
from big5_dagster.defs.evaluation import condition_model, condition_vector, persona_vectors_for
from big5_dagster.defs.factory import Stage, versioned_asset
from big5_dagster.defs.tracking import Tracker, progress_logger
from big5_dagster.lib import prompts
from big5_dagster.lib.corpora import scenario_source
from big5_dagster.lib.dialogues.cleaning import clean_opener
from big5_dagster.lib.engine.sampling import SamplingParams
from big5_dagster.lib.personality import expressed, self_report
from big5_dagster.lib.personality.conditions import by_model_change
from big5_dagster.lib.personality.methods import STEERING_METHODS
from big5_dagster.lib.report.plots import bar_chart, png_markdown
from big5_dagster.partitions import method_of, method_partitions
from big5_dagster.resources.artifacts import ArtifactStore
from big5_dagster.resources.model_backend import ModelBackend
from big5_dagster.resources.warehouse import Warehouse

EVALUATION_SCENARIOS = "evaluation_scenarios.parquet"
REPLIES_TABLE = "expressed_replies"
ACCURACY_SHOWN = ["method", "adapter_seed", "persona", "n", "target_accuracy", "binom_p"]


def build(settings: Settings) -> Stage:
    ExpressedConfig = with_defaults(ExpressedSettings, settings.expressed)

    @versioned_asset(
        settings,
        deps=["soda_scenarios"],
        group_name="evaluation",
        kinds={"pytorch", "parquet", "duckdb"},
        metadata={"warehouse_tables": ["evaluation_scenarios"]},
    )
    def evaluation_scenarios(
        context: dg.AssetExecutionContext,
        config: ExpressedConfig,  # type: ignore[valid-type]
        store: ArtifactStore,
        warehouse: Warehouse,
        model: ModelBackend,
    ) -> dg.MaterializeResult:
        """Scenarios no method saw in training (no id or narrative shared with soda_scenarios),
        each with PersonX's opening line written once by the base model and shared by every
        method and persona. tiny: the scenario generator's next scenarios; paper: SODA's test
        split."""
        tracker = Tracker(context, warehouse, store)
        scenarios, source = scenario_source.held_out_scenarios(
            artifacts.read_scenarios(store),
            config.source,
            n_scenarios=config.n_scenarios,
            seed=settings.scenarios.seed,
            hub_dataset=settings.scenarios.hub_dataset,
            hub_split=config.hub_split,
            local_path=config.local_path,
            cache_dir=str(store.root_path / "hf_cache"),
        )
        sampling = SamplingParams(
            max_new_tokens=settings.dialogues.opener_max_new_tokens,
            do_sample=settings.dialogues.do_sample,
            temperature=settings.dialogues.temperature,
            top_p=settings.dialogues.top_p,
            repetition_penalty=settings.dialogues.repetition_penalty,
            seed=config.seed,
        )
        results = model.generate(
            [prompts.opener_messages(row) for row in scenarios.to_dict("records")],
            sampling,
            batch_size=config.batch_size,
        )
        scenarios["raw_opener"] = [r.text for r in results]
        scenarios["opener"] = [
            clean_opener(r.text, x) for r, x in zip(results, scenarios.person_x, strict=True)
        ]
        empty = scenarios.opener.str.strip() == ""
        if empty.any():
            context.log.warning(f"{int(empty.sum())} openers are empty after cleaning: dropped")
        scenarios = scenarios[~empty].reset_index(drop=True)
        path = tracker.save_table(scenarios, EVALUATION_SCENARIOS, table="evaluation_scenarios")
        return tracker.result(
            rows=len(scenarios),
            artifacts=[path],
            model_ids={"base": model.model_id(), "base_fingerprint": model.fingerprint()},
            seeds={"scenario_seed": settings.scenarios.seed, "opener_seed": config.seed},
            metadata={
                "source": source,
                "empty_openers_dropped": int(empty.sum()),
                "examples": dg.MetadataValue.md(
                    scenarios[["scenario_id", "person_x", "opener"]]
                    .head(5)
                    .to_markdown(index=False)
                ),
            },
        )

    @versioned_asset(
        settings,
        partitions_def=method_partitions,
        deps=[
            "evaluation_scenarios",
            "trait_classifier",
            "big5_chat_dataset",
            "sft_adapter",
            "dpo_adapter",
            "persona_vectors",
        ],
        group_name="evaluation",
        kinds={"pytorch", "duckdb"},
        metadata={
            "warehouse_tables": [REPLIES_TABLE, "expressed_accuracy", "expressed_separation"]
        },
    )
    def expressed_personality(
        context: dg.AssetExecutionContext,
        config: ExpressedConfig,  # type: ignore[valid-type]
        store: ArtifactStore,
        warehouse: Warehouse,
        model: ModelBackend,
    ) -> dg.MaterializeResult:
        """What one method writes: its reply to every evaluation scenario under each of the 10
        personas (sft/dpo per adapter seed; base has no persona, so its one reply set is scored
        against every persona), rated by the trait classifier. Per persona: target-trait
        accuracy (binomial test) and mean P(high) with a CI; per trait: the high-low
        difference with a CI and the Spearman correlation of instructed level with the
        classifier's score. One warehouse row per reply with its provenance, cached by content
        key: a rerun generates only what changed."""
        tracker = Tracker(context, warehouse, store)
        method = method_of(context)
        scenarios = pd.read_parquet(
            artifacts.upstream_file(store, "evaluation_scenarios", EVALUATION_SCENARIOS)
        )
        conditions, adapter_paths = artifacts.method_conditions(
            store,
            method,
            config.n_demonstrations,
            settings.evaluation.seed,
            settings.dialogues.filter == "classifier",
            steering=(settings.steering.layer, settings.steering.coef),
        )
        vectors = persona_vectors_for(store, method)
        sampling = SamplingParams(
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
            repetition_penalty=config.repetition_penalty,
            seed=config.seed,
        )
        respondent = model.respondent()
        plan = expressed.plan_replies(respondent.fingerprint, conditions, scenarios, sampling)
        cached = pd.DataFrame()
        if warehouse.table_exists(REPLIES_TABLE):
            cached = warehouse.query(f"SELECT * FROM {REPLIES_TABLE} WHERE method = ?", [method])
            cached = cached[cached.cache_key.isin(plan.cache_key)][list(expressed.REPLY_COLUMNS)]
        person_y = scenarios.set_index("scenario_id").person_y.to_dict()
        cached_keys = set(cached.cache_key) if len(cached) else frozenset()
        if method in STEERING_METHODS:  # all personas' rows share batches, a vector a row
            added = {c.label: condition_vector(c, vectors) for c in conditions}
            (layer,) = {layer for layer, _ in added.values()}
            steering = (layer, {label: vector for label, (_, vector) in added.items()})
            runs = [(contextlib.nullcontext(respondent), conditions, steering)]
        else:
            runs = [
                (condition_model(respondent, group[0], adapter_paths, vectors), group, None)
                for group in by_model_change(conditions)
            ]
        report = progress_logger(context, f"{method} reply calls")
        fresh = []
        for model_change, group, steering in runs:
            with model_change as changed:
                fresh.append(
                    expressed.write_replies(
                        changed,
                        group,
                        plan,
                        sampling,
                        person_y,
                        batch_size=config.batch_size,
                        cached_keys=cached_keys,
                        progress=report,
                        steering=steering,
                    )
                )
        new = pd.concat(fresh, ignore_index=True)
        replies = pd.concat([cached, new], ignore_index=True) if len(cached) else new
        replies = replies.sort_values(["condition", "scenario_id"], kind="stable")
        classifier = artifacts.load_trait_classifier(store)
        replies = expressed.rated(
            replies, classifier.predict_high_probability(replies.reply.tolist())
        )
        accuracy = expressed.accuracy_table(replies)
        separation = expressed.separation_table(replies)
        path = tracker.save_table(
            replies, "replies.parquet", table=REPLIES_TABLE, partition_column="method"
        )
        warehouse.replace_rows("expressed_accuracy", accuracy, where={"method": method})
        if len(separation):
            warehouse.replace_rows("expressed_separation", separation, where={"method": method})
        png = bar_chart(
            accuracy.assign(seed=accuracy.adapter_seed.astype(str)),
            "persona",
            "target_accuracy",
            "seed",
            title=f"{method}: target-trait accuracy of its replies",
            ylabel="accuracy",
            reference=0.5,
            reference_label="chance",
        )
        return tracker.result(
            rows=len(replies),
            artifacts=[path],
            model_ids={
                "base": respondent.model_id,
                "base_fingerprint": respondent.fingerprint,
                "adapters": {str(s): str(p) for s, p in adapter_paths.items()},
            },
            seeds={"seed": config.seed, "row_seeds": "hash(seed, scenario_id)"},
            metadata={
                "conditions": len(conditions),
                "replies_computed": len(new),
                "replies_reused": len(cached),
                "personas_significant": int((accuracy.binom_p < 0.05).sum()),
                "mean_target_accuracy": float(accuracy.target_accuracy.mean()),
                "accuracy": dg.MetadataValue.md(
                    accuracy[ACCURACY_SHOWN].round(3).to_markdown(index=False)
                ),
                "separation": dg.MetadataValue.md(separation.round(3).to_markdown(index=False))
                if len(separation)
                else "base has no persona: no separation",
                "plot": dg.MetadataValue.md(png_markdown(png, "target accuracy per persona")),
                "examples": dg.MetadataValue.md(
                    replies.groupby("persona")
                    .head(1)[["persona", "reply"]]
                    .to_markdown(index=False)
                ),
            },
        )

    @versioned_asset(
        settings,
        deps=["expressed_personality", "inventory_scores"],
        group_name="evaluation",
        kinds={"duckdb"},
        metadata={"warehouse_tables": ["self_report_vs_behaviour"]},
    )
    def self_report_vs_behaviour(
        context: dg.AssetExecutionContext, store: ArtifactStore, warehouse: Warehouse
    ) -> dg.MaterializeResult:
        """Per method and trait: the inventory's high-low separation (self-report) beside the
        expressed one (what the model writes), whether they agree in sign, and a verdict:
        both move, it writes the trait but does not report it, it reports it but does not
        write it, or neither."""
        tracker = Tracker(context, warehouse, store)
        for table in ("inventory_separation", "expressed_separation"):
            if not warehouse.table_exists(table):
                raise FileNotFoundError(f"no {table} yet: materialize its asset first")
        table = self_report.self_report_vs_behaviour(
            warehouse.query("SELECT * FROM inventory_separation"),
            warehouse.query("SELECT * FROM expressed_separation"),
        )
        path = tracker.save_table(
            table, "self_report_vs_behaviour.parquet", table="self_report_vs_behaviour"
        )
        counts = table.groupby(["scorer", "verdict"]).size().rename("rows").reset_index()
        return tracker.result(
            rows=len(table),
            artifacts=[path],
            metadata={
                "verdicts": dg.MetadataValue.md(counts.to_markdown(index=False)),
                "table": dg.MetadataValue.md(table.round(3).to_markdown(index=False)),
            },
        )

    return Stage([evaluation_scenarios, expressed_personality, self_report_vs_behaviour])
