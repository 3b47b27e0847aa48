"""Training inputs: checked data frames, prompts as trl should see them, the model and tokenizer.

torch, transformers and datasets are imported where used: the definitions load without them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from big5_dagster.lib.engine.hardware import auto_dtype
from big5_dagster.lib.engine.loading import contiguous_output_projection, folder_fingerprint_parts

# trl 1.16 calls a transformers method deprecated in 5.x on every training step.
from big5_dagster.lib.training.specs import Device, Precision, TrainingError

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def check_frame(frame: pd.DataFrame, columns: Sequence[str], what: str) -> pd.DataFrame:
    """Only the needed string columns, with a clear error naming the row and field."""
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{what} must be a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing} (has {list(frame.columns)})")
    if frame.empty:
        raise ValueError(f"{what} has no rows")
    out = frame[list(columns)].reset_index(drop=True)
    for column in columns:
        values = out[column].tolist()
        for row, value in enumerate(values):
            if not isinstance(value, str):
                raise ValueError(
                    f"{what} row {row}, field {column!r}: expected a string, got {value!r}"
                )
        if column != "prompt":
            for row, value in enumerate(values):
                if not value.strip():
                    raise ValueError(f"{what} row {row}, field {column!r}: empty text")
    return out.astype(str)


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """No per-map progress bars from trl's dataset preparation (they flood run logs)."""
    import datasets

    was_enabled = datasets.utils.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def _tokenizer_adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


def normalize_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> list[str]:
    """Prompts as trl should receive them: without a leading BOS text when the tokenizer adds one.

    trl tokenizes non-conversational prompts with the tokenizer's special tokens; a rendered
    Llama-3 prompt already starts with ``<|begin_of_text|>`` and would get it twice.
    """
    if not _tokenizer_adds_bos(tokenizer) or not tokenizer.bos_token:
        return list(prompts)
    bos = tokenizer.bos_token
    return [p[len(bos) :] if p.startswith(bos) else p for p in prompts]


def resolve_device(device: Device) -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'."""
    import torch

    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("device='cuda' was requested but torch sees no CUDA GPU")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def use_bf16(precision: Precision, target: str) -> bool:
    """Whether training on ``target`` multiplies in bf16 ('auto': where the hardware does so
    natively, as ``model.dtype: auto`` decides for inference)."""
    if precision == "auto":
        return auto_dtype(target) == "bfloat16"
    return precision == "bfloat16"


def _model_location(model_path: str | Path) -> tuple[str, dict[str, Any]]:
    path = Path(model_path)
    if path.is_dir():
        return str(path), {"local_files_only": True}
    return str(model_path), {}


def load_tokenizer(model_path: str | Path) -> PreTrainedTokenizerBase:
    """The model's tokenizer with a pad token (pad = eos when the model defines none)."""
    from transformers import AutoTokenizer

    location, kwargs = _model_location(model_path)
    tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    model_path: str | Path, target: str, precision: Precision = "auto", *, trains_base: bool = False
) -> PreTrainedModel:
    """The model to train (or to adapt) on ``target``: bf16 weights where training multiplies
    in bf16, fp32 otherwise. peft keeps the LoRA weights it adds in fp32 beside a bf16 base
    (``autocast_adapter_dtype``), so the optimizer's small updates are not rounded away, and
    the frozen base is not cast to bf16 again in every forward (on a CPU, autocast re-casts
    frozen fp32 weights on each use: a fifth of a training step's time). ``trains_base``
    (fine-tuning every weight): fp32 weights on a CPU, which bf16 training autocasts."""
    import torch
    from transformers import AutoModelForCausalLM

    location, kwargs = _model_location(model_path)
    bf16_weights = use_bf16(precision, target) and (target == "cuda" or not trains_base)
    dtype = torch.bfloat16 if bf16_weights else torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **kwargs)
    except OSError as e:
        raise TrainingError(f"could not load the model to train from {model_path}: {e}") from e
    return contiguous_output_projection(model.to(target))


def model_identity(model_path: str | Path) -> dict[str, Any]:
    path = Path(model_path)
    if path.is_dir():
        # Content, not location: the same weights in another folder are the same model.
        return {"content": folder_fingerprint_parts(path)}
    return {"hub_id": str(model_path)}


def prepared_eval(
    frame: pd.DataFrame | None, columns: Sequence[str], what: str, model_path: str | Path
) -> datasets.Dataset | None:
    import datasets

    if frame is None or frame.empty:
        return None
    data = check_frame(frame, columns, what)
    data["prompt"] = normalize_prompts(load_tokenizer(model_path), data["prompt"].tolist())
    return datasets.Dataset.from_pandas(data, preserve_index=False)
