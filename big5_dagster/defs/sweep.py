"""The DExperts sweep: alpha x formula on a fixed set of scenarios, accuracy and fluency."""

import dagster as dg
import pandas as pd

from big5_dagster.config import Settings, SweepSettings, with_defaults
from big5_dagster.defs import artifacts
from big5_dagster.defs.factory import Stage, versioned_asset
from big5_dagster.defs.tracking import Tracker, progress_logger
from big5_dagster.lib.dialogues import sweep
from big5_dagster.lib.engine.likelihood import continuation_nll, perplexities
from big5_dagster.lib.engine.sampling import SamplingParams
from big5_dagster.lib.prompts import reply_messages
from big5_dagster.lib.report.plots import png_markdown, sweep_curves
from big5_dagster.lib.traits import TRAITS, Persona
from big5_dagster.resources.artifacts import ArtifactStore
from big5_dagster.resources.model_backend import ModelBackend
from big5_dagster.resources.warehouse import Warehouse

SWEEP_FILE = "sweep.parquet"
REPLIES_FILE = "sweep_replies.parquet"


def build(settings: Settings) -> Stage:
    SweepConfig = with_defaults(SweepSettings, settings.sweep)

    @versioned_asset(
        settings,
        deps=["trait_experts", "trait_classifier", "soda_scenarios", "scenario_openers"],
        group_name="dialogues",
        kinds={"pytorch", "duckdb"},
        metadata={
            "warehouse_tables": ["dexperts_sweep", "dexperts_sweep_curve", "dexperts_sweep_replies"]
        },
    )
    def dexperts_sweep(
        context: dg.AssetExecutionContext,
        config: SweepConfig,  # type: ignore[valid-type]
        store: ArtifactStore,
        warehouse: Warehouse,
        model: ModelBackend,
    ) -> dg.MaterializeResult:
        """Every persona's replies to the first scenarios at each alpha x formula (alpha 0:
        plain generation), decoded with the dialogues' sampling settings. Per setting and
        persona: target-trait accuracy (binomial test), off-target drift against the plain
        replies, and fluency: perplexity under the base model given the role-play prompt,
        distinct-2, length and truncation rate. The curve is the users' basis for choosing
        the formula and alpha of big5_chat_replies."""
        tracker = Tracker(context, warehouse, store)
        scenarios = (
            artifacts.read_scenarios(store)
            .sort_values("scenario_id")
            .head(config.n_scenarios)
            .reset_index(drop=True)
        )
        openers = artifacts.read_openers(store).set_index("scenario_id")["opener"]
        records = {trait: artifacts.read_expert_record(store, trait) for trait in TRAITS}
        sampling = SamplingParams(
            max_new_tokens=settings.dialogues.max_new_tokens,
            do_sample=settings.dialogues.do_sample,
            temperature=settings.dialogues.temperature,
            top_p=settings.dialogues.top_p,
            repetition_penalty=settings.dialogues.repetition_penalty,
            seed=settings.dialogues.seed,
        )
        loaded = model.load()
        grid = sweep.sweep_grid(config.alphas, config.formulas)
        replies = sweep.sweep_replies(
            loaded,
            records,
            scenarios,
            openers,
            grid,
            sampling,
            warmup_tokens=settings.dialogues.warmup_tokens,
            expert_path=settings.dialogues.expert_path,
            progress=progress_logger(context, "sweep settings"),
        )
        by_id = scenarios.set_index("scenario_id")
        prompts = [
            reply_messages(
                by_id.loc[r.scenario_id].to_dict(),
                openers[r.scenario_id],
                Persona(r.trait, r.level),
            )
            for r in replies.itertuples()
        ]
        nll, n_tokens = continuation_nll(loaded, prompts, replies.reply.tolist())
        replies["reply_tokens"] = n_tokens
        replies["perplexity"] = perplexities(nll)
        classifier = artifacts.load_trait_classifier(store)
        probabilities = classifier.predict_high_probability(replies.reply.tolist())
        for trait in TRAITS:
            replies[f"p_high_{trait}"] = probabilities[trait].to_numpy()
        summary = sweep.sweep_summary(replies)
        curve = sweep.sweep_curve(summary)
        path = tracker.save_table(summary, SWEEP_FILE, table="dexperts_sweep")
        tracker.save_table(replies, REPLIES_FILE, table="dexperts_sweep_replies", versioned=False)
        tracker.save_table(curve, "curve.parquet", table="dexperts_sweep_curve", versioned=False)
        png = sweep_curves(curve, f"DExperts sweep, {len(scenarios)} scenarios x 10 personas")
        (path.parent / "sweep.png").write_bytes(png)
        return tracker.result(
            rows=len(summary),
            artifacts=[path, path.parent / REPLIES_FILE, path.parent / "sweep.png"],
            model_ids={"base": loaded.model_id, "base_fingerprint": loaded.fingerprint},
            seeds={"seed": settings.dialogues.seed},
            metadata={
                "curve": dg.MetadataValue.md(curve.round(3).to_markdown(index=False)),
                "plot": dg.MetadataValue.md(png_markdown(png, "accuracy and perplexity vs alpha")),
                "by_persona": dg.MetadataValue.md(summary.round(3).to_markdown(index=False)),
                "replies": len(replies),
                "examples": dg.MetadataValue.md(
                    pd.concat([g.head(1) for _, g in replies.groupby(["formula", "alpha"])])[
                        ["formula", "alpha", "persona", "reply"]
                    ].to_markdown(index=False)
                ),
            },
        )

    return Stage([dexperts_sweep])
