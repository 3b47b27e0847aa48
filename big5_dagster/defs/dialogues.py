"""BIG5-CHAT dialogues: shared openers, DExperts replies per persona, the dataset, its quality."""

import dagster as dg
import pandas as pd

from big5_dagster.config import DialogueSettings, Settings, with_defaults
from big5_dagster.defs import artifacts, specs
from big5_dagster.defs.factory import Stage, versioned_asset
from big5_dagster.defs.tracking import Tracker, progress_logger
from big5_dagster.lib import prompts
from big5_dagster.lib.common.chunks import ChunkStore
from big5_dagster.lib.common.hashing import hash_dataframe, hash_json
from big5_dagster.lib.dialogues import cleaning, dataset, quality, refusals, replies
from big5_dagster.lib.engine.dexperts import DExpertsParams
from big5_dagster.lib.experts.decoding import expert_for_decoding
from big5_dagster.lib.report import figures, plots
from big5_dagster.lib.traits import PERSONAS, TRAITS
from big5_dagster.partitions import persona_of, persona_partitions
from big5_dagster.resources.artifacts import ArtifactStore
from big5_dagster.resources.model_backend import ModelBackend
from big5_dagster.resources.warehouse import Warehouse

# A persona partition reads the expert of its trait.
persona_to_trait = dg.StaticPartitionMapping(
    {trait: [p.key for p in PERSONAS if p.trait == trait] for trait in TRAITS}
)
QUALITY_COLUMNS = [
    "persona",
    "n_scored",
    "target_accuracy",
    "target_binom_p",
    "train_usable",
    "train_usable_filtered",
    "words_mean",
    "refusal_rate",
    "near_duplicate_rate",
]


def build(settings: Settings) -> Stage:
    DialogueConfig = with_defaults(DialogueSettings, settings.dialogues)

    @versioned_asset(
        settings,
        deps=["soda_scenarios"],
        group_name="dialogues",
        kinds={"pytorch", "parquet", "duckdb"},
        metadata={"warehouse_tables": ["scenario_openers"]},
    )
    def scenario_openers(
        context: dg.AssetExecutionContext,
        config: DialogueConfig,  # type: ignore[valid-type]
        store: ArtifactStore,
        warehouse: Warehouse,
        model: ModelBackend,
    ) -> dg.MaterializeResult:
        """PersonX's turn 0, written once per scenario by the base model alone and shared by
        all 10 personas (the original regenerated it per trait, so openers differed)."""
        tracker = Tracker(context, warehouse, store)
        scenarios = artifacts.read_scenarios(store)
        conversations = [prompts.opener_messages(row) for row in scenarios.to_dict("records")]
        sampling = specs.dialogue_sampling(config, config.opener_max_new_tokens, config.seed)
        results = model.generate(
            conversations,
            sampling,
            batch_size=config.batch_size,
            progress=progress_logger(context, "openers"),
        )
        openers = pd.DataFrame(
            {
                "scenario_id": scenarios.scenario_id,
                "raw_opener": [r.text for r in results],
                "opener": [
                    cleaning.clean_opener(r.text, x)
                    for r, x in zip(results, scenarios.person_x, strict=True)
                ],
                "n_new_tokens": [r.n_new_tokens for r in results],
                "finish_reason": [r.finish_reason for r in results],
            }
        )
        path = tracker.save_table(openers, artifacts.OPENERS, table="scenario_openers")
        n_empty = int((openers.opener.str.strip() == "").sum())
        if n_empty:
            context.log.warning(f"{n_empty} openers are empty after cleaning")
        return tracker.result(
            rows=len(openers),
            artifacts=[path],
            model_ids={
                "base": model.model_id(),
                "base_fingerprint": model.fingerprint(),
                "base_dtype": model.load().dtype,
            },
            seeds={"seed": config.seed},
            metadata={
                "empty_openers": n_empty,
                "truncated": int((openers.finish_reason == "length").sum()),
                "examples": dg.MetadataValue.md(
                    scenarios[["person_x", "person_y", "narrative"]]
                    .assign(opener=openers.opener)
                    .head(5)
                    .to_markdown(index=False)
                ),
            },
        )

    @versioned_asset(
        settings,
        partitions_def=persona_partitions,
        deps=[
            "soda_scenarios",
            "scenario_openers",
            dg.AssetDep("trait_experts", partition_mapping=persona_to_trait),
        ],
        group_name="dialogues",
        kinds={"pytorch", "parquet", "duckdb"},
        metadata={"warehouse_tables": ["big5_chat_replies"]},
    )
    def big5_chat_replies(
        context: dg.AssetExecutionContext,
        config: DialogueConfig,  # type: ignore[valid-type]
        store: ArtifactStore,
        warehouse: Warehouse,
        model: ModelBackend,
    ) -> dg.MaterializeResult:
        """PersonY's DExperts-steered replies for one persona (trait x level), one per scenario.

        Batches are written as they finish; an interrupted partition resumes from its finished
        batches and never duplicates a reply.
        """
        tracker = Tracker(context, warehouse, store)
        persona = persona_of(context)
        scenarios = artifacts.read_scenarios(store)
        openers = artifacts.read_openers(store).set_index("scenario_id")["opener"]
        record = artifacts.read_expert_record(store, persona.trait)
        loaded = model.load()
        params = DExpertsParams(
            formula=config.formula, alpha=config.alpha, warmup_tokens=config.warmup_tokens
        )
        # Chunks written under other settings, weights, openers or code are discarded.
        key = hash_json(
            {
                "config": context.op_config,
                "expert": record.data_version,
                "base": loaded.fingerprint,
                "openers": hash_dataframe(openers.reset_index()),
                "code": context.assets_def.code_versions_by_key[context.asset_key],
            }
        )
        chunks = ChunkStore(store.asset_dir("big5_chat_replies", persona.key), key)
        chunks.open()
        done = set(chunks.read().get("scenario_id", pd.Series(dtype=str)))
        batches = replies.reply_batches(scenarios.to_dict("records"), config.batch_size)
        todo = [(i, b) for i, b in enumerate(batches) if not {r["scenario_id"] for r in b} <= done]
        if len(todo) < len(batches):
            context.log.info(
                f"resuming: {len(batches) - len(todo)} of {len(batches)} batches already done"
            )
        report = progress_logger(context, f"{persona.key} replies")
        anti_level = persona.opposite.level
        with expert_for_decoding(loaded, record, persona, config.expert_path) as (
            decoder,
            expert,
            anti_expert,
            path_name,
        ):
            models = {
                "base_model": loaded.model_id,
                "expert_model": record.expert_id(persona.level),
                "anti_expert_model": record.expert_id(anti_level),
                "extra": {"expert_path": path_name},
            }
            for n_done, (index, batch) in enumerate(todo):
                sampling = specs.dialogue_sampling(
                    config, config.max_new_tokens, replies.batch_seed(config.seed, persona, index)
                )
                chunks.write(
                    replies.persona_reply_batch(
                        decoder,
                        loaded.tokenizer,
                        batch,
                        openers,
                        persona,
                        params,
                        sampling,
                        expert=expert,
                        anti_expert=anti_expert,
                        models=models,
                        expert_system_prompt=record.system_prompt,
                    )
                )
                report(n_done + 1, len(todo))

        table = chunks.read().sort_values("scenario_id", kind="stable").reset_index(drop=True)
        if table.scenario_id.duplicated().any():  # cannot happen by construction; never store it
            raise RuntimeError(f"duplicate replies in {chunks.dir}")
        path = tracker.save_table(
            table, artifacts.REPLIES, table="big5_chat_replies", partition_column="persona"
        )
        chunks.clear()
        words = table.reply.str.split().str.len()
        return tracker.result(
            rows=len(table),
            artifacts=[path],
            model_ids={
                "base": loaded.model_id,
                "base_fingerprint": loaded.fingerprint,
                "base_dtype": loaded.dtype,
                "expert": str(record.folder),
                "expert_data_version": record.data_version,
                "expert_path": path_name,
            },
            seeds={"seed": config.seed, "batch_seeds": "hash(seed, persona, batch index)"},
            metadata={
                "refusals": int(table.reply.map(refusals.is_refusal).sum()),
                "truncated": int((table.finish_reason == "length").sum()),
                "mean_words": float(words.mean()),
                "new_tokens": int(table.n_new_tokens.sum()),
                "examples": dg.MetadataValue.md(
                    table[["scenario_id", "reply"]].head(5).to_markdown(index=False)
                ),
            },
        )

    @versioned_asset(
        settings,
        deps=["big5_chat_replies", "soda_scenarios", "scenario_openers", "trait_classifier"],
        group_name="dialogues",
        kinds={"parquet", "duckdb"},
        metadata={"warehouse_tables": ["big5_chat_dataset"]},
    )
    def big5_chat_dataset(
        context: dg.AssetExecutionContext,
        config: DialogueConfig,  # type: ignore[valid-type]
        store: ArtifactStore,
        warehouse: Warehouse,
    ) -> dg.MaterializeResult:
        """BIG5-CHAT: every reply cleaned and flagged (refusal, empty, near-duplicate across
        personas, truncated; counted, never dropped), split by scenario (no scenario in both
        train and test), as parquet and JSONL with one record per reply. Each record also
        carries the trait classifier's reading of its own trait (target_p_high,
        reads_target), which the optional classifier filter of the training sets uses."""
        tracker = Tracker(context, warehouse, store)
        scenarios = artifacts.read_scenarios(store)
        split_map = dataset.split_by_scenario(
            scenarios.scenario_id.tolist(), config.test_fraction, config.split_seed
        )
        records = dataset.build_dataset(
            artifacts.read_replies(store),
            scenarios,
            artifacts.read_openers(store),
            split_map,
            near_duplicate_threshold=config.near_duplicate_threshold,
        )
        classifier = artifacts.load_trait_classifier(store)
        probabilities = classifier.predict_high_probability(records.reply.tolist())
        probabilities.index = records.index
        records = records.join(
            quality.target_readings(records, probabilities, classifier.thresholds())
        )
        parquet = tracker.save_table(records, artifacts.DATASET, table="big5_chat_dataset")
        jsonl = dataset.write_jsonl(records, parquet.parent / artifacts.DATASET_JSONL)
        counts = dataset.flag_counts(records)
        per_persona = (
            records.groupby("persona", sort=False)
            .agg(
                replies=("record_id", "size"),
                refusals=("refusal", "sum"),
                near_duplicates=("near_duplicate", "sum"),
                truncated=("truncated", "sum"),
                reads_target=("reads_target", "sum"),
                mean_words=("reply", lambda r: r.str.split().str.len().mean()),
            )
            .reset_index()
        )
        return tracker.result(
            rows=len(records),
            artifacts=[parquet, jsonl],
            seeds={"split_seed": config.split_seed},
            metadata={
                "flags": counts,
                "refusal_rate": counts["refusal"] / counts["total"],
                "near_duplicate_rate": counts["near_duplicate"] / counts["total"],
                "scenarios_train": sum(v == "train" for v in split_map.values()),
                "scenarios_test": sum(v == "test" for v in split_map.values()),
                "per_persona": dg.MetadataValue.md(per_persona.round(1).to_markdown(index=False)),
                "jsonl": dg.MetadataValue.path(str(jsonl)),
            },
        )

    @versioned_asset(
        settings,
        deps=["big5_chat_dataset", "trait_classifier"],
        group_name="dialogues",
        kinds={"duckdb"},
        metadata={"warehouse_tables": ["dialogue_quality"]},
        check_specs=[
            dg.AssetCheckSpec("target_accuracy_above_chance", asset="dialogue_quality"),
            dg.AssetCheckSpec("target_accuracy_reached", asset="dialogue_quality"),
        ],
    )
    def dialogue_quality(
        context: dg.AssetExecutionContext,
        config: DialogueConfig,  # type: ignore[valid-type]
        store: ArtifactStore,
        warehouse: Warehouse,
    ) -> dg.MaterializeResult:
        """Does each persona's reply carry its trait level? The classifier's accuracy on the
        target trait (chance 0.5, with a one-sided binomial test) and on the off-target traits,
        reply lengths, and refusal, near-duplicate and truncation rates."""
        tracker = Tracker(context, warehouse, store)
        records = artifacts.read_dataset(store)
        trait_model = artifacts.load_trait_classifier(store)
        probabilities = trait_model.predict_high_probability(records.reply.tolist())
        probabilities.index = records.index
        table = quality.dialogue_quality_table(
            records, probabilities, thresholds=trait_model.thresholds()
        )
        # What the training sets keep, without and with the classifier filter (never silent).
        by_persona = records.groupby("persona")
        table["train_usable"] = table.persona.map(
            by_persona.apply(lambda g: int(dataset.usable(g).sum()))
        )
        table["train_usable_filtered"] = table.persona.map(
            by_persona.apply(lambda g: int(dataset.usable(g, classifier_filter=True).sum()))
        )
        table["filter"] = config.filter
        path = tracker.save_table(table, "dialogue_quality.parquet", table="dialogue_quality")
        at_chance = quality.target_accuracy_vs_chance(table, config.chance_margin)
        short = quality.personas_short_of(
            table, config.quality_min_accuracy, config.quality_max_p_value
        )
        return tracker.result(
            rows=len(table),
            artifacts=[path],
            metadata={
                "quality": dg.MetadataValue.md(
                    table[QUALITY_COLUMNS].round(3).to_markdown(index=False)
                ),
                "target_accuracy_plot": dg.MetadataValue.md(
                    plots.markdown_image(
                        figures.dialogue_quality_figure(table), "target-trait accuracy per persona"
                    )
                ),
                "personas_above_chance": len(table) - len(at_chance),
                "personas_reaching_target": len(table) - len(short),
                "mean_target_accuracy": float(table.target_accuracy.mean()),
                "filter": config.filter,
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name="target_accuracy_above_chance",
                    passed=at_chance.empty,
                    severity=dg.AssetCheckSeverity.WARN,
                    description=(
                        "every persona's target-trait accuracy is above chance"
                        if at_chance.empty
                        else f"{len(at_chance)} of {len(table)} personas are at chance: "
                        + ", ".join(at_chance.persona)
                    ),
                    metadata={
                        "at_chance": dg.MetadataValue.md(
                            at_chance.round(3).to_markdown(index=False)
                        )
                    },
                ),
                dg.AssetCheckResult(
                    check_name="target_accuracy_reached",
                    passed=short.empty,
                    severity=dg.AssetCheckSeverity.WARN,
                    description=(
                        f"every persona reaches accuracy >= {config.quality_min_accuracy} with "
                        f"p < {config.quality_max_p_value}"
                        if short.empty
                        else f"{len(short)} of {len(table)} personas fall short: "
                        + ", ".join(short.persona)
                    ),
                    metadata={
                        "short": dg.MetadataValue.md(short.round(3).to_markdown(index=False))
                    },
                ),
            ],
        )

    return Stage([scenario_openers, big5_chat_replies, big5_chat_dataset, dialogue_quality])
