"""PNG plots for asset metadata and the report (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402

from big5_dagster.lib.storage import atomic_file  # noqa: E402


def save_figure(fig: plt.Figure, path: Path) -> Path:
    with atomic_file(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def loss_curves_png(
    curves: Mapping[str, Sequence[tuple[int, float]]], path: Path, title: str = "training loss"
) -> Path:
    """One line per named curve of (step, loss) points."""
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for name, points in curves.items():
        if points:
            steps, losses = zip(*points, strict=True)
            ax.plot(steps, losses, marker="o", markersize=2, label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    if len(curves) > 1:
        ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
