"""Expert generators (one LoRA or full fine-tune per trait) and the trait classifier."""

import dataclasses

import dagster as dg
import pandas as pd

from big5_dagster.config import ClassifierSettings, ExpertSettings, Settings, with_defaults
from big5_dagster.defs import artifacts, specs
from big5_dagster.defs.factory import Stage, versioned_asset
from big5_dagster.defs.tracking import Tracker
from big5_dagster.lib.common.hashing import hash_dir, hash_json
from big5_dagster.lib.engine.loading import load_model
from big5_dagster.lib.engine.sampling import SamplingParams
from big5_dagster.lib.experts import decoding, examples, fitting, quality, records
from big5_dagster.lib.experts.classifier import make_classifier
from big5_dagster.lib.report import figures, plots
from big5_dagster.lib.training.inputs import load_tokenizer
from big5_dagster.partitions import trait_of, trait_partitions
from big5_dagster.resources.artifacts import ArtifactStore
from big5_dagster.resources.model_backend import ModelBackend
from big5_dagster.resources.warehouse import Warehouse

# How the held-out prefixes are completed for the reader and for the quality gate.
COMPLETION_TEMPERATURE, COMPLETION_TOP_P, EXAMPLE_TOKENS = 0.7, 0.9, 40


def expert_base(config: ExpertSettings, model: ModelBackend) -> tuple[str, str]:
    """(path or id the experts train from, its fingerprint)."""
    if config.base_model and config.base_model != model.base_model:
        other = load_model(config.base_model, dtype=model.dtype, device=model.device)
        return str(other.path or other.model_id), other.fingerprint
    loaded = model.load()
    return str(loaded.path or loaded.model_id), loaded.fingerprint


def build(settings: Settings) -> Stage:
    ClassifierConfig = with_defaults(ClassifierSettings, settings.classifier)
    ExpertConfig = with_defaults(ExpertSettings, settings.experts)

    @versioned_asset(
        settings,
        deps=["psychgenerator_posts"],
        group_name="experts",
        kinds={"scikitlearn", "duckdb"},
        metadata={"warehouse_tables": ["trait_classifier_evaluation"]},
    )
    def trait_classifier(
        context: dg.AssetExecutionContext,
        config: ClassifierConfig,  # type: ignore[valid-type]
        store: ArtifactStore,
        warehouse: Warehouse,
    ) -> dg.MaterializeResult:
        """Predicts each trait's level from text; accuracy is measured on held-out posts.

        tiny: TF-IDF + logistic regression per trait (see lib/experts/classifier_base.py for
        why); paper: RoBERTa-large with five regression heads on the normal CDF of the z-scores.
        """
        tracker = Tracker(context, warehouse, store)
        posts = artifacts.read_posts(store)
        folder = store.asset_dir("trait_classifier")
        model = make_classifier(
            specs.classifier_spec(config),
            work_dir=folder.parent / ".trait_classifier-work",
            progress=context.log.info,
        )
        context.log.info(
            f"fitting a {model.kind} classifier on the train split of {len(posts)} posts"
        )
        model.fit(posts)
        model.save(folder / artifacts.CLASSIFIER)
        evaluation = model.evaluate(posts)
        warehouse.replace_table("trait_classifier_evaluation", evaluation)
        accuracy = {row.trait: round(float(row.accuracy), 3) for row in evaluation.itertuples()}
        return tracker.result(
            data_version=hash_dir(folder / artifacts.CLASSIFIER),
            rows=int(evaluation.n.sum()),
            artifacts=[folder / artifacts.CLASSIFIER],
            seeds={"seed": model.spec.seed},
            metadata={
                "heldout_accuracy": dg.MetadataValue.md(evaluation.to_markdown(index=False)),
                "mean_heldout_accuracy": float(pd.Series(accuracy).mean()),
                **{f"accuracy_{trait}": value for trait, value in accuracy.items()},
                "spec": dataclasses.asdict(model.spec),
            },
        )

    @versioned_asset(
        settings,
        partitions_def=trait_partitions,
        deps=["psychgenerator_posts"],
        group_name="experts",
        kinds={"pytorch", "peft"},
    )
    def trait_experts(
        context: dg.AssetExecutionContext,
        config: ExpertConfig,  # type: ignore[valid-type]
        store: ArtifactStore,
        warehouse: Warehouse,
        model: ModelBackend,
    ) -> dg.MaterializeResult:
        """The expert generator(s) of one trait, fine-tuned on the posts in the paper's format:
        instruction "complete the sentence with Big Five personality <Trait> - <level>", the
        first 5 words as input, the rest of the post as output (METHOD.md section 3)."""
        tracker = Tracker(context, warehouse, store)
        trait = trait_of(context)
        posts = artifacts.read_posts(store)
        base_path, base_fingerprint = expert_base(config, model)
        train = examples.expert_examples(
            posts, trait, load_tokenizer(base_path), config.max_examples, config.seed
        )
        names = records.expert_names(config.adapters)
        key = hash_json([context.op_config, base_fingerprint, len(train)])
        work = store.root_path / ".work" / "trait_experts" / f"{trait}-{key}"
        fitting.train_experts(
            base_path,
            train,
            names,
            lora=specs.lora_spec(config) if config.mode == "lora" else None,
            spec=specs.expert_train_spec(config),
            work=work,
            device=model.device,
            log=context.log.info,
        )
        record, reports = fitting.assemble_experts(
            work,
            store.asset_dir("trait_experts", trait),
            trait=trait,
            mode=config.mode,
            adapters=config.adapters,
            names=names,
            base_model=base_path,
            base_fingerprint=base_fingerprint,
        )
        # Example completions of held-out prefixes at high and at low, for a reader to compare.
        prefixes = examples.heldout_prefixes(
            posts, trait, config.n_example_completions, config.seed
        )
        sampling = SamplingParams(
            max_new_tokens=EXAMPLE_TOKENS,
            temperature=COMPLETION_TEMPERATURE,
            top_p=COMPLETION_TOP_P,
            seed=config.seed,
        )
        completions = decoding.expert_completions(model.load(), record, prefixes, sampling)
        completions["text"] = completions.prefix + completions.completion
        summary = fitting.training_summary(reports)
        return tracker.result(
            data_version=record.data_version,
            rows=len(train),
            artifacts=[record.folder],
            model_ids={"base": base_path, "base_fingerprint": base_fingerprint},
            seeds={"seed": config.seed},
            metadata={
                "training": dg.MetadataValue.md(summary.to_markdown(index=False)),
                "loss_curve": dg.MetadataValue.json(
                    {f: r["loss_curve"] for f, r in reports.items()}
                ),
                "loss_plot": dg.MetadataValue.md(
                    plots.markdown_image(
                        figures.loss_figure(reports, f"{trait} expert training loss"),
                        f"{trait} expert loss curves",
                    )
                ),
                "steps": int(summary.steps.sum()),
                "train_seconds": float(summary.seconds.sum()),
                "example_completions": dg.MetadataValue.md(
                    completions[["target_level", "text"]].to_markdown(index=False)
                ),
            },
        )

    @dg.asset_check(
        asset=trait_experts,
        additional_deps=[trait_classifier],
        partitions_def=trait_partitions,
        blocking=False,
        description="Expert quality gate: the classifier reads the requested level in the "
        "experts' completions of held-out prefixes (on-target) and not in other traits.",
    )
    def expert_quality_gate(
        context: dg.AssetCheckExecutionContext,
        config: ExpertConfig,  # type: ignore[valid-type]
        store: ArtifactStore,
        warehouse: Warehouse,
        model: ModelBackend,
    ) -> dg.AssetCheckResult:
        trait = context.partition_key
        record = artifacts.read_expert_record(store, trait)
        prefixes = examples.heldout_prefixes(
            artifacts.read_posts(store), trait, config.gate_prefixes, config.seed
        )
        sampling = SamplingParams(
            max_new_tokens=config.gate_max_new_tokens,
            temperature=COMPLETION_TEMPERATURE,
            top_p=COMPLETION_TOP_P,
            seed=config.seed,
        )
        completions = decoding.expert_completions(model.load(), record, prefixes, sampling)
        texts = (completions.prefix + completions.completion).tolist()
        predicted = artifacts.load_trait_classifier(store).predict_levels(texts)
        table = quality.gate_table(predicted, completions, trait)
        warehouse.replace_rows("expert_quality", table.assign(trait=trait), where={"trait": trait})
        on_target = quality.pooled_accuracy(table, on_target=True)
        off_target = quality.pooled_accuracy(table, on_target=False)
        passed = on_target >= config.gate_min_accuracy
        return dg.AssetCheckResult(
            passed=passed,
            severity=dg.AssetCheckSeverity.WARN,
            description=(
                f"on-target accuracy {on_target:.2f} "
                + (">=" if passed else "<")
                + f" threshold {config.gate_min_accuracy:.2f}; off-target {off_target:.2f} (chance 0.5)"
            ),
            metadata={
                "on_target_accuracy": on_target,
                "off_target_accuracy": off_target,
                "threshold": config.gate_min_accuracy,
                "n_completions": len(completions),
                "by_trait_and_level": dg.MetadataValue.md(table.to_markdown(index=False)),
                "examples": dg.MetadataValue.md(
                    completions.assign(text=texts)[["target_level", "text"]]
                    .head(6)
                    .to_markdown(index=False)
                ),
            },
        )

    return Stage([trait_classifier, trait_experts], [expert_quality_gate])
