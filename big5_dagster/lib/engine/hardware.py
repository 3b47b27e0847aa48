"""What the machine can do natively: the CPU's vector extensions, and the dtype that pays.

bf16 halves the bytes of every weight, but a CPU without bf16 arithmetic converts each
operand: on an AVX2-only host (AMD Zen 2) a bf16 matmul ran at about 6 GFLOP/s against 37-60
for fp32, 2-6x slower on every hot path but single-row decoding. With AMX (Intel Xeon,
``amx_bf16``) bf16 ran 2-7x faster than fp32 on the model's shapes. ``dtype: auto`` therefore
picks bf16 only where the hardware multiplies it natively at speed: AMX on a CPU, or a CUDA
GPU that supports it; everywhere else fp32.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch


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
    runs natively and fast (a CUDA GPU with bf16, a CPU with AMX), else float32. AVX512-BF16
    without AMX is left at float32: measured there, bf16 barely helped decoding."""
    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    flags = cpu_flags() if flags is None else flags
    return "bfloat16" if "amx_bf16" in flags else "float32"
