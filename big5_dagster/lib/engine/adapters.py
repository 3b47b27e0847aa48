"""LoRA adapters attached to a loaded model for a block, and removed again afterwards.

peft injects adapters into the model's modules in place; these context managers undo that
on exit, so the shared (cached) base model computes exactly what it did before. torch and
peft are imported where used: the definitions load without them.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from big5_dagster.lib.engine.loading import LoadedModel

if TYPE_CHECKING:
    import torch
    from peft import PeftModel
    from transformers import PreTrainedModel


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
    from peft import PeftModel

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
    import torch
    from peft import LoraConfig, get_peft_model

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


BASE_ADAPTER = "__base__"
"""peft's name for 'no adapter' in mixed-adapter batches."""


class RowMaskedLora:
    """peft's mixed-adapter batch (a LoRA adapter per row) as two matmuls per LoRA layer.

    peft's ``adapter_names`` forward gathers each adapter's rows, runs the LoRA on them and
    scatters the result back, in every LoRA layer: measured 95-110 ms per decode step for 8
    base + 8 expert rows of SmolLM2 on one core. Running every adapter on every row with a
    0/1 mask on each one's output still costs a handful of small operations per adapter and
    layer: with the sweep's 20 adapters, 20 x 70 LoRA layers per forward. Here peft's own LoRA
    forward is switched off and a hook on each LoRA layer adds the delta of all its adapters
    at once: their ``lora_A`` weights stacked into one (rank-sum x in) matrix, their
    ``lora_B`` weights into one (out x rank-sum), and between the two a per-row mask that
    keeps each row's own adapter's rank slice, times that adapter's scaling. A row gets
    exactly its own adapter's delta; the others' slices add +0.0, so base rows compute what
    the base model does. Only for plain LoRA on linear layers (:meth:`supports`), at
    inference (no dropout); anything else goes through peft.
    """

    def __init__(self, model: PeftModel, adapter_names: Sequence[str]) -> None:
        self.model = model
        self.adapters = sorted({a for a in adapter_names if a != BASE_ADAPTER})
        self._layers: list[tuple[Any, torch.Tensor, torch.Tensor, tuple]] = []
        self._layouts: dict[tuple, list[tuple[str, slice, float]]] = {}
        self._placement: dict[tuple, tuple[torch.dtype, torch.device]] = {}
        if self.adapters:
            self._stack_layers()
        self.masks: dict[tuple, torch.Tensor] = {}
        self.set_rows(adapter_names)

    @staticmethod
    def supports(model: Any, adapter_names: Sequence[str]) -> bool:
        """Whether every layer holding one of the named adapters is a plain, unmerged LoRA
        linear layer (no DoRA or other variant, no embedding or convolution LoRA)."""
        from peft import PeftModel
        from peft.tuners.lora import Linear as LoraLinear
        from peft.tuners.lora import LoraLayer

        if not isinstance(model, PeftModel):
            return False
        named = {a for a in adapter_names if a != BASE_ADAPTER}
        for module in model.modules():
            if not isinstance(module, LoraLayer):
                continue
            held = named & (set(module.lora_A) | set(module.lora_embedding_A))
            if not held:
                continue
            if type(module) is not LoraLinear or module.merged:
                return False
            if any(a in module.lora_variant or a not in module.lora_A for a in held):
                return False
        return True

    def _stack_layers(self) -> None:
        import torch
        from peft.tuners.lora import LoraLayer

        for module in self.model.modules():
            if not isinstance(module, LoraLayer):
                continue
            held = [a for a in self.adapters if a in module.lora_A]
            if not held:
                continue
            layout, start = [], 0
            for adapter in held:
                rank = module.lora_A[adapter].weight.shape[0]
                layout.append((adapter, slice(start, start + rank), float(module.scaling[adapter])))
                start += rank
            key = tuple((a, s.start, s.stop, scale) for a, s, scale in layout)
            self._layouts.setdefault(key, layout)
            self._placement.setdefault(
                key, (module.lora_A[held[0]].weight.dtype, module.lora_A[held[0]].weight.device)
            )
            stacked_a = torch.cat([module.lora_A[a].weight for a in held], dim=0)
            stacked_b = torch.cat([module.lora_B[a].weight for a in held], dim=1)
            self._layers.append((module, stacked_a.detach(), stacked_b.detach(), key))

    def set_rows(self, adapter_names: Sequence[str]) -> None:
        import torch

        names = list(adapter_names)
        self.masks = {}
        for key, layout in self._layouts.items():
            width = layout[-1][1].stop
            scale_of = {a: (ranks, scaling) for a, ranks, scaling in layout}
            rows = []
            for name in names:
                row = [0.0] * width
                if name in scale_of:
                    ranks, scaling = scale_of[name]
                    row[ranks] = [scaling] * (ranks.stop - ranks.start)
                rows.append(row)
            dtype, device = self._placement[key]
            self.masks[key] = torch.tensor(rows, dtype=dtype, device=device).view(len(names), width)

    def keep_rows(self, rows: torch.Tensor) -> None:
        self.masks = {k: m.index_select(0, rows.to(m.device)) for k, m in self.masks.items()}

    def _hook(
        self,
        stacked_a: torch.Tensor,
        stacked_b: torch.Tensor,
        key: tuple,
        module: Any,
        args: Any,
        output: torch.Tensor,
    ) -> torch.Tensor:
        import torch.nn.functional as F

        x = args[0]
        mask = self.masks[key]
        hidden = F.linear(x.to(stacked_a.dtype), stacked_a)
        hidden = hidden * mask.view(mask.shape[0], *([1] * (hidden.dim() - 2)), mask.shape[1])
        # As peft: the delta is added in the adapters' dtype, then cast to the base output's.
        return (output + F.linear(hidden, stacked_b)).to(output.dtype)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """The named adapters active with their row masks; peft's LoRA forward (and the
        parameters' requires_grad flags, which peft resets on re-enabling) restored after."""
        requires_grad = {name: p.requires_grad for name, p in self.model.named_parameters()}
        handles = []
        try:
            with self.model.disable_adapter():
                for module, stacked_a, stacked_b, key in self._layers:
                    hook = functools.partial(self._hook, stacked_a, stacked_b, key)
                    handles.append(module.register_forward_hook(hook))
                yield
        finally:
            for handle in handles:
                handle.remove()
            for name, parameter in self.model.named_parameters():
                parameter.requires_grad_(requires_grad[name])
