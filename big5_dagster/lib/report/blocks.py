"""The report's building blocks: the data a report is built from (ReportData), one section
of it (Section: text, tables, plots, what is missing) and the "not estimable" rendering.
The sections (sections.py) and the findings (findings.py) are written with these."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

COLLAPSE_ROWS = 12
"""Tables longer than this are folded (click to open): the findings stay in view."""
NOT_ESTIMABLE = "not estimable"


@dataclass
class ReportData:
    """What the report is built from: warehouse tables by name (lineage included as
    ``lineage`` and ``lineage_inputs``), training reports per adapter asset, run facts."""

    tables: Mapping[str, pd.DataFrame]
    training_reports: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)
    run: Mapping[str, Any] = field(default_factory=dict)

    def table(self, name: str) -> pd.DataFrame | None:
        frame = self.tables.get(name)
        return frame if frame is not None and len(frame) else None


@dataclass
class Section:
    key: str
    title: str
    blocks: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    lead: bool = False
    """One of the sections that open the report (LEAD)."""

    @property
    def filled(self) -> bool:
        return not self.missing and bool(self.blocks)

    def text(self, paragraph: str) -> None:
        self.blocks.append(f"<p>{html.escape(paragraph)}</p>")

    def bullets(self, heading: str, items: Sequence[str]) -> None:
        if items:
            lines = "".join(f"<li>{html.escape(item)}</li>" for item in items)
            self.blocks.append(f"<h3>{html.escape(heading)}</h3><ul>{lines}</ul>")

    def table(self, frame: pd.DataFrame, caption: str | None = None, digits: int = 3) -> None:
        """A table; one longer than COLLAPSE_ROWS rows is folded under its caption."""
        numeric = frame.select_dtypes("number").columns
        shown = frame.assign(**{c: frame[c].round(digits) for c in numeric})
        body = shown.to_html(index=False, na_rep="–", border=0, classes="data", escape=True)
        body = f'<div class="scroll">{body}</div>'
        if len(frame) > COLLAPSE_ROWS:
            label = html.escape(f"{caption or 'table'} ({len(frame)} rows)")
            self.blocks.append(f"<details><summary>{label}</summary>{body}</details>")
        else:
            heading = f"<h4>{html.escape(caption)}</h4>" if caption else ""
            self.blocks.append(heading + body)

    def image(self, png: bytes, alt: str) -> None:
        encoded = base64.b64encode(png).decode("ascii")
        self.blocks.append(f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}"/>')

    def require(self, data: ReportData, *tables: str) -> list[pd.DataFrame] | None:
        """The named tables, or None after noting which are missing."""
        frames = [data.table(t) for t in tables]
        gone = [t for t, f in zip(tables, frames, strict=True) if f is None]
        if gone:
            self.missing.extend(gone)
            self.text(f"Not in this run's warehouse: {', '.join(gone)}. Materialize them first.")
            return None
        return frames


def with_reasons(values: pd.Series, reasons: pd.Series | None, digits: int = 2) -> pd.Series:
    """Values as text, "not estimable (reason)" where a reason is given or the value is not
    finite (no reason recorded: "not estimable")."""
    if reasons is None:
        reasons = pd.Series([None] * len(values), index=values.index)
    out = []
    for value, reason in zip(values, reasons, strict=True):
        if isinstance(reason, str) and reason:
            out.append(f"{NOT_ESTIMABLE} ({reason})")
        elif value is None or pd.isna(value) or not np.isfinite(value):
            out.append(NOT_ESTIMABLE)
        else:
            out.append(f"{value:.{digits}f}")
    return pd.Series(out, index=values.index, dtype="string")
