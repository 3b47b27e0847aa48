"""SFT examples, DPO preference pairs, and the LoRA adapters trained on them (TRL + PEFT)."""

import shutil
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pandas as pd

from big5_dagster.config import Settings, TrainingSettings, with_defaults
from big5_dagster.defs import artifacts, specs
from big5_dagster.defs.factory import Stage, versioned_asset
from big5_dagster.defs.tracking import Tracker
from big5_dagster.lib.common.files import write_json
from big5_dagster.lib.common.hashing import hash_weights
from big5_dagster.lib.report import figures, plots
from big5_dagster.lib.training import dpo, examples, pair_order, sft
from big5_dagster.lib.training.adapter_sets import AdapterSet, TrainedAdapter
from big5_dagster.lib.training.specs import TrainingReport, reward_row
from big5_dagster.resources.artifacts import ArtifactStore
from big5_dagster.resources.model_backend import ModelBackend
from big5_dagster.resources.warehouse import Warehouse

VALIDATION_CAP = 64  # validation rows scored after training (enough for a stable loss)
TrainOne = Callable[[str, int, Path, Path], TrainingReport]


def seeded_sample(frame: pd.DataFrame, cap: int | None, seed: int) -> pd.DataFrame:
    if cap is None or len(frame) <= cap:
        return frame.reset_index(drop=True)
    return frame.sample(n=cap, random_state=seed).reset_index(drop=True)


def training_pairs(train: pd.DataFrame, config: TrainingSettings, seed: int) -> pd.DataFrame:
    """The DPO training pairs in training order (``training.dpo_pair_order``)."""
    if config.dpo_pair_order == "mirrored":
        return pair_order.mirrored_couples(train, config.max_dpo_pairs, seed)
    return seeded_sample(train, config.max_dpo_pairs, seed)


def train_adapters(
    context: dg.AssetExecutionContext,
    asset: str,
    config: TrainingSettings,
    store: ArtifactStore,
    model: ModelBackend,
    train_one: TrainOne,
) -> tuple[AdapterSet, list[dict]]:
    """Train one adapter per configured seed; write ``adapters.json`` last (atomically)."""
    loaded = model.load()
    base_path = str(loaded.path or loaded.model_id)
    folder = store.asset_dir(asset)
    adapters, reports = {}, []
    for seed in config.seeds:
        output = folder / f"seed-{seed}"
        work = store.root_path / ".work" / asset / f"seed-{seed}"
        context.log.info(f"{asset}: training seed {seed}")
        report = train_one(base_path, seed, output, work)
        adapters[seed] = TrainedAdapter(seed, output, hash_weights(output))
        reports.append({"seed": seed, **report.to_dict()})
    for stale in folder.glob("seed-*"):  # seeds no longer configured
        if int(stale.name.removeprefix("seed-")) not in adapters:
            shutil.rmtree(stale)
    trained = AdapterSet(base_path, loaded.fingerprint, adapters)
    trained.write(folder)
    write_json(reports, folder / "reports.json")
    return trained, reports


def training_metadata(reports: list[dict], title: str) -> dict:
    table = pd.DataFrame(
        [
            {
                "seed": r["seed"],
                "examples": r["examples"],
                "steps": r["steps"],
                "seconds": round(r["seconds"], 1),
                "tokens_per_second": round(r["tokens_per_second"], 1),
                "final_loss": r["final_loss"],
                "untrained_validation_loss": r["metrics"]
                .get("validation_before", {})
                .get("eval_loss"),
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
        "loss_plot": dg.MetadataValue.md(
            plots.markdown_image(
                figures.loss_figure({f"seed {r['seed']}": r for r in reports}, title), title
            )
        ),
    }


def build(settings: Settings) -> Stage:
    TrainingConfig = with_defaults(TrainingSettings, settings.training)

    @versioned_asset(
        settings,
        deps=["big5_chat_dataset"],
        group_name="training",
        kinds={"parquet", "duckdb"},
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
        tracker = Tracker(context, warehouse, store)
        table, dropped = examples.sft_examples(
            artifacts.read_dataset(store),
            model.load().tokenizer,
            config.validation_fraction,
            config.split_seed,
            classifier_filter=settings.dialogues.filter == "classifier",
        )
        path = tracker.save_table(table, artifacts.SFT_EXAMPLES, table="sft_examples")
        return tracker.result(
            rows=len(table),
            artifacts=[path],
            seeds={"split_seed": config.split_seed},
            metadata={
                "splits": table.split.value_counts().to_dict(),
                "filter": settings.dialogues.filter,
                "dropped_flagged": dropped,
                "example_prompt": dg.MetadataValue.md(f"```\n{table.prompt.iloc[0]}\n```")
                if len(table)
                else "",
            },
        )

    @versioned_asset(
        settings,
        deps=["big5_chat_dataset"],
        group_name="training",
        kinds={"parquet", "duckdb"},
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
        tracker = Tracker(context, warehouse, store)
        pairs, dropped = examples.dpo_pairs(
            artifacts.read_dataset(store),
            model.load().tokenizer,
            config.validation_fraction,
            config.split_seed,
            classifier_filter=settings.dialogues.filter == "classifier",
        )
        path = tracker.save_table(pairs, artifacts.DPO_PAIRS, table="dpo_preference_pairs")
        return tracker.result(
            rows=len(pairs),
            artifacts=[path],
            seeds={"split_seed": config.split_seed},
            metadata={
                "splits": pairs.split.value_counts().to_dict(),
                "filter": settings.dialogues.filter,
                "dropped": dropped,
            },
        )

    @dg.asset_check(
        asset=dpo_preference_pairs,
        additional_deps=["big5_chat_dataset"],
        blocking=True,
        description="Every pair: chosen differs from rejected, both sides answer the identical "
        "prompt (same scenario and PersonX line), neither side is empty.",
    )
    def preference_pairs_are_valid(store: ArtifactStore) -> dg.AssetCheckResult:
        pairs = artifacts.read_pairs(store)
        problems = examples.pair_problems(pairs, artifacts.read_dataset(store))
        return dg.AssetCheckResult(
            passed=not any(problems.values()), metadata={**problems, "pairs": len(pairs)}
        )

    @versioned_asset(
        settings,
        deps=["sft_examples"],
        group_name="training",
        kinds={"pytorch", "peft"},
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
        tracker = Tracker(context, warehouse, store)
        table = artifacts.read_sft_examples(store)
        columns = ["prompt", "completion"]
        train, validation = table[table.split == "train"], table[table.split == "validation"]

        def train_one(base_path: str, seed: int, output: Path, work: Path) -> TrainingReport:
            return sft.train_sft(
                base_path,
                seeded_sample(train, config.max_sft_examples, seed)[columns],
                output_dir=output,
                lora=specs.lora_spec(config),
                spec=specs.sft_train_spec(config, seed, model.dtype),
                work_dir=work,
                progress=context.log.info,
                device=model.device,
                eval_examples=seeded_sample(validation, VALIDATION_CAP, seed)[columns],
            )

        trained, reports = train_adapters(context, "sft_adapter", config, store, model, train_one)
        return tracker.result(
            data_version=trained.data_version,
            rows=sum(r["examples"] for r in reports),
            artifacts=[store.asset_dir("sft_adapter")],
            model_ids={"base": trained.base_model, "base_fingerprint": trained.base_fingerprint},
            seeds={"seeds": list(config.seeds)},
            metadata=training_metadata(reports, "SFT loss"),
        )

    @versioned_asset(
        settings,
        deps=["dpo_preference_pairs", "sft_adapter"],
        group_name="training",
        kinds={"pytorch", "peft"},
    )
    def dpo_adapter(
        context: dg.AssetExecutionContext,
        config: TrainingConfig,  # type: ignore[valid-type]
        store: ArtifactStore,
        warehouse: Warehouse,
        model: ModelBackend,
    ) -> dg.MaterializeResult:
        """One LoRA adapter per seed, DPO (sigmoid loss, beta from config) on the preference
        pairs, from the base model (the paper) or from the SFT adapter of the same seed."""
        tracker = Tracker(context, warehouse, store)
        pairs = artifacts.read_pairs(store)
        columns = ["prompt", "chosen", "rejected"]
        init = (
            artifacts.read_adapter_set(store, "sft_adapter") if config.dpo_init == "sft" else None
        )

        def train_one(base_path: str, seed: int, output: Path, work: Path) -> TrainingReport:
            return dpo.train_dpo(
                base_path,
                training_pairs(pairs[pairs.split == "train"], config, seed)[columns],
                output_dir=output,
                lora=specs.lora_spec(config),
                spec=specs.dpo_train_spec(config, seed, model.dtype),
                work_dir=work,
                init_adapter=init.adapters[seed].path if init else None,
                progress=context.log.info,
                device=model.device,
                eval_pairs=seeded_sample(pairs[pairs.split == "validation"], VALIDATION_CAP, seed)[
                    columns
                ],
            )

        trained, reports = train_adapters(context, "dpo_adapter", config, store, model, train_one)
        rewards = pd.DataFrame([reward_row(r) for r in reports])
        return tracker.result(
            data_version=trained.data_version,
            rows=sum(r["examples"] for r in reports),
            artifacts=[store.asset_dir("dpo_adapter")],
            model_ids={
                "base": trained.base_model,
                "base_fingerprint": trained.base_fingerprint,
                "init": f"sft_adapter@{init.data_version}" if init else "base",
            },
            seeds={"seeds": list(config.seeds)},
            metadata={
                **training_metadata(reports, "DPO loss"),
                "rewards": dg.MetadataValue.md(rewards.round(3).to_markdown(index=False)),
                "reward_accuracy": float(rewards.reward_accuracy.mean()),
                "reward_margin": float(rewards.reward_margin.mean()),
            },
        )

    return Stage(
        [sft_examples, dpo_preference_pairs, sft_adapter, dpo_adapter],
        [preference_pairs_are_valid],
    )
