"""Types and the error shared by the engine's modules."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal

Dtype = Literal["float32", "bfloat16", "float16"]


DtypeSetting = Literal["float32", "bfloat16", "float16", "auto"]
"""'auto': the dtype the hardware runs natively and fast (``engine.hardware.auto_dtype``)."""


Device = Literal["auto", "cpu", "cuda"]


Conversation = Sequence[Mapping[str, str]]


ProgressCallback = Callable[[int, int], None]


class ModelBackendError(RuntimeError):
    """The model could not be found, converted or loaded; the message says what to do."""
