"""Personality evaluation: inventories administered to every method and persona, scored
honestly, with reliability and trait intercorrelations beside human data (METHOD.md 6)."""

import dagster as dg
import pandas as pd

from big5_dagster.config import EvaluationSettings, Settings, with_defaults
from big5_dagster.defs import artifacts
from big5_dagster.defs.factory import Stage, versioned_asset
from big5_dagster.defs.tracking import Tracker, progress_logger
from big5_dagster.lib.engine.adapters import with_adapter
from big5_dagster.lib.personality import analysis, answers, human_reference, scores
from big5_dagster.lib.personality.administration import prompt_template_hash
from big5_dagster.lib.personality.conditions import by_adapter
from big5_dagster.lib.personality.methods import METHODS
from big5_dagster.partitions import method_of, method_partitions
from big5_dagster.resources.artifacts import ArtifactStore
from big5_dagster.resources.model_backend import ModelBackend
from big5_dagster.resources.warehouse import Warehouse

ANSWERS_TABLE = artifacts.ANSWERS_TABLE
SEPARATION_SHOWN = [
    "method",
    "inventory",
    "target_trait",
    "mean_high",
    "mean_low",
    "difference",
    "cohens_d",
]


def adapter_name(method: str, seed: int | None) -> str | None:
    """The name an sft/dpo condition's adapter is attached under (None: no adapter)."""
    return None if seed is None else f"{method}-seed{seed}"


def build(settings: Settings) -> Stage:
    EvaluationConfig = with_defaults(EvaluationSettings, settings.evaluation)

    @versioned_asset(
        settings,
        partitions_def=method_partitions,
        deps=["personality_inventories", "big5_chat_dataset", "sft_adapter", "dpo_adapter"],
        group_name="evaluation",
        kinds={"pytorch", "duckdb"},
        metadata={"warehouse_tables": [ANSWERS_TABLE]},
    )
    def inventory_responses(
        context: dg.AssetExecutionContext,
        config: EvaluationConfig,  # type: ignore[valid-type]
        store: ArtifactStore,
        warehouse: Warehouse,
        model: ModelBackend,
    ) -> dg.MaterializeResult:
        """Every answer of one method (all 10 personas; sft/dpo per adapter seed) to BFI-44 and
        IPIP-NEO-120, by option log-probability and by generate-and-parse, in both option orders
        with seeded item orders; one warehouse row per answer with its provenance. Answers are
        cached by content key: a rerun computes only what changed."""
        tracker = Tracker(context, warehouse, store)
        method = method_of(context)
        inventories = artifacts.read_inventories(store)
        respondent = model.respondent()
        conditions, adapter_paths = artifacts.method_conditions(
            store,
            method,
            config.n_demonstrations,
            config.seed,
            settings.dialogues.filter == "classifier",
        )
        common = dict(
            n_runs=config.n_runs,
            seed=config.seed,
            scorers=config.scorers,
            generation=answers.GenerationSettings(
                temperature=config.temperature, max_new_tokens=config.max_new_tokens
            ),
            orders=config.option_orders,
        )
        plan = answers.plan_answers(respondent.fingerprint, conditions, inventories, **common)
        cached = pd.DataFrame()
        if warehouse.table_exists(ANSWERS_TABLE):
            cached = warehouse.query(f"SELECT * FROM {ANSWERS_TABLE} WHERE method = ?", [method])
            cached = cached[cached.cache_key.isin(plan.cache_key)]
        context.log.info(
            f"{method}: {len(conditions)} conditions, {len(plan)} answers planned, "
            f"{len(cached)} cached"
        )
        fresh = []
        report = progress_logger(context, f"{method} answers")
        for seed, group in by_adapter(conditions).items():
            name, path = adapter_name(method, seed), adapter_paths.get(seed)
            with with_adapter(respondent, name, path) as condition_model:
                fresh.append(
                    answers.administer(
                        condition_model,
                        group,
                        inventories,
                        **common,
                        batch_size=config.batch_size,
                        cached_keys=set(cached.cache_key) if len(cached) else frozenset(),
                        progress=report,
                    )
                )
        new = pd.concat(fresh, ignore_index=True)
        table = answers.sorted_answers(
            pd.concat([cached, new], ignore_index=True) if len(cached) else new
        )
        path = tracker.save_table(
            table,
            "answers.parquet",
            table=ANSWERS_TABLE,
            partition_column="method",
            version_of=table.drop(columns=["scorer_settings"], errors="ignore"),
        )
        quality = answers.scorer_quality(table)
        return tracker.result(
            rows=len(table),
            artifacts=[path],
            model_ids={
                "base": respondent.model_id,
                "base_fingerprint": respondent.fingerprint,
                "backend": model.backend,
                "adapters": {str(s): p for s, p in adapter_paths.items()},
            },
            seeds={"seed": config.seed, "n_runs": config.n_runs},
            metadata={
                "conditions": len(conditions),
                "answers_computed": len(new),
                "answers_reused": len(cached),
                "answer_quality": dg.MetadataValue.md(quality.round(3).to_markdown(index=False)),
                "prompt_template_hash": prompt_template_hash(),
            },
        )

    @versioned_asset(
        settings,
        deps=["inventory_responses", "personality_inventories"],
        group_name="evaluation",
        kinds={"duckdb"},
        metadata={"warehouse_tables": ["inventory_scores", "inventory_separation"]},
    )
    def inventory_scores(
        context: dg.AssetExecutionContext, store: ArtifactStore, warehouse: Warehouse
    ) -> dg.MaterializeResult:
        """Per method, persona, inventory, trait and scorer: mean, SD, 95% CI, n and the
        parse-failure rate; and per method the high-minus-low separation of each trait
        (difference and Cohen's d) with the drift of the off-target traits."""
        tracker = Tracker(context, warehouse, store)
        rows = artifacts.read_answers(warehouse)
        respondents = analysis.respondent_scores(rows, artifacts.read_inventories(store))
        summary = scores.summarize_scores(
            respondents, by=("scorer", "method", "persona", "inventory", "trait")
        )
        norms = warehouse.query(
            "SELECT inventory, category AS trait, mean AS human_mean, sd AS human_sd "
            "FROM personality_inventory_norms"
        )
        summary = summary.merge(norms, on=["inventory", "trait"], how="left")
        separation = scores.separation(respondents, by=("scorer", "method", "inventory"))
        path = tracker.save_table(summary, "scores.parquet", table="inventory_scores")
        tracker.save_table(
            separation, "separation.parquet", table="inventory_separation", versioned=False
        )
        target = separation[separation.is_target]
        shown = (
            target[target.scorer == "logprob"][SEPARATION_SHOWN]
            if "target_trait" in target
            else target
        )
        methods = sorted(rows.method.unique())
        return tracker.result(
            rows=len(summary),
            artifacts=[path],
            metadata={
                "methods_present": ", ".join(methods),
                "methods_missing": ", ".join(m for m in METHODS if m not in methods),
                "separation_logprob": dg.MetadataValue.md(shown.round(3).to_markdown(index=False)),
                "parse_failure_rate": dg.MetadataValue.md(
                    summary.groupby(["scorer", "method"])
                    .parse_failure_rate.mean()
                    .round(3)
                    .reset_index()
                    .to_markdown(index=False)
                ),
            },
        )

    @versioned_asset(
        settings,
        deps=["inventory_responses", "personality_inventories"],
        group_name="evaluation",
        kinds={"duckdb"},
        metadata={"warehouse_tables": ["psychometric_reliability"]},
    )
    def psychometric_reliability(
        context: dg.AssetExecutionContext, store: ArtifactStore, warehouse: Warehouse
    ) -> dg.MaterializeResult:
        """Cronbach's alpha and McDonald's omega (one factor) per trait and condition (method,
        scorer, inventory), over the condition's respondents (personas x runs x option orders)."""
        tracker = Tracker(context, warehouse, store)
        reliability = analysis.reliability_by_condition(
            artifacts.read_answers(warehouse), artifacts.read_inventories(store)
        )
        path = tracker.save_table(
            reliability, "reliability.parquet", table="psychometric_reliability"
        )
        return tracker.result(
            rows=len(reliability),
            artifacts=[path],
            metadata={
                "reliability": dg.MetadataValue.md(
                    reliability.pivot_table(
                        index=["scorer", "inventory", "method"], columns="trait", values="alpha"
                    )
                    .round(2)
                    .reset_index()
                    .to_markdown(index=False)
                )
            },
        )

    @versioned_asset(
        settings,
        deps=["inventory_responses", "personality_inventories"],
        group_name="evaluation",
        kinds={"duckdb"},
        metadata={
            "warehouse_tables": [
                "trait_correlations",
                "trait_correlation_distance",
                "convergent_validity",
            ]
        },
    )
    def trait_correlations(
        context: dg.AssetExecutionContext,
        config: EvaluationConfig,  # type: ignore[valid-type]
        store: ArtifactStore,
        warehouse: Warehouse,
    ) -> dg.MaterializeResult:
        """The paper's 10-persona trait correlation matrix per method, inventory and scorer,
        its Frobenius distance from a published human matrix with a bootstrap CI, and the
        BFI-IPIP convergent correlation of each trait across personas."""
        tracker = Tracker(context, warehouse, store)
        respondents = analysis.respondent_scores(
            artifacts.read_answers(warehouse), artifacts.read_inventories(store)
        )
        tables = analysis.trait_correlation_tables(
            respondents,
            human_reference.human_trait_correlations(),
            config.bootstrap_samples,
            config.seed,
        )
        for skipped in tables.skipped:
            context.log.warning(skipped)
        if len(tables.convergent):
            warehouse.replace_table("convergent_validity", tables.convergent)
        path = tracker.save_table(
            tables.distances,
            "distance.parquet",
            table="trait_correlation_distance",
            versioned=False,
        )
        tracker.save_table(
            tables.matrices,
            "matrices.parquet",
            table="trait_correlations",
            # Missing correlations hash alike whatever their NA type.
            version_of=tables.matrices.fillna(float("nan")),
        )
        return tracker.result(
            rows=len(tables.matrices),
            artifacts=[path],
            seeds={"bootstrap_seed": config.seed},
            metadata={
                "distance_to_human": dg.MetadataValue.md(
                    tables.distances.drop(columns=["reference"]).round(3).to_markdown(index=False)
                ),
                "human_reference": human_reference.HUMAN_TRAIT_CORRELATIONS_SOURCE.citation,
            },
        )

    return Stage(
        [inventory_responses, inventory_scores, psychometric_reliability, trait_correlations]
    )
