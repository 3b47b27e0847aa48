"""The vLLM backend: its interface drives administration, and on a GPU it answers as
transformers does (skipped where vLLM or a GPU is absent, e.g. in CI)."""

from __future__ import annotations

import dataclasses
from functools import partial

import pytest

from big5_dagster.lib.engine import scoring, shared_prefix
from big5_dagster.lib.engine.loading import load_model
from big5_dagster.lib.engine.types import ModelBackendError
from big5_dagster.lib.engine.vllm_engine import vllm_available
from big5_dagster.lib.personality.administration import item_messages, scale_values
from big5_dagster.lib.personality.answers import GenerationSettings, administer
from big5_dagster.lib.personality.conditions import conditions_for
from big5_dagster.lib.personality.inventory import load_inventory
from big5_dagster.lib.traits import Persona
from big5_dagster.resources.model_backend import ModelBackend


class RecordingEngine:
    """An engine with VllmModel's interface that answers through transformers."""

    def __init__(self, loaded):
        self.loaded, self.calls = loaded, []
        self.tokenizer, self.fingerprint = loaded.tokenizer, loaded.fingerprint

    def __getattr__(self, name):
        if name in (
            "generate_with_shared_prefix",
            "generate_and_score_with_shared_prefix",
            "score_options",
        ):
            self.calls.append(name)
            module = scoring if name == "score_options" else shared_prefix
            return partial(getattr(module, name), self.loaded)
        raise AttributeError(name)


def test_administration_runs_through_an_engine_interface(tiny_backend):
    loaded = tiny_backend.load()
    bfi = load_inventory("bfi44")
    small = dataclasses.replace(bfi, items=bfi.items[:3])
    conditions = conditions_for("prompt_description", [Persona("openness", "high")])
    kwargs = dict(n_runs=1, seed=3, generation=GenerationSettings(max_new_tokens=3))
    engine = RecordingEngine(loaded)
    through_engine = administer(engine, conditions, [small], **kwargs)
    direct = administer(loaded, conditions, [small], **kwargs)
    assert engine.calls  # the engine's own methods answered
    assert through_engine["value"].equals(direct["value"])
    assert through_engine["raw_text"].equals(direct["raw_text"])


@pytest.mark.skipif(vllm_available(), reason="vLLM and a GPU are present")
def test_vllm_backend_without_vllm_says_what_is_missing(tiny_model_dir, tmp_path):
    backend = ModelBackend(base_model=str(tiny_model_dir), models_dir=str(tmp_path), backend="vllm")
    with pytest.raises(ModelBackendError, match=r"\.\[gpu\]"):
        backend.respondent()


@pytest.mark.skipif(not vllm_available(), reason="needs vLLM and a CUDA GPU")
def test_vllm_answers_as_transformers_does(tmp_path):
    from big5_dagster.lib.engine.vllm_engine import VllmModel, compare_with_transformers

    bfi = load_inventory("bfi44")
    conversations = [item_messages(bfi, item, "normal", None) for item in bfi.items[:6]]
    options = [str(v) for v in scale_values(bfi)]
    engine = VllmModel.load("embedded", models_dir=tmp_path, dtype="bfloat16")
    loaded = load_model("embedded", models_dir=tmp_path, dtype="bfloat16")
    figures = compare_with_transformers(engine, loaded, conversations, options)
    assert all(n >= 4 for n in figures["leading_tokens_equal"])
    assert figures["option_prob_max_abs_diff"] < 0.05
