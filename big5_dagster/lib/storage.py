"""Atomic writes and content hashes: nothing half-written is ever visible under its final name."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

HASH_LEN = 16


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target`` whole.

    On an exception the temporary folder is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it is renamed onto ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, target)


def write_parquet(df: pd.DataFrame, target: Path) -> Path:
    with atomic_file(target) as tmp:
        df.to_parquet(tmp, index=False)
    return target


def write_json(obj: Any, target: Path) -> Path:
    with atomic_file(target) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    return target


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


def hash_source(*objects: Any) -> str:
    """Code version of the given modules, classes or functions: a hash of their source text."""
    import inspect

    return hash_bytes(*(inspect.getsource(obj).encode() for obj in objects))


class ChunkStore:
    """Partial results of a long step, one atomically written parquet file per chunk.

    A step interrupted midway reruns only what no finished chunk holds; chunks written
    under other settings (another ``key``) are discarded, so results never mix settings.
    """

    def __init__(self, folder: Path, key: str) -> None:
        self.folder = Path(folder)
        self.dir = self.folder / f".chunks-{key}"
        self.key = key

    def open(self) -> None:
        for other in self.folder.glob(".chunks-*"):
            if other != self.dir:
                shutil.rmtree(other, ignore_errors=True)
        self.dir.mkdir(parents=True, exist_ok=True)

    def read(self) -> pd.DataFrame:
        files = sorted(self.dir.glob("chunk-*.parquet")) if self.dir.exists() else []
        if not files:
            return pd.DataFrame()
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)

    def n_chunks(self) -> int:
        return len(list(self.dir.glob("chunk-*.parquet"))) if self.dir.exists() else 0

    def write(self, df: pd.DataFrame) -> Path:
        target = self.dir / f"chunk-{self.n_chunks():05d}-{uuid.uuid4().hex[:6]}.parquet"
        return write_parquet(df, target)

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
