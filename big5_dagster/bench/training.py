"""`big5 bench training`: the SFT step through Dagster against the same TRL call in a plain script.

`big5 bench training` compares training tokens per second of the SFT step materialized
through Dagster with the same TRL call in a plain script, with identical settings and data:
orchestration must not cost.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from big5_dagster import paths
from big5_dagster.config import Settings
from big5_dagster.lib.common.files import write_parquet
from big5_dagster.lib.training import runs as training_runs
from big5_dagster.lib.training import sft as training_sft
from big5_dagster.resources import build_resources


def _sft_examples(root: Path) -> pd.DataFrame:
    path = root / "sft_examples" / paths.UNPARTITIONED / "sft_examples.parquet"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: materialize sft_examples first (make demo)"
        )
    return pd.read_parquet(path)


def bench_training(
    settings: Settings, root: Path, *, n_examples: int, seed: int = 42
) -> dict[str, Any]:
    """Tokens/s of the SFT step through Dagster and of a plain TRL script, and their ratio."""
    from big5_dagster.definitions import build_definitions
    from big5_dagster.defs.specs import lora_spec, sft_train_spec
    from big5_dagster.defs.training import seeded_sample

    examples = _sft_examples(root)
    train = examples[examples.split == "train"]
    config = settings.training.model_copy(
        update={"seeds": [seed], "max_sft_examples": n_examples, "save_steps": 10_000}
    )
    backend = build_resources(settings, root)["model"]
    loaded = backend.load()
    base_path = str(loaded.path or loaded.model_id)
    figures: dict[str, Any] = {"model": loaded.model_id, "examples": min(n_examples, len(train))}

    with tempfile.TemporaryDirectory(prefix="big5-bench-") as tmp:
        tmp_root = Path(tmp) / "data"
        # Only the SFT examples the step reads; no validation set, so both sides do the same work.
        write_parquet(
            examples[examples.split != "validation"],
            tmp_root / "sft_examples" / paths.UNPARTITIONED / "sft_examples.parquet",
        )
        defs = build_definitions(settings, tmp_root, resources={"model": backend})
        sft_config = config.model_dump()
        with dg.DagsterInstance.ephemeral(tempdir=str(Path(tmp) / "home")) as instance:
            started = time.perf_counter()
            result = dg.materialize(
                defs.assets,
                selection=["sft_adapter"],
                instance=instance,
                resources=defs.resources,
                run_config={"ops": {"sft_adapter": {"config": sft_config}}},
            )
            dagster_wall = time.perf_counter() - started
        if not result.success:
            raise RuntimeError("the Dagster SFT run failed")
        (report,) = json.loads((tmp_root / "sft_adapter" / "all" / "reports.json").read_text())

        # The plain script: the same trl SFTTrainer call on the same rows, no Dagster.
        started = time.perf_counter()
        trainer = training_sft.make_sft_trainer(
            base_path,
            seeded_sample(train, n_examples, seed)[["prompt", "completion"]],
            lora=lora_spec(config),
            spec=sft_train_spec(config, seed, backend.dtype),
            work_dir=Path(tmp) / "plain",
            device=backend.device,
        )
        tokens = training_runs.count_training_tokens(trainer) * config.epochs
        train_started = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - train_started
        trainer.save_model(str(Path(tmp) / "plain-adapter"))
        plain_wall = time.perf_counter() - started

    figures.update(
        {
            "tokens": report["train_tokens"],
            "dagster": {
                "train_loop_tokens_per_second": report["tokens_per_second"],
                "wall_seconds": dagster_wall,
                "wall_tokens_per_second": report["train_tokens"] / dagster_wall,
            },
            "plain": {
                "train_loop_tokens_per_second": tokens / train_seconds,
                "wall_seconds": plain_wall,
                "wall_tokens_per_second": tokens / plain_wall,
            },
        }
    )
    if abs(tokens - report["train_tokens"]) > 0.5:
        raise RuntimeError(f"token counts differ: dagster {report['train_tokens']}, plain {tokens}")
    figures["ratio_train_loop"] = (
        figures["dagster"]["train_loop_tokens_per_second"]
        / figures["plain"]["train_loop_tokens_per_second"]
    )
    figures["ratio_wall"] = (
        figures["dagster"]["wall_tokens_per_second"] / figures["plain"]["wall_tokens_per_second"]
    )
    return figures
