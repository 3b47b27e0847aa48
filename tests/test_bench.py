"""The roofline and the work counted per hot path (``big5 bench all``)."""

from __future__ import annotations

import time

import pytest
import torch

from big5_dagster.bench import hot_paths
from big5_dagster.bench.roofline import (
    MatmulRate,
    ModelRoofline,
    PathCost,
    fractions,
    measure_roofline,
    model_linear_shapes,
)
from big5_dagster.lib.engine.hardware import auto_dtype, native_bf16
from big5_dagster.lib.engine.kv_decode import kv_cache


@pytest.fixture(scope="module")
def tiny(tiny_backend):
    torch.set_num_threads(1)
    return tiny_backend.load()


def _fixed_roofline(config, seconds_per_flop: float = 1e-9) -> ModelRoofline:
    """A roofline whose every matmul runs at exactly 1 GFLOP/s (for exact arithmetic)."""
    layer, head = model_linear_shapes(config)
    roof = ModelRoofline(layer, head, config.num_hidden_layers, read_bytes_per_second=1e9)
    for shape in [*layer, head]:
        for m in (1, 8, 64):
            seconds = shape.flops(m) * seconds_per_flop
            rate = MatmulRate(shape.name, m, shape.k, shape.n, "float32", seconds, seconds / 2)
            roof.rates[("float32", shape.name, m)] = rate
    return roof


def test_linear_shapes_hold_every_linear_weight_of_the_model(tiny):
    layer, head = model_linear_shapes(tiny.model.config)
    n_layers = tiny.model.config.num_hidden_layers
    linear = sum(
        p.numel()
        for name, p in tiny.model.named_parameters()
        if name.endswith("proj.weight") and ".layers." in name
    )
    assert n_layers * sum(s.per_layer * s.k * s.n for s in layer) == linear
    assert (head.k, head.n) == (tiny.model.config.hidden_size, tiny.model.config.vocab_size)


def test_roofline_interpolates_between_and_extrapolates_past_the_measured_rows(tiny):
    roof = _fixed_roofline(tiny.model.config)
    # At 1 GFLOP/s everywhere the limit of a forward is its FLOPs in ns, at any M.
    for m, head_rows in ((8, 8), (20, 1), (64, 64), (200, 3)):
        assert roof.linear_seconds(m, head_rows) == pytest.approx(
            roof.linear_flops(m, head_rows) * 1e-9
        )
    assert roof.peak_flops_per_second() == pytest.approx(2e9)  # the hot rate
    row = fractions(roof, PathCost(4e9, 2e9, 1.0), seconds=2.0, dtype="float32")
    assert row == pytest.approx(
        {
            "gflops_per_second": 2.0,
            "gbytes_per_second": 1.0,
            "flops_fraction_of_peak": 1.0,
            "bytes_fraction_of_bandwidth": 1.0,
            "matmul_fraction": 0.5,
        }
    )


class TickingClock:
    """A controlled clock: every reading is ``tick`` seconds after the previous one, so the
    timings the roofline derives are exact whatever else the machine is doing (a power of two
    keeps the sums exact in floating point)."""

    def __init__(self, tick: float = 2**-10) -> None:
        self.tick, self.now = tick, 0.0

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def test_measured_roofline_has_every_shape_and_a_bandwidth(tiny):
    from big5_dagster.bench.roofline import STREAM_BYTES, memory_bandwidth

    tick = 2**-10
    roof = measure_roofline(
        tiny.model.config, rows=(1, 16), clock=TickingClock(tick), min_seconds=tick
    )
    shapes = {s.name: s for s in [*roof.layer_shapes, roof.lm_head]}
    assert {(s, m) for (_, s, m) in roof.rates} == {(s, m) for s in shapes for m in (1, 16)}
    for (_, name, m), rate in roof.rates.items():
        shape = shapes[name]
        # One timed loop covers every streamed copy: a matmul's time is the loop's over copies.
        copies = max(1, min(32, STREAM_BYTES // (shape.k * shape.n * 4)))
        assert rate.seconds == pytest.approx(tick / copies)
        assert rate.flops_per_second == pytest.approx(shape.flops(m) * copies / tick)
    # Each repeat loops until min_seconds: 4 ticks asked, 4 loops in one timed tick.
    bandwidth = memory_bandwidth(2**20, clock=TickingClock(tick), min_seconds=4 * tick)
    assert bandwidth == pytest.approx(2**20 / (tick / 4))
    assert roof.read_bytes_per_second == memory_bandwidth(clock=TickingClock(tick))
    assert roof.as_dict()["forward"]["float32"][1]["m"] == 16


def test_auto_dtype_is_bf16_only_where_the_cpu_multiplies_it_natively():
    assert native_bf16({"avx2", "amx_bf16"}) and native_bf16({"avx512_bf16"})
    assert not native_bf16({"avx2", "fma"}) and not native_bf16({"avx512f", "avx512bw"})
    assert auto_dtype("cpu", {"avx2", "amx_bf16", "amx_tile"}) == "bfloat16"
    assert auto_dtype("cpu", {"avx512f", "avx512_bf16"}) == "bfloat16"
    # AVX-512 without its bf16 extension converts every operand: fp32 stays.
    assert auto_dtype("cpu", {"avx512f", "avx512bw"}) == "float32"
    assert auto_dtype("cpu", {"avx2", "fma"}) == "float32"


def test_dtype_auto_loads_and_records_the_dtype_chosen(tiny_model_dir, monkeypatch):
    from big5_dagster.lib.engine import loading

    monkeypatch.setattr(loading, "auto_dtype", lambda device: "bfloat16")
    loaded = loading.load_model(str(tiny_model_dir), dtype="auto", device="cpu")
    assert loaded.dtype == "bfloat16" and next(loaded.model.parameters()).dtype == torch.bfloat16
    assert loaded.metadata()["dtype"] == "bfloat16"
    fp32 = loading.load_model(str(tiny_model_dir), dtype="float32", device="cpu")
    assert loaded.fingerprint != fp32.fingerprint


def test_the_counter_counts_each_forward_as_the_roofline_does(tiny):
    roof = _fixed_roofline(tiny.model.config)
    counter = hot_paths.ForwardCounter(tiny.model, roof)
    config = tiny.model.config
    head_dim = config.hidden_size // config.num_attention_heads
    q_dim = config.num_attention_heads * head_dim
    cache = kv_cache(config, 8)
    with torch.inference_mode(), counter.counting():
        tiny.model(input_ids=torch.ones((2, 5), dtype=torch.long), cache=cache, logits_to_keep=1)
        tiny.model(input_ids=torch.ones((2, 1), dtype=torch.long), cache=cache, logits_to_keep=1)
    attention = 4.0 * config.num_hidden_layers * q_dim * (2 * 5 * 5 + 2 * 1 * 6)
    assert counter.forwards == 2 and counter.tokens == 12
    assert counter.flops == pytest.approx(
        roof.linear_flops(10, 2) + roof.linear_flops(2, 2) + attention
    )
    assert counter.matmul_seconds == pytest.approx(
        roof.linear_seconds(10, 2) + roof.linear_seconds(2, 2)
    )
    kv = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * 4  # fp32
    assert counter.bytes_read == pytest.approx(2 * roof.weight_bytes() + kv * (2 * 5 + 2 * 6))
    # With gradients (training) the backward's input gradients count as one more forward.
    counter.reset()
    with counter.counting():
        tiny.model(input_ids=torch.ones((1, 4), dtype=torch.long))
    attention = 4.0 * config.num_hidden_layers * q_dim * 16
    assert counter.flops == pytest.approx(2 * roof.linear_flops(4, 4) + 3 * attention)


def test_scoring_rows_report_rates_beside_the_limits(tiny):
    roof = _fixed_roofline(tiny.model.config)
    rows = hot_paths.bench_scoring(tiny, roof, time.process_time, repeats=1)
    assert [r["unit"] for r in rows] == ["prompts", "items"]
    for r in rows:
        assert r["units_per_second"] == pytest.approx(r["units"] / r["seconds"])
        assert r["matmul_fraction"] > 0 and r["gflops_per_second"] > 0
    table = hot_paths.format_table(rows)
    assert "option scoring" in table and "matmul" in table.splitlines()[0]


def test_bench_dtypes_reports_agreement_of_what_the_pipeline_keeps(tiny, tiny_backend):
    from big5_dagster.bench.dtypes import bench_dtypes

    sizes = dict(batch=2, new_tokens=4, n_items=6, answer_tokens=6)
    same = bench_dtypes(tiny, tiny, TickingClock(), **sizes)
    assert [r["path"].split(" ")[0] for r in same] == [
        "option", "greedy", "DExperts", "generate-and-parse"
    ]  # fmt: skip
    # The same model in both columns: every agreement is perfect.
    scoring, greedy, dexperts, parsed = same
    assert scoring["max_probability_difference"] == 0.0
    assert scoring["same_most_likely_option"] == 1.0
    assert scoring["max_trait_score_difference"] == 0.0
    for row in (greedy, dexperts):
        assert row["identical_replies"] == row["mean_share_before_first_difference"] == 1.0
    assert parsed["same_answer"] == 1.0
    assert parsed["parse_failures_fp32"] == parsed["parse_failures_bf16"]
    assert all(r["bf16_speedup"] == pytest.approx(1.0) for r in same)  # the ticking clock

    bf16 = tiny_backend.model_copy(update={"dtype": "bfloat16"}).load(cached=False)
    assert bf16.dtype == "bfloat16"
    rows = bench_dtypes(tiny, bf16, TickingClock(), **sizes)
    assert 0.0 < rows[0]["max_probability_difference"] < 1.0  # rounded weights differ a little
    for row in rows[1:3]:
        assert 0.0 <= row["mean_share_before_first_difference"] <= 1.0
