"""Seed corpora: PsychGenerator posts, SODA scenarios, personality inventories."""

import dagster as dg
import pandas as pd

from big5_dagster.config import (
    InventorySettings,
    PostsSettings,
    ScenarioSettings,
    Settings,
    with_defaults,
)
from big5_dagster.defs import artifacts
from big5_dagster.defs.factory import Stage, versioned_asset
from big5_dagster.defs.sql_models import WAREHOUSE_TABLES
from big5_dagster.defs.tracking import Tracker
from big5_dagster.lib.common.files import write_json
from big5_dagster.lib.common.hashing import hash_json
from big5_dagster.lib.corpora import labels, post_source, scenario_source, summaries
from big5_dagster.lib.personality import human_reference, inventory, psychobench
from big5_dagster.lib.traits import TRAITS
from big5_dagster.resources.artifacts import ArtifactStore
from big5_dagster.resources.warehouse import Warehouse


def markdown_table(df: pd.DataFrame) -> dg.MetadataValue:
    return dg.MetadataValue.md(df.to_markdown(index=False))


def build(settings: Settings) -> Stage:
    PostsConfig = with_defaults(PostsSettings, settings.posts)
    ScenarioConfig = with_defaults(ScenarioSettings, settings.scenarios)
    InventoryConfig = with_defaults(InventorySettings, settings.inventories)

    @versioned_asset(
        settings,
        group_name="corpora",
        kinds={"parquet", "duckdb"},
        metadata={WAREHOUSE_TABLES: ["psychgenerator_posts"]},
        pool="warehouse",
    )
    def psychgenerator_posts(
        context: dg.AssetExecutionContext,
        config: PostsConfig,  # type: ignore[valid-type]
        store: ArtifactStore,
        warehouse: Warehouse,
    ) -> dg.MaterializeResult:
        """Posts with Big Five z-scores, labelled low/high by tertile and split 95/5 per trait.

        tiny: seeded synthetic posts whose wording carries the author's trait scores;
        paper: the PsychAdapter posts from the Hugging Face hub (METHOD.md section 2).
        """
        tracker = Tracker(context, warehouse, store)
        raw, source_name = post_source.posts_from_source(
            config.source,
            n_posts=config.n_posts,
            seed=config.seed,
            hub_dataset=config.hub_dataset,
            hub_split=config.hub_split,
            local_path=config.local_path,
            max_posts=config.max_posts,
            cache_dir=str(store.root_path / "hf_cache"),
        )
        context.log.info(f"{len(raw)} posts from {source_name}; labelling tertiles and splitting")
        posts = labels.label_and_split(raw, config.split_seed, config.test_fraction)
        # Validation happened above: only a complete, valid table reaches disk and warehouse.
        path = tracker.save_table(posts, artifacts.POSTS, table="psychgenerator_posts")
        return tracker.result(
            rows=len(posts),
            artifacts=[path],
            seeds={"seed": config.seed, "split_seed": config.split_seed},
            metadata={
                "source": source_name,
                "labels_per_trait": markdown_table(summaries.label_counts(posts)),
                "trait_correlations": dg.MetadataValue.md(
                    posts[list(TRAITS)].corr().round(2).to_markdown()
                ),
                "reference_correlations": human_reference.HUMAN_TRAIT_CORRELATIONS_SOURCE.citation,
                "examples_most_extreme": markdown_table(summaries.most_extreme_posts(posts)),
            },
        )

    @versioned_asset(
        settings,
        group_name="corpora",
        kinds={"parquet", "duckdb"},
        metadata={WAREHOUSE_TABLES: ["soda_scenarios"]},
        pool="warehouse",
    )
    def soda_scenarios(
        context: dg.AssetExecutionContext,
        config: ScenarioConfig,  # type: ignore[valid-type]
        store: ArtifactStore,
        warehouse: Warehouse,
    ) -> dg.MaterializeResult:
        """Social scenarios (narrative, PersonX who opens, PersonY who replies).

        tiny: a seeded generator of varied situations and names; paper: a seeded sample of N
        from the allenai/soda train split.
        """
        tracker = Tracker(context, warehouse, store)
        scenarios, source_name = scenario_source.scenarios_from_source(
            config.source,
            n_scenarios=config.n_scenarios,
            seed=config.seed,
            hub_dataset=config.hub_dataset,
            hub_split=config.hub_split,
            local_path=config.local_path,
            cache_dir=str(store.root_path / "hf_cache"),
        )
        path = tracker.save_table(scenarios, artifacts.SCENARIOS, table="soda_scenarios")
        names = pd.concat([scenarios.person_x, scenarios.person_y])
        return tracker.result(
            rows=len(scenarios),
            artifacts=[path],
            seeds={"seed": config.seed},
            metadata={
                "source": source_name,
                "distinct_names": int(names.nunique()),
                "examples": markdown_table(scenarios.head(5)),
            },
        )

    @versioned_asset(
        settings,
        group_name="corpora",
        kinds={"json", "duckdb"},
        metadata={WAREHOUSE_TABLES: ["personality_inventories", "personality_inventory_norms"]},
        pool="warehouse",
    )
    def personality_inventories(
        context: dg.AssetExecutionContext,
        config: InventoryConfig,  # type: ignore[valid-type]
        store: ArtifactStore,
        warehouse: Warehouse,
    ) -> dg.MaterializeResult:
        """BFI-44 and IPIP-NEO-120 (validated keying, human norms with sources), plus any
        PsychoBench-format questionnaire named in config."""
        tracker = Tracker(context, warehouse, store)
        loaded = psychobench.configured_inventories(
            config.inventories, config.psychobench_file, config.psychobench_names
        )
        document = {inv.name: inventory.inventory_to_dict(inv) for inv in loaded}
        path = write_json(document, store.file("personality_inventories", artifacts.INVENTORIES))
        items = pd.concat(
            [inventory.inventory_items_frame(inv) for inv in loaded], ignore_index=True
        )
        norms = inventory.inventory_norms_frame(loaded)
        warehouse.replace_table("personality_inventories", items)
        warehouse.replace_table("personality_inventory_norms", norms)
        summary = (
            items.groupby(["inventory", "category"], sort=False)
            .agg(items=("item_id", "size"), reverse_keyed=("reverse_keyed", "sum"))
            .reset_index()
        )
        return tracker.result(
            data_version=hash_json(document),
            rows=len(items),
            artifacts=[path],
            metadata={
                "inventories": ", ".join(document),
                "keying": markdown_table(summary),
                "norms": markdown_table(norms),
            },
        )

    return Stage([psychgenerator_posts, soda_scenarios, personality_inventories])
