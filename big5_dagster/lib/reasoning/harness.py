"""Running lm-evaluation-harness on a model already in memory, one condition at a time.

lm_eval is the engine: every prompt, few-shot context, filter and metric is computed by
lm_eval (``lm_eval.evaluator.evaluate`` on an ``HFLM`` that wraps the model object already in
memory, so a peft adapter attached by the caller is what gets evaluated and no second copy is
loaded). Notes on lm_eval 0.4.13 that shape the code:

- ``TaskManager()`` indexes ~14,700 built-in task configs (about 20 s here); a local task
  set is indexed alone (``include_defaults=False``), in milliseconds.
- ``simple_evaluate`` is ``evaluate`` plus seeding, task loading and run metadata; the
  metadata runs torch's collect_env (``pip list`` and other subprocesses: ~2.7 s per call
  here, ~2 minutes over the tiny profile's conditions), so :func:`run_reasoning` does the
  seeding and loading itself and calls ``evaluate``. Seeding touches Python's, numpy's and
  torch's global generators; the caller's generator states are restored afterwards.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from big5_dagster.lib.common.hashing import hash_bytes
from big5_dagster.lib.common.jsonable import jsonable
from big5_dagster.lib.reasoning.task_set import benchmark_tasks
from big5_dagster.lib.reasoning.tasks import NO_FILTER, BenchmarkTask, ReasoningError


@contextlib.contextmanager
def hub_offline(enabled: bool = True) -> Iterator[None]:
    """HF_HUB_OFFLINE / HF_DATASETS_OFFLINE for this block, also for already-imported
    libraries (huggingface_hub and datasets read the variables once, at import)."""
    if not enabled:
        yield
        return
    import datasets.config
    import huggingface_hub.constants

    env_before = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    attrs = [
        (huggingface_hub.constants, "HF_HUB_OFFLINE"),
        (datasets.config, "HF_HUB_OFFLINE"),
        (datasets.config, "HF_DATASETS_OFFLINE"),
    ]
    attrs_before = [(mod, name, getattr(mod, name)) for mod, name in attrs if hasattr(mod, name)]
    os.environ.update({k: "1" for k in env_before})
    for mod, name, _ in attrs_before:
        setattr(mod, name, True)
    try:
        yield
    finally:
        for mod, name, value in attrs_before:
            setattr(mod, name, value)
        for key, value in env_before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _restored_global_rngs() -> Iterator[None]:
    """lm_eval seeds the global random, numpy and torch generators; give the caller's back."""
    import torch

    py_state, np_state, torch_state = (
        random.getstate(),
        np.random.get_state(),
        torch.get_rng_state(),
    )
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


def _task_manager(tasks: Sequence[BenchmarkTask]) -> Any:
    from lm_eval.tasks import TaskManager

    include = sorted({t.include_path for t in tasks if t.include_path})
    builtin = any(t.include_path is None for t in tasks)
    # Indexing lm_eval's ~14,700 built-in configs takes ~20 s: skip it for local-only runs.
    return TaskManager(include_path=include or None, include_defaults=builtin)


def _leaf_tasks(
    loaded: Mapping[str, Any], name: str, group_map: Mapping[str, list[str]]
) -> list[str]:
    if name in loaded["tasks"]:
        return [name]
    return [
        leaf for child in group_map.get(name, []) for leaf in _leaf_tasks(loaded, child, group_map)
    ]


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan  # lm_eval writes "N/A" for a stderr it did not compute


def _samples_rows(
    task: BenchmarkTask, name: str, samples: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    rows = []
    for sample in samples:
        arguments = sample.get("arguments") or [("", "")]
        row: dict[str, Any] = {
            "task": name,
            "benchmark": task.name,
            "doc_id": int(sample["doc_id"]),
            "filter": sample.get("filter", NO_FILTER),
            "target": str(jsonable(sample.get("target"))),
            "prompt": str(arguments[0][0]),
            "prompt_hash": sample.get("prompt_hash"),
            "doc_hash": sample.get("doc_hash"),
            "doc": json.dumps(jsonable(sample.get("doc")), sort_keys=True, default=str),
        }
        resps, filtered = sample.get("resps") or [], sample.get("filtered_resps") or []
        if task.output_type == "multiple_choice" or (
            filtered and isinstance(filtered[0], list | tuple)
        ):
            lls = [float(r[0]) for r in filtered]
            row["response"] = None
            row["choice_loglikelihoods"] = json.dumps(lls)
            row["prediction"] = str(int(np.argmax(lls))) if lls else None
        else:
            row["response"] = str(resps[0][0]) if resps and resps[0] else ""
            row["choice_loglikelihoods"] = None
            row["prediction"] = str(filtered[0]) if filtered else None
        for metric in sample.get("metrics", []):
            row[metric] = _as_float(sample.get(metric))
        rows.append(row)
    return rows


def run_reasoning(
    model: Any,
    tokenizer: Any,
    tasks: Mapping[str, Any] | Sequence[BenchmarkTask],
    *,
    system_instruction: str | None,
    apply_chat_template: bool,
    limit: int | None,
    batch_size: int,
    seed: int,
    log_samples: bool = True,
    offline: bool | None = None,
    bootstrap_iters: int = 1000,
    request_cache: Path | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Evaluate ``model`` (a transformers model, or a peft model wrapping one) on ``tasks``
    with lm_eval and return (results, samples) as tidy tables.

    ``tasks`` is a local task directory's manifest (:func:`write_local_tasks`) or a list of
    :class:`BenchmarkTask` (e.g. :func:`paper_tasks`). The persona goes in as lm_eval's
    ``system_instruction``; ``apply_chat_template=True`` renders prompts with the tokenizer's
    chat template and few-shot examples as turns (``fewshot_as_multiturn``). ``limit`` caps
    items per task; ``seed`` seeds lm_eval's generators and few-shot sampling. ``offline``
    (default: True when every task is local) forces HF_HUB_OFFLINE/HF_DATASETS_OFFLINE.
    ``bootstrap_iters`` only matters for non-mean metrics (means get a closed-form stderr).
    ``request_cache``: an SQLite file of lm_eval's response cache (``CachingLM``); a rerun
    computes only requests it does not hold (greedy generations and log-likelihoods). Its
    key is the request alone (full prompt, continuation, generation settings), not the
    model: use one file per model and adapter, e.g. named by their fingerprints.

    results: one row per task (or group), metric and filter: value, stderr, n, n_shot,
    task_version, higher_is_better, primary, is_group, chat_template,
    system_instruction_hash, limit, seed, eval_seconds.
    samples (empty when ``log_samples`` is False): one row per task, doc and filter: target,
    prompt, prompt_hash, doc_hash, doc (JSON), response (generated text), choice_loglikelihoods
    (JSON, multiple choice), prediction (filtered answer or argmax choice index), and one
    column per metric.
    """
    import torch
    from lm_eval.api.model import CachingLM
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM

    benchmarks = benchmark_tasks(tasks) if isinstance(tasks, Mapping) else list(tasks)
    if not benchmarks:
        raise ReasoningError("no tasks to run")
    if batch_size < 1:
        raise ReasoningError(f"batch_size must be >= 1, got {batch_size}")
    if offline is None:
        offline = all(t.include_path for t in benchmarks)
    instruction_hash = (
        hash_bytes(system_instruction.encode()) if system_instruction is not None else None
    )

    started = time.perf_counter()
    with hub_offline(offline), _restored_global_rngs():
        task_manager = _task_manager(benchmarks)
        loaded = task_manager.load([t.name for t in benchmarks])
        group_map = loaded.get("group_map", {})
        for bench in benchmarks:
            leaves = _leaf_tasks(loaded, bench.name, group_map)
            if not leaves:
                raise ReasoningError(f"lm_eval loaded no task for {bench.name!r}")
            for leaf in leaves:
                # Per-task few-shot counts (simple_evaluate's num_fewshot sets one for all).
                loaded["tasks"][leaf].set_config(key="num_fewshot", value=bench.num_fewshot)
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        if request_cache is not None:
            lm = CachingLM(lm, str(request_cache))
        # What simple_evaluate does around evaluate(), minus its run metadata: that calls
        # torch's collect_env (pip list and other subprocesses, ~2.7 s per run here), git,
        # and the hub for the model's sha.
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        for task_object in loaded["tasks"].values():
            task_object.set_fewshot_seed(seed=seed)
        output = evaluate(
            lm=lm,
            task_dict=loaded,
            limit=limit,
            bootstrap_iters=bootstrap_iters,
            log_samples=log_samples,
            system_instruction=system_instruction,
            apply_chat_template=apply_chat_template,
            fewshot_as_multiturn=apply_chat_template,
        )
    seconds = time.perf_counter() - started
    if output is None:
        raise ReasoningError("lm_eval returned no results (not rank 0 of a distributed run?)")

    n_samples = output.get("n-samples", {})
    n_shot = output.get("n-shot", {})
    versions = output.get("versions", {})
    higher = output.get("higher_is_better", {})
    result_rows = []
    for bench in benchmarks:
        scores = output["results"].get(bench.name)
        if scores is None:
            raise ReasoningError(f"lm_eval returned no results for {bench.name!r}")
        leaves = _leaf_tasks(loaded, bench.name, group_map)
        n = sum(int(n_samples.get(leaf, {}).get("effective", 0)) for leaf in leaves)
        for key, value in scores.items():
            metric, sep, filter_name = key.partition(",")
            if not sep or metric.endswith("_stderr"):
                continue
            result_rows.append(
                {
                    "task": bench.name,
                    "metric": metric,
                    "filter": filter_name,
                    "value": _as_float(value),
                    "stderr": _as_float(scores.get(f"{metric}_stderr,{filter_name}")),
                    "n": n,
                    "n_shot": int(n_shot.get(bench.name, n_shot.get(leaves[0], bench.num_fewshot))),
                    "task_version": bench.version or str(versions.get(bench.name, "")),
                    "higher_is_better": bool(
                        higher.get(bench.name, higher.get(leaves[0], {})).get(metric, True)
                    ),
                    "primary": (metric, filter_name) in bench.primary,
                    "is_group": bench.name in loaded.get("groups", {}),
                    "chat_template": bool(apply_chat_template),
                    "system_instruction_hash": instruction_hash,
                    "limit": limit,
                    "seed": seed,
                    "eval_seconds": seconds,
                }
            )
    results = pd.DataFrame(result_rows)
    results["limit"] = results["limit"].astype("Int64")

    sample_rows: list[dict[str, Any]] = []
    if log_samples:
        by_leaf = {
            leaf: bench
            for bench in benchmarks
            for leaf in _leaf_tasks(loaded, bench.name, group_map)
        }
        for leaf, samples in output.get("samples", {}).items():
            if leaf in by_leaf:
                sample_rows.extend(_samples_rows(by_leaf[leaf], leaf, samples))
    samples_table = pd.DataFrame(sample_rows)
    if not samples_table.empty:
        task_version = {t.name: t.version or str(versions.get(t.name, "")) for t in benchmarks}
        samples_table["task_version"] = samples_table["benchmark"].map(task_version)
        samples_table["n_shot"] = samples_table["task"].map(
            lambda leaf: int(n_shot.get(leaf, by_leaf[leaf].num_fewshot))
        )
        samples_table["chat_template"] = bool(apply_chat_template)
        samples_table["system_instruction_hash"] = instruction_hash
    return results, samples_table
