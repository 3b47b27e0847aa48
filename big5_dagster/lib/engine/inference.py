"""``torch.inference_mode()`` as a decorator that imports torch when the function runs, so the
modules it decorates import without torch (the Dagster definitions load without it)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def inference_mode(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` run under ``torch.inference_mode()`` (no autograd records, no version counters)."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        import torch

        with torch.inference_mode():
            return fn(*args, **kwargs)

    return run
