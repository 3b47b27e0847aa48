"""scripts/gpu_check.py on the CPU: its agreement part on the tiny random model and the
whole command at its small size, so that the GPU check cannot rot between GPU runs."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
import torch
from ui_helpers import REPO_ROOT

from big5_dagster.lib.engine.loading import load_model

SCRIPT = REPO_ROOT / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see pipeline_env: threads only slow the tiny model down
    yield module
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def agreement_model(gpu_check, smollm2_tokenizer_dir, tmp_path_factory):
    return gpu_check.build_agreement_model(smollm2_tokenizer_dir, tmp_path_factory.mktemp("m"))


def test_cpu_agreement_of_batched_and_single_decoding(gpu_check, agreement_model):
    result = gpu_check.check_agreement(agreement_model, "cpu")
    fp32 = result["float32"]
    assert fp32["target"] == {"device": "cpu", "dtype": "float32", "batch_size": 8}
    assert fp32["prefix_tokens_cached"] > 0  # the batched side really used the prefix cache
    assert fp32["greedy_distinct_tokens"] > fp32["prompts"]  # not one echoed token
    assert fp32["greedy_identical"] == fp32["prompts"], fp32["greedy_divergences"]
    assert fp32["option_prob_max_abs_diff"] <= gpu_check.PROB_TOLERANCE
    assert result["passed"]
    # bf16 is reported, not judged: it does move the probabilities
    assert result["bfloat16"]["option_logprob_max_abs_diff"] > 0


def test_agreement_fails_for_other_weights(
    gpu_check, agreement_model, smollm2_tokenizer_dir, tmp_path
):
    other = gpu_check.build_agreement_model(smollm2_tokenizer_dir, tmp_path, seed=1)
    result = gpu_check.compare_engines(
        load_model(str(agreement_model), device="cpu"), load_model(str(other), device="cpu")
    )
    assert result["option_prob_max_abs_diff"] > gpu_check.PROB_TOLERANCE
    assert result["greedy_divergences"]
    assert all(
        d["margin"] is None or d["margin"] >= gpu_check.TIE_MARGIN
        for d in result["greedy_divergences"]
    )
    assert not gpu_check.agreement_passes(result)


def test_the_command_runs_at_small_size_on_the_cpu(smollm2_tokenizer_dir, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(smollm2_tokenizer_dir, bundle / "tokenizer")
    (bundle / "wheels").mkdir()  # this environment has every module: nothing is unpacked
    out = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "run", "--size", "small", "--device", "cpu"]
        + ["--bundle", str(bundle), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # see pipeline_env: threads slow it down
    )
    assert done.returncode == 0, done.stderr[-4000:]
    figures = json.loads(out.read_text())
    assert figures["checks"] == {"agreement": True}
    assert figures["environment"]["unpacked_from_bundle"] == []
    speed = figures["speed"]
    assert speed["model"]["n_parameters"] < 5e6  # the small size, not the 1B model
    assert speed["dexperts"]["batch_size"] == 4
    assert set(speed["dexperts"]["dexperts"]) == {"paper", "dexperts"}
    assert speed["dexperts"]["plain"]["tokens_per_second"] > 0
    assert speed["inventory"]["logprob"]["items_per_second"] > 0
    assert speed["sft"]["examples"] == 16  # no example dropped for its length
    assert speed["sft"]["train_tokens"] > 0 and speed["sft"]["tokens_per_second"] > 0


def test_only_missing_modules_are_unpacked_from_the_bundle(gpu_check, tmp_path, monkeypatch):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "big5_probe-1.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr("big5_probe/__init__.py", "VALUE = 42\n")
        wheel.writestr("big5_probe-1.0.dist-info/METADATA", "Name: big5-probe\nVersion: 1.0\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(gpu_check, "BUNDLE", {"big5_probe": "big5-probe==1.0", "json": "json==0"})
    unpacked = gpu_check.install_missing(wheels, tmp_path / "vendor")
    assert unpacked == ["big5_probe-1.0-py3-none-any.whl"]  # json is there: not looked for
    assert importlib.import_module("big5_probe").VALUE == 42
    sys.modules.pop("big5_probe")

    monkeypatch.setattr(gpu_check, "BUNDLE", {"big5_absent": "big5-absent==1.0"})
    with pytest.raises(FileNotFoundError, match="big5-absent==1.0"):
        gpu_check.install_missing(wheels, tmp_path / "vendor2")
