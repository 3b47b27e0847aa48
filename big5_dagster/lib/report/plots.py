"""PNG plots for asset metadata and the report (matplotlib, headless). matplotlib is imported
at the first plot: the definitions load without it."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 100


@cache
def pyplot() -> ModuleType:
    """matplotlib.pyplot on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig: Figure, dpi: int = DPI) -> bytes:
    """The figure as PNG bytes (for embedding in a self-contained report), then closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    return buffer.getvalue()


def markdown_image(image: bytes | Figure, alt: str) -> str:
    """Markdown showing a PNG (bytes or a figure, then closed) embedded as a data URI: the
    form in which the Dagster UI draws a picture in an asset's metadata (wrap it in
    ``MetadataValue.md``). The one way any asset puts a plot in the UI."""
    png = image if isinstance(image, bytes) else png_bytes(image)
    encoded = base64.b64encode(png).decode("ascii")
    return f"![{alt}](data:image/png;base64,{encoded})"


def legend_outside(ax: Axes, **kwargs) -> None:
    """The legend right of the axes, where it cannot cover the data."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, **kwargs)


def loss_curves(curves: Mapping[str, Sequence[tuple[int, float]]], title: str) -> bytes:
    """One line per named curve of (step, loss) points."""
    fig, ax = pyplot().subplots(figsize=(5.5, 3.2))
    for name, points in curves.items():
        if points:
            steps, losses = zip(*points, strict=True)
            ax.plot(steps, losses, marker="o", markersize=2, label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    if len(curves) > 1:
        legend_outside(ax, fontsize=7)
    ax.grid(alpha=0.3)
    return png_bytes(fig)


def bar_chart(
    frame: pd.DataFrame,
    x: str,
    y: str,
    hue: str | None = None,
    *,
    title: str,
    ylabel: str,
    reference: float | None = None,
    reference_label: str = "",
) -> bytes:
    """Grouped bars of ``y`` by ``x`` (one colour per ``hue``), with an optional line."""
    table = (
        frame.pivot_table(index=x, columns=hue, values=y, dropna=False)
        if hue
        else frame.set_index(x)[[y]]
    ).astype(float)
    fig, ax = pyplot().subplots(figsize=(max(5.0, 0.5 * len(table) + 2), 3.2))
    if np.isfinite(table.to_numpy()).any():
        table.plot.bar(ax=ax, legend=False, width=0.8)
        mark_missing_bars(ax, table)
    else:  # e.g. alpha of a condition where every answer failed: say so, do not crash
        ax.text(0.5, 0.5, "not estimable", ha="center", va="center", transform=ax.transAxes)
    if reference is not None:
        ax.axhline(reference, color="grey", linestyle="--", linewidth=1, label=reference_label)
    if hue is not None or reference_label:
        legend_outside(ax, fontsize=7)
    ax.set_xlabel("")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    ax.grid(axis="y", alpha=0.3)
    return png_bytes(fig)


def mark_missing_bars(ax: Axes, table: pd.DataFrame) -> None:
    """Write "n/e" (not estimable) where a bar has no finite value, instead of leaving a gap
    a reader takes for zero."""
    for container, column in zip(ax.containers, table.columns, strict=False):
        for patch, value in zip(container.patches, table[column], strict=False):
            if not np.isfinite(value):
                ax.annotate(
                    "n/e",
                    (patch.get_x() + patch.get_width() / 2, 0),
                    xytext=(0, 2),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    rotation=90,
                    fontsize=6,
                    color="dimgrey",
                )


def scores_beside_norms(scores: pd.DataFrame, title: str) -> bytes:
    """One panel per trait: the high and low persona of that trait per method (mean and 95% CI)
    beside the human norm (mean +- 1 SD band). Columns: method, persona, trait, mean, ci_low,
    ci_high, human_mean, human_sd."""
    traits = list(dict.fromkeys(scores.trait))
    methods = sorted(scores.method.unique())
    fig, axes = pyplot().subplots(1, len(traits), figsize=(2.6 * len(traits), 3.0), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, trait in zip(axes, traits, strict=True):
        rows = scores[scores.trait == trait]
        norm = rows[["human_mean", "human_sd"]].dropna().head(1)
        if len(norm):
            m, s = float(norm.human_mean.iloc[0]), float(norm.human_sd.iloc[0])
            ax.axhspan(m - s, m + s, color="grey", alpha=0.15, label="human norm ±1 SD")
            ax.axhline(m, color="grey", linewidth=1)
        for offset, (persona, colour) in zip(
            (-0.15, 0.0, 0.15),
            ((f"{trait}_high", "tab:red"), ("none", "tab:grey"), (f"{trait}_low", "tab:blue")),
            strict=True,
        ):
            picked = rows[rows.persona == persona].set_index("method").reindex(methods)
            xs = np.arange(len(methods)) + offset
            err = np.vstack([picked["mean"] - picked.ci_low, picked.ci_high - picked["mean"]])
            ax.errorbar(
                xs,
                picked["mean"],
                yerr=np.nan_to_num(err),
                fmt="o",
                color=colour,
                markersize=4,
                capsize=2,
                label=persona.replace(f"{trait}_", "") if persona != "none" else "base",
            )
        ax.set_xticks(np.arange(len(methods)), methods, rotation=45, ha="right", fontsize=7)
        ax.set_title(trait, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("trait score (1-5)")
    legend_outside(axes[-1], fontsize=6)
    fig.suptitle(title, fontsize=10)
    return png_bytes(fig)


def heatmaps(matrices: Mapping[str, pd.DataFrame], title: str) -> bytes:
    """Correlation matrices side by side on one -1..1 colour scale, values written in ("n/e"
    where a correlation is not estimable, e.g. a trait score that does not vary)."""
    fig, axes = pyplot().subplots(1, len(matrices), figsize=(2.9 * len(matrices), 2.9))
    axes = np.atleast_1d(axes)
    image = None
    for ax, (name, matrix) in zip(axes, matrices.items(), strict=True):
        values = matrix.to_numpy(dtype=float)
        image = ax.imshow(values, vmin=-1, vmax=1, cmap="RdBu_r")
        labels = [str(c)[:1].upper() for c in matrix.columns]
        ax.set_xticks(range(len(labels)), labels)
        ax.set_yticks(range(len(labels)), labels)
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                text = "n/e" if np.isnan(values[i, j]) else f"{values[i, j]:.2f}"
                ax.text(j, i, text, ha="center", va="center", fontsize=6)
        ax.set_title(name, fontsize=8)
    if image is not None:
        fig.colorbar(image, ax=list(axes), shrink=0.8)
    fig.suptitle(title, fontsize=10)
    return png_bytes(fig)


def differences_with_ci(frame: pd.DataFrame, label: str, title: str) -> bytes:
    """Horizontal points with 95% CIs (columns ``label``, diff, ci_low, ci_high) around 0."""
    frame = frame.reset_index(drop=True)
    fig, ax = pyplot().subplots(figsize=(6.0, max(2.0, 0.22 * len(frame) + 1)))
    ys = np.arange(len(frame))
    err = np.vstack([frame["diff"] - frame.ci_low, frame.ci_high - frame["diff"]])
    ax.errorbar(frame["diff"], ys, xerr=np.nan_to_num(err), fmt="o", markersize=3, capsize=2)
    ax.axvline(0, color="grey", linewidth=1)
    ax.set_yticks(ys, frame[label], fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("high minus low (95% CI)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return png_bytes(fig)


def png_markdown(png: bytes, alt: str) -> str:
    """Markdown showing ``png`` inline (a data URI), for ``MetadataValue.md`` in the UI."""
    encoded = base64.b64encode(png).decode("ascii")
    return f"![{alt}](data:image/png;base64,{encoded})"


def sweep_curves(
    curve: pd.DataFrame, title: str = "DExperts sweep", xlabel: str = "alpha"
) -> bytes:
    """Target accuracy (mean over personas, and the lowest persona dotted) and median
    perplexity against alpha, one colour per formula. Columns: formula, alpha,
    target_accuracy, min_target_accuracy, perplexity_median."""
    fig, (left, right) = pyplot().subplots(1, 2, figsize=(9.0, 3.2))
    for formula, rows in curve.groupby("formula"):
        rows = rows.sort_values("alpha")
        (line,) = left.plot(rows.alpha, rows.target_accuracy, marker="o", label=formula)
        left.plot(
            rows.alpha, rows.min_target_accuracy, linestyle=":", color=line.get_color(), alpha=0.8
        )
        right.plot(rows.alpha, rows.perplexity_median, marker="o", label=formula)
    left.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    left.axhline(0.75, color="grey", linestyle=":", linewidth=1)
    left.set_xlabel(xlabel)
    left.set_ylabel("target-trait accuracy")
    left.set_title("accuracy (mean; dotted: lowest persona)", fontsize=9)
    right.set_xlabel(xlabel)
    right.set_ylabel("perplexity under the base (median)")
    right.set_yscale("log")
    right.set_title("fluency", fontsize=9)
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return png_bytes(fig)
