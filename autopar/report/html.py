"""A self-contained HTML report of a Plan: tables, a pipeline Gantt chart, per-stage time and memory bars,
sharding maps of the largest tensors (PNG pictures embedded as base64 data URIs; no scripts, no links out).

Consumes: a Plan, optionally its Graph (shapes, sharding maps) and an AuditReport. Produces: the HTML text
(``build_html``) or a file (``write_report``). Refuses: nothing; pictures needing the graph are left out
without it (the page says so).
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from autopar.report import figures, tables

__all__ = ["build_html", "write_report"]

_CSS = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 1100px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
code { font-size: 12px; }
"""


def _table(header: list[str], rows: list[list[str]]) -> str:
    out = ["<table>"]
    if any(header):
        out.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def build_html(plan: Any, graph: Any = None, audit: Any = None, title: str = "autopar plan") -> str:
    parts = [f"<h1>{html.escape(title)}</h1>", "<h2>Overview</h2>", _table(*tables.overview_rows(plan)),
             "<h2>Stages</h2>", _table(*tables.stage_rows(plan, tables.stage_layers(plan, graph))),
             "<h3>Predicted pipeline schedule</h3>", _img(figures.gantt_png(plan), "pipeline Gantt chart"),
             "<h3>Time and memory per stage</h3>", _img(figures.stage_bars_png(plan), "per-stage time and memory")]
    if graph is not None:
        items = figures.largest_inputs(plan, graph, k=4)
        if items:
            parts += ["<h2>Sharding of the largest tensors</h2>",
                      "<p>Each block is a piece of the tensor, labelled with the devices that hold it.</p>",
                      _img(figures.sharding_map_png(items), "sharding maps")]
    else:
        parts.append("<p>(Sharding maps need the traced program; render the report from <code>autopar "
                     "inspect</code>.)</p>")
    parts += ["<h2>Inputs and their sharding</h2>", _table(*tables.param_rows(plan, graph)),
              "<h2>Collectives (per device, per step)</h2>", _table(*tables.collective_rows(plan))]
    if audit is not None:
        parts += ["<h2>Audit: predicted vs compiled</h2>", _table(*tables.audit_rows(audit))]
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}'
            f"</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def write_report(path: str | Path, plan: Any, graph: Any = None, audit: Any = None,
                 title: str = "autopar plan") -> None:
    Path(path).write_text(build_html(plan, graph, audit, title), encoding="utf-8")
