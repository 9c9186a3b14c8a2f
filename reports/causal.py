"""The report's page "Attention against causal importance": per model and benchmark, each head's attention score
against its attribution (``attnwh attribute``), the agreement of the two rankings (the ``ranking_agreement`` mart:
Spearman, Kendall's tau-b, top-k Jaccard) with a headline computed from it, and masking curves for the top heads
by attention, by attribution, by an imported ranking and random where such mask runs exist, one line per mask run."""

from __future__ import annotations

import statistics

import altair as alt

from attnwh.queries.library import Catalog, get_mart, run_mart
from attnwh.reports.charts import PANEL_COLUMNS, ROWS, SOLID_LEGEND, _spec
from attnwh.reports.page import Section
from attnwh.warehouse.definitions import min_agreement_heads

PAGE = "causal.html"
TITLE = "Attention against causal importance"
TOP_K = (5, 10)  # the top-k overlaps shown (where both rankings have that many heads)
NO_RUNS = (
    "No attribution runs in this warehouse: `attnwh attribute --benchmark BENCHMARK` ranks heads by what ablating them does "
    "to the gold answer; with an extraction run of the same model and benchmark, this page sets the two rankings side by side."
)


def _sql(name: str, parameters: dict[str, str]) -> str:
    mart = get_mart(name)
    shown = f"-- the {name} query (attnwh query {name})\n{mart.sql.strip()}"
    return shown + ("\n-- parameters: " + ", ".join(f"{key} = {value!r}" for key, value in parameters.items()) if parameters else "")


def strength(rho: float | None, n_heads: int | None = None) -> str:
    """Words for a rank correlation's size (|rho| < 0.1 hardly at all, < 0.3 weakly, < 0.6 moderately, else
    strongly), and its sign; where ranking_agreement gives none (``rho`` None), why: fewer than min_agreement_heads() heads scored
    by both rankings (``n_heads``), or a ranking that is one tie."""
    if rho is None:
        if n_heads is not None and n_heads < min_agreement_heads():
            return f"cannot be told: only {n_heads} head(s) are scored by both rankings, too few for a rank correlation (it takes {min_agreement_heads()})"
        return "cannot be told: one ranking scores every head alike"
    size = abs(rho)
    if size < 0.1:
        return "hardly at all"
    word = "weakly" if size < 0.3 else "moderately" if size < 0.6 else "strongly"
    return word if rho > 0 else f"{word}, in opposite directions"


def masking_contrast(rows: list[dict]) -> str:
    """A sentence per model, benchmark, stage, mode and mask run ranked by attribution: accuracy with the most heads
    masked that its top line and the top line by attention were both masked at, with their intervals and runs ("" without
    such rows). report_causal_masking gives one run ranked by attention per model, benchmark and mode."""
    lines: dict[tuple[str, ...], dict[int, dict]] = {}  # (model, benchmark, stage, mode, ranking, run) -> k -> row
    for row in rows:
        lines.setdefault((row["model"], row["benchmark"], row["stage"], row["mode"], row["ranking"], row["run_id"]), {})[row["k"]] = row
    by_attention = {key[:4]: (key[5], line) for key, line in lines.items() if key[4] == "top by attention"}
    found = []
    for (model, benchmark, stage, mode, ranking, attribution_run), by_attribution in sorted(lines.items()):
        if ranking != "top by attribution" or (model, benchmark, stage, mode) not in by_attention:
            continue
        attention_run, attention = by_attention[(model, benchmark, stage, mode)]
        k = max(set(by_attribution) & set(attention), default=0)
        if k == 0:
            continue
        a, b = by_attribution[k], attention[k]
        found.append(
            f"masking the top {k} heads ({a['fraction']:.0%}, stage {stage}, {mode}) of {model} on {benchmark} by attribution leaves accuracy "
            f"{a['accuracy']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}] (mask run {attribution_run}), "
            f"by attention {b['accuracy']:.3f} [{b['ci_low']:.3f}, {b['ci_high']:.3f}] (mask run {attention_run})"
        )
    return ("; ".join(found)[:1].upper() + "; ".join(found)[1:] + ".") if found else ""


def agreement_rows(session: Catalog, heads: list[dict], query: str, score: str) -> list[dict]:
    """One row per attribution run that has an extraction run to compare with: the ``ranking_agreement`` mart's
    Spearman, Kendall's tau-b and the top-k overlaps of attention ``score`` against causal importance."""
    pairs = {(row["attribution_run"], row["extraction_run"]): row for row in heads if row["extraction_run"] is not None}
    rows = []
    for (attribution, extraction), head in sorted(pairs.items(), key=lambda item: (item[1]["model"], item[1]["benchmark"], item[0])):
        grid = run_mart(session, "ranking_agreement", {"run_a": extraction, "run_b": attribution, "query_a": query, "score_a": score}).to_pylist()
        if not grid:  # no head scored by both
            continue
        row = {
            "model": head["model"],
            "benchmark": head["benchmark"],
            "method": head["method"],
            "target": head["target"],
            "attribution_run": attribution,
            "extraction_run": extraction,
            "n_heads": grid[0]["n_heads"],
            "spearman": grid[0]["spearman"],
            "kendall_tau_b": grid[0]["kendall_tau_b"],
        }
        for k in TOP_K:
            at = [cut for cut in grid if cut["k"] == k]
            row[f"jaccard_top{k}"] = at[0]["jaccard"] if at else None
        rows.append(row)
    return rows


def headline(rows: list[dict], query: str, score: str) -> str:
    """The page's first sentence, from the agreement rows."""
    if not rows:
        return "Attribution runs are stored, but no complete extraction run of the same model revision and benchmark to compare their heads' attention with."
    rhos = [row["spearman"] for row in rows if row["spearman"] is not None]
    models = len({row["model"] for row in rows})
    if not rhos:
        reasons = sorted({strength(None, row["n_heads"]) for row in rows})  # each run's own reason: few heads, or one tie
        return (
            f"Over {len(rows)} attribution run(s) of {models} model(s), whether where heads look ({score} on {query}) and what ablating them does agree "
            f"{'; '.join(reasons) if len(reasons) == 1 else 'cannot be told: ' + '; '.join(reason.removeprefix('cannot be told: ') for reason in reasons)}."
        )
    median = statistics.median(rhos)
    spread = f" (from {min(rhos):.2f} to {max(rhos):.2f})" if len(rhos) > 1 else ""
    sentence = (
        f"Over {len(rows)} attribution run(s) of {models} model(s), where heads look ({score} on {query}) and what ablating them does agree "
        f"{strength(median)}: Spearman's rho {median:.2f}{' (median)' if len(rhos) > 1 else ''}{spread}"
    )
    if len(rhos) < len(rows):
        sentence += f" ({len(rows) - len(rhos)} run(s) without a rank correlation, too few heads scored by both rankings or one tie, left out)"
    top = [row[f"jaccard_top{TOP_K[0]}"] for row in rows if row[f"jaccard_top{TOP_K[0]}"] is not None]
    if top:
        sentence += f"; the top {TOP_K[0]} heads of the two rankings overlap with a Jaccard index of {statistics.median(top):.2f}{' (median)' if len(top) > 1 else ''}"
    return sentence + "."


def attention_vs_attribution(rows: list[dict]) -> dict:
    """Each head's attention score (x) against its attribution (y) with its 95% interval, coloured by stage; one panel
    per model, benchmark and attribution method."""
    data = [{**row, "panel": f"{row['model']} · {row['benchmark']} · {row['method']}"} for row in rows if row["attention"] is not None]
    base = alt.Chart(ROWS).encode(
        x=alt.X("attention:Q", title="attention score (mean over samples)"),
        color=alt.Color("stage:N", title="stage", scale=alt.Scale(domain=["early", "mid", "late"]), legend=SOLID_LEGEND),
    )
    bars = base.mark_rule(opacity=0.35).encode(y=alt.Y("ci_low:Q", title="attribution (drop of the target when ablated)"), y2="ci_high:Q")
    points = base.mark_circle(size=40, opacity=0.9).encode(
        y=alt.Y("attribution:Q", title="attribution (drop of the target when ablated)"),
        tooltip=[
            "model:N",
            "benchmark:N",
            "layer:Q",
            "head:Q",
            "stage:N",
            alt.Tooltip("attention:Q", format=".4f"),
            alt.Tooltip("attribution:Q", format=".4f"),
            alt.Tooltip("std_error:Q", format=".4f"),
        ],
    )
    chart = alt.layer(bars, points).properties(width=320, height=260).facet(facet=alt.Facet("panel:N", title=None), columns=PANEL_COLUMNS)
    return _spec(chart, data)


def causal_masking_curves(rows: list[dict]) -> dict:
    """Accuracy against the share of heads masked: top by attribution, by an imported ranking, by attention and random,
    with intervals; one line per mask run and ranking (``series``), so that two runs never join one line."""
    data = [{**row, "panel": f"{row['model']} · {row['benchmark']} · {row['stage']} · {row['mode']}", "series": f"{row['ranking']} · {row['run_id']}"} for row in rows]
    base = alt.Chart(ROWS).encode(x=alt.X("fraction:Q", title="share of heads masked"), color=alt.Color("ranking:N", title="heads masked", legend=SOLID_LEGEND), detail="series:N")
    band = base.mark_area(opacity=0.12).encode(y=alt.Y("ci_low:Q", title="accuracy"), y2="ci_high:Q")
    line = base.mark_line(point=True).encode(
        y=alt.Y("accuracy:Q", title="accuracy", scale=alt.Scale(domain=[0, 1])),
        tooltip=[
            "model:N",
            "benchmark:N",
            "ranking:N",
            "run_id:N",
            "ranking_score:N",
            "k:Q",
            alt.Tooltip("accuracy:Q", format=".3f"),
            alt.Tooltip("ci_low:Q", format=".3f"),
            alt.Tooltip("ci_high:Q", format=".3f"),
        ],
    )
    chart = alt.layer(band, line).properties(width=320, height=240).facet(facet=alt.Facet("panel:N", title=None), columns=PANEL_COLUMNS)
    return _spec(chart, data)


def sections(session: Catalog, query: str = "gen1", score: str = "concentration_x_sum") -> list[Section]:
    """The page's sections (a single one saying so when the warehouse has no attribution run)."""
    parameters = {"query": query, "score": score}
    heads = run_mart(session, "report_attribution_heads", parameters).to_pylist()
    heads_sql = _sql("report_attribution_heads", parameters)
    if not heads:
        return [Section("No attribution runs", "", heads_sql, empty_message=NO_RUNS)]
    agreement = agreement_rows(session, heads, query, score)
    shown = ("model", "benchmark", "method", "target", "n_heads", "spearman", "kendall_tau_b", *(f"jaccard_top{k}" for k in TOP_K), "attribution_run", "extraction_run")
    agreement_sql = _sql("ranking_agreement", {"run_a": "EXTRACTION_RUN", "run_b": "ATTRIBUTION_RUN", **{"query_a": query, "score_a": score}})
    masking = run_mart(session, "report_causal_masking", {}).to_pylist()
    plotted = [row for row in heads if row["attention"] is not None]
    return [
        Section(
            "How far the two rankings agree",
            headline(agreement, query, score) + " One row per attribution run, against the newest complete extraction run of the same model revision and benchmark.",
            agreement_sql,
            table=[{column: row[column] for column in shown} for row in agreement] or None,
            empty_message="No extraction run of the same model revision and benchmark to compare with: run attnwh extract on it.",
        ),
        Section(
            "Attention score against attribution, per head",
            f"Each head's mean {score} ({query}) against the drop of the target when it is ablated, with its 95% interval; colour: the head's stage.",
            heads_sql,
            spec=attention_vs_attribution(plotted) if plotted else None,
            empty_message="No attention scores of the same model revision and benchmark to plot against.",
        ),
        Section(
            "Masking the top heads by attention, by attribution and at random",
            " ".join(
                part
                for part in (
                    masking_contrast(masking),
                    "Accuracy as more heads are masked, each line from its run's unmasked baseline, with 95% Wilson intervals (random: the widest over seeds).",
                )
                if part
            ),
            _sql("report_causal_masking", {}),
            spec=causal_masking_curves(masking) if masking else None,
            empty_message="No mask run ranked by an attribution run yet: attnwh mask --ranking-run ATTRIBUTION_RUN, beside one ranked by attention.",
        ),
    ]
