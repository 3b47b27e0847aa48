"""Activation steering: trait directions in the residual stream, and a forward hook adding one.

A direction is a difference of mean hidden states over reply tokens (Rimsky et al. 2024,
contrastive activation addition; Chen et al. 2025, persona vectors). Two kinds per trait:

- grounded: the high minus the low BIG5-CHAT reply of the same scenarios, read by the
  model with no persona instruction (the data SFT and DPO learn from);
- prompted: the model's own states over the same replies under the high minus the low
  persona instruction (what persona vectors are built from).

A layer's "output" is the residual stream after decoder layer ``layer``: the hidden state
``output_hidden_states[layer + 1]`` of a plain forward and what a forward hook on that layer
sees. transformers applies the final norm to the last entry, so the last layer is not a
steering layer. Steering adds ``sign * coef * typical_norm[layer] * unit_direction`` at every
position (prompt and generated tokens), sign + for a high persona and - for a low one.
torch and safetensors are imported where used: the definitions load without them.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from big5_dagster.lib.common.files import atomic_file
from big5_dagster.lib.engine.chat import render_chat
from big5_dagster.lib.engine.generation import (
    GenerationResult,
    batches_by_length,
    generate_in_row_order,
)
from big5_dagster.lib.engine.inference import inference_mode
from big5_dagster.lib.engine.loading import LoadedModel
from big5_dagster.lib.engine.sampling import SamplingParams
from big5_dagster.lib.engine.scoring import left_padded_forward
from big5_dagster.lib.engine.types import Conversation

if TYPE_CHECKING:
    import torch

VARIANTS: tuple[str, ...] = ("grounded", "prompted")
LEVEL_SIGN = {"high": 1.0, "low": -1.0}


class SteeringBackendError(RuntimeError):
    """Steering needs forward hooks on a transformers model; the vLLM engine has none."""


def decoder_layers(model: Any) -> torch.nn.ModuleList:
    """The decoder layers of a causal LM, through a peft wrapper if there is one."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else getattr(base, "model", None)
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise TypeError(f"{type(base).__name__} has no decoder layers to steer (model.layers)")
    return layers


def steering_layers(model: Any) -> tuple[int, ...]:
    """The layers a direction is computed for and steering may use: all but the last."""
    return tuple(range(len(decoder_layers(model)) - 1))


def _check_layer(model: Any, layer: int) -> None:
    allowed = steering_layers(model)
    if layer not in allowed:
        raise ValueError(
            f"steering layer {layer} is out of range: expected 0..{allowed[-1]} (the last "
            "decoder layer's output is normed by transformers and is not steered)"
        )


@contextlib.contextmanager
def added_to_layer(model: Any, layer: int, vector: torch.Tensor) -> Iterator[None]:
    """``vector`` added to the output hidden states of decoder layer ``layer`` in this block:
    one [hidden] vector at every row and position, or one per batch row ([rows, hidden]; every
    forward in the block must then have exactly that many rows, in that order).

    The hook is removed on exit, also when the block raised, so no call leaks into the next.
    """
    _check_layer(model, layer)
    target = decoder_layers(model)[layer]
    if vector.dim() not in (1, 2):
        raise ValueError(
            f"a steering vector is [hidden] or [rows, hidden], got {list(vector.shape)}"
        )
    added = vector.detach()[:, None, :] if vector.dim() == 2 else vector.detach()

    def shifted(hidden: torch.Tensor) -> torch.Tensor:
        if added.dim() == 3 and hidden.shape[0] != added.shape[0]:
            raise ValueError(
                f"the steering vectors are for {added.shape[0]} rows but layer {layer} got a "
                f"batch of {hidden.shape[0]}: per-row steering needs the rows kept in order "
                "(engine.generation.generate_in_row_order)"
            )
        return hidden + added.to(hidden.device, hidden.dtype)

    def hook(module: Any, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (shifted(output[0]), *output[1:])
        return shifted(output)

    handle = target.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def steered(loaded: Any, layer: int, vector: torch.Tensor) -> Iterator[LoadedModel]:
    """``loaded`` with ``vector`` added at ``layer`` for this block (transformers only)."""
    if not isinstance(loaded, LoadedModel):
        raise SteeringBackendError(
            f"activation steering needs the transformers backend: set model.backend to "
            f"'transformers' (this model is a {type(loaded).__name__}, which has no forward "
            "hooks)"
        )
    with added_to_layer(loaded.model, layer, vector):
        yield loaded


def generate_steered(
    loaded: Any,
    prompts: Sequence[str],
    vectors: Sequence[torch.Tensor],
    layer: int,
    params: SamplingParams,
    *,
    seeds: Sequence[int],
    batch_size: int,
) -> list[GenerationResult]:
    """Continue rendered prompts, row i with ``vectors[i]`` added at ``layer``: batches of
    ``batch_size`` rows in input order, each batch with its rows' vectors stacked
    (``generate_in_row_order``), so rows steered differently share a batch and each row draws
    what a call for it alone would draw under ``seeds[i]``."""
    import torch

    if not len(prompts) == len(vectors) == len(seeds):
        raise ValueError(
            f"got {len(prompts)} prompts, {len(vectors)} vectors and {len(seeds)} seeds"
        )
    results: list[GenerationResult] = []
    for start in range(0, len(prompts), batch_size):
        rows = slice(start, start + batch_size)
        with steered(loaded, layer, torch.stack(list(vectors[rows]))):
            results += generate_in_row_order(
                loaded, list(prompts[rows]), params, seeds=list(seeds[rows])
            )
    return results


@inference_mode
def reply_states(
    loaded: LoadedModel,
    prompts: Sequence[Conversation],
    replies: Sequence[str],
    *,
    batch_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, at every steering layer: the mean hidden state over the reply's tokens after
    the prompt (rendered with its assistant header), fp32 [rows, layers, hidden]; and the mean
    token norm there [rows, layers]. A reply with no tokens is an error naming its row."""
    import torch

    if len(prompts) != len(replies):
        raise ValueError(f"got {len(prompts)} prompts for {len(replies)} replies")
    tokenizer, model = loaded.tokenizer, loaded.model
    layers = steering_layers(model)
    prompt_ids = [
        tokenizer(render_chat(tokenizer, p, index=i), add_special_tokens=False)["input_ids"]
        for i, p in enumerate(prompts)
    ]
    reply_ids = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in replies]
    empty = [i for i, r in enumerate(reply_ids) if not r]
    if empty:
        raise ValueError(f"replies {empty[:5]} have no tokens: nothing to average")
    means = torch.zeros(len(replies), len(layers), model.config.hidden_size)
    norms = torch.zeros(len(replies), len(layers))
    lengths = [len(p) + len(r) for p, r in zip(prompt_ids, reply_ids, strict=True)]
    for batch in batches_by_length(lengths, batch_size):
        hidden = left_padded_forward(
            loaded,
            [prompt_ids[i] + reply_ids[i] for i in batch],
            output_hidden_states=True,
            logits_to_keep=1,  # only the hidden states are used: skip the head's full logits
        ).hidden_states
        stacked = torch.stack([hidden[layer + 1] for layer in layers], dim=1).float().cpu()
        for row, index in enumerate(batch):
            states = stacked[row, :, -len(reply_ids[index]) :]  # [layers, reply tokens, hidden]
            means[index] = states.mean(dim=1)
            norms[index] = states.norm(dim=-1).mean(dim=1)
    return means, norms


@inference_mode
def last_prompt_states(
    loaded: LoadedModel, prompts: Sequence[Conversation], *, batch_size: int = 16
) -> torch.Tensor:
    """The hidden state of each prompt's last token (the assistant header) at every steering
    layer, fp32 [rows, layers, hidden]: what the reply is generated from."""
    import torch

    tokenizer, model = loaded.tokenizer, loaded.model
    layers = steering_layers(model)
    ids_list = [
        tokenizer(render_chat(tokenizer, p, index=i), add_special_tokens=False)["input_ids"]
        for i, p in enumerate(prompts)
    ]
    out = torch.zeros(len(prompts), len(layers), model.config.hidden_size)
    for batch in batches_by_length([len(r) for r in ids_list], batch_size):
        hidden = left_padded_forward(
            loaded, [ids_list[i] for i in batch], output_hidden_states=True, logits_to_keep=1
        ).hidden_states
        for row, index in enumerate(batch):
            out[index] = torch.stack([hidden[layer + 1][row, -1] for layer in layers]).float()
    return out


@dataclass(frozen=True)
class PersonaVectors:
    """Per variant a raw direction per trait and layer [traits, layers, hidden], the typical
    residual norm per layer (mean token norm over the replies), and per trait the number of
    scenarios (high/low reply pairs) the directions average over."""

    traits: tuple[str, ...]
    layers: tuple[int, ...]
    directions: dict[str, torch.Tensor]
    typical_norm: torch.Tensor
    n_scenarios: dict[str, int]

    def direction(self, variant: str, trait: str, layer: int) -> torch.Tensor:
        """The unit direction of ``trait`` at ``layer`` (high minus low)."""
        import torch

        if variant not in self.directions:
            raise ValueError(f"unknown steering variant {variant!r}: expected {list(VARIANTS)}")
        if layer not in self.layers:
            raise ValueError(f"no direction at layer {layer}: the vectors cover {self.layers}")
        raw = self.directions[variant][self.traits.index(trait), self.layers.index(layer)]
        norm = raw.norm()
        if not torch.isfinite(norm) or norm == 0:
            raise ValueError(f"the {variant} direction of {trait} at layer {layer} is zero")
        return raw / norm

    def steering_vector(
        self, variant: str, trait: str, level: str, layer: int, coef: float
    ) -> torch.Tensor:
        """What is added at ``layer``: sign(level) * coef * typical norm * unit direction."""
        scale = LEVEL_SIGN[level] * coef * float(self.typical_norm[self.layers.index(layer)])
        return scale * self.direction(variant, trait, layer)

    def summary(self) -> pd.DataFrame:
        """Per trait and layer: each variant's raw norm, their cosine and the typical norm."""
        import torch

        rows = []
        grounded, prompted = self.directions["grounded"], self.directions["prompted"]
        for t, trait in enumerate(self.traits):
            for k, layer in enumerate(self.layers):
                g, p = grounded[t, k], prompted[t, k]
                rows.append(
                    {
                        "trait": trait,
                        "layer": layer,
                        "norm_grounded": float(g.norm()),
                        "norm_prompted": float(p.norm()),
                        "cosine": float(torch.nn.functional.cosine_similarity(g, p, dim=0)),
                        "typical_norm": float(self.typical_norm[k]),
                        "n_scenarios": self.n_scenarios[trait],
                    }
                )
        return pd.DataFrame(rows)

    def save(self, path: Path) -> Path:
        """One safetensors file, written atomically; the index lists go into its metadata."""
        from safetensors.torch import save_file

        tensors = {f"direction.{v}": d.contiguous() for v, d in self.directions.items()}
        tensors["typical_norm"] = self.typical_norm.contiguous()
        metadata = {
            "traits": json.dumps(list(self.traits)),
            "layers": json.dumps(list(self.layers)),
            "n_scenarios": json.dumps(self.n_scenarios),
        }
        with atomic_file(Path(path)) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> PersonaVectors:
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        missing = {"traits", "layers", "n_scenarios"} - set(metadata)
        if missing:
            raise ValueError(
                f"{path}: not a persona vector file (metadata lacks {sorted(missing)})"
            )
        tensors = load_file(str(path))
        return cls(
            traits=tuple(json.loads(metadata["traits"])),
            layers=tuple(json.loads(metadata["layers"])),
            directions={
                k.removeprefix("direction."): v for k, v in tensors.items() if k != "typical_norm"
            },
            typical_norm=tensors["typical_norm"],
            n_scenarios={k: int(v) for k, v in json.loads(metadata["n_scenarios"]).items()},
        )
