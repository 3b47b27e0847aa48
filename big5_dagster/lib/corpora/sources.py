"""Where a seed corpus comes from: the synthetic generator (tiny), a Hugging Face hub dataset,
or a local file. One switch for both corpora (``post_source``, ``scenario_source``)."""

from __future__ import annotations

SOURCES: tuple[str, ...] = ("synthetic", "hub", "local")


def location(section: str, source: str, local_path: str | None, hub_dataset: str) -> str:
    """The dataset id (hub) or file (local) to read; a clear error when it is not set."""
    if source not in SOURCES[1:]:
        raise ValueError(f"{section}.source must be one of {list(SOURCES)}, got {source!r}")
    found = local_path if source == "local" else hub_dataset
    if not found:
        field = "local_path" if source == "local" else "hub_dataset"
        raise ValueError(f"{section}.source is {source!r} but {section}.{field} is not set")
    return found
