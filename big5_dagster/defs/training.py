"""SFT examples, DPO preference pairs, and the LoRA adapters trained on them (TRL + PEFT)."""

import json
import shutil
from pathlib import Path

import dagster as dg
import pandas as pd

from big5_dagster.config import TrainingSettings, active_settings, with_defaults
from big5_dagster.defs.corpora import upstream_file
from big5_dagster.defs.dialogues import big5_chat_dataset, read_dataset
from big5_dagster.defs.experts import weights_version
from big5_dagster.defs.tracking import Tracker
from big5_dagster.lib import plots, training, training_data
from big5_dagster.lib.storage import (
    hash_dataframe,
    hash_json,
    hash_source,
    write_json,
    write_parquet,
)
from big5_dagster.resources.artifacts import ArtifactStore
from big5_dagster.resources.model_backend import ModelBackend
from big5_dagster.resources.warehouse import Warehouse

settings = active_settings()
TrainingConfig = with_defaults(TrainingSettings, settings.training)
ADAPTERS_RECORD = "adapters.json"
VALIDATION_CAP = 64  # validation rows scored after training (enough for a stable loss)


@dg.asset(
    deps=[big5_chat_dataset],
    group_name="training",
    kinds={"parquet", "duckdb"},
    code_version=hash_source(training_data),
    metadata={"warehouse_tables": ["sft_examples"]},
)
def sft_examples(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,  # type: ignore[valid-type]
    store: ArtifactStore,
    warehouse: Warehouse,
    model: ModelBackend,
) -> dg.MaterializeResult:
    """Persona instruction as the system turn, PersonX's line as the user turn, the reply as
    the completion (completion-only loss); train/validation/test follow the dataset's split."""
    tracker = Tracker(context, warehouse)
    dataset = read_dataset(store)
    examples, dropped = training_data.sft_examples(
        dataset, model.load().tokenizer, config.validation_fraction, config.split_seed
    )
    path = write_parquet(examples, store.file("sft_examples", "sft_examples.parquet"))
    warehouse.replace_table("sft_examples", examples)
    return tracker.result(
        data_version=hash_dataframe(examples),
        rows=len(examples),
        artifacts=[path],
        config=config,
        seeds={"split_seed": config.split_seed},
        metadata={
            "splits": examples.split.value_counts().to_dict(),
            "dropped_flagged": dropped,
            "example_prompt": dg.MetadataValue.md(f"```\n{examples.prompt.iloc[0]}\n```")
            if len(examples)
            else "",
        },
    )


@dg.asset(
    deps=[big5_chat_dataset],
    group_name="training",
    kinds={"parquet", "duckdb"},
    code_version=hash_source(training_data),
    metadata={"warehouse_tables": ["dpo_preference_pairs"]},
)
def dpo_preference_pairs(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,  # type: ignore[valid-type]
    store: ArtifactStore,
    warehouse: Warehouse,
    model: ModelBackend,
) -> dg.MaterializeResult:
    """For each scenario and persona: chosen = its reply, rejected = the opposite level's
    reply to the same scenario; pairs with a flagged side are dropped and counted."""
    tracker = Tracker(context, warehouse)
    dataset = read_dataset(store)
    pairs, dropped = training_data.dpo_pairs(
        dataset, model.load().tokenizer, config.validation_fraction, config.split_seed
    )
    path = write_parquet(pairs, store.file("dpo_preference_pairs", "pairs.parquet"))
    warehouse.replace_table("dpo_preference_pairs", pairs)
    return tracker.result(
        data_version=hash_dataframe(pairs),
        rows=len(pairs),
        artifacts=[path],
        config=config,
        seeds={"split_seed": config.split_seed},
        metadata={"splits": pairs.split.value_counts().to_dict(), "dropped": dropped},
    )


@dg.asset_check(
    asset=dpo_preference_pairs,
    additional_deps=[big5_chat_dataset],
    blocking=True,
    description="Every pair: chosen differs from rejected, both sides answer the identical "
    "prompt (same scenario and PersonX line), neither side is empty.",
)
def preference_pairs_are_valid(store: ArtifactStore) -> dg.AssetCheckResult:
    pairs = read_pairs(store)
    dataset = read_dataset(store).set_index("record_id")
    chosen = dataset.loc[pairs.chosen_record_id]
    rejected = dataset.loc[pairs.rejected_record_id]
    problems = {
        "chosen_equals_rejected": int(
            (pairs.chosen.str.strip() == pairs.rejected.str.strip()).sum()
        ),
        "different_prompt": int(
            (chosen.scenario_id.to_numpy() != rejected.scenario_id.to_numpy()).sum()
            + (chosen.opener.to_numpy() != rejected.opener.to_numpy()).sum()
            + (chosen.trait.to_numpy() != rejected.trait.to_numpy()).sum()
        ),
        "empty_side": int(
            ((pairs.chosen.str.strip() == "") | (pairs.rejected.str.strip() == "")).sum()
        ),
        "empty_prompt": int((pairs.prompt.str.strip() == "").sum()),
    }
    return dg.AssetCheckResult(
        passed=not any(problems.values()), metadata={**problems, "pairs": len(pairs)}
    )


def read_pairs(store: ArtifactStore) -> pd.DataFrame:
    return pd.read_parquet(upstream_file(store, "dpo_preference_pairs", "pairs.parquet"))


def read_sft_examples(store: ArtifactStore) -> pd.DataFrame:
    return pd.read_parquet(upstream_file(store, "sft_examples", "sft_examples.parquet"))


def train_spec(config: TrainingSettings, seed: int) -> training.TrainSpec:
    return training.TrainSpec(
        epochs=config.epochs,
        learning_rate=config.learning_rate,
        batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        max_length=config.max_length,
        seed=seed,
        warmup_steps=config.warmup_steps,
        lr_scheduler=config.lr_scheduler,
        save_steps=config.save_steps,
        beta=config.dpo_beta,
    )


def lora_spec(config: TrainingSettings) -> training.LoraSpec:
    return training.LoraSpec(r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout)


def seeded_sample(frame: pd.DataFrame, cap: int | None, seed: int) -> pd.DataFrame:
    if cap is None or len(frame) <= cap:
        return frame.reset_index(drop=True)
    return frame.sample(n=cap, random_state=seed).reset_index(drop=True)


def adapter_records(store: ArtifactStore, asset: str) -> dict:
    """The adapters of ``asset``: {"base_model", "seeds": {seed: {"path", "version"}}}."""
    return json.loads(upstream_file(store, asset, ADAPTERS_RECORD).read_text())


def _train_adapters(
    context: dg.AssetExecutionContext,
    asset: str,
    config: TrainingSettings,
    store: ArtifactStore,
    model: ModelBackend,
    train_one,
) -> tuple[dict, list[dict]]:
    """Train one adapter per configured seed; write ``adapters.json`` last (atomically)."""
    loaded = model.load()
    base_path = str(loaded.path or loaded.model_id)
    folder = store.asset_dir(asset)
    records, reports = {}, []
    for seed in config.seeds:
        output = folder / f"seed-{seed}"
        work = store.root_path / ".work" / asset / f"seed-{seed}"
        context.log.info(f"{asset}: training seed {seed}")
        report = train_one(base_path, seed, output, work)
        records[str(seed)] = {"path": str(output), "version": weights_version(output)}
        reports.append({"seed": seed, **report.to_dict()})
    for stale in folder.glob("seed-*"):  # seeds no longer configured
        if stale.name.removeprefix("seed-") not in records:
            shutil.rmtree(stale)
    record = {
        "base_model": base_path,
        "base_fingerprint": loaded.fingerprint,
        "seeds": records,
        "data_version": hash_json({s: r["version"] for s, r in records.items()}),
    }
    write_json(record, folder / ADAPTERS_RECORD)
    write_json(reports, folder / "reports.json")
    return record, reports


def _training_metadata(reports: list[dict], plot: Path) -> dict:
    table = pd.DataFrame(
        [
            {
                "seed": r["seed"],
                "examples": r["examples"],
                "steps": r["steps"],
                "seconds": round(r["seconds"], 1),
                "tokens_per_second": round(r["tokens_per_second"], 1),
                "final_loss": r["final_loss"],
                "validation_loss": r["metrics"].get("validation", {}).get("eval_loss"),
                "resumed_from": r["resumed_from"],
            }
            for r in reports
        ]
    )
    return {
        "training": dg.MetadataValue.md(table.to_markdown(index=False)),
        "steps": int(table.steps.sum()),
        "train_seconds": float(table.seconds.sum()),
        "tokens_per_second": float(table.tokens_per_second.mean()),
        "loss_curve": dg.MetadataValue.json({str(r["seed"]): r["loss_curve"] for r in reports}),
        "loss_plot": dg.MetadataValue.path(str(plot)),
    }


@dg.asset(
    deps=[sft_examples],
    group_name="training",
    kinds={"pytorch", "peft"},
    code_version=hash_source(training, train_spec, lora_spec, _train_adapters),
)
def sft_adapter(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,  # type: ignore[valid-type]
    store: ArtifactStore,
    warehouse: Warehouse,
    model: ModelBackend,
) -> dg.MaterializeResult:
    """One LoRA adapter per seed, SFT on BIG5-CHAT (all 10 personas, selected by the system
    instruction). An interrupted training resumes from its last checkpoint."""
    tracker = Tracker(context, warehouse)
    examples = read_sft_examples(store)
    validation = examples[examples.split == "validation"]

    def train_one(base_path, seed, output, work):
        return training.train_sft(
            base_path,
            seeded_sample(examples[examples.split == "train"], config.max_sft_examples, seed)[
                ["prompt", "completion"]
            ],
            output_dir=output,
            lora=lora_spec(config),
            spec=train_spec(config, seed),
            work_dir=work,
            progress=context.log.info,
            device=model.device,
            eval_examples=seeded_sample(validation, VALIDATION_CAP, seed)[["prompt", "completion"]],
        )

    record, reports = _train_adapters(context, "sft_adapter", config, store, model, train_one)
    plot = plots.loss_curves_png(
        {f"seed {r['seed']}": r["loss_curve"] for r in reports},
        store.file("sft_adapter", "loss.png"),
        title="SFT loss",
    )
    return tracker.result(
        data_version=record["data_version"],
        rows=sum(r["examples"] for r in reports),
        artifacts=[store.asset_dir("sft_adapter")],
        config=config,
        model_ids={"base": record["base_model"], "base_fingerprint": record["base_fingerprint"]},
        seeds={"seeds": list(config.seeds)},
        metadata=_training_metadata(reports, plot),
    )


@dg.asset(
    deps=[dpo_preference_pairs, sft_adapter],
    group_name="training",
    kinds={"pytorch", "peft"},
    code_version=hash_source(training, train_spec, lora_spec, _train_adapters),
)
def dpo_adapter(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,  # type: ignore[valid-type]
    store: ArtifactStore,
    warehouse: Warehouse,
    model: ModelBackend,
) -> dg.MaterializeResult:
    """One LoRA adapter per seed, DPO (sigmoid loss, beta from config) on the preference pairs,
    from the base model (the paper) or from the SFT adapter of the same seed."""
    tracker = Tracker(context, warehouse)
    pairs = read_pairs(store)
    columns = ["prompt", "chosen", "rejected"]
    sft = adapter_records(store, "sft_adapter") if config.dpo_init == "sft" else None

    def train_one(base_path, seed, output, work):
        return training.train_dpo(
            base_path,
            seeded_sample(pairs[pairs.split == "train"], config.max_dpo_pairs, seed)[columns],
            output_dir=output,
            lora=lora_spec(config),
            spec=train_spec(config, seed),
            work_dir=work,
            init_adapter=Path(sft["seeds"][str(seed)]["path"]) if sft else None,
            progress=context.log.info,
            device=model.device,
            eval_pairs=seeded_sample(pairs[pairs.split == "validation"], VALIDATION_CAP, seed)[
                columns
            ],
        )

    record, reports = _train_adapters(context, "dpo_adapter", config, store, model, train_one)
    plot = plots.loss_curves_png(
        {f"seed {r['seed']}": r["loss_curve"] for r in reports},
        store.file("dpo_adapter", "loss.png"),
        title="DPO loss",
    )
    rewards = pd.DataFrame(
        [
            {
                "seed": r["seed"],
                "reward_accuracy": r["metrics"].get("rewards/accuracies"),
                "reward_margin": r["metrics"].get("rewards/margins"),
                "validation_reward_accuracy": r["metrics"]
                .get("validation", {})
                .get("eval_rewards/accuracies"),
                "validation_reward_margin": r["metrics"]
                .get("validation", {})
                .get("eval_rewards/margins"),
            }
            for r in reports
        ]
    )
    return tracker.result(
        data_version=record["data_version"],
        rows=sum(r["examples"] for r in reports),
        artifacts=[store.asset_dir("dpo_adapter")],
        config=config,
        model_ids={
            "base": record["base_model"],
            "base_fingerprint": record["base_fingerprint"],
            "init": f"sft_adapter@{sft['data_version']}" if sft else "base",
        },
        seeds={"seeds": list(config.seeds)},
        metadata={
            **_training_metadata(reports, plot),
            "rewards": dg.MetadataValue.md(rewards.round(3).to_markdown(index=False)),
            "reward_accuracy": float(rewards.reward_accuracy.mean()),
            "reward_margin": float(rewards.reward_margin.mean()),
        },
    )


assets = [sft_examples, dpo_preference_pairs, sft_adapter, dpo_adapter]
asset_checks = [preference_pairs_are_valid]
