"""What the machine can do natively: the CPU's vector extensions, and the dtype that pays.

bf16 halves the bytes of every weight, but a CPU without bf16 arithmetic converts each
operand: on an AVX2-only host (AMD Zen 2) a bf16 matmul ran at about 6 GFLOP/s against 37-60
for fp32, 2-6x slower on every hot path but single-row decoding. With AMX (Intel Xeon,
``amx_bf16``) bf16 ran 2-7x faster than fp32 on the model's shapes, and on an AMD EPYC with
AVX512-BF16 (no AMX) 2.2-4.3x at the model's linear shapes and 2.2-2.7x on the inventory and
decoding paths (``big5 bench dtypes``, 2026-12-03). ``dtype: auto`` therefore picks bf16
wherever the hardware multiplies it natively: AVX512-BF16 or AMX on a CPU, or a CUDA GPU
that supports it; everywhere else fp32. torch is imported where used: the definitions load
without it.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of this machine (empty where /proc/cpuinfo does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def native_bf16(flags: frozenset[str] | set[str] | None = None) -> bool:
    """Whether the CPU has bf16 arithmetic at all (AVX512-BF16 or AMX); without it oneDNN
    converts, and bf16 matmuls run far below fp32 ones."""
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def auto_dtype(device: str, flags: frozenset[str] | set[str] | None = None) -> str:
    """The dtype ``dtype: auto`` loads on ``device`` ('cpu' or 'cuda...'): bfloat16 where it
    runs natively (a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX), else float32."""
    if device.startswith("cuda"):
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if native_bf16(flags) else "float32"
