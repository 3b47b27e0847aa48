"""A base model with a trained adapter, loaded for generation (peft and transformers are
imported when it loads: the definitions load without them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from big5_dagster.lib.common.hashing import hash_dir, hash_json
from big5_dagster.lib.engine.loading import LoadedModel

# trl 1.16 calls a transformers method deprecated in 5.x on every training step.
from big5_dagster.lib.training.inputs import (
    load_causal_lm,
    model_identity,
    resolve_device,
)
from big5_dagster.lib.training.specs import Device, TrainingError


def load_adapted_model(
    model_path: str | Path,
    adapter_path: Path,
    device: Device = "auto",
    *,
    merge: bool = False,
) -> LoadedModel:
    """Base model + a trained adapter, in eval mode, as a :class:`LoadedModel` for generation.

    The tokenizer is the one saved with the adapter (left padding, pad token set), so
    ``engine.generation.generate_chat``/``engine.scoring.score_options`` work on it. ``merge=True`` folds the adapter
    into the weights (faster; the result is no longer a ``PeftModel``).
    """
    from peft import PeftModel
    from transformers import AutoTokenizer

    adapter_path = Path(adapter_path)
    if not (adapter_path / "adapter_config.json").is_file():
        raise TrainingError(f"{adapter_path} is not a peft adapter folder (no adapter_config.json)")
    target = resolve_device(device)
    # For inference: fp32 on a CPU, bf16 on a GPU that has it (training picks its own).
    base = load_causal_lm(model_path, target, "auto" if target == "cuda" else "float32")
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_path), local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model: Any = PeftModel.from_pretrained(base, str(adapter_path))
    if merge:
        model = model.merge_and_unload()
    model.eval()
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    parts = {
        "base": model_identity(model_path),
        "adapter": hash_dir(adapter_path),
        "merged": merge,
    }
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        model_id=f"{model_path}+{adapter_path.name}",
        source="local",
        revision=None,
        dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
        device=str(next(model.parameters()).device),
        fingerprint=hash_json(parts),
        path=adapter_path,
        fingerprint_parts=parts,
    )
