"""Loading the seed corpora with `datasets`: one split from the Hugging Face hub or a local
parquet/CSV/JSONL file, sampled with a seed, mapped onto the canonical schemas."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from big5_dagster.lib.corpora.schema import (
    PSYCHADAPTER_DATASET,
    SODA_COLUMNS,
    SODA_DATASET,
    CorpusError,
    canonical_posts,
    canonical_scenarios,
    check_soda_columns,
    resolve_post_columns,
    usable_soda_rows,
)

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

HF_TOKEN_ENV = "HF_TOKEN"

LOCAL_FORMATS: dict[str, str] = {
    ".parquet": "parquet",
    ".csv": "csv",
    ".jsonl": "json",
    ".json": "json",
}


def _hf_token() -> str | None:
    """The hub token comes only from the environment; it is never logged or stored."""
    return os.environ.get(HF_TOKEN_ENV) or None


def load_split(
    source: Literal["hub", "local"], location: str, split: str, cache_dir: str | None = None
) -> tuple[datasets.Dataset, str]:
    """One split as a ``datasets.Dataset`` and the name errors should cite.

    hub: ``location`` is a dataset id, loaded with ``datasets.load_dataset``.
    local: ``location`` is a parquet, CSV or JSONL file (its one split is ``train``).
    """
    import datasets

    if source == "hub":
        name = f"{location} (split {split})"
        try:
            loaded = datasets.load_dataset(
                location, split=split, token=_hf_token(), cache_dir=cache_dir
            )
        except Exception as e:  # network, auth, unknown split: report with the dataset name
            raise CorpusError(
                name, None, None, f"could not load from the hub: {type(e).__name__}: {e}"
            ) from e
        return loaded, name
    if source == "local":
        path = Path(location)
        name = str(path)
        if not path.is_file():
            raise CorpusError(name, None, None, "file does not exist")
        builder = LOCAL_FORMATS.get(path.suffix.lower())
        if builder is None:
            raise CorpusError(
                name, None, None, f"unsupported file type: expected one of {sorted(LOCAL_FORMATS)}"
            )
        try:
            loaded = datasets.load_dataset(
                builder, data_files=str(path), split="train", cache_dir=cache_dir
            )
        except Exception as e:  # a file the format reader rejects
            raise CorpusError(
                name, None, None, f"could not be read as {builder}: {type(e).__name__}: {e}"
            ) from e
        return loaded, name
    raise ValueError(f"unknown corpus source {source!r}: expected 'hub' or 'local'")


def seeded_row_sample(n_rows: int, max_rows: int | None, seed: int) -> np.ndarray:
    """Sorted 0-based indices of a seeded sample of at most ``max_rows`` of ``n_rows`` rows."""
    if max_rows is None or max_rows >= n_rows:
        return np.arange(n_rows)
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=max_rows, replace=False))


def load_posts(
    source: Literal["hub", "local"],
    location: str = PSYCHADAPTER_DATASET,
    split: str = "train",
    max_posts: int | None = None,
    seed: int = 42,
    cache_dir: str | None = None,
) -> tuple[pd.DataFrame, str]:
    """PsychAdapter-format posts -> (canonical posts, source name).

    ``max_posts`` keeps a seeded sample (rows in file order). The hub token is read from
    the HF_TOKEN environment variable only.
    """
    loaded, name = load_split(source, location, split, cache_dir)
    resolve_post_columns(loaded.column_names, name)  # fail on the header before sampling
    rows = seeded_row_sample(len(loaded), max_posts, seed)
    if len(rows) < len(loaded):
        loaded = loaded.select(rows)
    posts = canonical_posts(loaded.to_pandas(), name, row_numbers=rows + 1)
    logger.info("loaded %d posts from %s", len(posts), name)
    return posts, name


def load_scenarios(
    source: Literal["hub", "local"],
    location: str = SODA_DATASET,
    split: str = "train",
    n_scenarios: int = 10_000,
    seed: int = 42,
    cache_dir: str | None = None,
) -> tuple[pd.DataFrame, str]:
    """A seeded sample of ``n_scenarios`` usable SODA rows -> (canonical scenarios, source name).

    Rows are drawn in a seeded random order and kept when usable (see
    ``usable_soda_rows``), so only about n rows are ever read; skipped rows are logged.
    Ids are ``<split>-<row>`` (hub) or ``<file stem>-<row>`` (local), 1-based rows.
    """
    if n_scenarios < 1:
        raise ValueError(f"n_scenarios must be >= 1, got {n_scenarios}")
    loaded, name = load_split(source, location, split, cache_dir)
    check_soda_columns(loaded.column_names, name)
    order = np.random.default_rng(seed).permutation(len(loaded))
    kept: list[int] = []
    skipped = 0
    start = 0
    while len(kept) < n_scenarios and start < len(order):
        block = order[start : start + 2 * (n_scenarios - len(kept)) + 16]
        start += len(block)
        part = loaded.select(block).select_columns(list(SODA_COLUMNS)).to_pandas()
        usable = usable_soda_rows(part, name, block + 1)
        for index, ok in zip(block, usable, strict=True):
            if not ok:
                skipped += 1
            elif len(kept) < n_scenarios:
                kept.append(int(index))
    if len(kept) < n_scenarios:
        raise CorpusError(
            name, None, None, f"only {len(kept)} usable scenarios, {n_scenarios} requested"
        )
    if skipped:
        logger.warning(
            "%s: skipped %d rows without a usable narrative/PersonX/PersonY", name, skipped
        )
    rows = np.sort(np.asarray(kept))
    frame = loaded.select(rows).select_columns(list(SODA_COLUMNS)).to_pandas()
    prefix = split if source == "hub" else Path(location).stem
    return canonical_scenarios(frame, name, rows + 1, prefix), name
