"""Model fixtures: a tiny random-weight Llama with the real SmolLM2 tokenizer.

The tokenizer is extracted from the embedded GGUF once (about 6 s) and kept in pytest's
cache directory (.pytest_cache), so later sessions take it in about 0.2 s.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_MODEL_SEED = 0


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(request: pytest.FixtureRequest, tmp_path_factory) -> Path:
    """A folder holding the real SmolLM2-135M-Instruct tokenizer (from the embedded GGUF)."""
    from big5_dagster.lib.engine.embedded import save_embedded_tokenizer

    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    root = cache.mkdir("smollm2_tokenizer") if cache is not None else tmp_path_factory.mktemp("tok")
    return save_embedded_tokenizer(Path(root) / "tokenizer")


@pytest.fixture(scope="session")
def tiny_model_dir(smollm2_tokenizer_dir: Path, tmp_path_factory) -> Path:
    """A 3.2M-parameter random LlamaForCausalLM (hidden 64, 2 layers) saved with the real
    tokenizer: the same chat template, special tokens and vocabulary as the embedded model."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(TINY_MODEL_SEED)
    model = LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny_model")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_backend(tiny_model_dir: Path, tmp_path_factory):
    """The ModelBackend resource on the tiny model, on the CPU."""
    from big5_dagster.resources.model_backend import ModelBackend

    return ModelBackend(
        base_model=str(tiny_model_dir),
        models_dir=str(tmp_path_factory.mktemp("models")),
        device="cpu",
        # fp32 on every host: dtype auto would pick bf16 only where the CPU has it.
        dtype="float32",
    )


VARIED_WEIGHT_STD = 0.2


def vary_weights(model, seed: int = 0, std: float = VARIED_WEIGHT_STD) -> None:
    """Re-draw every non-norm weight with std ``std`` (in place).

    With the fixture's default initialization (std 0.02) greedy decoding emits '\\n' at every
    step, so comparing token lists would prove nothing; std 0.2 gives varied tokens with
    clear margins between the best and the second-best token.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" not in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
