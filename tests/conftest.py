"""Shared fixtures: every test runs offline against a temporary data dir and DAGSTER_HOME."""

from __future__ import annotations

import pytest
from model_fixtures import *  # noqa: F401,F403  (tiny random-weight model with the real tokenizer)


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path, monkeypatch):
    """Nothing a test does touches assets_data/ of the checkout or the network."""
    data = tmp_path / "data"
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("BIG5_DATA_DIR", str(data))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.delenv("BIG5_CONFIG", raising=False)
    monkeypatch.delenv("BIG5_PROFILE", raising=False)
    yield data
