"""`big5 bench all`: every hot path of the pipeline beside this machine's own limits.

Each path runs on the loaded model as the pipeline runs it (the engine's functions, trl's
trainers, lm-eval's HFLM). A :class:`ForwardCounter` sees every forward the path makes (rows,
new tokens, cached tokens, logits kept, whether gradients flow) and adds up its work as the
roofline counts it (``bench.roofline.PathCost``): the FLOPs of its matmuls and attention,
the weight and KV-cache bytes it must read, and the time its linear layers take at this
machine's measured rates. A path's row then gives its units per second (tokens, items,
requests) beside its FLOP/s, bytes/s and those as fractions of the limits.

Counting conventions (so the fractions are conservative, never flattering):
- LoRA matmuls (about 0.5% of a forward at rank 8) are not counted.
- A forward with gradients (training) counts its backward as one more forward of matmuls
  (input gradients; the frozen base weights get no weight gradients) and attention twice.
- Decoding figures come from two runs: the whole generation and its prefill alone (one new
  token); "decode steps" is their difference, the part the batch-32 target is about.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from transformers import SuppressTokensLogitsProcessor

from big5_dagster.bench.roofline import Clock, ModelRoofline, PathCost, fractions
from big5_dagster.lib.dialogues.replies import reply_request
from big5_dagster.lib.engine.adapters import random_lora_adapter
from big5_dagster.lib.engine.chat import render_chat
from big5_dagster.lib.engine.dexperts import (
    DExpertsParams,
    DExpertsRequest,
    generate_dexperts,
)
from big5_dagster.lib.engine.generation import generate_chat
from big5_dagster.lib.engine.loading import LoadedModel
from big5_dagster.lib.engine.sampling import SamplingParams
from big5_dagster.lib.engine.scoring import score_options
from big5_dagster.lib.engine.tokens import eos_token_ids
from big5_dagster.lib.personality.administration import item_messages, scale_values
from big5_dagster.lib.personality.inventory import Inventory, load_inventory
from big5_dagster.lib.prompts import reply_messages
from big5_dagster.lib.traits import Persona

PERSONA = Persona("extraversion", "high")


def causal_lm(model: Any) -> Any:
    """The transformers model under peft and trainer wrappers (the module whose forward the
    counter watches)."""
    inner = model
    while hasattr(inner, "get_base_model") and inner.get_base_model() is not inner:
        inner = inner.get_base_model()
    return getattr(inner, "module", inner)


class ForwardCounter:
    """Adds up the roofline cost of every forward of ``model`` while active."""

    def __init__(self, model: Any, roof: ModelRoofline, dtype: str = "float32") -> None:
        self.module = causal_lm(model)
        self.roof, self.dtype = roof, dtype
        config = self.module.config
        head_dim = getattr(config, "head_dim", None) or (
            config.hidden_size // config.num_attention_heads
        )
        self._q_dim = config.num_attention_heads * head_dim
        self._kv_bytes_per_token = (
            2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * 4
        )
        self._layers = config.num_hidden_layers
        self.forwards = 0
        self.rows = 0
        self.reset()

    def reset(self) -> None:
        self.flops = 0.0
        self.bytes_read = 0.0
        self.matmul_seconds = 0.0
        self.forwards = 0
        self.tokens = 0

    def cost(self) -> PathCost:
        return PathCost(self.flops, self.bytes_read, self.matmul_seconds)

    def _count(self, module: Any, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            input_ids = kwargs["inputs_embeds"][..., 0]
        batch, new = input_ids.shape[0], input_ids.shape[1]
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = cache.get_seq_length() if cache is not None else 0
        keep = kwargs.get("logits_to_keep", 0) or 0
        head_rows = batch * (new if keep == 0 else min(int(keep), new))
        rows = batch * new
        context = past + new
        attention = 4.0 * self._layers * batch * new * context * self._q_dim
        flops = self.roof.linear_flops(rows, head_rows) + attention
        seconds = self.roof.linear_seconds(rows, head_rows, self.dtype)
        bytes_read = (
            self.roof.weight_bytes(with_head=head_rows > 0)
            + batch * context * self._kv_bytes_per_token
        )
        if torch.is_grad_enabled():  # training: the backward's input gradients
            flops, seconds, bytes_read = 2 * flops + attention, 2 * seconds, 2 * bytes_read
        self.flops += flops
        self.matmul_seconds += seconds
        self.bytes_read += bytes_read
        self.forwards += 1
        self.tokens += rows

    @contextlib.contextmanager
    def counting(self) -> Iterator[ForwardCounter]:
        handle = self.module.register_forward_pre_hook(self._count, with_kwargs=True)
        try:
            yield self
        finally:
            handle.remove()


def timed(
    fn: Callable[[], Any], counter: ForwardCounter, clock: Clock
) -> tuple[Any, float, PathCost]:
    """Run ``fn`` once: its result, seconds on ``clock`` and roofline cost."""
    counter.reset()
    with counter.counting():
        started = clock()
        result = fn()
        seconds = clock() - started
    return result, seconds, counter.cost()


def path_row(
    name: str,
    unit: str,
    units: float,
    seconds: float,
    cost: PathCost,
    roof: ModelRoofline,
    dtype: str,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "path": name,
        "unit": unit,
        "units": units,
        "seconds": seconds,
        "units_per_second": units / seconds,
        **fractions(roof, cost, seconds, dtype),
        **extra,
    }


def item_conversations(inventory: Inventory, n: int) -> list[Any]:
    """The first ``n`` items as the base condition asks them (normal option order)."""
    return [item_messages(inventory, item, "normal", None) for item in inventory.items[:n]]


def reply_requests(n: int, seed: int = 0) -> list[DExpertsRequest]:
    """``n`` dialogue reply requests (synthetic scenarios, a fixed opener per scenario)."""
    from big5_dagster.lib.corpora.synthetic_scenarios import generate_scenarios

    scenarios = generate_scenarios(n, seed=seed).to_dict("records")
    return [
        reply_request(
            s,
            f"Hey, did you hear what happened at the {word}?",
            PERSONA,
            expert_system_prompt="",
            classic=True,
        )
        for s, word in zip(scenarios, ["market", "office", "party", "game"] * n, strict=False)
    ]


def bench_scoring(
    loaded: LoadedModel, roof: ModelRoofline, clock: Clock, *, repeats: int = 2
) -> list[dict[str, Any]]:
    """Prefill without a shared prefix, and option scoring over the shared prefix (BFI-44)."""
    bfi = load_inventory("bfi44")
    options = [str(v) for v in scale_values(bfi)]
    counter = ForwardCounter(loaded.model, roof, loaded.dtype)
    conversations = item_conversations(bfi, len(bfi.items))
    rows = []
    for name, prompts, prefix, batch in (
        ("prefill (16 prompts, batch 8, no shared prefix)", conversations[:16], False, 8),
        ("option scoring (BFI-44, batch 16, shared prefix)", conversations, True, 16),
    ):
        score_options(loaded, prompts[:batch], options, batch_size=batch)  # warm-up
        runs = [
            timed(
                lambda p=prompts, c=prefix, b=batch: score_options(
                    loaded, p, options, batch_size=b, use_prefix_cache=c
                ),
                counter,
                clock,
            )
            for _ in range(repeats)
        ]
        _, seconds, cost = min(runs, key=lambda r: r[1])
        unit = "prompts" if not prefix else "items"
        rows.append(
            path_row(name, unit, len(prompts), seconds, cost, roof, loaded.dtype,
                     tokens_per_forward=counter.tokens / max(counter.forwards, 1))
        )  # fmt: skip
    return rows


def _no_eos(loaded: LoadedModel) -> SuppressTokensLogitsProcessor:
    return SuppressTokensLogitsProcessor(
        eos_token_ids(loaded.model, loaded.tokenizer), device=loaded.device
    )


def bench_decoding(
    loaded: LoadedModel,
    roof: ModelRoofline,
    clock: Clock,
    *,
    batches: Sequence[tuple[int, int]] = ((8, 48), (32, 32)),
) -> list[dict[str, Any]]:
    """Plain sampled decoding (dialogue settings, EOS suppressed) at each (batch, new tokens):
    the whole call and its decode steps (the call minus its prefill)."""
    counter = ForwardCounter(loaded.model, roof, loaded.dtype)
    requests = reply_requests(max(b for b, _ in batches))
    no_eos = _no_eos(loaded)
    rows = []
    for batch, new_tokens in batches:
        prompts = [r.base_prompt for r in requests[:batch]]
        params = SamplingParams(
            max_new_tokens=new_tokens, temperature=0.7, top_p=0.9, repetition_penalty=1.1, seed=0
        )

        def run(p: SamplingParams, prompts: list = prompts, batch: int = batch) -> Any:
            return generate_chat(loaded, prompts, p, batch_size=batch, logits_processors=[no_eos])

        run(dataclasses.replace(params, max_new_tokens=2))  # warm-up
        _, prefill_s, prefill_cost = timed(
            lambda run=run, params=params: run(dataclasses.replace(params, max_new_tokens=1)),
            counter,
            clock,
        )
        _, seconds, cost = timed(lambda run=run, params=params: run(params), counter, clock)
        tokens = batch * new_tokens
        rows.append(
            path_row(f"decoding, batch {batch} (whole call)", "tokens", tokens, seconds, cost,
                     roof, loaded.dtype)
        )  # fmt: skip
        steps = PathCost(
            cost.flops - prefill_cost.flops,
            cost.bytes_read - prefill_cost.bytes_read,
            cost.matmul_seconds - prefill_cost.matmul_seconds,
        )
        rows.append(
            path_row(f"decoding, batch {batch} (decode steps)", "tokens", tokens - batch,
                     seconds - prefill_s, steps, roof, loaded.dtype)
        )  # fmt: skip
    return rows


def bench_dexperts_paths(
    loaded: LoadedModel,
    roof: ModelRoofline,
    clock: Clock,
    *,
    batch: int = 8,
    new_tokens: int = 48,
    repeats: int = 2,
) -> list[dict[str, Any]]:
    """Plain decoding against DExperts (batched LoRA path, random rank-8 expert, both
    formulas) at one batch: the rates and ratios of ``big5 bench dexperts`` (interleaved
    repeats, medians), and each path's work counted in one more run of the same call (the
    same seeds and lengths, so the same forwards). ``ratio_limit`` is what the ratio would be
    if both paths ran at the matmul limit: plain's limit time over DExperts'."""
    from big5_dagster.bench.dexperts import ADAPTER_NAME, bench_dexperts

    requests = reply_requests(batch)
    figures = bench_dexperts(
        loaded, None, requests, batch_size=batch, max_new_tokens=new_tokens, repeats=repeats,
        clock=clock,
    )  # fmt: skip
    no_eos = _no_eos(loaded)
    params = SamplingParams(
        max_new_tokens=new_tokens, temperature=0.7, top_p=0.9, repetition_penalty=1.1, seed=0
    )
    counter = ForwardCounter(loaded.model, roof, loaded.dtype)
    prompts = [r.base_prompt for r in requests]
    _, _, plain_cost = timed(
        lambda: generate_chat(
            loaded, prompts, params, batch_size=batch, logits_processors=[no_eos]
        ),
        counter,
        clock,
    )
    tokens = figures["new_tokens_per_run"]
    plain_seconds = tokens / figures["plain"]["tokens_per_second"]
    rows = [
        path_row(f"plain decoding, batch {batch}", "tokens", tokens, plain_seconds, plain_cost,
                 roof, loaded.dtype)
    ]  # fmt: skip
    for formula, label in (("paper", "DExperts paper"), ("dexperts", "DExperts classic")):
        with random_lora_adapter(loaded.model, seed=0, adapter_name=ADAPTER_NAME) as peft_model:
            _, _, cost = timed(
                lambda f=formula, m=peft_model: generate_dexperts(
                    m, loaded.tokenizer, requests, DExpertsParams(formula=f, alpha=0.5), params,
                    expert=ADAPTER_NAME, batch_size=batch, base_logits_processors=[no_eos],
                ),
                counter,
                clock,
            )  # fmt: skip
        row = figures["dexperts"][formula]
        rows.append(
            path_row(f"{label} decoding, batch {batch}", "tokens", tokens,
                     tokens / row["tokens_per_second"], cost, roof, loaded.dtype,
                     ratio_to_plain=row["ratio_to_plain"],
                     ratio_limit=plain_cost.matmul_seconds / cost.matmul_seconds)
        )  # fmt: skip
    return rows


def training_frames(n: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """SFT prompt/completion rows and DPO pairs shaped like the pipeline's (chat-rendered
    reply prompts, a sentence or two of reply)."""
    from big5_dagster.lib.corpora.synthetic_scenarios import generate_scenarios

    scenarios = generate_scenarios(n, seed=0).to_dict("records")
    prompts = [reply_messages(s, "So, what do you think about it?", PERSONA) for s in scenarios]
    chosen = "Honestly I love it! Let's gather everyone and celebrate together tonight."
    rejected = "I don't know. I would rather stay home alone and think about it quietly."
    sft = pd.DataFrame({"prompt": prompts, "completion": [chosen] * n})
    dpo = pd.DataFrame({"prompt": prompts, "chosen": [chosen] * n, "rejected": [rejected] * n})
    return sft, dpo


def bench_training_steps(
    loaded: LoadedModel, roof: ModelRoofline, clock: Clock, *, examples: int = 16
) -> list[dict[str, Any]]:
    """A few SFT and DPO steps (LoRA r 8, batch 8 and 4) with trl, as the pipeline trains."""
    from big5_dagster.lib.training import dpo, sft
    from big5_dagster.lib.training.runs import count_training_tokens
    from big5_dagster.lib.training.specs import LoraSpec, TrainSpec

    if loaded.path is None:
        return []
    tokenizer = loaded.tokenizer
    sft_rows, dpo_rows = training_frames(examples)
    for frame in (sft_rows, dpo_rows):
        frame["prompt"] = [render_chat(tokenizer, p) for p in frame["prompt"]]
    rows = []
    with tempfile.TemporaryDirectory(prefix="big5-bench-train-") as tmp:
        for method, frame, batch in (("SFT", sft_rows, 8), ("DPO", dpo_rows, 4)):
            # Trains in the loaded model's dtype, as the pipeline does (fp32 or bf16 autocast).
            precision = "bfloat16" if loaded.dtype == "bfloat16" else "float32"
            spec = TrainSpec(
                epochs=1.0, learning_rate=1e-4, batch_size=batch, max_length=192, seed=0,
                save_steps=10_000, precision=precision,
            )  # fmt: skip
            make = sft.make_sft_trainer if method == "SFT" else dpo.make_dpo_trainer
            trainer = make(
                loaded.path, frame, lora=LoraSpec(), spec=spec, work_dir=Path(tmp) / method,
                device="cpu",
            )  # fmt: skip
            counter = ForwardCounter(trainer.model, roof, precision)
            _, seconds, cost = timed(trainer.train, counter, clock)
            tokens = count_training_tokens(trainer)
            steps = trainer.state.global_step
            rows.append(
                path_row(f"{method} steps (LoRA r8, batch {batch})", "tokens", tokens, seconds,
                         cost, roof, "float32", steps=steps, seconds_per_step=seconds / steps)
            )  # fmt: skip
            del trainer
    return rows


def bench_loglikelihood(
    loaded: LoadedModel, roof: ModelRoofline, clock: Clock, *, n_requests: int = 32
) -> list[dict[str, Any]]:
    """lm-eval log-likelihood requests through HFLM on the loaded model (as the reasoning
    stage runs them): item-style contexts with a short continuation."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    bfi = load_inventory("bfi44")
    contexts = [render_chat(loaded.tokenizer, c) for c in item_conversations(bfi, len(bfi.items))][
        :n_requests
    ]
    requests = [
        Instance("loglikelihood", doc={}, arguments=(c, f" {1 + i % 5}"), idx=i)
        for i, c in enumerate(contexts)
    ]
    lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=8)
    counter = ForwardCounter(loaded.model, roof, loaded.dtype)
    lm.loglikelihood(requests[:8], disable_tqdm=True)  # warm-up
    _, seconds, cost = timed(lambda: lm.loglikelihood(requests, disable_tqdm=True), counter, clock)
    return [
        path_row("lm-eval loglikelihood (batch 8)", "requests", len(requests), seconds, cost,
                 roof, loaded.dtype)
    ]  # fmt: skip


def bench_all(
    loaded: LoadedModel,
    roof: ModelRoofline,
    clock: Clock,
    *,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Every hot path's row, in the order `big5 bench all` prints them."""
    say = log or (lambda message: None)
    rows: list[dict[str, Any]] = []
    for label, fn in (
        ("prefill and scoring", bench_scoring),
        ("plain decoding", bench_decoding),
        ("DExperts decoding", bench_dexperts_paths),
        ("SFT and DPO steps", bench_training_steps),
        ("lm-eval log-likelihood", bench_loglikelihood),
    ):
        started = time.perf_counter()
        rows += fn(loaded, roof, clock)
        say(f"{label}: {time.perf_counter() - started:.0f} s")
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as the fixed-width table `big5 bench all` prints."""
    header = (
        f"{'hot path':52s} {'rate':>16s} {'GFLOP/s':>8s} {'GB/s':>6s} "
        f"{'peak':>5s} {'bw':>5s} {'matmul':>6s}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        rate = f"{r['units_per_second']:.1f} {r['unit']}/s"
        line = (
            f"{r['path']:52s} {rate:>16s} {r['gflops_per_second']:8.1f} "
            f"{r['gbytes_per_second']:6.1f} {r['flops_fraction_of_peak']:5.2f} "
            f"{r['bytes_fraction_of_bandwidth']:5.2f} {r['matmul_fraction']:6.2f}"
        )
        if "ratio_to_plain" in r:
            line += f"   /plain {r['ratio_to_plain']:.2f} (limit {r['ratio_limit']:.2f})"
        lines.append(line)
    return "\n".join(lines)
