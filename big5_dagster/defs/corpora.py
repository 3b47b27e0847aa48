"""Seed corpora: PsychGenerator posts, SODA scenarios, personality inventories."""

import dagster as dg
import pandas as pd

from big5_dagster.config import (
    InventorySettings,
    PostsSettings,
    ScenarioSettings,
    active_settings,
    with_defaults,
)
from big5_dagster.defs.sql_models import WAREHOUSE_TABLES
from big5_dagster.defs.tracking import Tracker
from big5_dagster.lib import corpora, human_reference, inventories, synthetic
from big5_dagster.lib.storage import (
    hash_dataframe,
    hash_json,
    hash_source,
    write_json,
    write_parquet,
)
from big5_dagster.lib.traits import TRAITS
from big5_dagster.resources.artifacts import ArtifactStore
from big5_dagster.resources.warehouse import Warehouse

settings = active_settings()
PostsConfig = with_defaults(PostsSettings, settings.posts)
ScenarioConfig = with_defaults(ScenarioSettings, settings.scenarios)
InventoryConfig = with_defaults(InventorySettings, settings.inventories)


def _markdown_table(df: pd.DataFrame) -> dg.MetadataValue:
    return dg.MetadataValue.md(df.to_markdown(index=False))


@dg.asset(
    group_name="corpora",
    kinds={"parquet", "duckdb"},
    code_version=hash_source(corpora, synthetic, human_reference),
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
    tracker = Tracker(context, warehouse)
    if config.source == "synthetic":
        raw = synthetic.generate_posts(config.n_posts, config.seed)
        source_name = f"synthetic posts (n={config.n_posts}, seed={config.seed})"
    else:
        location = config.local_path if config.source == "local" else config.hub_dataset
        if not location:
            raise ValueError("posts.source is 'local' but posts.local_path is not set")
        raw, source_name = corpora.load_posts(
            config.source,
            location,
            split=config.hub_split,
            max_posts=config.max_posts,
            seed=config.seed,
            cache_dir=str(store.root_path / "hf_cache"),
        )
    context.log.info(f"{len(raw)} posts from {source_name}; labelling tertiles and splitting")
    posts = corpora.label_and_split(raw, config.split_seed, config.test_fraction)

    # Validation happened above: only a complete, valid table reaches disk and warehouse.
    path = write_parquet(posts, store.file("psychgenerator_posts", "posts.parquet"))
    warehouse.replace_table("psychgenerator_posts", posts)

    counts = pd.DataFrame(
        [
            {
                "trait": t,
                "high": int((posts[f"{t}_level"] == "high").sum()),
                "low": int((posts[f"{t}_level"] == "low").sum()),
                "train": int((posts[f"{t}_split"] == "train").sum()),
                "test": int((posts[f"{t}_split"] == "test").sum()),
            }
            for t in TRAITS
        ]
    )
    observed = posts[list(TRAITS)].corr().round(2)
    examples = pd.DataFrame(
        [
            {
                "persona": f"{t} {level}",
                "text": posts.loc[
                    posts[t].idxmax() if level == "high" else posts[t].idxmin(), "text"
                ],
            }
            for t in TRAITS
            for level in ("high", "low")
        ]
    )
    return tracker.result(
        data_version=hash_dataframe(posts),
        rows=len(posts),
        artifacts=[path],
        config=config,
        seeds={"seed": config.seed, "split_seed": config.split_seed},
        metadata={
            "source": source_name,
            "labels_per_trait": _markdown_table(counts),
            "trait_correlations": dg.MetadataValue.md(observed.to_markdown()),
            "reference_correlations": human_reference.HUMAN_TRAIT_CORRELATIONS_SOURCE.citation,
            "examples_most_extreme": _markdown_table(examples),
        },
    )


@dg.asset(
    group_name="corpora",
    kinds={"parquet", "duckdb"},
    code_version=hash_source(corpora, synthetic),
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
    tracker = Tracker(context, warehouse)
    if config.source == "synthetic":
        scenarios = synthetic.generate_scenarios(config.n_scenarios, config.seed)
        source_name = f"synthetic scenarios (n={config.n_scenarios}, seed={config.seed})"
    else:
        location = config.local_path if config.source == "local" else config.hub_dataset
        if not location:
            raise ValueError("scenarios.source is 'local' but scenarios.local_path is not set")
        scenarios, source_name = corpora.load_scenarios(
            config.source,
            location,
            split=config.hub_split,
            n_scenarios=config.n_scenarios,
            seed=config.seed,
            cache_dir=str(store.root_path / "hf_cache"),
        )
    path = write_parquet(scenarios, store.file("soda_scenarios", "scenarios.parquet"))
    warehouse.replace_table("soda_scenarios", scenarios)
    return tracker.result(
        data_version=hash_dataframe(scenarios),
        rows=len(scenarios),
        artifacts=[path],
        config=config,
        seeds={"seed": config.seed},
        metadata={
            "source": source_name,
            "distinct_names": int(pd.concat([scenarios.person_x, scenarios.person_y]).nunique()),
            "examples": _markdown_table(scenarios.head(5)),
        },
    )


def load_configured_inventories(config: InventorySettings) -> list[inventories.Inventory]:
    """The packaged inventories named in config, plus any PsychoBench questionnaires."""
    loaded = [inventories.load_inventory(name) for name in config.inventories]
    if config.psychobench_names and not config.psychobench_file:
        raise ValueError("inventories.psychobench_names is set but psychobench_file is not")
    for name in config.psychobench_names:
        loaded.append(inventories.load_psychobench_questionnaire(config.psychobench_file, name))
    names = [inv.name for inv in loaded]
    if len(set(names)) != len(names):
        raise ValueError(f"inventory names must be unique, got {names}")
    return loaded


@dg.asset(
    group_name="corpora",
    kinds={"json", "duckdb"},
    code_version=hash_source(inventories),
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
    tracker = Tracker(context, warehouse)
    loaded = load_configured_inventories(config)
    document = {inv.name: inventories.inventory_to_dict(inv) for inv in loaded}
    path = write_json(document, store.file("personality_inventories", "inventories.json"))
    items = pd.concat([inventories.inventory_items_frame(inv) for inv in loaded], ignore_index=True)
    norms = pd.DataFrame(
        [
            {
                "inventory": inv.name,
                "category": category,
                "group": norm.group,
                "mean": norm.mean,
                "sd": norm.sd,
                "n": norm.n,
                "source": norm.source,
            }
            for inv in loaded
            for category, entries in inv.norms.items()
            for norm in entries
        ]
    )
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
        config=config,
        metadata={
            "inventories": ", ".join(document),
            "keying": _markdown_table(summary),
            "norms": _markdown_table(norms),
        },
    )


def upstream_file(store: ArtifactStore, asset: str, filename: str, partition: str | None = None):
    """The file an upstream asset wrote; a clear error if it was never materialized."""
    path = store.file(asset, filename, partition)
    if not path.exists():
        which = f"{asset}" + (f" partition {partition!r}" if partition else "")
        raise FileNotFoundError(f"{path} does not exist: materialize {which} first")
    return path


def read_posts(store: ArtifactStore) -> pd.DataFrame:
    return pd.read_parquet(upstream_file(store, "psychgenerator_posts", "posts.parquet"))


def read_scenarios(store: ArtifactStore) -> pd.DataFrame:
    return pd.read_parquet(upstream_file(store, "soda_scenarios", "scenarios.parquet"))


def read_inventories(store: ArtifactStore) -> list[inventories.Inventory]:
    """The inventories as materialized by ``personality_inventories``."""
    import json

    path = upstream_file(store, "personality_inventories", "inventories.json")
    document = json.loads(path.read_text())
    return [
        inventories.inventory_from_dict(data, f"{path}[{name}]") for name, data in document.items()
    ]


assets = [psychgenerator_posts, soda_scenarios, personality_inventories]
