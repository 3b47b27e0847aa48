"""Code versions follow what an asset really uses: its code, the lib modules it reaches, the
data files those read and the settings it reads; Dagster's event log then says what is stale.

An "edit" is made by handing lib.common.code_version other source text (or data bytes) for
one module (or file), exactly as if the file had been changed on disk.
"""

from __future__ import annotations

from functools import cache

import dagster as dg
import pytest
import yaml

from big5_dagster import paths
from big5_dagster.config import load_settings
from big5_dagster.definitions import build_definitions
from big5_dagster.defs.tracking import INPUT_VERSIONS_METADATA
from big5_dagster.lib.common import code_version
from big5_dagster.lib.traits import Persona
from big5_dagster.runner import asset_nodes, stale_partitions

UPSTREAM_OF_REPLIES = {
    "psychgenerator_posts",
    "soda_scenarios",
    "trait_experts",
    "scenario_openers",
}


def code_versions(settings=None) -> dict[str, str]:
    defs = build_definitions(settings or load_settings(), paths.data_dir())
    return {
        key.to_user_string(): version
        for assets_def in defs.assets
        for key, version in assets_def.code_versions_by_key.items()
    }


def changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    assert before.keys() == after.keys()
    return {name for name in before if before[name] != after[name]}


@pytest.fixture(scope="module")
def baseline() -> dict[str, str]:
    return code_versions()


@pytest.fixture
def edit(monkeypatch):
    """edit(module, old, new): code versions see ``module`` with ``old`` replaced by ``new``."""
    read = code_version._module_source.__wrapped__

    def apply(module: str, old: str, new: str) -> None:
        source = read(module)
        assert old in source, f"{old!r} is not in {module}"

        @cache
        def edited(name: str) -> str:
            return source.replace(old, new) if name == module else read(name)

        code_version.clear_caches()
        monkeypatch.setattr(code_version, "_module_source", edited)

    yield apply
    monkeypatch.undo()
    code_version.clear_caches()


def test_an_edit_to_train_dpo_leaves_the_trait_experts_fresh(baseline, edit):
    edit("big5_dagster.lib.training.dpo", '"""DPO (sigmoid loss', '"""DPO, edited (sigmoid loss')
    assert changed(baseline, code_versions()) == {"dpo_adapter"}


def test_an_edit_to_the_sft_system_prompt_makes_sft_examples_stale(baseline, edit):
    edit(
        "big5_dagster.lib.prompts",
        '"You are a helpful assistant with the following Big Five personality traits: "',
        '"You are an assistant with the following Big Five personality traits: "',
    )
    stale = changed(baseline, code_versions())
    assert "sft_examples" in stale
    # The prompt is the persona instruction of training and evaluation (inventories, reasoning,
    # expressed personality), of the prompted persona vectors and of the projections of the
    # evaluation prompts, nothing else.
    assert stale == {
        "sft_examples",
        "dpo_preference_pairs",
        "inventory_responses",
        "reasoning_results",
        "expressed_personality",
        "persona_vectors",
        "persona_projections",
    }


def test_an_edit_to_the_inventory_prompt_leaves_the_dialogues_fresh(baseline, edit):
    edit("big5_dagster.lib.prompts", '"Response options:\\n{options}', '"Options:\\n{options}')
    stale = changed(baseline, code_versions())
    assert "inventory_responses" in stale
    assert not stale & {"scenario_openers", "big5_chat_replies", "sft_examples", "trait_experts"}


def test_the_item_prompt_hash_follows_the_item_prompt_only(edit):
    """The answer cache keys carry prompt_template_hash: an edit to the item template must
    change it (else stale answers would be reused), an edit to another prompt must not."""
    from big5_dagster.lib.personality import administration

    def fresh_hash() -> str:
        administration.prompt_template_hash.cache_clear()
        return administration.prompt_template_hash()

    before = fresh_hash()
    try:
        assert len(before) == 16 and set(before) <= set("0123456789abcdef")
        edit("big5_dagster.lib.prompts", "complete the sentence with", "finish the sentence with")
        assert fresh_hash() == before  # the expert prompt is not part of an item prompt
        edit("big5_dagster.lib.prompts", '"Response options:\\n{options}', '"Options:\\n{options}')
        assert fresh_hash() != before
    finally:
        administration.prompt_template_hash.cache_clear()


def test_an_edit_to_a_plot_makes_only_the_report_stale(baseline, edit):
    # Training, evaluation and reasoning assets draw plots into their metadata: a new
    # colour must not retrain an adapter, but the report, made of plots, is redrawn.
    edit("big5_dagster.lib.report.plots", 'cmap="RdBu_r"', 'cmap="PuOr_r"')
    assert changed(baseline, code_versions()) == {"big5_report"}


def test_an_edit_to_a_phrase_bank_makes_the_posts_stale(baseline, monkeypatch):
    read = code_version._data_bytes

    def edited(name: str) -> bytes:
        data = read(name)
        if name == "corpora/trait_markers.yaml":
            return data.replace(b"art is everything", b"art is most things")
        return data

    monkeypatch.setattr(code_version, "_data_bytes", edited)
    code_version.clear_caches()
    assert changed(baseline, code_versions()) == {"psychgenerator_posts"}
    monkeypatch.undo()
    code_version.clear_caches()


def test_every_code_version_lists_what_it_covers():
    defs = build_definitions(load_settings(), paths.data_dir())
    for assets_def in defs.assets:
        for key in assets_def.keys:
            if key.to_user_string() not in {"psychgenerator_posts", "big5_chat_replies"}:
                continue
            reach = assets_def.metadata_by_key[key]["big5/code_reach"]
            reach = getattr(reach, "value", reach)
            if key.to_user_string() == "psychgenerator_posts":
                assert "corpora/trait_markers.yaml" in reach["data"]
                assert "big5_dagster.lib.corpora.synthetic_posts" in reach["modules"]
                assert "big5_dagster.lib.corpora.synthetic_scenarios" not in reach["modules"]
            else:
                assert "big5_dagster.lib.engine.dexperts" in reach["modules"]
                assert "big5_dagster.lib.training.dpo" not in reach["modules"]


# --------------------------------------------------------------------------- settings


def _read_partitions(node, partition, dep_node) -> list[str | None]:
    """The upstream partitions one asset partition reads (the pipeline's partition mappings)."""
    if dep_node.assets_def.partitions_def is None:
        return [None]
    if node.assets_def.partitions_def is None:
        return dep_node.partitions
    if dep_node.assets_def.partitions_def == node.assets_def.partitions_def:
        return [partition]
    return [Persona.parse(partition).trait]  # a persona reads its trait's experts


def record_fresh_state(defs: dg.Definitions, instance: dg.DagsterInstance) -> None:
    """A materialization of every asset partition as the tracker records it: this code
    version, a data version, and the data versions of the inputs it read."""
    nodes = asset_nodes(defs)
    for node in nodes.values():
        for partition in node.partitions:
            read = {
                dep.to_user_string(): {
                    p or "": f"{dep.to_user_string()}@{p}"
                    for p in _read_partitions(node, partition, nodes[dep])
                }
                for dep in node.deps
            }
            instance.report_runless_asset_event(
                dg.AssetMaterialization(
                    node.key,
                    partition=partition,
                    tags={
                        "dagster/code_version": node.code_version,
                        "dagster/data_version": f"{node.key.to_user_string()}@{partition}",
                    },
                    metadata={INPUT_VERSIONS_METADATA: dg.MetadataValue.json(read)},
                )
            )


def descendants(defs: dg.Definitions, name: str) -> set[str]:
    nodes = asset_nodes(defs)
    found, frontier = set(), {dg.AssetKey(name)}
    while frontier:
        frontier = {k for k, n in nodes.items() if set(n.deps) & frontier} - found
        found |= frontier
    return {k.to_user_string() for k in found}


def test_a_changed_alpha_in_the_settings_file_makes_the_replies_and_downstream_stale(tmp_path):
    root = paths.data_dir()
    settings = load_settings()
    custom = tmp_path / "alpha.yaml"
    custom.write_text(
        yaml.safe_dump({"extends": "tiny", "profile": "tiny", "dialogues": {"alpha": 1.5}})
    )
    changed_settings = load_settings(config_file=custom)
    before = build_definitions(settings, root)
    after = build_definitions(changed_settings, root)

    with dg.DagsterInstance.ephemeral() as instance:
        record_fresh_state(before, instance)
        assert stale_partitions(before, instance) == {}  # nothing changed: nothing stale
        stale = stale_partitions(after, instance)

    names = {key.to_user_string() for key in stale}
    downstream = descendants(after, "big5_chat_replies")
    assert names == {"big5_chat_replies"} | downstream
    assert {"big5_chat_dataset", "dialogue_quality", "sft_adapter", "big5_report"} <= downstream
    assert not names & UPSTREAM_OF_REPLIES
    replies = stale[dg.AssetKey("big5_chat_replies")]
    assert len(replies) == 10 and set(replies.values()) == {"new code version"}
    assert stale[dg.AssetKey("big5_chat_dataset")][None] == "big5_chat_replies is stale"


def test_settings_an_asset_does_not_read_leave_it_fresh(tmp_path):
    custom = tmp_path / "margin.yaml"
    custom.write_text(
        yaml.safe_dump({"extends": "tiny", "profile": "tiny", "dialogues": {"chance_margin": 0.1}})
    )
    before = code_versions()
    after = code_versions(load_settings(config_file=custom))
    assert changed(before, after) == {"dialogue_quality"}
