"""Reasoning benchmarks through lm-evaluation-harness for every method and persona, and the
trait-direction analysis (METHOD.md section 6, Reasoning)."""

import json

import dagster as dg
import pandas as pd

from big5_dagster.config import ReasoningSettings, active_settings, with_defaults
from big5_dagster.defs.corpora import upstream_file
from big5_dagster.defs.dialogues import big5_chat_dataset
from big5_dagster.defs.evaluation import by_adapter, method_conditions, with_adapter
from big5_dagster.defs.tracking import Tracker
from big5_dagster.defs.training import dpo_adapter, sft_adapter
from big5_dagster.lib import administration, reasoning
from big5_dagster.lib.storage import (
    hash_dataframe,
    hash_json,
    hash_source,
    write_json,
    write_parquet,
)
from big5_dagster.partitions import method_of, method_partitions
from big5_dagster.resources.artifacts import ArtifactStore
from big5_dagster.resources.model_backend import ModelBackend
from big5_dagster.resources.warehouse import Warehouse

settings = active_settings()
ReasoningConfig = with_defaults(ReasoningSettings, settings.reasoning)
MANIFEST = "manifest.json"


@dg.asset(
    group_name="reasoning",
    kinds={"json"},
    code_version=hash_source(reasoning),
)
def reasoning_tasks(
    context: dg.AssetExecutionContext,
    config: ReasoningConfig,  # type: ignore[valid-type]
    store: ArtifactStore,
    warehouse: Warehouse,
) -> dg.MaterializeResult:
    """The benchmark tasks. tiny: the project's own offline task sets (social and
    commonsense multiple choice, arithmetic word problems with verifiable answers) as
    lm-eval local JSON tasks; paper: the paper's lm-eval task list."""
    tracker = Tracker(context, warehouse)
    folder = store.asset_dir("reasoning_tasks")
    if config.tasks == "local":
        manifest = reasoning.write_local_tasks(
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
    else:
        manifest = {
            "kind": "paper",
            "tasks": [t.__dict__ for t in reasoning.paper_tasks()],
        }
    write_json(manifest, folder / MANIFEST)
    tasks = (
        reasoning.benchmark_tasks(manifest) if config.tasks == "local" else reasoning.paper_tasks()
    )
    table = pd.DataFrame(
        [
            {
                "task": t.name,
                "num_fewshot": t.num_fewshot,
                "output_type": t.output_type,
                "version": t.version,
            }
            for t in tasks
        ]
    )
    return tracker.result(
        data_version=hash_json(manifest),
        rows=len(table),
        artifacts=[folder],
        config=config,
        seeds={"seed": config.seed},
        metadata={"tasks": dg.MetadataValue.md(table.to_markdown(index=False))},
    )


def task_list(store: ArtifactStore):
    manifest = json.loads(upstream_file(store, "reasoning_tasks", MANIFEST).read_text())
    if manifest.get("kind") == "paper":
        return reasoning.paper_tasks()
    return manifest


@dg.asset(
    partitions_def=method_partitions,
    deps=[reasoning_tasks, big5_chat_dataset, sft_adapter, dpo_adapter],
    group_name="reasoning",
    kinds={"pytorch", "duckdb"},
    code_version=hash_source(reasoning.run_reasoning, method_conditions, with_adapter),
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
    tracker = Tracker(context, warehouse)
    method = method_of(context)
    tasks = task_list(store)
    loaded = model.load()
    conditions, adapter_paths = method_conditions(
        method, store, config.n_demonstrations, config.seed
    )
    results, samples = [], []
    for seed, group in by_adapter(conditions).items():
        with with_adapter(loaded, method, seed, adapter_paths.get(seed)) as condition_model:
            for n, condition in enumerate(group):
                system = administration.system_text(condition.system, condition.demonstrations)
                context.log.info(f"{condition.label}: lm-eval ({n + 1}/{len(group)})")
                result, sample = reasoning.run_reasoning(
                    condition_model.model,
                    condition_model.tokenizer,
                    tasks,
                    system_instruction=system,
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
                    "adapter_version": condition.adapter_version,
                    "model_fingerprint": loaded.fingerprint,
                }
                results.append(result.assign(**provenance))
                samples.append(sample.assign(**provenance))
    result_table = pd.concat(results, ignore_index=True)
    sample_table = pd.concat(samples, ignore_index=True)
    warehouse.replace_rows("reasoning_results", result_table, where={"method": method})
    warehouse.replace_rows("reasoning_samples", sample_table, where={"method": method})
    path = write_parquet(result_table, store.file("reasoning_results", "results.parquet", method))
    write_parquet(sample_table, store.file("reasoning_results", "samples.parquet", method))
    primary = result_table[result_table.primary.astype(bool)]
    return tracker.result(
        data_version=hash_dataframe(result_table.drop(columns=["eval_seconds"])),
        rows=len(result_table),
        artifacts=[path],
        config=config,
        model_ids={
            "base": loaded.model_id,
            "base_fingerprint": loaded.fingerprint,
            "adapters": {str(s): p for s, p in adapter_paths.items()},
        },
        seeds={"seed": config.seed},
        input_partitions={"sft_adapter": [None], "dpo_adapter": [None]},
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


@dg.asset(
    deps=[reasoning_results],
    group_name="reasoning",
    kinds={"duckdb"},
    code_version=hash_source(reasoning.reasoning_by_trait, reasoning.trait_direction_counts),
    metadata={"warehouse_tables": ["reasoning_by_trait", "reasoning_direction_counts"]},
)
def reasoning_by_trait(
    context: dg.AssetExecutionContext, store: ArtifactStore, warehouse: Warehouse
) -> dg.MaterializeResult:
    """For each method, benchmark and trait: high minus low with a 95% CI; and the paper's
    direction count (on how many benchmarks high C, high A, low E and low N score better)."""
    tracker = Tracker(context, warehouse)
    if not warehouse.table_exists("reasoning_results"):
        raise FileNotFoundError("no reasoning results yet: materialize reasoning_results first")
    results = warehouse.query("SELECT * FROM reasoning_results")
    by_trait = reasoning.reasoning_by_trait(results)
    counts = reasoning.trait_direction_counts(by_trait)
    warehouse.replace_table("reasoning_by_trait", by_trait)
    warehouse.replace_table("reasoning_direction_counts", counts)
    path = write_parquet(by_trait, store.file("reasoning_by_trait", "by_trait.parquet"))
    write_parquet(counts, store.file("reasoning_by_trait", "direction_counts.parquet"))
    return tracker.result(
        data_version=hash_dataframe(by_trait),
        rows=len(by_trait),
        artifacts=[path],
        metadata={
            "direction_counts": dg.MetadataValue.md(counts.to_markdown(index=False)),
            "methods_present": ", ".join(sorted(results.method.unique())),
        },
    )


assets = [reasoning_tasks, reasoning_results, reasoning_by_trait]
