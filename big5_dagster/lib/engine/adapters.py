"""LoRA adapters attached to a loaded model for a block, and removed again afterwards.

peft injects adapters into the model's modules in place; these context managers undo that
on exit, so the shared (cached) base model computes exactly what it did before.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from big5_dagster.lib.engine.loading import LoadedModel


@contextlib.contextmanager
def _restoring_base_model(model: PreTrainedModel) -> Iterator[None]:
    """Undo peft's in-place changes to ``model`` on exit (modules and requires_grad flags)."""
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    was_training = model.training
    try:
        yield
    finally:
        for name, parameter in model.named_parameters():
            if name in requires_grad:
                parameter.requires_grad_(requires_grad[name])
        model.train(was_training)


@contextlib.contextmanager
def lora_adapter(model: PreTrainedModel, adapters: Mapping[str, Path]) -> Iterator[PeftModel]:
    """``model`` with the LoRA adapters (name -> saved folder) attached, as a peft PeftModel.

    peft injects the adapters into ``model``'s modules in place; on exit they are unloaded
    again and ``model`` computes exactly what it did before. Do not use ``model`` elsewhere
    (other threads) while adapters are attached: rows without ``adapter_names`` would use one.
    """
    if not adapters:
        raise ValueError("lora_adapter needs at least one adapter")
    for path in adapters.values():
        if not (Path(path) / "adapter_config.json").is_file():
            raise FileNotFoundError(
                f"{path} is not a peft adapter folder (no adapter_config.json in it)"
            )
    (first_name, first_path), *others = adapters.items()
    with _restoring_base_model(model):
        peft_model = PeftModel.from_pretrained(model, str(first_path), adapter_name=first_name)
        for name, path in others:
            peft_model.load_adapter(str(path), adapter_name=name)
        peft_model.eval()
        try:
            yield peft_model
        finally:
            peft_model.unload()


@contextlib.contextmanager
def random_lora_adapter(
    model: PreTrainedModel,
    *,
    seed: int,
    r: int = 8,
    lora_alpha: int = 16,
    target_modules: str | Sequence[str] = "all-linear",
    adapter_name: str = "expert",
) -> Iterator[PeftModel]:
    """``model`` with a seeded LoRA adapter whose A and B weights are random and non-zero.

    For tests and speed measurements: a LoRA layer costs the same whatever its weights' values,
    and an adapter that changes the logits is what makes the expert differ from the base.
    Unloaded again on exit, like :func:`lora_adapter`.
    """
    config = LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=0.0,
        target_modules=target_modules if isinstance(target_modules, str) else list(target_modules),
        init_lora_weights=False,  # random B as well as A: the adapter changes the outputs
    )
    with _restoring_base_model(model), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, config, adapter_name=adapter_name)
        peft_model.eval()
        try:
            yield peft_model
        finally:
            peft_model.unload()


def merged_expert_copy(peft_model: PeftModel, adapter_name: str = "expert") -> PreTrainedModel:
    """A separate model equal to ``peft_model``'s base with ``adapter_name`` merged in.

    Deep-copies the whole model (memory: one more model); the input stays untouched. Used for
    the two-model path when the expert was trained as a LoRA adapter.
    """
    duplicate = copy.deepcopy(peft_model)
    duplicate.set_adapter(adapter_name)
    merged = duplicate.merge_and_unload(adapter_names=[adapter_name])
    return merged.eval()


@contextlib.contextmanager
def with_adapter(loaded: Any, name: str | None, path: str | Path | None) -> Iterator[Any]:
    """The model as one condition needs it: the base (``name`` None), or the base with one
    LoRA adapter attached (peft on a transformers model; a LoRA request on a vLLM engine)."""
    if name is None:
        yield loaded
        return
    if not isinstance(loaded, LoadedModel):  # a vLLM engine: its own LoRA support
        yield loaded.with_lora(name, path)
        return
    with lora_adapter(loaded.model, {name: Path(str(path))}) as peft_model:
        yield dataclasses.replace(loaded, model=peft_model)
