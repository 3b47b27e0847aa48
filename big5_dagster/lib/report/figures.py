"""The key figure of each stage, drawn from that stage's table: the report shows them, and
each asset shows its own in the Dagster UI (``plots.markdown_image``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from big5_dagster.lib.report import plots
from big5_dagster.lib.traits import TRAITS

PRIMARY_SCORER = "logprob"


def loss_figure(reports: Mapping[str, Mapping[str, Any]], title: str) -> bytes:
    """Training loss per named run (an expert folder, an adapter seed): reports carry a
    ``loss_curve`` of (step, loss)."""
    return plots.loss_curves({name: r["loss_curve"] for name, r in reports.items()}, title)


def dialogue_quality_figure(quality: pd.DataFrame) -> bytes:
    """Target-trait accuracy of the replies per persona, beside chance."""
    return plots.bar_chart(
        quality,
        "persona",
        "target_accuracy",
        title="target-trait accuracy of replies",
        ylabel="accuracy",
        reference=0.5,
        reference_label="chance",
    )


def inventory_score_figures(scores: pd.DataFrame) -> dict[tuple[str, str], bytes]:
    """Per (scorer, inventory): each trait's high and low persona and the base model per
    method, with 95% CIs, beside the human norm band."""
    return {
        (scorer, inventory): plots.scores_beside_norms(rows, f"{inventory}, scorer {scorer}")
        for (scorer, inventory), rows in scores.groupby(["scorer", "inventory"])
    }


def correlation_matrices(rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Method -> its 5x5 trait correlation matrix (the mean r over adapter seeds where a
    method has several), from the long trait_correlations rows of one scorer and inventory."""
    shown = {}
    for method, part in rows.groupby("method"):
        wide = part.pivot_table(
            index="trait_a", columns="trait_b", values="r", aggfunc="mean", dropna=False
        )
        shown[method] = wide.reindex(index=list(TRAITS), columns=list(TRAITS))
    return shown


def correlation_figures(
    matrices: pd.DataFrame, human: pd.DataFrame
) -> dict[tuple[str, str], bytes]:
    """Per (scorer, inventory): the human matrix beside each method's, one colour scale."""
    return {
        (scorer, inventory): plots.heatmaps(
            {"human": human, **correlation_matrices(rows)}, f"{inventory}, scorer {scorer}"
        )
        for (scorer, inventory), rows in matrices.groupby(["scorer", "inventory"])
    }


def reasoning_figure(by_trait: pd.DataFrame) -> bytes:
    """High minus low per method, benchmark and trait, with 95% CIs around 0."""
    shown = by_trait.assign(label=by_trait.method + " · " + by_trait.task + " · " + by_trait.trait)
    return plots.differences_with_ci(shown, "label", "reasoning: high − low")


def reliability_figures(
    reliability: pd.DataFrame, statistic: str = "alpha"
) -> dict[tuple[str, str], bytes]:
    """Per (scorer, inventory): ``statistic`` per trait and method; a value that is not
    estimable (NaN) is marked "n/e", not drawn."""
    label = {"alpha": "Cronbach's alpha", "omega": "McDonald's omega"}[statistic]
    return {
        (scorer, inventory): plots.bar_chart(
            rows,
            "trait",
            statistic,
            "method",
            ylabel=statistic,
            title=f"{label}, {inventory} ({scorer}); n/e: not estimable",
        )
        for (scorer, inventory), rows in reliability.groupby(["scorer", "inventory"])
    }


def primary(figures: Mapping[tuple[str, str], bytes]) -> dict[str, bytes]:
    """Inventory -> figure of the primary scorer (what an asset shows in the UI)."""
    return {
        inventory: png for (scorer, inventory), png in figures.items() if scorer == PRIMARY_SCORER
    }


def markdown_gallery(figures: Mapping[str, bytes], what: str) -> str:
    """Named figures as one markdown text, a heading above each (for one metadata entry)."""
    return "\n\n".join(
        f"**{name}**\n\n{plots.markdown_image(png, f'{what}, {name}')}"
        for name, png in figures.items()
    )
