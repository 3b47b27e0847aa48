"""This machine's own limits for the model's hot paths: matmul throughput and memory bandwidth.

A hot path is judged against what the same machine does on the same matrix shapes, measured
in the same run (a shared or throttled machine slows both alike):

- :func:`matmul_rate`: FLOP/s of ``linear(x[M, k], W[n, k])`` (the call every ``nn.Linear``
  makes) for one linear shape of the model at M rows. The weights are cycled over enough
  distinct copies to overflow the last-level cache, so they stream from memory as in a
  forward of the whole model (what a decode step does); the cache-resident rate of the same
  shape (``hot``) is kept beside it.
- :func:`memory_bandwidth`: bytes/s of reading a buffer far larger than the cache.
- :meth:`ModelRoofline.linear_seconds`: the time the model's linear layers take at M rows
  when each runs at its measured rate: the lower bound a forward of M rows can reach. A
  path's *matmul fraction* is that bound over the path's measured time; its FLOP/s and
  bytes/s fractions use the peak matmul rate and the read bandwidth.

``clock`` is wall time by default; ``time.process_time`` with one torch thread counts only
this process's own work when other processes share the cores (with several threads it would
count OpenMP's spin-waiting too).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

Clock = Callable[[], float]

ROWS: tuple[int, ...] = (1, 8, 16, 24, 32, 64, 256, 1024)
"""Row counts measured: decode batches (8, 32), DExperts' 2x and 3x (16, 24), prefill."""

STREAM_BYTES = 64 * 2**20
"""Weight bytes cycled through per timing: several times a server CPU's last-level cache."""


@dataclass(frozen=True)
class LinearShape:
    """One linear layer kind: ``k`` inputs, ``n`` outputs, ``per_layer`` of it in each layer."""

    name: str
    k: int
    n: int
    per_layer: int = 1

    def flops(self, m: int) -> int:
        return 2 * m * self.k * self.n


def model_linear_shapes(config: Any) -> tuple[list[LinearShape], LinearShape]:
    """(per-layer linear shapes, LM head) of a Llama-style transformers config."""
    hidden = config.hidden_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    q = config.num_attention_heads * head_dim
    kv = config.num_key_value_heads * head_dim
    layer = [
        LinearShape("q_proj/o_proj", hidden, q, 2) if q == hidden else LinearShape("q", hidden, q),
        LinearShape("k_proj/v_proj", hidden, kv, 2),
        LinearShape("gate/up_proj", hidden, config.intermediate_size, 2),
        LinearShape("down_proj", config.intermediate_size, hidden, 1),
    ]
    if q != hidden:
        layer.append(LinearShape("o_proj", q, hidden, 1))
    return layer, LinearShape("lm_head", hidden, config.vocab_size, 1)


def _time_min(fn: Callable[[], Any], *, clock: Clock, min_seconds: float, repeats: int) -> float:
    """The fastest of ``repeats`` timings; each loops ``fn`` for about ``min_seconds``.

    The minimum, not the median: a limit is what the machine can do, and load from other
    processes only ever adds time.
    """
    fn()  # warm-up (allocations, kernel selection)
    started = clock()
    fn()
    once = max(clock() - started, 1e-6)
    loops = max(1, int(min_seconds / once))
    best = float("inf")
    for _ in range(repeats):
        started = clock()
        for _ in range(loops):
            fn()
        best = min(best, (clock() - started) / loops)
    return best


@dataclass(frozen=True)
class MatmulRate:
    shape: str
    m: int
    k: int
    n: int
    dtype: str
    seconds: float
    """One matmul, weights streamed (cycled over copies that overflow the cache)."""
    hot_seconds: float
    """One matmul, the same weight every time (cache-resident when it fits)."""

    @property
    def flops_per_second(self) -> float:
        return 2 * self.m * self.k * self.n / self.seconds

    @property
    def hot_flops_per_second(self) -> float:
        return 2 * self.m * self.k * self.n / self.hot_seconds


@torch.inference_mode()
def matmul_rate(
    m: int,
    k: int,
    n: int,
    *,
    dtype: torch.dtype = torch.float32,
    name: str = "",
    clock: Clock = time.perf_counter,
    min_seconds: float = 0.03,
    repeats: int = 2,
) -> MatmulRate:
    """Measured time of ``linear(x[m, k], W[n, k])``, weights streamed and hot."""
    generator = torch.Generator().manual_seed(0)
    element = torch.empty((), dtype=dtype).element_size()
    copies = max(1, min(32, STREAM_BYTES // (k * n * element)))
    weights = [torch.randn(n, k, generator=generator).to(dtype) for _ in range(copies)]
    x = torch.randn(m, k, generator=generator).to(dtype)
    linear = torch.nn.functional.linear

    def streamed() -> None:
        for w in weights:
            linear(x, w)

    def hot() -> None:
        w = weights[0]
        for _ in range(copies):
            linear(x, w)

    timing = dict(clock=clock, min_seconds=min_seconds, repeats=repeats)
    seconds = _time_min(streamed, **timing) / copies
    hot_seconds = _time_min(hot, **timing) / copies if copies > 1 else seconds
    return MatmulRate(name, m, k, n, str(dtype).removeprefix("torch."), seconds, hot_seconds)


@torch.inference_mode()
def memory_bandwidth(
    nbytes: int = 256 * 2**20,
    *,
    clock: Clock = time.perf_counter,
    min_seconds: float = 0.1,
    repeats: int = 3,
) -> float:
    """Bytes/s of reading ``nbytes`` of fp32 (a sum: one read per element)."""
    a = torch.ones(nbytes // 4, dtype=torch.float32)
    return nbytes / _time_min(
        lambda: a.sum(), clock=clock, min_seconds=min_seconds, repeats=repeats
    )


@dataclass
class ModelRoofline:
    """Measured matmul rates at the model's shapes and the read bandwidth of this machine."""

    layer_shapes: list[LinearShape]
    lm_head: LinearShape
    n_layers: int
    rates: dict[tuple[str, str, int], MatmulRate] = field(default_factory=dict)
    """(dtype, shape name, m) -> rate."""
    read_bytes_per_second: float = 0.0
    threads: int = 0
    clock: str = "wall"

    def _seconds(self, dtype: str, shape: LinearShape, m: int) -> float:
        if m <= 0:
            return 0.0
        rows = sorted(r for (d, s, r) in self.rates if d == dtype and s == shape.name)
        if not rows:
            raise KeyError(f"no {dtype} measurement of {shape.name}")
        if m in rows:
            return self.rates[(dtype, shape.name, m)].seconds
        if m > rows[-1]:  # past the largest measured M the rate is flat: time grows with M
            return self.rates[(dtype, shape.name, rows[-1])].seconds * m / rows[-1]
        # Between measured row counts a matmul's time is close to linear in M.
        lower = max((r for r in rows if r <= m), default=rows[0])
        upper = min(r for r in rows if r >= m)
        t_lo = self.rates[(dtype, shape.name, lower)].seconds
        t_hi = self.rates[(dtype, shape.name, upper)].seconds
        if lower == upper or m < lower:
            return t_lo * (m / lower if m < lower else 1.0)
        return t_lo + (t_hi - t_lo) * (m - lower) / (upper - lower)

    def linear_seconds(
        self, m: int, lm_head_rows: int | None = None, dtype: str = "float32"
    ) -> float:
        """Lower bound of one forward of ``m`` rows (logits for ``lm_head_rows`` of them):
        its linear layers, each at its measured rate."""
        head_rows = m if lm_head_rows is None else lm_head_rows
        layer = sum(s.per_layer * self._seconds(dtype, s, m) for s in self.layer_shapes)
        return self.n_layers * layer + self._seconds(dtype, self.lm_head, head_rows)

    def linear_flops(self, m: int, lm_head_rows: int | None = None) -> int:
        head_rows = m if lm_head_rows is None else lm_head_rows
        layer = sum(s.per_layer * s.flops(m) for s in self.layer_shapes)
        return self.n_layers * layer + self.lm_head.flops(head_rows)

    def weight_bytes(self, *, with_head: bool = True, element: int = 4) -> int:
        layer = sum(s.per_layer * s.k * s.n for s in self.layer_shapes)
        head = self.lm_head.k * self.lm_head.n if with_head else 0
        return (self.n_layers * layer + head) * element

    def peak_flops_per_second(self, dtype: str = "float32") -> float:
        return max(
            max(r.flops_per_second, r.hot_flops_per_second)
            for (d, _, _), r in self.rates.items()
            if d == dtype
        )

    def dtypes(self) -> list[str]:
        return sorted({d for (d, _, _) in self.rates})

    def forward_table(self, rows: Sequence[int], dtype: str = "float32") -> list[dict[str, Any]]:
        """The whole model's matmul limit per forward at each M (logits for every row)."""
        return [
            {
                "m": m,
                "ms_per_forward": 1e3 * self.linear_seconds(m, dtype=dtype),
                "gflops": self.linear_flops(m) / self.linear_seconds(m, dtype=dtype) / 1e9,
            }
            for m in rows
        ]

    def as_dict(self) -> dict[str, Any]:
        return {
            "threads": self.threads,
            "clock": self.clock,
            "read_gbytes_per_second": self.read_bytes_per_second / 1e9,
            "peak_gflops": {d: self.peak_flops_per_second(d) / 1e9 for d in self.dtypes()},
            "matmul": [
                {
                    "dtype": r.dtype,
                    "shape": r.shape,
                    "m": r.m,
                    "k": r.k,
                    "n": r.n,
                    "gflops_streamed": r.flops_per_second / 1e9,
                    "gflops_hot": r.hot_flops_per_second / 1e9,
                }
                for r in self.rates.values()
            ],
            "forward": {
                d: self.forward_table(sorted({m for (_, _, m) in self.rates}), d)
                for d in self.dtypes()
            },
            "shapes": [dataclasses.asdict(s) for s in [*self.layer_shapes, self.lm_head]],
        }


def measure_roofline(
    config: Any,
    *,
    rows: Iterable[int] = ROWS,
    dtypes: Iterable[torch.dtype] = (torch.float32,),
    clock: Clock = time.perf_counter,
    clock_name: str = "wall",
    min_seconds: float = 0.03,
    log: Callable[[str], None] | None = None,
) -> ModelRoofline:
    """Measure the model's linear shapes at ``rows`` in each dtype, and the read bandwidth."""
    layer_shapes, lm_head = model_linear_shapes(config)
    roof = ModelRoofline(layer_shapes, lm_head, config.num_hidden_layers)
    roof.threads = torch.get_num_threads()
    roof.clock = clock_name
    for dtype in dtypes:
        for shape in [*layer_shapes, lm_head]:
            for m in rows:
                rate = matmul_rate(
                    m, shape.k, shape.n, dtype=dtype, name=shape.name, clock=clock,
                    min_seconds=min_seconds,
                )  # fmt: skip
                roof.rates[(rate.dtype, shape.name, m)] = rate
            if log:
                best = max(
                    roof.rates[(str(dtype).removeprefix("torch."), shape.name, m)].flops_per_second
                    for m in rows
                )
                log(f"roofline {dtype} {shape.name}: up to {best / 1e9:.1f} GFLOP/s")
    roof.read_bytes_per_second = memory_bandwidth(clock=clock)
    if log:
        log(f"roofline read bandwidth {roof.read_bytes_per_second / 1e9:.1f} GB/s")
    return roof


@dataclass(frozen=True)
class PathCost:
    """The work of one measured run of a hot path, as the roofline counts it."""

    flops: float
    """Every multiply-add of the run's matmuls and attention, x2."""
    bytes_read: float
    """Weights and KV cache read from memory (a lower bound: activations are not counted)."""
    matmul_seconds: float
    """The run's linear layers at this machine's measured rates: the time to beat."""


def fractions(roof: ModelRoofline, cost: PathCost, seconds: float, dtype: str) -> dict[str, float]:
    """A run's achieved rates and their fractions of this machine's limits."""
    return {
        "gflops_per_second": cost.flops / seconds / 1e9,
        "gbytes_per_second": cost.bytes_read / seconds / 1e9,
        "flops_fraction_of_peak": cost.flops / seconds / roof.peak_flops_per_second(dtype),
        "bytes_fraction_of_bandwidth": cost.bytes_read / seconds / roof.read_bytes_per_second,
        "matmul_fraction": cost.matmul_seconds / seconds,
    }
