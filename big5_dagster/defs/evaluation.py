"""Personality evaluation: inventories administered to every method and persona, scored
honestly, with reliability and trait intercorrelations beside human data (METHOD.md 6)."""

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import dagster as dg
import pandas as pd

from big5_dagster.config import EvaluationSettings, Settings, with_defaults
from big5_dagster.defs import artifacts
from big5_dagster.defs.factory import Stage, versioned_asset
from big5_dagster.defs.tracking import Tracker, progress_logger
from big5_dagster.lib.engine.adapters import with_adapter
from big5_dagster.lib.engine.steering import PersonaVectors, steered
from big5_dagster.lib.personality import analysis, answers, column_docs, human_reference
from big5_dagster.lib.personality.administration import prompt_template_hash
from big5_dagster.lib.personality.conditions import Condition, by_model_change
from big5_dagster.lib.personality.methods import METHODS, STEERING_METHODS
from big5_dagster.lib.report import figures
from big5_dagster.lib.traits import Persona
from big5_dagster.partitions import method_of, method_partitions
from big5_dagster.resources.artifacts import ArtifactStore
from big5_dagster.resources.model_backend import ModelBackend
from big5_dagster.resources.warehouse import Warehouse

if TYPE_CHECKING:
    import torch

ANSWERS_TABLE = artifacts.ANSWERS_TABLE
SEPARATION_SHOWN = [
    "method",
    "inventory",
    "target_trait",
    "unit",
    "mean_high",
    "mean_low",
    "difference",
    "diff_ci_low",
    "diff_ci_high",
    "cohens_d",
]
D_CAPTION = (
    "difference: high minus low on the scale (paired over the units). cohens_d is that "
    "difference over the SD across the units (decoding noise for runs, item spread for "
    "items, seed spread for adapter seeds): not a person-level SD, not comparable to human "
    "effect sizes."
)


def table_schema(docs: column_docs.ColumnDocs) -> dg.TableSchema:
    """Column docs as a Dagster table schema (shown in the UI's Columns tab)."""
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name, type=kind, description=text) for name, (kind, text) in docs.items()
        ]
    )


def adapter_name(method: str, seed: int | None) -> str | None:
    """The name an sft/dpo condition's adapter is attached under (None: no adapter)."""
    return None if seed is None else f"{method}-seed{seed}"


@contextlib.contextmanager
def condition_model(
    respondent: Any,
    condition: Condition,
    adapter_paths: Mapping[int, str],
    vectors: PersonaVectors | None,
) -> Iterator[Any]:
    """The model as ``condition`` (and every condition of its by_model_change group) needs it:
    its adapter attached, or its persona's vector added (steering), or as it is; undone after."""
    if condition.steering is None:
        seed = condition.adapter_seed
        name, path = adapter_name(condition.method, seed), adapter_paths.get(seed)
        with with_adapter(respondent, name, path) as model:
            yield model
        return
    layer, vector = condition_vector(condition, vectors)
    with steered(respondent, layer, vector) as model:
        yield model


def condition_vector(
    condition: Condition, vectors: PersonaVectors | None
) -> tuple[int, "torch.Tensor"]:
    """(layer, vector) a steering condition adds: its persona's direction, sign from the
    level, scaled by its coef."""
    if vectors is None or condition.steering is None:
        raise ValueError(f"{condition.label}: steering needs a steering condition and vectors")
    layer, coef, _ = condition.steering
    persona = Persona.parse(condition.persona)
    vector = vectors.steering_vector(
        STEERING_METHODS[condition.method], persona.trait, persona.level, layer, coef
    )
    return layer, vector


def persona_vectors_for(store: ArtifactStore, method: str) -> PersonaVectors | None:
    """The persona vectors a steering method adds (None for the other methods)."""
    return artifacts.read_persona_vectors(store) if method in STEERING_METHODS else None


def build(settings: Settings) -> Stage:
    EvaluationConfig = with_defaults(EvaluationSettings, settings.evaluation)

    @versioned_asset(
        settings,
        partitions_def=method_partitions,
        deps=[
            "personality_inventories",
            "big5_chat_dataset",
            "sft_adapter",
            "dpo_adapter",
            "persona_vectors",
        ],
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
        """Every answer of one method (all 10 personas; sft/dpo per adapter seed) to the
        inventories, by option log-probability (one answer per prompt: it is deterministic) and
        by generate-and-parse (one per run), in both option orders; one warehouse row per
        answer with its provenance and status (parse failures, low option mass). Answers are
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
            steering=(settings.steering.layer, settings.steering.coef),
        )
        vectors = persona_vectors_for(store, method)
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
        for group in by_model_change(conditions):
            with condition_model(respondent, group[0], adapter_paths, vectors) as changed:
                fresh.append(
                    answers.administer(
                        changed,
                        group,
                        inventories,
                        **common,
                        batch_size=config.batch_size,
                        cached_keys=set(cached.cache_key) if len(cached) else frozenset(),
                        min_option_mass=config.min_option_mass,
                        progress=report,
                    )
                )
        new = pd.concat(fresh, ignore_index=True)
        if len(cached):  # stored rows, read with this run's minimum option mass
            new = pd.concat([cached[list(new.columns)], new], ignore_index=True)
        table = answers.sorted_answers(answers.apply_min_option_mass(new, config.min_option_mass))
        path = tracker.save_table(
            table,
            "answers.parquet",
            table=ANSWERS_TABLE,
            partition_column="method",
            version_of=table.drop(columns=["scorer_settings"], errors="ignore"),
        )
        quality = answers.answer_quality(table, by=("scorer",))
        return tracker.result(
            rows=len(table),
            artifacts=[path],
            model_ids={
                "base": respondent.model_id,
                "base_fingerprint": respondent.fingerprint,
                "base_dtype": respondent.dtype,
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
        metadata={
            "warehouse_tables": ["inventory_scores", "inventory_separation"],
            "dagster/column_schema": table_schema(column_docs.INVENTORY_SCORES),
            "inventory_separation columns": dg.MetadataValue.table_schema(
                table_schema(column_docs.INVENTORY_SEPARATION)
            ),
        },
    )
    def inventory_scores(
        context: dg.AssetExecutionContext,
        config: EvaluationConfig,  # type: ignore[valid-type]
        store: ArtifactStore,
        warehouse: Warehouse,
    ) -> dg.MaterializeResult:
        """Per method, persona, inventory, trait and scorer: the mean with a 95% CI over the
        independent units (items for log-probability answers, runs for sampled ones, adapter
        seeds for sft/dpo), beside the counts of parse failures, low-mass answers and scores
        missing for too few answered items; and per method the high-minus-low separation of
        each trait (raw difference, paired over the units, and a d scaled by the units' SD)
        with the drift of the off-target traits."""
        tracker = Tracker(context, warehouse, store)
        rows = artifacts.read_answers(warehouse)
        tables = analysis.trait_tables(
            rows, artifacts.read_inventories(store), config.min_answered_share
        )
        summary = analysis.trait_means(tables)
        norms = warehouse.query(
            "SELECT inventory, category AS trait, mean AS human_mean, sd AS human_sd "
            "FROM personality_inventory_norms"
        )
        summary = summary.merge(norms, on=["inventory", "trait"], how="left")
        separation = analysis.trait_separation(tables)
        path = tracker.save_table(summary, "scores.parquet", table="inventory_scores")
        tracker.save_table(
            separation, "separation.parquet", table="inventory_separation", versioned=False
        )
        target = separation[separation.is_target & (separation.scorer == "logprob")]
        methods = sorted(rows.method.unique())
        failures = (
            summary.groupby(["scorer", "method"])[["n_failed", "n_low_mass", "n_below_min_share"]]
            .sum()
            .join(
                summary.groupby(["scorer", "method"])[
                    ["parse_failure_rate", "low_mass_rate"]
                ].mean()
            )
            .round(3)
            .reset_index()
        )
        return tracker.result(
            rows=len(summary),
            artifacts=[path],
            metadata={
                "methods_present": ", ".join(methods),
                "methods_missing": ", ".join(m for m in METHODS if m not in methods),
                "scores_beside_norms": dg.MetadataValue.md(
                    figures.markdown_gallery(
                        figures.primary(figures.inventory_score_figures(summary)),
                        "trait scores beside human norms",
                    )
                ),
                "separation_logprob": dg.MetadataValue.md(
                    target[SEPARATION_SHOWN].round(3).to_markdown(index=False) + "\n\n" + D_CAPTION
                ),
                "answer_failures": dg.MetadataValue.md(failures.to_markdown(index=False)),
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
                        index=["scorer", "inventory", "method"],
                        columns="trait",
                        values="alpha",
                        dropna=False,
                    )
                    .round(2)
                    .reset_index()
                    .to_markdown(index=False, missingval="n/e")
                ),
                "alpha_not_estimable": int(reliability.alpha.isna().sum()),
                "alpha_plot": dg.MetadataValue.md(
                    figures.markdown_gallery(
                        figures.primary(figures.reliability_figures(reliability)),
                        "Cronbach's alpha",
                    )
                ),
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
                "mtmm_validity",
            ],
            "trait_correlation_distance columns": dg.MetadataValue.table_schema(
                table_schema(column_docs.TRAIT_CORRELATION_DISTANCE)
            ),
            "mtmm_validity columns": dg.MetadataValue.table_schema(
                table_schema(column_docs.MTMM_VALIDITY)
            ),
        },
    )
    def trait_correlations(
        context: dg.AssetExecutionContext,
        config: EvaluationConfig,  # type: ignore[valid-type]
        store: ArtifactStore,
        warehouse: Warehouse,
    ) -> dg.MaterializeResult:
        """The paper's 10-persona trait correlation matrix per method, inventory and scorer;
        its Frobenius distance from a published human matrix, bias-corrected, with a
        bootstrap interval over the independent units; and the multitrait-multimethod
        validity (convergent r per trait, mean discriminant r, with intervals) of each pair of
        inventories per method."""
        tracker = Tracker(context, warehouse, store)
        trait = analysis.trait_tables(
            artifacts.read_answers(warehouse),
            artifacts.read_inventories(store),
            config.min_answered_share,
        )
        tables = analysis.trait_correlation_tables(
            trait.units,
            human_reference.human_trait_correlations(),
            config.bootstrap_samples,
            config.seed,
        )
        for skipped in tables.skipped:
            context.log.warning(skipped)
        path = tracker.save_table(
            tables.distances,
            "distance.parquet",
            table="trait_correlation_distance",
            versioned=False,
        )
        if len(tables.mtmm):
            tracker.save_table(tables.mtmm, "mtmm.parquet", table="mtmm_validity", versioned=False)
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
                "heatmaps": dg.MetadataValue.md(
                    figures.markdown_gallery(
                        figures.primary(
                            figures.correlation_figures(
                                tables.matrices, human_reference.human_trait_correlations()
                            )
                        ),
                        "trait correlations, human beside each method",
                    )
                ),
            },
        )

    return Stage(
        [inventory_responses, inventory_scores, psychometric_reliability, trait_correlations]
    )
