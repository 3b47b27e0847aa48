"""Where each asset's files are, and reading them back in downstream assets.

The one place that names the files an asset writes; a missing upstream artifact is an
error naming the asset (and partition) to materialize first.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from big5_dagster.lib.common.hashing import hash_file
from big5_dagster.lib.engine.steering import PersonaVectors
from big5_dagster.lib.experts.classifier import load_classifier
from big5_dagster.lib.experts.classifier_base import TraitClassifier
from big5_dagster.lib.experts.records import ExpertRecord
from big5_dagster.lib.personality.conditions import Condition, conditions_for
from big5_dagster.lib.personality.inventory import Inventory, inventory_from_dict
from big5_dagster.lib.personality.methods import ADAPTER_METHODS, STEERING_METHODS
from big5_dagster.lib.training.adapter_sets import AdapterSet
from big5_dagster.lib.training.examples import demonstrations_by_persona
from big5_dagster.lib.traits import PERSONAS
from big5_dagster.resources.artifacts import ArtifactStore
from big5_dagster.resources.warehouse import Warehouse

POSTS = "posts.parquet"
SCENARIOS = "scenarios.parquet"
INVENTORIES = "inventories.json"
CLASSIFIER = "model"
OPENERS = "openers.parquet"
REPLIES = "replies.parquet"
DATASET = "big5_chat.parquet"
DATASET_JSONL = "big5_chat.jsonl"
SFT_EXAMPLES = "sft_examples.parquet"
DPO_PAIRS = "pairs.parquet"
TASK_MANIFEST = "manifest.json"
ANSWERS_TABLE = "inventory_answers"
PERSONA_VECTORS = "persona_vectors.safetensors"


def upstream_file(
    store: ArtifactStore, asset: str, filename: str, partition: str | None = None
) -> Path:
    """The file an upstream asset wrote; a clear error if it was never materialized."""
    path = store.file(asset, filename, partition)
    if not path.exists():
        which = f"{asset}" + (f" partition {partition!r}" if partition else "")
        raise FileNotFoundError(f"{path} does not exist: materialize {which} first")
    return path


def read_posts(store: ArtifactStore) -> pd.DataFrame:
    return pd.read_parquet(upstream_file(store, "psychgenerator_posts", POSTS))


def read_scenarios(store: ArtifactStore) -> pd.DataFrame:
    return pd.read_parquet(upstream_file(store, "soda_scenarios", SCENARIOS))


def read_inventories(store: ArtifactStore) -> list[Inventory]:
    """The inventories as materialized by ``personality_inventories``."""
    path = upstream_file(store, "personality_inventories", INVENTORIES)
    document = json.loads(path.read_text())
    return [inventory_from_dict(data, f"{path}[{name}]") for name, data in document.items()]


def load_trait_classifier(store: ArtifactStore) -> TraitClassifier:
    return load_classifier(upstream_file(store, "trait_classifier", CLASSIFIER))


def read_expert_record(store: ArtifactStore, trait: str) -> ExpertRecord:
    """The record of the trait's experts (their folder, base model and weights version)."""
    folder = store.asset_dir("trait_experts", trait)
    try:
        return ExpertRecord.read(folder)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}: materialize trait_experts[{trait}] first") from None


def read_openers(store: ArtifactStore) -> pd.DataFrame:
    return pd.read_parquet(upstream_file(store, "scenario_openers", OPENERS))


def read_replies(store: ArtifactStore) -> pd.DataFrame:
    """Every persona's replies; a clear error names the partitions not yet materialized."""
    missing = [
        p.key for p in PERSONAS if not store.file("big5_chat_replies", REPLIES, p.key).exists()
    ]
    if missing:
        raise FileNotFoundError(f"materialize big5_chat_replies for the personas {missing} first")
    return pd.concat(
        [pd.read_parquet(store.file("big5_chat_replies", REPLIES, p.key)) for p in PERSONAS],
        ignore_index=True,
    )


def read_dataset(store: ArtifactStore) -> pd.DataFrame:
    return pd.read_parquet(upstream_file(store, "big5_chat_dataset", DATASET))


def read_sft_examples(store: ArtifactStore) -> pd.DataFrame:
    return pd.read_parquet(upstream_file(store, "sft_examples", SFT_EXAMPLES))


def read_pairs(store: ArtifactStore) -> pd.DataFrame:
    return pd.read_parquet(upstream_file(store, "dpo_preference_pairs", DPO_PAIRS))


def read_adapter_set(store: ArtifactStore, asset: str) -> AdapterSet:
    """The adapters of ``sft_adapter`` or ``dpo_adapter``, one per training seed."""
    upstream_file(store, asset, "adapters.json")
    return AdapterSet.read(store.asset_dir(asset))


def persona_vectors_file(store: ArtifactStore) -> Path:
    return upstream_file(store, "persona_vectors", PERSONA_VECTORS)


def read_persona_vectors(store: ArtifactStore) -> PersonaVectors:
    return PersonaVectors.load(persona_vectors_file(store))


def read_answers(warehouse: Warehouse) -> pd.DataFrame:
    if not warehouse.table_exists(ANSWERS_TABLE):
        raise FileNotFoundError("no inventory answers yet: materialize inventory_responses first")
    return warehouse.query(f"SELECT * FROM {ANSWERS_TABLE}")


def method_conditions(
    store: ArtifactStore,
    method: str,
    n_demonstrations: int,
    seed: int,
    classifier_filter: bool = False,
    steering: tuple[int, float] | None = None,
) -> tuple[list[Condition], dict[int, str]]:
    """The conditions of one method partition and, for sft/dpo, seed -> adapter folder.
    The demonstrations come from the replies the training sets use (``classifier_filter``);
    a steering method's conditions carry ``steering`` (layer, coef) and the persona vector
    file's version."""
    demonstrations, versions, paths, steered = None, None, {}, None
    if method == "prompt_demonstrations":
        demonstrations = demonstrations_by_persona(
            read_dataset(store), n_demonstrations, seed, classifier_filter
        )
    if method in ADAPTER_METHODS:
        trained = read_adapter_set(store, f"{method}_adapter")
        versions, paths = trained.versions, trained.paths
    if method in STEERING_METHODS:
        if steering is None:
            raise ValueError(f"method {method!r} needs the steering layer and coef")
        steered = (int(steering[0]), float(steering[1]), hash_file(persona_vectors_file(store)))
    conditions = conditions_for(
        method,
        PERSONAS,
        demonstrations,
        versions,
        n_demonstrations=n_demonstrations,
        steering=steered,
    )
    return conditions, paths
