"""Check the vLLM backend against transformers on a GPU machine (prints JSON figures).

    pip install -e '.[gpu]'          # in a GPU environment (vLLM brings its own torch)
    python scripts/check_vllm_gpu.py [--base-model embedded] [--models-dir /tmp/big5-models]

Runs the embedded SmolLM2 (or --base-model) through both engines: greedy replies and the
option probabilities of BFI-44 items must agree, and a LoRA adapter must change the answers
through vLLM as it does through peft. Exit status 0 when every check passes, 1 when one
fails, 2 when vLLM or a GPU is missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-model", default="embedded")
    parser.add_argument(
        "--models-dir", type=Path, default=Path(tempfile.gettempdir()) / "big5-models"
    )
    parser.add_argument("--items", type=int, default=8)
    args = parser.parse_args()

    from big5_dagster.lib.engine.vllm_engine import (
        VllmModel,
        compare_with_transformers,
        vllm_available,
    )

    if not vllm_available():
        print("vLLM or a CUDA GPU is missing: nothing to check", file=sys.stderr)
        return 2
    import peft
    import torch

    from big5_dagster.lib.engine.adapters import lora_adapter
    from big5_dagster.lib.engine.loading import load_model
    from big5_dagster.lib.personality.administration import item_messages, scale_values
    from big5_dagster.lib.personality.inventory import load_inventory

    inventory = load_inventory("bfi44")
    conversations = [
        item_messages(inventory, item, "normal", None) for item in inventory.items[: args.items]
    ]
    options = [str(v) for v in scale_values(inventory)]
    engine = VllmModel.load(args.base_model, models_dir=args.models_dir, dtype="bfloat16")
    loaded = load_model(
        args.base_model, models_dir=args.models_dir, dtype="bfloat16", device="cuda"
    )
    figures: dict = {"base": compare_with_transformers(engine, loaded, conversations, options)}

    # A LoRA adapter with random (non-zero) weights: both engines must move the same way.
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        config = peft.LoraConfig(
            r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False
        )
        peft.get_peft_model(
            load_model(args.base_model, models_dir=args.models_dir).model, config
        ).save_pretrained(folder)
        with lora_adapter(loaded.model, {"check": folder}) as peft_model:
            adapted = dataclasses.replace(loaded, model=peft_model)
            figures["lora"] = compare_with_transformers(
                engine.with_lora("check", folder), adapted, conversations, options
            )
    figures["lora_changes_vllm_answers"] = bool(
        figures["lora"]["option_mass_vllm"] != figures["base"]["option_mass_vllm"]
    )
    checks = {
        "greedy_first_4_tokens_equal": all(n >= 4 for n in figures["base"]["leading_tokens_equal"]),
        "option_probs_close": figures["base"]["option_prob_max_abs_diff"] < 0.05,
        "lora_option_probs_close": figures["lora"]["option_prob_max_abs_diff"] < 0.05,
        "lora_changes_answers": figures["lora_changes_vllm_answers"],
    }
    figures["checks"] = checks
    print(json.dumps(figures, indent=2))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
