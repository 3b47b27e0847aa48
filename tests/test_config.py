"""Profiles load, validate and surface as Dagster config with the profile's defaults."""

import dagster as dg
import pytest

from big5_dagster.config import (
    PostsSettings,
    SettingsError,
    load_settings,
    settings_from_mapping,
    with_defaults,
)


def test_tiny_is_the_default_and_offline():
    settings = load_settings()
    assert settings.profile == "tiny"
    assert settings.model.base_model == "embedded"
    assert settings.posts.source == "synthetic"
    assert settings.scenarios.source == "synthetic"


def test_paper_profile_uses_the_hub_and_llama():
    settings = load_settings("paper")
    assert settings.posts.source == "hub"
    assert settings.posts.hub_dataset == "huvucode/PsychAdapter"
    assert settings.scenarios.hub_dataset == "allenai/soda"
    assert settings.scenarios.n_scenarios == 10000
    assert "Llama-3" in settings.model.base_model
    # Llama-3-70B has 80 decoder layers: the steering sweep spans its depth (SmolLM2's
    # shallow tiny layers would probe only its first tenth) and the default is in the sweep.
    assert max(settings.steering.sweep_layers) >= 40 and max(settings.steering.sweep_layers) < 79
    assert settings.steering.layer in settings.steering.sweep_layers


def test_environment_selects_profile_and_custom_file(monkeypatch, tmp_path):
    monkeypatch.setenv("BIG5_PROFILE", "paper")
    assert load_settings().profile == "paper"
    custom = tmp_path / "mine.yaml"
    custom.write_text("extends: tiny\nscenarios:\n  n_scenarios: 7\n")
    monkeypatch.setenv("BIG5_CONFIG", str(custom))
    settings = load_settings()
    assert settings.profile == "mine"  # a custom file is its own profile in the lineage
    assert settings.scenarios.n_scenarios == 7
    assert settings.model.base_model == "embedded"  # the rest comes from tiny
    assert settings.posts.n_posts == PostsSettings().n_posts


def test_wrong_value_names_the_field_and_allowed_values():
    with pytest.raises(SettingsError) as err:
        settings_from_mapping({"posts": {"source": "twitter"}}, source="my.yaml")
    message = str(err.value)
    assert "my.yaml" in message
    assert "posts.source" in message
    assert "'synthetic'" in message and "'hub'" in message and "'local'" in message
    assert "twitter" in message


def test_mirrored_dpo_pairs_need_an_even_optimizer_step():
    # a couple split across two optimizer steps would no longer cancel its content preference
    odd = {
        "training": {
            "dpo_pair_order": "mirrored",
            "batch_size": 3,
            "gradient_accumulation_steps": 1,
        }
    }
    with pytest.raises(SettingsError, match="must be even, got 3"):
        settings_from_mapping(odd, source="my.yaml")
    odd["training"]["dpo_pair_order"] = "shuffled"
    assert settings_from_mapping(odd, source="my.yaml").training.batch_size == 3
    odd["training"] |= {"dpo_pair_order": "mirrored", "gradient_accumulation_steps": 2}
    assert settings_from_mapping(odd, source="my.yaml").training.dpo_pair_order == "mirrored"


def test_unknown_fields_and_profiles_are_rejected(tmp_path):
    with pytest.raises(SettingsError, match="scenarios.n_scenario"):
        settings_from_mapping({"scenarios": {"n_scenario": 3}})
    with pytest.raises(SettingsError, match="unknown profile 'huge'"):
        load_settings("huge")
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(config_file=tmp_path / "missing.yaml")


def test_profile_values_become_launchpad_defaults():
    paper = load_settings("paper")
    config_cls = with_defaults(PostsSettings, paper.posts)

    @dg.asset
    def probe(config: config_cls) -> None:  # type: ignore[valid-type]
        pass

    fields = probe.op.config_schema.config_type.fields
    assert fields["source"].default_value == "hub"
    assert fields["hub_dataset"].default_value == "huvucode/PsychAdapter"
    # a wrong value in the launchpad is refused by Dagster's config system
    with pytest.raises(dg.DagsterInvalidConfigError):
        dg.materialize([probe], run_config={"ops": {"probe": {"config": {"source": "nope"}}}})
