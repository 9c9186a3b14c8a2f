"""One function per figure. Each takes rows already aggregated in SQL and returns a Vega-Lite spec."""

from __future__ import annotations

from collections import defaultdict

import altair as alt

PANEL_COLUMNS = 3
# legends of charts with interval bands: the symbols drawn opaque (they took the bands' 0.15 opacity and the
# benchmarks' colours could not be told apart: looked at)
SOLID_LEGEND = alt.Legend(symbolOpacity=1, symbolStrokeWidth=2)
# every chart reads its rows by this name from the spec's top-level ``datasets``: Altair then validates the spec
# only, not every row (validating 55,000 inline heatmap rows took a minute for nine models × five benchmarks)
ROWS = alt.Data(name="rows")
# layers on a band axis: labels level and thinned where they would overlap (40 rotated labels overlapped at 240 px: looked at)
LAYER_AXIS = alt.Axis(labelAngle=0, labelOverlap="parity")
HEATMAP_MAX_WIDTH = 300  # three heatmaps, their stage names and spacing fit the pages' 1200 px (wider ones overflowed at 1440 px: looked at)


def _cell_axis(channel, field: str, count: int):
    """A quantitative axis of ``count`` unit cells [i, i + 1), labelled with the integer at each cell's centre."""
    return channel(
        f"{field}:Q",
        title=field,
        scale=alt.Scale(nice=False, zero=True),
        axis=alt.Axis(values=[index + 0.5 for index in range(count)], labelExpr="floor(datum.value)", labelOverlap=True, grid=False),
    )


def head_heatmaps(rows: list[dict], value: str, title: str) -> dict:
    """Layer × head heatmaps of ``value``, one panel per model × benchmark, each with its own colour scale;
    white rules mark where the early / mid / late stages meet, named on the right."""
    # only what the chart draws (nine models × five benchmarks are 55,000 cells a heatmap)
    data = [{"panel": _panel(row), "layer": row["layer"], "head": row["head"], "stage": row.get("stage"), "n_samples": row.get("n_samples"), value: row[value]} for row in rows]
    cell = 24
    n_heads = 1 + max(row["head"] for row in rows)
    n_layers = 1 + max(row["layer"] for row in rows)
    stages: dict[tuple[str, str], list[int]] = {}
    for row in sorted(data, key=lambda row: row["layer"]):
        if row.get("stage") is not None:
            stages.setdefault((row["panel"], row["stage"]), []).append(row["layer"])
    width: dict[str, int] = {}  # heads per panel (one pass: nine models × five benchmarks are 55,000 rows)
    for row in data:
        width[row["panel"]] = max(width.get(row["panel"], 0), row["head"] + 1)
    marks = [
        {"kind": "stage", "panel": panel, "stage": stage, "start": min(layers), "middle": (min(layers) + max(layers) + 1) / 2, "right": width[panel]}
        for (panel, stage), layers in stages.items()
    ]
    # one data set for every layer (a faceted layer chart needs that), each layer filtering its kind
    source = alt.Chart(ROWS)
    cells = source.transform_filter("datum.kind == 'cell'").transform_calculate(head_end="datum.head + 1", layer_end="datum.layer + 1")
    base = cells.mark_rect().encode(
        # cells span [head, head + 1) × [layer, layer + 1); labels sit at the cells' centres
        x=_cell_axis(alt.X, "head", n_heads),
        x2="head_end:Q",
        y=_cell_axis(alt.Y, "layer", n_layers),
        y2="layer_end:Q",
        color=alt.Color(f"{value}:Q", title=title, scale=alt.Scale(scheme="viridis"), legend=alt.Legend(orient="bottom", direction="horizontal")),
        tooltip=["panel:N", "layer:O", "head:O", "stage:N", alt.Tooltip(f"{value}:Q", format=".4f"), "n_samples:Q"],
    )
    layers = [base]
    if marks:
        boundaries = source.transform_filter("datum.kind == 'stage' && datum.start > 0").mark_rule(color="white", strokeWidth=2).encode(y="start:Q")
        names = source.transform_filter("datum.kind == 'stage'").mark_text(align="left", dx=4, fontSize=10, color="#555").encode(x="right:Q", y="middle:Q", text="stage:N")
        layers += [boundaries, names]
    chart = (
        alt.layer(*layers)
        .properties(width=min(cell * n_heads, HEATMAP_MAX_WIDTH), height=min(cell * n_layers, 640))
        .facet(facet=alt.Facet("panel:N", title=None), columns=PANEL_COLUMNS, spacing=48)  # room for the stage names
        .resolve_scale(color="independent", x="independent", y="independent")
    )
    return _spec(chart, [{**row, "kind": "cell"} for row in data] + marks)


def _spec(chart: alt.TopLevelMixin, rows: list[dict]) -> dict:
    """The chart's Vega-Lite spec with ``rows`` as its named dataset."""
    spec = chart.to_dict()
    spec["datasets"] = {ROWS.name: rows}
    return spec


def _panel(row: dict) -> str:
    return f"{row['model']} · {row['benchmark']}"


def sum_vs_concentration(rows: list[dict]) -> dict:
    """One point per head: mean image-attention sum against mean concentration, coloured by layer."""
    data = [{"panel": _panel(row), **{key: row[key] for key in ("layer", "head", "mean_image_sum", "mean_concentration")}} for row in rows]
    chart = (
        alt.Chart(ROWS)
        .mark_circle(size=40, opacity=0.8)
        .encode(
            x=alt.X("mean_image_sum:Q", title="mean image-attention sum"),
            y=alt.Y("mean_concentration:Q", title="mean concentration"),
            color=alt.Color("layer:Q", title="layer", scale=alt.Scale(scheme="plasma")),
            tooltip=["panel:N", "layer:O", "head:O", alt.Tooltip("mean_image_sum:Q", format=".4f"), alt.Tooltip("mean_concentration:Q", format=".3f")],
        )
        .properties(width=300, height=240)
        .facet(facet=alt.Facet("panel:N", title=None), columns=PANEL_COLUMNS)
        .resolve_scale(x="independent", y="independent")
    )
    return _spec(chart, data)


def layer_profiles(rows: list[dict], value: str, title: str) -> dict:
    """Cross-model layer profiles on normalised depth, one line per model, one panel per benchmark."""
    chart = (
        alt.Chart(ROWS)
        .mark_line(point=True)
        .encode(
            x=alt.X("depth:Q", title="depth (layer / (layers − 1))", scale=alt.Scale(domain=[0, 1])),
            y=alt.Y(f"{value}:Q", title=title),
            color=alt.Color("model:N", title="model"),
            tooltip=["model:N", "benchmark:N", "layer:O", alt.Tooltip(f"{value}:Q", format=".4f")],
        )
        .properties(width=360, height=240)
        .facet(facet=alt.Facet("benchmark:N", title=None), columns=PANEL_COLUMNS)
    )
    return _spec(chart, rows)


def segment_shares(rows: list[dict]) -> dict:
    """Stacked shares of attention per segment and layer, one panel per model × benchmark."""
    segments = ("image", "bos", "system", "prompt", "generated")
    data = [
        {"panel": _panel(row), "layer": row["layer"], "segment": segment, "segment_order": index, "share": row[segment]} for row in rows for index, segment in enumerate(segments)
    ]
    chart = (
        alt.Chart(ROWS)
        .mark_bar()
        .encode(
            x=alt.X("layer:O", title="layer", axis=LAYER_AXIS),
            y=alt.Y("share:Q", title="mean attention share", stack="zero", scale=alt.Scale(domain=[0, 1])),
            color=alt.Color("segment:N", title="segment", sort=list(segments)),
            order=alt.Order("segment_order:Q"),
            tooltip=["panel:N", "layer:O", "segment:N", alt.Tooltip("share:Q", format=".3f")],
        )
        .properties(width=300, height=200)
        .facet(facet=alt.Facet("panel:N", title=None), columns=PANEL_COLUMNS)
        .resolve_scale(x="independent")
    )
    return _spec(chart, data)


def lens_rank_heatmap(rows: list[dict]) -> dict:
    """Samples × layers, coloured by the final answer's rank (log scale); rank 1 in its own colour."""
    data = [{"panel": _panel(row), **{key: row[key] for key in ("sample_idx", "layer", "target_rank", "target_text", "top_text")}} for row in rows]
    base = alt.Chart(ROWS).encode(
        x=alt.X("layer:O", title="layer (0 = embeddings)", axis=LAYER_AXIS),
        y=alt.Y("sample_idx:O", title="sample", axis=alt.Axis(labels=False, ticks=False)),
        tooltip=["panel:N", "sample_idx:O", "layer:O", "target_rank:Q", "target_text:N", "top_text:N"],
    )
    ranks = (
        base.mark_rect()
        .encode(color=alt.Color("target_rank:Q", title="rank of the final answer", scale=alt.Scale(type="log", scheme="oranges")))
        .transform_filter("datum.target_rank > 1")
    )
    top = base.mark_rect(color="#1f77b4").transform_filter("datum.target_rank == 1")
    chart = (
        alt.layer(ranks, top).properties(width=240, height=240).facet(facet=alt.Facet("panel:N", title=None), columns=PANEL_COLUMNS).resolve_scale(x="independent", y="independent")
    )
    return _spec(chart, data)


def lens_median_rank(rows: list[dict]) -> dict:
    """Median rank of the final answer per layer, one line per benchmark, one panel per model."""
    chart = (
        alt.Chart(ROWS)
        .mark_line(point=True)
        .encode(
            x=alt.X("layer:Q", title="layer (0 = embeddings)"),
            y=alt.Y("rank_median:Q", title="median rank (1 = top)", scale=alt.Scale(type="log")),
            color=alt.Color("benchmark:N", title="benchmark"),
            strokeDash=alt.StrokeDash("query:N", title="query"),
            tooltip=["model:N", "benchmark:N", "query:N", "layer:Q", "rank_median:Q", alt.Tooltip("share_at_top:Q", format=".2f")],
        )
        .properties(width=360, height=240)
        .facet(facet=alt.Facet("model:N", title=None), columns=PANEL_COLUMNS)
    )
    return _spec(chart, rows)


def _accuracy_tooltip(before: list, after: list) -> list:
    """A tooltip naming a condition (``before``), its accuracy and 95% interval, then ``after``."""
    return [*before, *(alt.Tooltip(f"{field}:Q", format=".3f") for field in ("accuracy", "ci_low", "ci_high")), *after]


def masking_curves(rows: list[dict]) -> dict:
    """Accuracy against the share of heads masked: top solid, random dashed, interval bands, one colour per benchmark."""
    data = [{**row, "series": f"{row['benchmark']} · {row['strategy']}", "panel": f"{row['model']} · {row['stage']} · {row['mode']}"} for row in rows]
    base = alt.Chart(ROWS).encode(x=alt.X("fraction:Q", title="share of heads masked"), color=alt.Color("benchmark:N", title="benchmark", legend=SOLID_LEGEND), detail="series:N")
    band = base.mark_area(opacity=0.15).encode(y=alt.Y("ci_low:Q", title="accuracy"), y2="ci_high:Q")
    accuracy = alt.Y("accuracy:Q", title="accuracy", scale=alt.Scale(domain=[0, 1]))
    # lines and their points in two layers: a line layer with points drew its dash legend invisible (looked at)
    line = base.mark_line().encode(
        y=accuracy,
        strokeDash=alt.StrokeDash(
            "strategy:N",
            title="strategy",
            scale=alt.Scale(domain=["top", "random", "bottom"], range=[[1, 0], [6, 4], [2, 2]]),
            legend=alt.Legend(symbolType="stroke", symbolStrokeColor="#444", symbolStrokeWidth=2),
        ),
    )
    points = base.mark_circle(size=30, opacity=1).encode(y=accuracy, tooltip=_accuracy_tooltip(["model:N", "benchmark:N", "stage:N", "strategy:N", "k:Q"], ["n_conditions:Q"]))
    chart = alt.layer(band, line, points).properties(width=320, height=240).facet(facet=alt.Facet("panel:N", title=None), columns=PANEL_COLUMNS)
    return _spec(chart, data)


PRUNING_UNCHANGED = "no answer changed"  # a pruning panel none of whose conditions changed an answer against the full cache


def pruning_curves(rows: list[dict]) -> dict:
    """Accuracy against the share of image KV kept: one line per allocation, interval bands, one panel per model,
    benchmark, phase (keys dropped after the prefill, or in it too) and keep rule; a panel none of whose conditions
    changed an answer says so in its title (a ``cache``-phase panel of answers decided at their first token is flat
    by construction: the first token is computed before any key leaves)."""

    def panel(row: dict) -> str:
        return f"{row['model']} · {row['benchmark']} · {row.get('phase') or 'prefill'} · keep {row['keep']}"

    panels = [panel(row) for row in rows]
    changed = defaultdict(list)
    for name, row in zip(panels, rows):
        changed[name].append(row.get("changed_most"))
    titles = {name: name + (f" · {PRUNING_UNCHANGED}" if all(value == 0 for value in values) else "") for name, values in changed.items()}
    data = [{**row, "panel": titles[name]} for name, row in zip(panels, rows)]
    base = alt.Chart(ROWS).encode(
        x=alt.X("kv_share:Q", title="share of image KV kept", scale=alt.Scale(type="log")),
        color=alt.Color("allocation:N", title="allocation", scale=alt.Scale(domain=["score", "uniform", "random"]), legend=SOLID_LEGEND),
    )
    band = base.mark_area(opacity=0.15).encode(y=alt.Y("ci_low:Q", title="accuracy"), y2="ci_high:Q")
    line = base.mark_line(point=True).encode(
        y=alt.Y("accuracy:Q", title="accuracy", scale=alt.Scale(domain=[0, 1])),
        tooltip=_accuracy_tooltip(["model:N", "benchmark:N", "keep:N", "allocation:N", "kv_share:Q"], [alt.Tooltip("kv_saving:Q", format=".3f"), "n_conditions:Q"]),
    )
    chart = alt.layer(band, line).properties(width=320, height=240).facet(facet=alt.Facet("panel:N", title=None), columns=PANEL_COLUMNS)
    return _spec(chart, data)


def gen_attention_by_step(rows: list[dict]) -> dict:
    """Attention of every generated token by step bucket: one thin line per layer, coloured by stage, one panel per
    model × benchmark, of one run (``gen_attention_by_step``: the mean over the layer's heads and the bucket's tokens)."""
    data = [{"panel": _panel(row), **{key: row[key] for key in ("run_id", "layer", "stage", "step_bucket", "mean_value", "sd_value", "n_tokens")}} for row in rows]
    buckets = sorted({row["step_bucket"] for row in data})
    chart = (
        alt.Chart(ROWS)
        .mark_line(point=True, strokeWidth=1.5)
        .encode(
            x=alt.X("step_bucket:O", title="generated step (bucket: first step of 0, 1, 2–3, 4–7, ...)", sort=buckets, axis=alt.Axis(labelAngle=0)),
            y=alt.Y("mean_value:Q", title="mean image attention (heads × tokens)"),
            color=alt.Color("stage:N", title="stage", sort=["early", "mid", "late"], legend=SOLID_LEGEND),
            detail="layer:O",
            tooltip=[
                "panel:N",
                "run_id:N",
                "layer:O",
                "stage:N",
                "step_bucket:O",
                alt.Tooltip("mean_value:Q", format=".4f"),
                alt.Tooltip("sd_value:Q", format=".4f"),
                "n_tokens:Q",
            ],
        )
        .properties(width=340, height=220)
        .facet(facet=alt.Facet("panel:N", title=None), columns=PANEL_COLUMNS)
        .resolve_scale(y="independent")
    )
    return _spec(chart, data)


def hallucination_heads(rows: list[dict]) -> dict:
    """The heads that separate grounded from hallucinated object words best: per head, the difference of its image
    attention (grounded − hallucinated, at the same steps of the answers) with its 95% Welch interval, best first, one
    panel per model × benchmark, of one run."""
    data = [
        {
            "panel": _panel(row),
            "head_label": f"L{row['layer']} H{row['head']}",
            **{
                key: row[key]
                for key in (
                    "run_id",
                    "layer",
                    "head",
                    "stage",
                    "difference",
                    "ci_low",
                    "ci_high",
                    "n_grounded",
                    "n_hallucinated",
                    "n_hallucinated_left_out",
                    "n_buckets",
                    "separation_rank",
                )
            },
        }
        for row in rows
    ]
    base = alt.Chart(ROWS).encode(y=alt.Y("head_label:N", title="head (layer, head)", sort=alt.EncodingSortField("separation_rank", order="ascending")))
    bars = base.mark_rule(strokeWidth=2).encode(
        x=alt.X("ci_low:Q", title="image attention: grounded − hallucinated, at the same steps (95% interval)"),
        x2="ci_high:Q",
        color=alt.Color("stage:N", sort=["early", "mid", "late"]),
    )
    points = base.mark_point(filled=True, size=50).encode(
        x="difference:Q",
        color=alt.Color("stage:N", sort=["early", "mid", "late"], legend=SOLID_LEGEND),
        tooltip=[
            "panel:N",
            "run_id:N",
            "layer:O",
            "head:O",
            "stage:N",
            alt.Tooltip("difference:Q", format=".4f"),
            alt.Tooltip("ci_low:Q", format=".4f"),
            alt.Tooltip("ci_high:Q", format=".4f"),
            "n_grounded:Q",
            "n_hallucinated:Q",
            "n_hallucinated_left_out:Q",
            "n_buckets:Q",
        ],
    )
    zero = alt.Chart(ROWS).mark_rule(color="#999", strokeDash=[3, 3]).encode(x=alt.datum(0))
    chart = (
        alt.layer(zero, bars, points).properties(width=340, height=alt.Step(18)).facet(facet=alt.Facet("panel:N", title=None), columns=PANEL_COLUMNS).resolve_scale(y="independent")
    )
    return _spec(chart, data)
