"""Reasoning benchmarks through lm-evaluation-harness for every method and persona, and the
trait-direction analysis (METHOD.md section 6, Reasoning)."""

import json

import dagster as dg
import pandas as pd

from big5_dagster.config import ReasoningSettings, Settings, with_defaults
from big5_dagster.defs import artifacts
from big5_dagster.defs.evaluation import condition_model, persona_vectors_for
from big5_dagster.defs.factory import Stage, versioned_asset
from big5_dagster.defs.tracking import Tracker
from big5_dagster.lib.common.files import write_json
from big5_dagster.lib.common.hashing import hash_json
from big5_dagster.lib.personality.administration import system_text
from big5_dagster.lib.personality.conditions import by_model_change
from big5_dagster.lib.reasoning import analysis, harness, task_set, tasks
from big5_dagster.lib.report import figures, plots
from big5_dagster.partitions import method_of, method_partitions
from big5_dagster.resources.artifacts import ArtifactStore
from big5_dagster.resources.model_backend import ModelBackend
from big5_dagster.resources.warehouse import Warehouse


def task_list(store: ArtifactStore):
    """What reasoning_tasks wrote: a local task set's manifest, or the paper's task list."""
    path = artifacts.upstream_file(store, "reasoning_tasks", artifacts.TASK_MANIFEST)
    manifest = json.loads(path.read_text())
    return tasks.paper_tasks() if manifest.get("kind") == "paper" else manifest


def build(settings: Settings) -> Stage:
    ReasoningConfig = with_defaults(ReasoningSettings, settings.reasoning)

    @versioned_asset(settings, group_name="reasoning", kinds={"json"})
    def reasoning_tasks(
        context: dg.AssetExecutionContext,
        config: ReasoningConfig,  # type: ignore[valid-type]
        store: ArtifactStore,
        warehouse: Warehouse,
    ) -> dg.MaterializeResult:
        """The benchmark tasks. tiny: the project's own offline task sets (social and
        commonsense multiple choice, arithmetic word problems with verifiable answers) as
        lm-eval local JSON tasks; paper: the paper's lm-eval task list."""
        tracker = Tracker(context, warehouse, store)
        folder = store.asset_dir("reasoning_tasks")
        if config.tasks == "local":
            manifest = task_set.write_local_tasks(
                folder / "tasks",
                {
                    "social_mc": config.n_social,
                    "commonsense_mc": config.n_commonsense,
                    "arithmetic_word": config.n_arithmetic,
                },
                seed=config.seed,
                n_shots=config.n_shots,
                max_gen_toks=config.max_gen_toks,
                choice_format=config.choice_format,
            )
            benchmarks = task_set.benchmark_tasks(manifest)
        else:
            benchmarks = tasks.paper_tasks()
            manifest = {"kind": "paper", "tasks": [t.__dict__ for t in benchmarks]}
        write_json(manifest, folder / artifacts.TASK_MANIFEST)
        table = pd.DataFrame(
            [
                {
                    "task": t.name,
                    "num_fewshot": t.num_fewshot,
                    "output_type": t.output_type,
                    "version": t.version,
                }
                for t in benchmarks
            ]
        )
        return tracker.result(
            data_version=hash_json(manifest),
            rows=len(table),
            artifacts=[folder],
            seeds={"seed": config.seed},
            metadata={"tasks": dg.MetadataValue.md(table.to_markdown(index=False))},
        )

    @versioned_asset(
        settings,
        partitions_def=method_partitions,
        deps=[
            "reasoning_tasks",
            "big5_chat_dataset",
            "sft_adapter",
            "dpo_adapter",
            "persona_vectors",
        ],
        group_name="reasoning",
        kinds={"pytorch", "duckdb"},
        metadata={"warehouse_tables": ["reasoning_results", "reasoning_samples"]},
    )
    def reasoning_results(
        context: dg.AssetExecutionContext,
        config: ReasoningConfig,  # type: ignore[valid-type]
        store: ArtifactStore,
        warehouse: Warehouse,
        model: ModelBackend,
    ) -> dg.MaterializeResult:
        """lm-eval metrics with standard errors, and per-sample logs, for one method and all
        its personas (sft/dpo: per adapter seed), the persona as the system instruction with
        the chat template."""
        tracker = Tracker(context, warehouse, store)
        method = method_of(context)
        benchmarks = task_list(store)
        loaded = model.load()
        conditions, adapter_paths = artifacts.method_conditions(
            store,
            method,
            config.n_demonstrations,
            config.seed,
            settings.dialogues.filter == "classifier",
            steering=(settings.steering.layer, settings.steering.coef),
        )
        vectors = persona_vectors_for(store, method)
        results, samples = [], []
        for group in by_model_change(conditions):
            with condition_model(loaded, group[0], adapter_paths, vectors) as changed:
                for n, condition in enumerate(group):
                    context.log.info(f"{condition.label}: lm-eval ({n + 1}/{len(group)})")
                    result, sample = harness.run_reasoning(
                        changed.model,
                        changed.tokenizer,
                        benchmarks,
                        system_instruction=system_text(condition.system, condition.demonstrations),
                        apply_chat_template=config.apply_chat_template,
                        limit=config.limit,
                        batch_size=config.batch_size,
                        seed=config.seed,
                    )
                    provenance = {
                        "condition": condition.label,
                        "method": method,
                        "persona": condition.persona,
                        "adapter_seed": condition.adapter_seed,
                        "adapter_version": condition.model_version,
                        "model_fingerprint": loaded.fingerprint,
                    }
                    results.append(result.assign(**provenance))
                    samples.append(sample.assign(**provenance))
        result_table = pd.concat(results, ignore_index=True)
        sample_table = pd.concat(samples, ignore_index=True)
        path = tracker.save_table(
            result_table,
            "results.parquet",
            table="reasoning_results",
            partition_column="method",
            version_of=result_table.drop(columns=["eval_seconds"]),
        )
        tracker.save_table(
            sample_table,
            "samples.parquet",
            table="reasoning_samples",
            partition_column="method",
            versioned=False,
        )
        primary = result_table[result_table.primary.astype(bool)]
        return tracker.result(
            rows=len(result_table),
            artifacts=[path],
            model_ids={
                "base": loaded.model_id,
                "base_fingerprint": loaded.fingerprint,
                "adapters": {str(s): p for s, p in adapter_paths.items()},
            },
            seeds={"seed": config.seed},
            metadata={
                "conditions": len(conditions),
                "samples": len(sample_table),
                "chat_template": config.apply_chat_template,
                "scores": dg.MetadataValue.md(
                    primary.pivot_table(index="persona", columns=["task", "filter"], values="value")
                    .round(3)
                    .reset_index()
                    .to_markdown(index=False)
                ),
            },
        )

    @versioned_asset(
        settings,
        deps=["reasoning_results"],
        group_name="reasoning",
        kinds={"duckdb"},
        metadata={"warehouse_tables": ["reasoning_by_trait", "reasoning_direction_counts"]},
    )
    def reasoning_by_trait(
        context: dg.AssetExecutionContext, store: ArtifactStore, warehouse: Warehouse
    ) -> dg.MaterializeResult:
        """For each method, benchmark and trait: high minus low with a 95% CI, paired over the
        items both personas answered (from the per-sample logs); and the paper's direction
        count (on how many benchmarks high C, high A, low E and low N score better)."""
        tracker = Tracker(context, warehouse, store)
        if not warehouse.table_exists("reasoning_results"):
            raise FileNotFoundError("no reasoning results yet: materialize reasoning_results first")
        results = warehouse.query("SELECT * FROM reasoning_results")
        samples = (
            warehouse.query("SELECT * FROM reasoning_samples")
            if warehouse.table_exists("reasoning_samples")
            else None
        )
        by_trait = analysis.reasoning_by_trait(results, samples)
        counts = analysis.trait_direction_counts(by_trait)
        path = tracker.save_table(by_trait, "by_trait.parquet", table="reasoning_by_trait")
        tracker.save_table(
            counts, "direction_counts.parquet", table="reasoning_direction_counts", versioned=False
        )
        return tracker.result(
            rows=len(by_trait),
            artifacts=[path],
            metadata={
                "direction_counts": dg.MetadataValue.md(counts.to_markdown(index=False)),
                "differences_plot": dg.MetadataValue.md(
                    plots.markdown_image(
                        figures.reasoning_figure(by_trait), "reasoning: high minus low"
                    )
                ),
                "methods_present": ", ".join(sorted(results.method.unique())),
            },
        )

    return Stage([reasoning_tasks, reasoning_results, reasoning_by_trait])
