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

# The gate's completions sample from the top-p nucleus at the gate's temperature.
COMPLETION_TOP_P = 0.9


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
            posts,
            trait,
            load_tokenizer(base_path),
            config.max_examples,
            config.seed,
            extreme_share=config.extreme_share,
            system_prompt=config.system_prompt,
        )
        names = records.expert_names(config.adapters)
        key = hash_json([context.op_config, base_fingerprint, len(train)])
        work = store.root_path / ".work" / "trait_experts" / f"{trait}-{key}"
        fitting.train_experts(
            base_path,
            train,
            names,
            lora=specs.lora_spec(config) if config.mode == "lora" else None,
            spec=specs.expert_train_spec(config, model.dtype),
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
            system_prompt=config.system_prompt,
        )
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
                "training_posts": dg.MetadataValue.md(
                    train.assign(text=train.prompt.str.rsplit("\n", n=1).str[-1])
                    .groupby("level")
                    .head(2)[["level", "text", "completion"]]
                    .to_markdown(index=False)
                ),
            },
        )

    @dg.asset_check(
        asset=trait_experts,
        additional_deps=[trait_classifier],
        partitions_def=trait_partitions,
        blocking=False,
        description="Expert quality gate: at EACH requested level the classifier reads that "
        "level in the experts' completions of held-out prefixes (on-target accuracy >= the "
        "threshold, one-sided binomial p below the limit); off-target beside the corpus's own.",
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
        posts = artifacts.read_posts(store)
        prefixes = examples.heldout_prefixes(
            posts, trait, max(1, config.gate_prefixes // 2), config.seed
        )
        sampling = SamplingParams(
            max_new_tokens=config.gate_max_new_tokens,
            temperature=config.gate_temperature,
            top_p=COMPLETION_TOP_P,
            seed=config.seed,
        )
        completions = decoding.expert_completions(model.load(), record, prefixes, sampling)
        texts = (completions.prefix + completions.completion).tolist()
        classifier = artifacts.load_trait_classifier(store)
        probabilities = classifier.predict_high_probability(texts)
        predicted = classifier.predict_levels(texts)
        table = quality.gate_table(
            predicted,
            completions,
            trait,
            corpus_predicted=classifier.predict_levels(prefixes.text.tolist()),
            corpus_levels=prefixes.level,
        )
        levels = quality.gate_levels(
            table, trait, config.gate_min_accuracy, config.gate_max_p_value
        )
        warehouse.replace_rows("expert_quality", table.assign(trait=trait), where={"trait": trait})
        warehouse.replace_rows("expert_gate", levels, where={"trait": trait})
        warehouse.replace_rows(
            "expert_gate_completions",
            completions.assign(trait=trait, text=texts).join(
                probabilities.add_prefix("p_high_").set_axis(completions.index)
            ),
            where={"trait": trait},
        )
        passed = bool(levels.passed.all())
        verdicts = "; ".join(
            f"{r.requested_level} {r.on_target_accuracy:.2f} (p={r.binom_p:.1g}, off-target "
            f"{r.off_target_accuracy:.2f} vs corpus {r.corpus_off_target_accuracy:.2f})"
            for r in levels.itertuples()
        )
        return dg.AssetCheckResult(
            passed=passed,
            severity=dg.AssetCheckSeverity.WARN,
            description=(
                f"on-target accuracy per level: {verdicts}; "
                + ("every level passes" if passed else "FAILS")
                + f" (threshold {config.gate_min_accuracy:.2f}, p < {config.gate_max_p_value})"
            ),
            metadata={
                "on_target_accuracy_high": float(levels.on_target_accuracy.iloc[0]),
                "on_target_accuracy_low": float(levels.on_target_accuracy.iloc[1]),
                "min_on_target_accuracy": float(levels.on_target_accuracy.min()),
                "max_binom_p": float(levels.binom_p.max()),
                "off_target_accuracy": float(levels.off_target_accuracy.mean()),
                "corpus_off_target_accuracy": float(levels.corpus_off_target_accuracy.mean()),
                "threshold": config.gate_min_accuracy,
                "n_completions": len(completions),
                "by_level": dg.MetadataValue.md(levels.round(4).to_markdown(index=False)),
                "by_trait_and_level": dg.MetadataValue.md(table.round(3).to_markdown(index=False)),
                "examples": dg.MetadataValue.md(
                    completions.assign(text=texts)[["target_level", "text"]]
                    .groupby("target_level")
                    .head(3)
                    .to_markdown(index=False)
                ),
            },
        )

    return Stage([trait_classifier, trait_experts], [expert_quality_gate])
