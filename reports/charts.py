"""One function per figure. Each takes rows already aggregated in SQL and returns a Vega-Lite spec."""

from __future__ import annotations

import altair as alt


def head_heatmaps(rows: list[dict], value: str, title: str) -> dict:
    """Layer × head heatmaps of ``value``, one panel per model × benchmark, each with its own colour scale."""
    panels = []
    for model, benchmark in sorted({(row["model"], row["benchmark"]) for row in rows}):
        data = [row for row in rows if row["model"] == model and row["benchmark"] == benchmark]
        panel = (
            alt.Chart(alt.Data(values=data), title=f"{model} · {benchmark}")
            .mark_rect()
            .encode(
                x=alt.X("head:O", title="head"),
                y=alt.Y("layer:O", title="layer", sort="descending"),
                color=alt.Color(f"{value}:Q", title=title, scale=alt.Scale(scheme="viridis")),
                tooltip=["layer:O", "head:O", alt.Tooltip(f"{value}:Q", format=".4f"), "n_samples:Q"],
            )
            .properties(width=18 * (1 + max(row["head"] for row in data)), height=18 * (1 + max(row["layer"] for row in data)))
        )
        panels.append(panel)
    chart = alt.hconcat(*panels).resolve_scale(color="independent")
    return chart.to_dict()
