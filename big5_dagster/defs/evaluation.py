"""Personality evaluation: inventories administered to every method and persona, scored
honestly, with reliability and trait intercorrelations beside human data (METHOD.md 6)."""

import contextlib
import dataclasses
from collections.abc import Iterator

import dagster as dg
import numpy as np
import pandas as pd

from big5_dagster.config import EvaluationSettings, active_settings, with_defaults
from big5_dagster.defs.corpora import personality_inventories, read_inventories
from big5_dagster.defs.dialogues import big5_chat_dataset, read_dataset
from big5_dagster.defs.tracking import Tracker, progress_logger
from big5_dagster.defs.training import adapter_records, dpo_adapter, sft_adapter
from big5_dagster.lib import dexperts, evaluation, human_reference, psychometrics, training_data
from big5_dagster.lib.model import LoadedModel
from big5_dagster.lib.storage import hash_dataframe, hash_source, write_parquet
from big5_dagster.lib.traits import PERSONAS, TRAITS
from big5_dagster.partitions import method_of, method_partitions
from big5_dagster.resources.artifacts import ArtifactStore
from big5_dagster.resources.model_backend import ModelBackend
from big5_dagster.resources.warehouse import Warehouse

settings = active_settings()
EvaluationConfig = with_defaults(EvaluationSettings, settings.evaluation)
ANSWERS_TABLE = "inventory_answers"
RESPONDENT = ("method", "persona", "adapter_seed", "run", "option_order")
MIN_PERSONAS_FOR_CORRELATIONS = 3  # a correlation across fewer conditions is undefined


def method_conditions(
    method: str, store: ArtifactStore, n_demonstrations: int, seed: int
) -> tuple[list[evaluation.Condition], dict[int, str]]:
    """The conditions of one method partition and, for sft/dpo, seed -> adapter folder."""
    demonstrations, adapter_versions, adapter_paths = None, None, {}
    if method == "prompt_demonstrations":
        demonstrations = training_data.demonstrations_by_persona(
            read_dataset(store), n_demonstrations, seed
        )
    if method in evaluation.ADAPTER_METHODS:
        record = adapter_records(store, f"{method}_adapter")
        adapter_versions = {int(s): r["version"] for s, r in record["seeds"].items()}
        adapter_paths = {int(s): r["path"] for s, r in record["seeds"].items()}
    conditions = evaluation.conditions_for(
        method,
        PERSONAS,
        demonstrations,
        adapter_versions,
        n_demonstrations=n_demonstrations,
    )
    return conditions, adapter_paths


@contextlib.contextmanager
def with_adapter(
    loaded: LoadedModel, method: str, seed: int | None, path: str | None
) -> Iterator[LoadedModel]:
    """The model as one condition needs it: the base, or the base with a LoRA adapter
    (peft on transformers, a LoRA request on vLLM)."""
    if seed is None:
        yield loaded
        return
    name = f"{method}-seed{seed}"
    if not isinstance(loaded, LoadedModel):  # a vLLM engine: its own LoRA support
        yield loaded.with_lora(name, path)
        return
    with dexperts.lora_adapter(loaded.model, {name: path}) as peft_model:
        yield dataclasses.replace(loaded, model=peft_model)


def by_adapter(
    conditions: list[evaluation.Condition],
) -> dict[int | None, list[evaluation.Condition]]:
    groups: dict[int | None, list[evaluation.Condition]] = {}
    for condition in conditions:
        groups.setdefault(condition.adapter_seed, []).append(condition)
    return groups


@dg.asset(
    partitions_def=method_partitions,
    deps=[personality_inventories, big5_chat_dataset, sft_adapter, dpo_adapter],
    group_name="evaluation",
    kinds={"pytorch", "duckdb"},
    code_version=hash_source(evaluation, method_conditions, with_adapter),
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
    tracker = Tracker(context, warehouse)
    method = method_of(context)
    inventories = read_inventories(store)
    loaded = model.respondent()
    conditions, adapter_paths = method_conditions(
        method, store, config.n_demonstrations, config.seed
    )
    generation = evaluation.GenerationSettings(
        temperature=config.temperature, max_new_tokens=config.max_new_tokens
    )
    common = dict(
        n_runs=config.n_runs,
        seed=config.seed,
        scorers=config.scorers,
        generation=generation,
        orders=config.option_orders,
    )
    plan = evaluation.plan_answers(loaded.fingerprint, conditions, inventories, **common)
    cached = pd.DataFrame()
    if warehouse.table_exists(ANSWERS_TABLE):
        cached = warehouse.query(f"SELECT * FROM {ANSWERS_TABLE} WHERE method = ?", [method])
        cached = cached[cached.cache_key.isin(plan.cache_key)]
    context.log.info(
        f"{method}: {len(conditions)} conditions, {len(plan)} answers planned, {len(cached)} cached"
    )
    fresh = []
    report = progress_logger(context, f"{method} answers")
    for seed, group in by_adapter(conditions).items():
        with with_adapter(loaded, method, seed, adapter_paths.get(seed)) as condition_model:
            fresh.append(
                evaluation.administer(
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
    answers = pd.concat([cached, new], ignore_index=True) if len(cached) else new
    answers = answers.sort_values(
        ["condition", "inventory", "scorer", "run", "option_order", "position"], kind="stable"
    ).reset_index(drop=True)
    path = write_parquet(answers, store.file("inventory_responses", "answers.parquet", method))
    warehouse.replace_rows(ANSWERS_TABLE, answers, where={"method": method})
    quality = (
        answers.groupby("scorer")
        .agg(
            answers=("cache_key", "size"),
            failed=("parse_status", lambda s: int((s != "ok").sum())),
            mean_option_mass=("option_mass", "mean"),
        )
        .reset_index()
    )
    quality["failure_rate"] = quality.failed / quality.answers
    return tracker.result(
        data_version=hash_dataframe(answers.drop(columns=["scorer_settings"], errors="ignore")),
        rows=len(answers),
        artifacts=[path],
        config=config,
        model_ids={
            "base": loaded.model_id,
            "base_fingerprint": loaded.fingerprint,
            "backend": model.backend,
            "adapters": {str(s): p for s, p in adapter_paths.items()},
        },
        seeds={"seed": config.seed, "n_runs": config.n_runs},
        input_partitions={"sft_adapter": [None], "dpo_adapter": [None]},
        metadata={
            "conditions": len(conditions),
            "answers_computed": len(new),
            "answers_reused": len(cached),
            "answer_quality": dg.MetadataValue.md(quality.round(3).to_markdown(index=False)),
            "prompt_template_hash": evaluation.prompt_template_hash(),
        },
    )


def read_answers(warehouse: Warehouse) -> pd.DataFrame:
    if not warehouse.table_exists(ANSWERS_TABLE):
        raise FileNotFoundError("no inventory answers yet: materialize inventory_responses first")
    return warehouse.query(f"SELECT * FROM {ANSWERS_TABLE}")


def respondent_scores(answers: pd.DataFrame, inventories) -> pd.DataFrame:
    """Trait scores per respondent (method, persona, adapter seed, run, option order), per
    scorer and inventory. Failed parses stay missing: counted, never imputed."""
    frames = []
    for inv in inventories:
        for scorer, rows in answers[answers.inventory == inv.name].groupby("scorer"):
            rows = rows.assign(adapter_seed=rows.adapter_seed.fillna(-1))
            scores = psychometrics.score_table(rows, inv, respondent_columns=RESPONDENT)
            frames.append(scores.assign(scorer=scorer))
    return pd.concat(frames, ignore_index=True)


@dg.asset(
    deps=[inventory_responses, personality_inventories],
    group_name="evaluation",
    kinds={"duckdb"},
    code_version=hash_source(
        psychometrics.summarize_scores, psychometrics.separation, respondent_scores
    ),
    metadata={"warehouse_tables": ["inventory_scores", "inventory_separation"]},
)
def inventory_scores(
    context: dg.AssetExecutionContext, store: ArtifactStore, warehouse: Warehouse
) -> dg.MaterializeResult:
    """Per method, persona, inventory, trait and scorer: mean, SD, 95% CI, n and the
    parse-failure rate; and per method the high-minus-low separation of each trait (difference
    and Cohen's d) with the drift of the off-target traits."""
    tracker = Tracker(context, warehouse)
    answers = read_answers(warehouse)
    inventories = read_inventories(store)
    scores = respondent_scores(answers, inventories)
    summary = psychometrics.summarize_scores(
        scores, by=("scorer", "method", "persona", "inventory", "trait")
    )
    norms = warehouse.query(
        "SELECT inventory, category AS trait, mean AS human_mean, sd AS human_sd FROM personality_inventory_norms"
    )
    summary = summary.merge(norms, on=["inventory", "trait"], how="left")
    separation = psychometrics.separation(scores, by=("scorer", "method", "inventory"))
    warehouse.replace_table("inventory_scores", summary)
    warehouse.replace_table("inventory_separation", separation)
    path = write_parquet(summary, store.file("inventory_scores", "scores.parquet"))
    write_parquet(separation, store.file("inventory_scores", "separation.parquet"))
    target = separation[separation.is_target]
    shown = (
        target[target.scorer == "logprob"][
            [
                "method",
                "inventory",
                "target_trait",
                "mean_high",
                "mean_low",
                "difference",
                "cohens_d",
            ]
        ]
        if "target_trait" in target
        else target
    )
    methods = sorted(answers.method.unique())
    return tracker.result(
        data_version=hash_dataframe(summary),
        rows=len(summary),
        artifacts=[path],
        metadata={
            "methods_present": ", ".join(methods),
            "methods_missing": ", ".join(m for m in evaluation.METHODS if m not in methods),
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


@dg.asset(
    deps=[inventory_responses, personality_inventories],
    group_name="evaluation",
    kinds={"duckdb"},
    code_version=hash_source(
        psychometrics.reliability_table,
        psychometrics.cronbach_alpha,
        psychometrics.mcdonald_omega_fit,
    ),
    metadata={"warehouse_tables": ["psychometric_reliability"]},
)
def psychometric_reliability(
    context: dg.AssetExecutionContext, store: ArtifactStore, warehouse: Warehouse
) -> dg.MaterializeResult:
    """Cronbach's alpha and McDonald's omega (one factor) per trait and condition (method,
    scorer, inventory), over the condition's respondents (personas x runs x option orders)."""
    tracker = Tracker(context, warehouse)
    answers = read_answers(warehouse)
    frames = []
    for inv in read_inventories(store):
        for scorer, rows in answers[answers.inventory == inv.name].groupby("scorer"):
            rows = rows.assign(adapter_seed=rows.adapter_seed.fillna(-1))
            table = psychometrics.reliability_table(
                rows, inv, by=("method",), respondent_columns=RESPONDENT
            )
            frames.append(table.assign(scorer=scorer, inventory=inv.name))
    reliability = pd.concat(frames, ignore_index=True)
    warehouse.replace_table("psychometric_reliability", reliability)
    path = write_parquet(reliability, store.file("psychometric_reliability", "reliability.parquet"))
    return tracker.result(
        data_version=hash_dataframe(reliability),
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


@dg.asset(
    deps=[inventory_responses, personality_inventories],
    group_name="evaluation",
    kinds={"duckdb"},
    code_version=hash_source(
        psychometrics.persona_correlation_matrix,
        psychometrics.bootstrap_frobenius,
        psychometrics.convergent_correlations,
        human_reference,
    ),
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
    tracker = Tracker(context, warehouse)
    answers = read_answers(warehouse)
    scores = respondent_scores(answers, read_inventories(store))
    scores = scores[scores.persona != evaluation.NO_PERSONA]
    reference = human_reference.human_trait_correlations()
    matrices, distances, convergent = [], [], []
    for (scorer, method, inventory), group in scores.groupby(["scorer", "method", "inventory"]):
        for seed, rows in group.groupby("adapter_seed"):
            means = psychometrics.persona_trait_means(rows)
            complete = int(means[list(TRAITS)].notna().all(axis=1).sum())
            if complete < MIN_PERSONAS_FOR_CORRELATIONS:
                # Too many failed answers (e.g. nothing parsed): reported, not computed.
                context.log.warning(
                    f"{scorer}/{method}/{inventory}/seed {seed}: {complete} personas with all "
                    "five trait scores; no correlation matrix"
                )
                distances.append(
                    {
                        "scorer": scorer,
                        "method": method,
                        "inventory": inventory,
                        "adapter_seed": seed,
                        "n_valid": 0,
                        "n_complete_personas": complete,
                        "reference": human_reference.HUMAN_TRAIT_CORRELATIONS_SOURCE.citation,
                    }
                )
                continue
            matrix = psychometrics.persona_correlation_matrix(means)
            long = matrix.stack(future_stack=True).rename("r").reset_index()
            long.columns = ["trait_a", "trait_b", "r"]
            matrices.append(
                long.assign(scorer=scorer, method=method, inventory=inventory, adapter_seed=seed)
            )
            respondents = psychometrics.wide_trait_scores(
                rows, respondent_columns=("persona", "run", "option_order")
            )
            boot = psychometrics.bootstrap_frobenius(
                respondents, reference, config.bootstrap_samples, config.seed
            )
            distances.append(
                {
                    "scorer": scorer,
                    "method": method,
                    "inventory": inventory,
                    "adapter_seed": seed,
                    "frobenius": boot.distance,
                    "ci_low": boot.ci_low,
                    "ci_high": boot.ci_high,
                    "n_boot": boot.n_boot,
                    "n_valid": boot.n_valid,
                    "n_complete_personas": complete,
                    "reference": human_reference.HUMAN_TRAIT_CORRELATIONS_SOURCE.citation,
                }
            )
    for (scorer, method, seed), group in scores.groupby(["scorer", "method", "adapter_seed"]):
        by_inventory = {
            inv: psychometrics.persona_trait_means(rows) for inv, rows in group.groupby("inventory")
        }
        if {"bfi44", "ipip_neo_120"} <= set(by_inventory):
            table = psychometrics.convergent_correlations(
                by_inventory["bfi44"], by_inventory["ipip_neo_120"]
            )
            convergent.append(
                table.reset_index().assign(scorer=scorer, method=method, adapter_seed=seed)
            )
    if not matrices:
        raise ValueError(
            "no method, inventory and scorer has 3 personas with all five trait scores: "
            "no trait correlations can be computed (see the parse-failure rates in inventory_scores)"
        )
    matrix_table = pd.concat(matrices, ignore_index=True)
    distance_table = pd.DataFrame(distances)
    convergent_table = pd.concat(convergent, ignore_index=True) if convergent else pd.DataFrame()
    warehouse.replace_table("trait_correlations", matrix_table)
    warehouse.replace_table("trait_correlation_distance", distance_table)
    if len(convergent_table):
        warehouse.replace_table("convergent_validity", convergent_table)
    path = write_parquet(distance_table, store.file("trait_correlations", "distance.parquet"))
    write_parquet(matrix_table, store.file("trait_correlations", "matrices.parquet"))
    return tracker.result(
        data_version=hash_dataframe(matrix_table.fillna(np.nan)),
        rows=len(matrix_table),
        artifacts=[path],
        config=config,
        seeds={"bootstrap_seed": config.seed},
        metadata={
            "distance_to_human": dg.MetadataValue.md(
                distance_table.drop(columns=["reference"]).round(3).to_markdown(index=False)
            ),
            "human_reference": human_reference.HUMAN_TRAIT_CORRELATIONS_SOURCE.citation,
        },
    )


assets = [inventory_responses, inventory_scores, psychometric_reliability, trait_correlations]
