"""Partial results of a long step, written as they finish, so an interrupted step resumes."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pandas as pd

from big5_dagster.lib.common.files import write_parquet


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
