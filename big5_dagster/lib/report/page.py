"""The run report page: every section in order, in one self-contained HTML file."""

from __future__ import annotations

import html
from datetime import UTC, datetime

from big5_dagster.lib.report.sections import LEAD, SECTIONS, ReportData, Section

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h2{border-bottom:1px solid #ccc;padding-top:.6em}
table.data{border-collapse:collapse;font-size:12px;margin:.5em 0}
table.data td,table.data th{padding:2px 8px;border-bottom:1px solid #eee;text-align:right}
.scroll{overflow-x:auto;max-height:420px}
img{max-width:100%;display:block;margin:.6em 0}
nav{font-size:13px;line-height:1.8}
nav a{margin-right:1em}
.missing{color:#a00}
section.lead{background:#f6f8fa;border:1px solid #d0d7de;border-radius:6px;padding:0 1em 1em}
section.lead li{margin:.3em 0}
details{margin:.5em 0}
summary{cursor:pointer;font-weight:600;font-size:13px}
"""


def build_report(data: ReportData) -> tuple[str, list[Section]]:
    """The report's HTML and its sections (each knows whether it was filled)."""
    sections = []
    for make in SECTIONS:
        section = make(data)
        section.lead = make in LEAD
        sections.append(section)
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    nav = " ".join(f'<a href="#{s.key}">{html.escape(s.title)}</a>' for s in sections)
    body = "\n".join(
        f'<section id="{s.key}"' + (' class="lead"' if s.lead else "") + ">"
        f"<h2>{html.escape(s.title)}</h2>"
        + ('<p class="missing">incomplete</p>' if not s.filled else "")
        + "\n".join(s.blocks)
        + "</section>"
        for s in sections
    )
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>big5_dagster report</title><style>{STYLE}</style></head><body>"
        f"<h1>big5_dagster run report</h1><p>Generated {generated}.</p><nav>{nav}</nav>"
        f"{body}</body></html>"
    )
    return page, sections
