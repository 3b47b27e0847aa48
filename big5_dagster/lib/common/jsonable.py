"""Plain JSON values from what the pipeline holds (numpy, pandas, torch scalars, paths)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import date, datetime
from pathlib import PurePath
from typing import Any

import numpy as np
import pandas as pd


def jsonable(value: Any) -> Any:
    """``value`` with every part a JSON value: string keys, lists for tuples and arrays, Python
    numbers for numpy (and 0-d torch) scalars, None for NaN, infinities, NA and NaT, ISO text
    for timestamps, text for paths. Anything else is returned as it is."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.generic) or (
        getattr(value, "ndim", None) == 0 and hasattr(value, "item")
    ):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, PurePath):
        return str(value)
    return value
