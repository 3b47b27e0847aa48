"""Training one trait's expert(s) and assembling them into the trait's folder.

Finished experts and their checkpoints live in a work folder keyed by the settings, so an
interrupted partition resumes (a finished expert is reused, an unfinished one continues from
its last checkpoint); the trait's folder is swapped in whole at the end.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from big5_dagster.lib.common.files import atomic_dir, write_json
from big5_dagster.lib.common.hashing import hash_json, hash_weights
from big5_dagster.lib.experts.records import ExpertRecord
from big5_dagster.lib.training.runs import RUN_SETTINGS_FILE
from big5_dagster.lib.training.sft import train_sft
from big5_dagster.lib.training.specs import LoraSpec, TrainSpec

REPORT_FILE = "report.json"


def train_experts(
    base_path: str,
    examples: pd.DataFrame,
    names: Mapping[str, str],
    *,
    lora: LoraSpec | None,
    spec: TrainSpec,
    work: Path,
    device: str,
    log: Callable[[str], None],
) -> None:
    """Train each expert folder of ``names`` (level -> folder) on its levels' examples into
    ``work/<folder>/model``; folders already finished there are reused."""
    for folder in sorted(set(names.values())):
        levels = [lv for lv, name in names.items() if name == folder]
        rows = examples[examples.level.isin(levels)].reset_index(drop=True)
        done = work / folder / "model"
        if (done / RUN_SETTINGS_FILE).exists():
            log(f"{folder}: already trained in {done}, reusing it")
            continue
        log(f"{folder}: training on {len(rows)} examples ({', '.join(levels)})")
        report = train_sft(
            base_path,
            rows[["prompt", "completion"]],
            output_dir=done,
            lora=lora,
            spec=spec,
            work_dir=work / folder / "checkpoints",
            progress=log,
            device=device,
        )
        write_json(report.to_dict(), work / folder / REPORT_FILE)


def assemble_experts(
    work: Path,
    target: Path,
    *,
    trait: str,
    mode: str,
    adapters: str,
    names: Mapping[str, str],
    base_model: str,
    base_fingerprint: str,
    system_prompt: str | None,
) -> tuple[ExpertRecord, dict[str, Any]]:
    """Swap the trained experts, their reports, the record and a loss plot into ``target``
    (atomically) and remove the work folder. Returns the record and folder -> report."""
    with atomic_dir(target) as tmp:
        versions = {}
        for folder in sorted(set(names.values())):
            shutil.copytree(work / folder / "model", tmp / folder)
            shutil.copy(work / folder / REPORT_FILE, tmp / f"{folder}.report.json")
            versions[folder] = hash_weights(tmp / folder)
        record = ExpertRecord(
            trait=trait,
            mode=mode,
            adapters=adapters,
            experts=dict(names),
            base_model=base_model,
            base_fingerprint=base_fingerprint,
            data_version=hash_json(versions),
            folder=target,
            system_prompt=system_prompt,
        )
        record.write(tmp)
        reports = {f: json.loads((work / f / REPORT_FILE).read_text()) for f in sorted(versions)}
    shutil.rmtree(work, ignore_errors=True)
    return record, reports


def training_summary(reports: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Per expert folder: steps, seconds, tokens per second, first and final loss."""
    return pd.DataFrame(
        [
            {
                "expert": f,
                "steps": r["steps"],
                "seconds": round(r["seconds"], 1),
                "tokens_per_second": round(r["tokens_per_second"], 1),
                "first_loss": r["loss_curve"][0][1] if r["loss_curve"] else None,
                "final_loss": r["final_loss"],
            }
            for f, r in reports.items()
        ]
    )
