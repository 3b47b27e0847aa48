"""Activation steering: persona vectors from the BIG5-CHAT dialogues (the steering_* methods
add them), and the layer x coefficient sweep their default is chosen from."""

import dagster as dg
import pandas as pd

from big5_dagster.config import Settings, SteeringSettings, with_defaults
from big5_dagster.defs import artifacts
from big5_dagster.defs.evaluation import condition_model, persona_vectors_for
from big5_dagster.defs.expressed import EVALUATION_SCENARIOS, REPLIES_TABLE
from big5_dagster.defs.factory import Stage, versioned_asset
from big5_dagster.defs.tracking import Tracker, progress_logger
from big5_dagster.lib.common.hashing import hash_file
from big5_dagster.lib.dialogues import sweep
from big5_dagster.lib.engine.likelihood import continuation_nll, perplexities
from big5_dagster.lib.engine.sampling import SamplingParams
from big5_dagster.lib.engine.steering import last_prompt_states
from big5_dagster.lib.personality import expressed, steering_grid, trait_directions
from big5_dagster.lib.personality.conditions import by_model_change
from big5_dagster.lib.report.plots import png_markdown, sweep_curves
from big5_dagster.lib.traits import TRAITS
from big5_dagster.resources.artifacts import ArtifactStore
from big5_dagster.resources.model_backend import ModelBackend
from big5_dagster.resources.warehouse import Warehouse


def build(settings: Settings) -> Stage:
    SteeringConfig = with_defaults(SteeringSettings, settings.steering)

    @versioned_asset(
        settings,
        deps=["big5_chat_dataset"],
        group_name="steering",
        kinds={"pytorch", "safetensors"},
        metadata={"warehouse_tables": ["persona_vector_norms"]},
    )
    def persona_vectors(
        context: dg.AssetExecutionContext,
        config: SteeringConfig,  # type: ignore[valid-type]
        store: ArtifactStore,
        warehouse: Warehouse,
        model: ModelBackend,
    ) -> dg.MaterializeResult:
        """Per trait and decoder layer two directions, in one safetensors file: grounded (mean
        state over the high minus the low BIG5-CHAT reply of the same train scenarios, no
        persona instruction) and prompted (the same replies under the high minus the low
        persona instruction); and each layer's typical residual norm, which scales steering.
        Per trait and layer: both norms and the cosine between the two kinds."""
        tracker = Tracker(context, warehouse, store)
        loaded = model.load()
        vectors = trait_directions.compute_persona_vectors(
            loaded,
            artifacts.read_dataset(store),
            max_scenarios=config.max_scenarios,
            seed=config.seed,
            classifier_filter=settings.dialogues.filter == "classifier",
            batch_size=config.batch_size,
        )
        path = vectors.save(store.file("persona_vectors", artifacts.PERSONA_VECTORS))
        summary = vectors.summary()
        tracker.save_table(summary, "norms.parquet", table="persona_vector_norms", versioned=False)
        cosine = summary.pivot_table(index="layer", columns="trait", values="cosine")
        return tracker.result(
            data_version=hash_file(path),
            rows=len(summary),
            artifacts=[path],
            model_ids={"base": loaded.model_id, "base_fingerprint": loaded.fingerprint},
            seeds={"seed": config.seed},
            metadata={
                "scenarios_per_trait": dg.MetadataValue.json(vectors.n_scenarios),
                "layers": len(vectors.layers),
                "cosine_grounded_vs_prompted": dg.MetadataValue.md(
                    cosine.round(3).reset_index().to_markdown(index=False)
                ),
                "norms": dg.MetadataValue.md(summary.round(3).to_markdown(index=False)),
            },
        )

    @versioned_asset(
        settings,
        deps=["persona_vectors", "big5_chat_dataset", "trait_classifier"],
        group_name="steering",
        kinds={"pytorch", "duckdb"},
        metadata={"warehouse_tables": ["steering_sweep", "steering_sweep_curve"]},
    )
    def steering_sweep(
        context: dg.AssetExecutionContext,
        config: SteeringConfig,  # type: ignore[valid-type]
        store: ArtifactStore,
        warehouse: Warehouse,
        model: ModelBackend,
    ) -> dg.MaterializeResult:
        """Every persona's steered replies (no instruction) to the first test-split scenarios
        of the BIG5-CHAT dataset: the grounded vectors at every sweep layer x coef, the
        prompted ones at the configured layer, and the unsteered reply (coef 0). Per setting
        and persona: target-trait accuracy by the trait classifier, off-target drift, and
        fluency (perplexity under the unsteered model given the same prompt, distinct-2).
        The default layer and coef (steering.layer, steering.coef) are chosen from it."""
        tracker = Tracker(context, warehouse, store)
        scenarios = steering_grid.held_out_scenarios(
            artifacts.read_dataset(store), config.sweep_n_scenarios
        )
        vectors = artifacts.read_persona_vectors(store)
        sampling = SamplingParams(
            max_new_tokens=settings.expressed.max_new_tokens,
            temperature=settings.expressed.temperature,
            top_p=settings.expressed.top_p,
            repetition_penalty=settings.expressed.repetition_penalty,
            seed=config.seed,
        )
        grid = steering_grid.steering_grid(config.sweep_layers, config.sweep_coefs, config.layer)
        loaded = model.load()
        replies = steering_grid.steering_sweep_replies(
            loaded,
            vectors,
            scenarios,
            grid,
            sampling,
            batch_size=settings.expressed.batch_size,
            progress=progress_logger(context, "steering settings"),
        )
        prompts = [[{"role": "user", "content": o}] for o in replies.opener]
        nll, n_tokens = continuation_nll(loaded, prompts, replies.reply.tolist())
        replies["reply_tokens"] = n_tokens
        replies["perplexity"] = perplexities(nll)
        probabilities = artifacts.load_trait_classifier(store).predict_high_probability(
            replies.reply.tolist()
        )
        for trait in TRAITS:
            replies[f"p_high_{trait}"] = probabilities[trait].to_numpy()
        summary = sweep.sweep_summary(replies)
        labels = list(dict.fromkeys(steering_grid.setting_label(v, layer) for v, layer, _ in grid))
        curve = sweep.sweep_curve(summary, labels)
        chosen = steering_grid.chosen_setting(curve)
        path = tracker.save_table(summary, "steering_sweep.parquet", table="steering_sweep")
        tracker.save_table(curve, "curve.parquet", table="steering_sweep_curve", versioned=False)
        png = sweep_curves(
            curve,
            f"steering sweep, {len(scenarios)} held-out scenarios x 10 personas",
            xlabel="coef (x typical residual norm)",
        )
        (path.parent / "sweep.png").write_bytes(png)
        return tracker.result(
            rows=len(summary),
            artifacts=[path, path.parent / "sweep.png"],
            model_ids={"base": loaded.model_id, "base_fingerprint": loaded.fingerprint},
            seeds={"seed": config.seed},
            metadata={
                "curve": dg.MetadataValue.md(curve.round(3).to_markdown(index=False)),
                "chosen": dg.MetadataValue.md(
                    chosen.round(3).to_markdown(index=False)
                    if len(chosen)
                    else "no grounded setting keeps the replies fluent"
                ),
                "plot": dg.MetadataValue.md(png_markdown(png, "accuracy and perplexity vs coef")),
                "replies": len(replies),
                "examples": dg.MetadataValue.md(
                    pd.concat([g.head(1) for _, g in replies.groupby(["formula", "alpha"])])[
                        ["formula", "alpha", "persona", "reply"]
                    ].to_markdown(index=False)
                ),
            },
        )

    @versioned_asset(
        settings,
        deps=[
            "persona_vectors",
            "expressed_personality",
            "evaluation_scenarios",
            "big5_chat_dataset",
            "sft_adapter",
            "dpo_adapter",
        ],
        group_name="steering",
        kinds={"pytorch", "duckdb"},
        metadata={"warehouse_tables": ["persona_projections", "projection_correlations"]},
    )
    def persona_projections(
        context: dg.AssetExecutionContext,
        config: SteeringConfig,  # type: ignore[valid-type]
        store: ArtifactStore,
        warehouse: Warehouse,
        model: ModelBackend,
    ) -> dg.MaterializeResult:
        """Monitoring, the persona vectors' other claim: for every method and condition with
        expressed replies, the last prompt token's hidden state at the steering layer (under
        the condition's adapter or vector) projected on each trait's grounded direction, and
        per method and trait its Spearman correlation with the trait classifier's P(high) of
        the reply written from that prompt."""
        tracker = Tracker(context, warehouse, store)
        if not warehouse.table_exists(REPLIES_TABLE):
            raise FileNotFoundError("no expressed replies yet: materialize expressed_personality")
        replies = warehouse.query(f"SELECT * FROM {REPLIES_TABLE}")
        scenarios = pd.read_parquet(
            artifacts.upstream_file(store, "evaluation_scenarios", EVALUATION_SCENARIOS)
        )
        first = scenarios.sort_values("scenario_id").head(config.monitor_n_scenarios)
        vectors = artifacts.read_persona_vectors(store)
        loaded = model.load()
        frames = []
        for method in replies.method.unique():
            conditions, adapter_paths = artifacts.method_conditions(
                store,
                method,
                # the conditions expressed_personality replied under
                settings.expressed.n_demonstrations,
                settings.evaluation.seed,
                settings.dialogues.filter == "classifier",
                steering=(config.layer, config.coef),
            )
            steering_vectors = persona_vectors_for(store, method)
            for group in by_model_change(conditions):
                with condition_model(loaded, group[0], adapter_paths, steering_vectors) as changed:
                    for condition in group:
                        prompts = [expressed.reply_messages(condition, o) for o in first.opener]
                        states = last_prompt_states(changed, prompts, batch_size=config.batch_size)
                        layer = vectors.layers.index(config.layer)
                        projected = trait_directions.projections(
                            states[:, layer], vectors, config.layer
                        )
                        frames.append(
                            projected.assign(
                                method=method,
                                condition=condition.label,
                                persona=condition.persona,
                                scenario_id=first.scenario_id.to_numpy(),
                            )
                        )
        projected = pd.concat(frames, ignore_index=True)
        p_high = [c for c in replies.columns if c.startswith(expressed.P_HIGH)]
        rows = projected.merge(
            replies[["condition", "scenario_id", *p_high]], on=["condition", "scenario_id"]
        )
        correlations = trait_directions.projection_correlations(rows)
        path = tracker.save_table(rows, "projections.parquet", table="persona_projections")
        tracker.save_table(
            correlations,
            "correlations.parquet",
            table="projection_correlations",
            versioned=False,
        )
        return tracker.result(
            rows=len(rows),
            artifacts=[path],
            model_ids={"base": loaded.model_id, "base_fingerprint": loaded.fingerprint},
            metadata={
                "layer": config.layer,
                "correlations": dg.MetadataValue.md(
                    correlations.round(3).to_markdown(index=False, missingval="not estimable")
                ),
            },
        )

    return Stage([persona_vectors, steering_sweep, persona_projections])
