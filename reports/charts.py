"""One function per figure. Each takes rows already aggregated in SQL and returns a Vega-Lite spec."""

from __future__ import annotations

import altair as alt

PANEL_COLUMNS = 3


def head_heatmaps(rows: list[dict], value: str, title: str) -> dict:
    """Layer × head heatmaps of ``value``, one panel per model × benchmark, each with its own colour scale."""
    data = [{**row, "panel": f"{row['model']} · {row['benchmark']}"} for row in rows]
    cell = 24
    n_heads = 1 + max(row["head"] for row in rows)
    n_layers = 1 + max(row["layer"] for row in rows)
    chart = (
        alt.Chart(alt.Data(values=data))
        .mark_rect()
        .encode(
            x=alt.X("head:O", title="head"),
            y=alt.Y("layer:O", title="layer", sort="descending"),
            color=alt.Color(f"{value}:Q", title=title, scale=alt.Scale(scheme="viridis")),
            tooltip=["panel:N", "layer:O", "head:O", alt.Tooltip(f"{value}:Q", format=".4f"), "n_samples:Q"],
        )
        .properties(width=min(cell * n_heads, 640), height=min(cell * n_layers, 640))
        .facet(facet=alt.Facet("panel:N", title=None), columns=PANEL_COLUMNS)
        .resolve_scale(color="independent", x="independent", y="independent")
    )
    return chart.to_dict()
