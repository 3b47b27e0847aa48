"""Expert generators (one LoRA or full fine-tune per trait) and the trait classifier."""

import contextlib
import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pandas as pd

from big5_dagster.config import (
    ClassifierSettings,
    ExpertSettings,
    active_settings,
    with_defaults,
)
from big5_dagster.defs.corpora import psychgenerator_posts, read_posts
from big5_dagster.defs.tracking import Tracker
from big5_dagster.lib import classifier, dexperts, experts, plots, prompts, training
from big5_dagster.lib.model import LoadedModel, SamplingParams
from big5_dagster.lib.storage import (
    atomic_dir,
    hash_bytes,
    hash_dir,
    hash_json,
    hash_source,
    write_json,
)
from big5_dagster.lib.traits import LEVELS, TRAITS
from big5_dagster.partitions import trait_of, trait_partitions
from big5_dagster.resources.artifacts import ArtifactStore
from big5_dagster.resources.model_backend import ModelBackend
from big5_dagster.resources.warehouse import Warehouse

settings = active_settings()
ClassifierConfig = with_defaults(ClassifierSettings, settings.classifier)
ExpertConfig = with_defaults(ExpertSettings, settings.experts)
EXPERT_RECORD = "expert.json"


def classifier_spec(config: ClassifierSettings) -> classifier.ClassifierSpec:
    return classifier.ClassifierSpec(**config.model_dump())


@dg.asset(
    deps=[psychgenerator_posts],
    group_name="experts",
    kinds={"scikitlearn", "duckdb"},
    code_version=hash_source(classifier),
    metadata={"warehouse_tables": ["trait_classifier_evaluation"]},
)
def trait_classifier(
    context: dg.AssetExecutionContext,
    config: ClassifierConfig,  # type: ignore[valid-type]
    store: ArtifactStore,
    warehouse: Warehouse,
) -> dg.MaterializeResult:
    """Predicts each trait's level from text; accuracy is measured on held-out posts.

    tiny: TF-IDF + logistic regression per trait (see lib/classifier.py for why);
    paper: RoBERTa-large with five regression heads on the normal CDF of the z-scores.
    """
    tracker = Tracker(context, warehouse)
    posts = read_posts(store)
    folder = store.asset_dir("trait_classifier")
    model = classifier.make_classifier(
        classifier_spec(config), work_dir=folder.parent / ".trait_classifier-work"
    )
    context.log.info(f"fitting a {config.kind} classifier on the train split of {len(posts)} posts")
    model.fit(posts)
    model.save(folder / "model")
    evaluation = model.evaluate(posts)
    warehouse.replace_table("trait_classifier_evaluation", evaluation)
    accuracy = {row.trait: round(float(row.accuracy), 3) for row in evaluation.itertuples()}
    return tracker.result(
        data_version=hash_dir(folder / "model"),
        rows=int(evaluation.n.sum()),
        artifacts=[folder / "model"],
        config=config,
        seeds={"seed": config.seed},
        metadata={
            "heldout_accuracy": dg.MetadataValue.md(evaluation.to_markdown(index=False)),
            "mean_heldout_accuracy": float(pd.Series(accuracy).mean()),
            **{f"accuracy_{trait}": value for trait, value in accuracy.items()},
            "spec": dataclasses.asdict(model.spec),
        },
    )


def load_trait_classifier(store: ArtifactStore) -> classifier.TraitClassifier:
    folder = store.file("trait_classifier", "model")
    if not folder.exists():
        raise FileNotFoundError(f"{folder} does not exist: materialize trait_classifier first")
    return classifier.load_classifier(folder)


def expert_names(adapters: str) -> dict[str, str]:
    """Level -> the folder (and adapter name) of the expert that writes it."""
    if adapters == "per_level":
        return {level: f"expert-{level}" for level in LEVELS}
    return {level: "expert" for level in LEVELS}


def expert_base(config: ExpertSettings, model: ModelBackend) -> tuple[str, str]:
    """(path or id the experts train from, its fingerprint)."""
    if config.base_model and config.base_model != model.base_model:
        from big5_dagster.lib.model import load_model

        other = load_model(config.base_model, dtype=model.dtype, device=model.device)
        return str(other.path or other.model_id), other.fingerprint
    loaded = model.load()
    return str(loaded.path or loaded.model_id), loaded.fingerprint


def weights_version(folder: Path) -> str:
    """Hash of the weight files only (peft's adapter_config.json records absolute paths)."""
    files = sorted(folder.rglob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no weights (*.safetensors) in {folder}")
    from big5_dagster.lib.storage import hash_file

    return hash_bytes(*(f"{f.relative_to(folder)}:{hash_file(f)}".encode() for f in files))


@dg.asset(
    partitions_def=trait_partitions,
    deps=[psychgenerator_posts],
    group_name="experts",
    kinds={"pytorch", "peft"},
    code_version=hash_source(experts, training, prompts.expert_messages, expert_names),
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
    tracker = Tracker(context, warehouse)
    trait = trait_of(context)
    posts = read_posts(store)
    base_path, base_fingerprint = expert_base(config, model)
    tokenizer = training.load_tokenizer(base_path)
    examples = experts.expert_examples(posts, trait, tokenizer, config.max_examples, config.seed)
    names = expert_names(config.adapters)
    lora = (
        training.LoraSpec(r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout)
        if config.mode == "lora"
        else None
    )
    spec = training.TrainSpec(
        epochs=config.epochs,
        learning_rate=config.learning_rate,
        batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        max_length=config.max_length,
        seed=config.seed,
    )
    # Finished experts and checkpoints live in a work folder keyed by the settings, so an
    # interrupted partition resumes; the partition's folder is swapped in whole at the end.
    work = (
        store.root_path
        / ".work"
        / "trait_experts"
        / (f"{trait}-" + hash_json([config.model_dump(), base_fingerprint, len(examples)]))
    )
    reports: dict[str, training.TrainingReport] = {}
    for folder in sorted(set(names.values())):
        levels = [lv for lv, name in names.items() if name == folder]
        rows = examples[examples.level.isin(levels)].reset_index(drop=True)
        done = work / folder / "model"
        if (done / "run_settings.json").exists():
            context.log.info(f"{folder}: already trained in {done}, reusing it")
            continue
        context.log.info(f"{folder}: training on {len(rows)} examples ({', '.join(levels)})")
        reports[folder] = training.train_sft(
            base_path,
            rows[["prompt", "completion"]],
            output_dir=done,
            lora=lora,
            spec=spec,
            work_dir=work / folder / "checkpoints",
            progress=context.log.info,
            device=model.device,
        )
        write_json(reports[folder].to_dict(), work / folder / "report.json")

    partition_dir = store.asset_dir("trait_experts", trait)
    with atomic_dir(partition_dir) as tmp:
        versions = {}
        for folder in sorted(set(names.values())):
            shutil.copytree(work / folder / "model", tmp / folder)
            shutil.copy(work / folder / "report.json", tmp / f"{folder}.report.json")
            versions[folder] = weights_version(tmp / folder)
        record = {
            "trait": trait,
            "mode": config.mode,
            "adapters": config.adapters,
            "experts": names,
            "base_model": base_path,
            "base_fingerprint": base_fingerprint,
            "data_version": hash_json(versions),
        }
        (tmp / EXPERT_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True))
        all_reports = {
            f: json.loads((work / f / "report.json").read_text()) for f in sorted(versions)
        }
        plots.loss_curves_png(
            {f: r["loss_curve"] for f, r in all_reports.items()},
            tmp / "loss.png",
            title=f"{trait} expert training loss",
        )
    shutil.rmtree(work, ignore_errors=True)

    # Example completions of held-out prefixes at high and at low, for a reader to compare.
    prefixes = experts.heldout_prefixes(posts, trait, config.n_example_completions, config.seed)
    sampling = SamplingParams(max_new_tokens=40, temperature=0.7, top_p=0.9, seed=config.seed)
    completions = expert_completions(model, partition_dir, record, trait, prefixes, sampling)
    completions["text"] = completions.prefix + completions.completion

    summary = pd.DataFrame(
        [
            {
                "expert": f,
                "steps": r["steps"],
                "seconds": round(r["seconds"], 1),
                "tokens_per_second": round(r["tokens_per_second"], 1),
                "first_loss": r["loss_curve"][0][1] if r["loss_curve"] else None,
                "final_loss": r["final_loss"],
            }
            for f, r in all_reports.items()
        ]
    )
    return tracker.result(
        data_version=record["data_version"],
        rows=len(examples),
        artifacts=[partition_dir],
        config=config,
        model_ids={"base": base_path, "base_fingerprint": base_fingerprint},
        seeds={"seed": config.seed},
        metadata={
            "training": dg.MetadataValue.md(summary.to_markdown(index=False)),
            "loss_curve": dg.MetadataValue.json(
                {f: r["loss_curve"] for f, r in all_reports.items()}
            ),
            "loss_plot": dg.MetadataValue.path(str(partition_dir / "loss.png")),
            "steps": int(summary.steps.sum()),
            "train_seconds": float(summary.seconds.sum()),
            "example_completions": dg.MetadataValue.md(
                completions[["target_level", "text"]].to_markdown(index=False)
            ),
        },
    )


def expert_record(store: ArtifactStore, trait: str) -> tuple[Path, dict]:
    """(the trait's expert folder, its expert.json record)."""
    folder = store.asset_dir("trait_experts", trait)
    path = folder / EXPERT_RECORD
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: materialize trait_experts[{trait}] first")
    return folder, json.loads(path.read_text())


@contextlib.contextmanager
def attached_experts(loaded: LoadedModel, folder: Path, record: dict) -> Iterator[object]:
    """The base model with the trait's LoRA expert(s) attached (adapter name = folder name)."""
    if record["mode"] != "lora" or record["base_fingerprint"] != loaded.fingerprint:
        raise ValueError(
            f"{folder}: the experts are not LoRA adapters on the pipeline's base model "
            f"(mode {record['mode']!r}); load them as separate models"
        )
    names = sorted(set(record["experts"].values()))
    with dexperts.lora_adapter(loaded.model, {n: folder / n for n in names}) as peft_model:
        yield peft_model


def load_expert_models(folder: Path, record: dict, device: str) -> dict[str, object]:
    """Level -> a separate expert model (full fine-tunes, or LoRA on another base, merged)."""
    from big5_dagster.lib.model import load_model

    models: dict[str, object] = {}
    for level, name in record["experts"].items():
        if name not in models:
            if record["mode"] == "full":
                models[name] = load_model(str(folder / name), device=device).model
            else:
                models[name] = training.load_adapted_model(
                    record["base_model"], folder / name, device=device, merge=True
                ).model
        models[level] = models[name]
    return {level: models[level] for level in record["experts"]}


def expert_completions(
    model: ModelBackend,
    folder: Path,
    record: dict,
    trait: str,
    prefixes: pd.DataFrame,
    sampling: SamplingParams,
) -> pd.DataFrame:
    """Held-out prefixes completed by the trait's expert(s) at high and at low."""
    loaded = model.load()
    frames = []
    if record["mode"] == "lora" and record["base_fingerprint"] == loaded.fingerprint:
        with attached_experts(loaded, folder, record) as peft_model:
            for level in LEVELS:
                peft_model.set_adapter(record["experts"][level])
                expert = dataclasses.replace(loaded, model=peft_model)
                frames.append(_completions_at(expert, trait, prefixes, level, sampling))
    else:
        separate = load_expert_models(folder, record, device=str(loaded.device))
        for level in LEVELS:
            expert = dataclasses.replace(loaded, model=separate[level])
            frames.append(_completions_at(expert, trait, prefixes, level, sampling))
    return pd.concat(frames, ignore_index=True)


def _completions_at(
    expert: LoadedModel, trait: str, prefixes: pd.DataFrame, level: str, sampling: SamplingParams
) -> pd.DataFrame:
    outputs = experts.complete_prefixes(expert, trait, prefixes.prefix.tolist(), level, sampling)
    return pd.DataFrame(
        {
            "post_id": prefixes.post_id,
            "true_level": prefixes.level,
            "target_level": level,
            "prefix": prefixes.prefix,
            "completion": [o.text for o in outputs],
        }
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
    folder, record = expert_record(store, trait)
    trait_model = load_trait_classifier(store)
    prefixes = experts.heldout_prefixes(read_posts(store), trait, config.gate_prefixes, config.seed)
    sampling = SamplingParams(
        max_new_tokens=config.gate_max_new_tokens, temperature=0.7, top_p=0.9, seed=config.seed
    )
    completions = expert_completions(model, folder, record, trait, prefixes, sampling)
    texts = (completions.prefix + completions.completion).tolist()
    predicted = trait_model.predict_levels(texts)
    rows = []
    for measured in TRAITS:
        hits = predicted[measured].to_numpy() == completions.target_level.to_numpy()
        for level in LEVELS:
            mask = (completions.target_level == level).to_numpy()
            rows.append(
                {
                    "measured_trait": measured,
                    "on_target": measured == trait,
                    "requested_level": level,
                    "n": int(mask.sum()),
                    "accuracy": float(hits[mask].mean()),
                }
            )
    table = pd.DataFrame(rows)
    warehouse.replace_rows("expert_quality", table.assign(trait=trait), where={"trait": trait})
    on_target = float(
        table[table.on_target].eval("accuracy * n").sum() / table[table.on_target].n.sum()
    )
    off = table[~table.on_target]
    off_target = float(off.eval("accuracy * n").sum() / off.n.sum())
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


assets = [trait_classifier, trait_experts]
asset_checks = [expert_quality_gate]
