"""BIG5-CHAT dialogues: shared openers, DExperts replies per persona, the dataset, its quality."""

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pandas as pd

from big5_dagster.config import DialogueSettings, active_settings, with_defaults
from big5_dagster.defs.corpora import read_scenarios, soda_scenarios, upstream_file
from big5_dagster.defs.experts import (
    attached_experts,
    expert_record,
    load_expert_models,
    load_trait_classifier,
    trait_classifier,
    trait_experts,
)
from big5_dagster.defs.tracking import Tracker, progress_logger
from big5_dagster.lib import dexperts, dialogues, prompts
from big5_dagster.lib.model import LoadedModel, SamplingParams
from big5_dagster.lib.storage import (
    ChunkStore,
    hash_dataframe,
    hash_json,
    hash_source,
    write_parquet,
)
from big5_dagster.lib.traits import PERSONAS, TRAITS, Persona
from big5_dagster.partitions import persona_of, persona_partitions
from big5_dagster.resources.artifacts import ArtifactStore
from big5_dagster.resources.model_backend import ModelBackend
from big5_dagster.resources.warehouse import Warehouse

settings = active_settings()
DialogueConfig = with_defaults(DialogueSettings, settings.dialogues)


def sampling_of(config: DialogueSettings, max_new_tokens: int, seed: int) -> SamplingParams:
    return SamplingParams(
        max_new_tokens=max_new_tokens,
        do_sample=config.do_sample,
        temperature=config.temperature,
        top_p=config.top_p,
        repetition_penalty=config.repetition_penalty,
        seed=seed,
    )


@dg.asset(
    deps=[soda_scenarios],
    group_name="dialogues",
    kinds={"pytorch", "parquet", "duckdb"},
    code_version=hash_source(prompts.opener_messages, dialogues.clean_opener, sampling_of),
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
    tracker = Tracker(context, warehouse)
    scenarios = read_scenarios(store)
    conversations = [prompts.opener_messages(row) for row in scenarios.to_dict("records")]
    sampling = sampling_of(config, config.opener_max_new_tokens, config.seed)
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
                dialogues.clean_opener(r.text, x)
                for r, x in zip(results, scenarios.person_x, strict=True)
            ],
            "n_new_tokens": [r.n_new_tokens for r in results],
            "finish_reason": [r.finish_reason for r in results],
        }
    )
    path = write_parquet(openers, store.file("scenario_openers", "openers.parquet"))
    warehouse.replace_table("scenario_openers", openers)
    n_empty = int((openers.opener.str.strip() == "").sum())
    if n_empty:
        context.log.warning(f"{n_empty} openers are empty after cleaning")
    return tracker.result(
        data_version=hash_dataframe(openers),
        rows=len(openers),
        artifacts=[path],
        config=config,
        model_ids={"base": model.model_id(), "base_fingerprint": model.fingerprint()},
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


def read_openers(store: ArtifactStore) -> pd.DataFrame:
    return pd.read_parquet(upstream_file(store, "scenario_openers", "openers.parquet"))


# A persona partition reads the expert of its trait.
persona_to_trait = dg.StaticPartitionMapping(
    {trait: [p.key for p in PERSONAS if p.trait == trait] for trait in TRAITS}
)


def expert_id(record: dict, level: str) -> str:
    """The expert that writes ``level``: base model, expert folder and weights version."""
    return f"{record['base_model']}+{record['trait']}/{record['experts'][level]}@{record['data_version']}"


def batch_seed(seed: int, persona: Persona, batch_index: int) -> int:
    """Each batch samples from its own seed, so a resumed partition reproduces the rest."""
    return int(hash_json([seed, persona.key, batch_index]), 16) % (2**31)


@contextlib.contextmanager
def expert_for_decoding(
    loaded: LoadedModel, folder: Path, record: dict, persona: Persona, expert_path: str
) -> Iterator[tuple[object, object, object | None, str]]:
    """(model to decode with, expert, anti-expert or None, path name) for generate_dexperts.

    LoRA experts on the pipeline's own base model run batched with the base rows in one
    forward (peft mixed adapters); other experts are separate models stepped in lockstep.
    The anti-expert is the opposite level's expert when it has weights of its own.
    """
    names = record["experts"]
    level, opposite = persona.level, persona.opposite.level
    lora_on_base = record["mode"] == "lora" and record["base_fingerprint"] == loaded.fingerprint
    if lora_on_base and expert_path in ("auto", "batched_lora"):
        with attached_experts(loaded, folder, record) as peft_model:
            anti = names[opposite] if names[opposite] != names[level] else None
            yield peft_model, names[level], anti, "batched_lora"
        return
    if expert_path == "batched_lora":
        raise ValueError(
            "dialogues.expert_path is 'batched_lora' but the experts are not LoRA adapters on "
            f"the pipeline's base model (mode {record['mode']!r}, base {record['base_model']!r})"
        )
    models = load_expert_models(folder, record, device=str(loaded.device))
    anti = models[opposite] if models[opposite] is not models[level] else None
    yield loaded.model, models[level], anti, "two_models"


@dg.asset(
    partitions_def=persona_partitions,
    deps=[
        soda_scenarios,
        scenario_openers,
        dg.AssetDep(trait_experts, partition_mapping=persona_to_trait),
    ],
    group_name="dialogues",
    kinds={"pytorch", "parquet", "duckdb"},
    code_version=hash_source(dexperts, prompts.reply_messages, batch_seed, expert_for_decoding),
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
    tracker = Tracker(context, warehouse)
    persona = persona_of(context)
    scenarios = read_scenarios(store)
    openers = read_openers(store).set_index("scenario_id")["opener"]
    expert_dir, record = expert_record(store, persona.trait)
    classic = config.formula == "dexperts"
    loaded = model.load()
    params = dexperts.DExpertsParams(
        formula=config.formula, alpha=config.alpha, warmup_tokens=config.warmup_tokens
    )

    key = hash_json(
        {
            "config": config.model_dump(),
            "expert": record["data_version"],
            "base": loaded.fingerprint,
            "openers": hash_dataframe(openers.reset_index()),
            "code": context.assets_def.code_versions_by_key[context.asset_key],
        }
    )
    chunks = ChunkStore(store.asset_dir("big5_chat_replies", persona.key), key)
    chunks.open()
    done = set(chunks.read().get("scenario_id", pd.Series(dtype=str)))
    rows = scenarios.to_dict("records")
    batches = [rows[i : i + config.batch_size] for i in range(0, len(rows), config.batch_size)]
    todo = [(i, b) for i, b in enumerate(batches) if not {r["scenario_id"] for r in b} <= done]
    if len(todo) < len(batches):
        context.log.info(
            f"resuming: {len(batches) - len(todo)} of {len(batches)} batches already done"
        )
    report = progress_logger(context, f"{persona.key} replies")
    with expert_for_decoding(loaded, expert_dir, record, persona, config.expert_path) as (
        decoder,
        expert,
        anti_expert,
        path_name,
    ):
        for n_done, (index, batch) in enumerate(todo):
            sampling = sampling_of(
                config, config.max_new_tokens, batch_seed(config.seed, persona, index)
            )
            requests = [
                dexperts.persona_reply_request(row, openers[row["scenario_id"]], persona)
                for row in batch
            ]
            if not classic:  # the anti-expert is only used by classic DExperts
                requests = [
                    dexperts.DExpertsRequest(r.base_prompt, r.expert_prompt) for r in requests
                ]
            results = dexperts.generate_dexperts(
                decoder,
                loaded.tokenizer,
                requests,
                params,
                sampling,
                expert=expert,
                anti_expert=anti_expert if classic else None,
                batch_size=config.batch_size,
            )
            generation = dialogues.generation_json(
                formula=config.formula,
                alpha=config.alpha,
                warmup_tokens=config.warmup_tokens,
                sampling=dataclasses.asdict(sampling),
                seed=sampling.seed,
                base_model=loaded.model_id,
                expert_model=expert_id(record, persona.level),
                anti_expert_model=expert_id(record, persona.opposite.level) if classic else None,
                extra={"expert_path": path_name},
            )
            chunks.write(
                pd.DataFrame(
                    {
                        "scenario_id": [row["scenario_id"] for row in batch],
                        "persona": persona.key,
                        "trait": persona.trait,
                        "level": persona.level,
                        "raw_reply": [r.text for r in results],
                        "reply": [
                            dialogues.clean_reply(r.text, row["person_y"])
                            for r, row in zip(results, batch, strict=True)
                        ],
                        "n_new_tokens": [r.n_new_tokens for r in results],
                        "finish_reason": [r.finish_reason for r in results],
                        "generation": generation,
                    }
                )
            )
            report(n_done + 1, len(todo))

    replies = chunks.read().sort_values("scenario_id", kind="stable").reset_index(drop=True)
    if replies.scenario_id.duplicated().any():  # cannot happen by construction; never store it
        raise RuntimeError(f"duplicate replies in {chunks.dir}")
    path = write_parquet(replies, store.file("big5_chat_replies", "replies.parquet", persona.key))
    warehouse.replace_rows("big5_chat_replies", replies, where={"persona": persona.key})
    chunks.clear()
    refusals = int(replies.reply.map(dialogues.is_refusal).sum())
    words = replies.reply.str.split().str.len()
    return tracker.result(
        data_version=hash_dataframe(replies),
        rows=len(replies),
        artifacts=[path],
        config=config,
        model_ids={
            "base": loaded.model_id,
            "base_fingerprint": loaded.fingerprint,
            "expert": str(expert_dir),
            "expert_data_version": record["data_version"],
            "expert_path": path_name,
        },
        seeds={"seed": config.seed, "batch_seeds": "hash(seed, persona, batch index)"},
        input_partitions={"trait_experts": [persona.trait]},
        metadata={
            "refusals": refusals,
            "truncated": int((replies.finish_reason == "length").sum()),
            "mean_words": float(words.mean()),
            "new_tokens": int(replies.n_new_tokens.sum()),
            "examples": dg.MetadataValue.md(
                replies[["scenario_id", "reply"]].head(5).to_markdown(index=False)
            ),
        },
    )


def read_replies(store: ArtifactStore) -> pd.DataFrame:
    """Every persona's replies; a clear error names the partitions not yet materialized."""
    missing = [
        p.key
        for p in PERSONAS
        if not store.file("big5_chat_replies", "replies.parquet", p.key).exists()
    ]
    if missing:
        raise FileNotFoundError(f"materialize big5_chat_replies for the personas {missing} first")
    return pd.concat(
        [
            pd.read_parquet(store.file("big5_chat_replies", "replies.parquet", p.key))
            for p in PERSONAS
        ],
        ignore_index=True,
    )


def read_dataset(store: ArtifactStore) -> pd.DataFrame:
    return pd.read_parquet(upstream_file(store, "big5_chat_dataset", "big5_chat.parquet"))


@dg.asset(
    deps=[big5_chat_replies, soda_scenarios, scenario_openers],
    group_name="dialogues",
    kinds={"parquet", "duckdb"},
    code_version=hash_source(dialogues),
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
    train and test), as parquet and JSONL with one record per reply."""
    tracker = Tracker(context, warehouse)
    scenarios = read_scenarios(store)
    split_map = dialogues.split_by_scenario(
        scenarios.scenario_id.tolist(), config.test_fraction, config.split_seed
    )
    dataset = dialogues.build_dataset(
        read_replies(store),
        scenarios,
        read_openers(store),
        split_map,
        near_duplicate_threshold=config.near_duplicate_threshold,
    )
    folder = store.asset_dir("big5_chat_dataset")
    parquet = write_parquet(dataset, folder / "big5_chat.parquet")
    jsonl = dialogues.write_jsonl(dataset, folder / "big5_chat.jsonl")
    warehouse.replace_table("big5_chat_dataset", dataset)
    counts = dialogues.flag_counts(dataset)
    per_persona = (
        dataset.groupby("persona", sort=False)
        .agg(
            replies=("record_id", "size"),
            refusals=("refusal", "sum"),
            near_duplicates=("near_duplicate", "sum"),
            truncated=("truncated", "sum"),
            mean_words=("reply", lambda r: r.str.split().str.len().mean()),
        )
        .reset_index()
    )
    return tracker.result(
        data_version=hash_dataframe(dataset),
        rows=len(dataset),
        artifacts=[parquet, jsonl],
        config=config,
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


@dg.asset(
    deps=[big5_chat_dataset, trait_classifier],
    group_name="dialogues",
    kinds={"duckdb"},
    code_version=hash_source(dialogues.dialogue_quality_table, dialogues.target_accuracy_vs_chance),
    metadata={"warehouse_tables": ["dialogue_quality"]},
    check_specs=[dg.AssetCheckSpec("target_accuracy_above_chance", asset="dialogue_quality")],
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
    tracker = Tracker(context, warehouse)
    dataset = read_dataset(store)
    trait_model = load_trait_classifier(store)
    probabilities = trait_model.predict_high_probability(dataset.reply.tolist())
    probabilities.index = dataset.index
    table = dialogues.dialogue_quality_table(
        dataset, probabilities, thresholds=trait_model.thresholds()
    )
    path = write_parquet(table, store.file("dialogue_quality", "dialogue_quality.parquet"))
    warehouse.replace_table("dialogue_quality", table)
    at_chance = dialogues.target_accuracy_vs_chance(table, config.chance_margin)
    shown = [
        "persona",
        "n_scored",
        "target_accuracy",
        "target_binom_p",
        "words_mean",
        "refusal_rate",
        "near_duplicate_rate",
    ]
    return tracker.result(
        data_version=hash_dataframe(table),
        rows=len(table),
        artifacts=[path],
        config=config,
        metadata={
            "quality": dg.MetadataValue.md(table[shown].round(3).to_markdown(index=False)),
            "personas_above_chance": len(table) - len(at_chance),
            "mean_target_accuracy": float(table.target_accuracy.mean()),
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
                    "at_chance": dg.MetadataValue.md(at_chance.round(3).to_markdown(index=False))
                },
            )
        ],
    )


assets = [scenario_openers, big5_chat_replies, big5_chat_dataset, dialogue_quality]
