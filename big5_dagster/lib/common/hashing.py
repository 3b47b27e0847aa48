"""Content hashes of bytes, JSON values, tables, files and folders (16 hex digits)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pandas as pd

HASH_LEN = 16


def hash_bytes(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()[:HASH_LEN]


def hash_json(obj: Any) -> str:
    return hash_bytes(json.dumps(obj, sort_keys=True, default=str).encode())


def hash_dataframe(df: pd.DataFrame) -> str:
    """Content hash of a table: column names, dtypes and every value, in row order."""
    header = json.dumps([(str(c), str(t)) for c, t in df.dtypes.items()]).encode()
    hashable = df.copy(deep=False)
    for column in hashable.select_dtypes(include="object").columns:
        values = hashable[column]
        if values.map(lambda v: isinstance(v, list | dict | tuple)).any():  # e.g. flag lists
            hashable[column] = values.map(lambda v: json.dumps(v, sort_keys=True, default=str))
    rows = pd.util.hash_pandas_object(hashable, index=False).to_numpy().tobytes()
    return hash_bytes(header, rows)


def hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:HASH_LEN]


def hash_dir(path: Path) -> str:
    """Content hash of a folder: relative file names and their bytes."""
    h = hashlib.sha256()
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        h.update(str(file.relative_to(path)).encode())
        h.update(hash_file(file).encode())
    return h.hexdigest()[:HASH_LEN]


def hash_weights(folder: Path) -> str:
    """Hash of the weight files only (peft's adapter_config.json records absolute paths)."""
    files = sorted(Path(folder).rglob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no weights (*.safetensors) in {folder}")
    return hash_bytes(*(f"{f.relative_to(folder)}:{hash_file(f)}".encode() for f in files))
