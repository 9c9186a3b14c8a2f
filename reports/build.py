"""The report set: one page per theme, every section one query (shown under its chart) and one chart function.

Pages: ``index.html`` (links, run overview), ``attention.html`` (heatmaps of sum, concentration and
their product; sum against concentration; top heads), ``layers.html`` (cross-model layer profiles,
segment shares), ``lens.html`` (logit-lens rank heatmap and median-rank curves), ``masking.html``
(masking curves and conditions), ``samples.html`` (answers). Charts get data aggregated in SQL.
With ``formats`` png / svg, every chart is also written as a file under ``charts/`` for papers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnwh.errors import AttnwhError, UsageError
from attnwh.queries.library import Catalog, get_mart, open_session, run_mart
from attnwh.reports import charts
from attnwh.reports.page import Page, Section

HEADS_SQL = """
select model, benchmark, layer, head, n_samples, mean_image_sum, mean_concentration, mean_concentration_x_sum
from head_attention
where query = $query
order by model, benchmark, layer, head
"""

TOP_HEADS_COLUMNS = ("model", "benchmark", "rank", "layer", "head", "mean_score", "detection_score", "n_samples")

LAYERS_SQL = """
select model, benchmark, layer, depth, mean_image_sum, mean_concentration, mean_concentration_x_sum
from layer_profile
where query = $query
order by model, benchmark, layer
"""

SEGMENTS_SQL = """
select model, benchmark, layer, image, bos, system, prompt, generated
from segment_shares
where query = $query
order by model, benchmark, layer
"""

LENS_SAMPLES_SQL = """
with chosen as (
    select run_id, sample_idx
    from (select distinct run_id, sample_idx from stg_logit_lens where query = $query)
    qualify row_number() over (partition by run_id order by sample_idx) <= $max_samples
)
select l.model, l.benchmark, l.sample_idx, l.layer, l.target_rank, l.target_text, l.top_text
from stg_logit_lens as l
join chosen using (run_id, sample_idx)
where l.query = $query
order by l.model, l.benchmark, l.sample_idx, l.layer
"""

LENS_CURVES_SQL = """
select model, benchmark, query, layer, rank_median, share_at_top
from lens_convergence
order by model, benchmark, query, layer
"""

LENS_SETTLING_SQL = """
select model, benchmark, query, n_layers, n_samples, median_settle_layer, round(share_settled_early, 3) as share_settled_early
from lens_settling
order by model, benchmark, query
"""

MASKING_SQL = """
with curves as (
    select * from masking_curves
),
lines as (
    select distinct run_id, strategy, stage from curves where strategy <> 'none'
)
select c.model, c.benchmark, c.mode, c.strategy, c.stage, c.k, c.fraction, c.accuracy, c.ci_low, c.ci_high, c.n_conditions
from curves as c
where c.strategy <> 'none'
union all
select b.model, b.benchmark, b.mode, l.strategy, l.stage, b.k, b.fraction, b.accuracy, b.ci_low, b.ci_high, b.n_conditions
from curves as b
join lines as l using (run_id)
where b.strategy = 'none'
order by model, benchmark, stage, strategy, k
"""

CONDITIONS_SQL = """
select model, benchmark, mode, strategy, stage, k, seed, n, round(accuracy, 3) as accuracy,
       round(ci_low, 3) as ci_low, round(ci_high, 3) as ci_high, round(delta, 3) as delta, mcnemar_p
from masking_accuracy
order by model, benchmark, condition_id
"""

OVERVIEW_SQL = """
select run_id, kind, model, benchmark, architecture, n_layers, n_heads, n_kv_heads, dtype, n_planned, parts_committed, n_parts,
       complete, n_rows, n_errors, n_invalid, round(accuracy, 4) as accuracy
from run_overview
order by created, run_id
"""

SAMPLES_SQL = """
select model, benchmark, sample_key, status, question, output_text, parsed, gold, correct, error
from stg_samples
order by model, benchmark, sample_idx
limit $max_samples
"""


@dataclass(frozen=True)
class ChartSection:
    title: str
    description: str
    sql: str
    chart: Callable[[list[dict]], dict] | None  # None: shown as a table
    parameters: dict[str, Any]
    mart: str | None = None  # a mart with parameters: ``sql`` is ignored, the mart runs with ``parameters``
    keep: Callable[[dict], bool] | None = None  # rows of the mart to show
    columns: tuple[str, ...] | None = None


def page_sections(query: str, top: int, max_samples: int) -> dict[str, tuple[str, list[ChartSection]]]:
    """The report set: file name -> (page title, sections)."""
    q = {"query": query}
    return {
        "index.html": ("attnwh report", [ChartSection("Runs", "Every run in the warehouse: progress, errors, unparseable answers and accuracy.", OVERVIEW_SQL, None, {})]),
        "attention.html": (
            "Image attention per head",
            [
                ChartSection(f"Image-attention sum per head ({query})", "Attention mass on image tokens, mean over samples, per layer × head; one panel per model × benchmark, each with its own colour scale.", HEADS_SQL, lambda rows: charts.head_heatmaps(rows, "mean_image_sum", "image sum"), q),
                ChartSection(f"Concentration per head ({query})", "1 − entropy / ln(n_image) of the attention over image tokens: 1 = one token, 0 = uniform.", HEADS_SQL, lambda rows: charts.head_heatmaps(rows, "mean_concentration", "concentration"), q),
                ChartSection(f"Concentration × sum per head ({query})", "The visual-head score: heads that give the image much and focused attention.", HEADS_SQL, lambda rows: charts.head_heatmaps(rows, "mean_concentration_x_sum", "concentration × sum"), q),
                ChartSection(f"Sum against concentration ({query})", "One point per head, coloured by layer.", HEADS_SQL, charts.sum_vs_concentration, q),
                ChartSection(
                    f"Top {top} heads ({query})",
                    "Ranked by mean concentration × sum; detection score = share of samples in which the head is among that sample's top 10.",
                    "",
                    None,
                    {"query": query},
                    mart="visual_heads",
                    keep=lambda row: row["rank"] <= top,
                    columns=TOP_HEADS_COLUMNS,
                ),
            ],
        ),
        "layers.html": (
            "Layers and segments",
            [
                ChartSection(f"Image attention by depth ({query})", "Mean image-attention sum per layer, on normalised depth so that models of different depth compare.", LAYERS_SQL, lambda rows: charts.layer_profiles(rows, "mean_image_sum", "mean image sum"), q),
                ChartSection(f"Concentration × sum by depth ({query})", "Mean visual-head score per layer.", LAYERS_SQL, lambda rows: charts.layer_profiles(rows, "mean_concentration_x_sum", "mean concentration × sum"), q),
                ChartSection(f"Where attention goes ({query})", "Mean share of attention on image, BOS, system, prompt and generated tokens per layer.", SEGMENTS_SQL, charts.segment_shares, q),
            ],
        ),
        "lens.html": (
            "Logit lens",
            [
                ChartSection(f"Rank of the final answer per layer ({query}, first {max_samples} samples per run)", "Blue: the final answer is already top-1; orange: its rank (log scale).", LENS_SAMPLES_SQL, charts.lens_rank_heatmap, {**q, "max_samples": max_samples}),
                ChartSection("Median rank per layer", "Median rank of the final answer across samples, per benchmark and query.", LENS_CURVES_SQL, charts.lens_median_rank, {}),
                ChartSection("When the answer settles", "First layer from which the final answer stays top-1, summarised over samples.", LENS_SETTLING_SQL, None, {}),
            ],
        ),
        "masking.html": (
            "Head masking",
            [
                ChartSection("Accuracy as heads are masked", "Top heads solid, random dashed (mean over seeds), bottom dotted; bands: 95% Wilson intervals (random: their envelope over seeds); one colour per benchmark.", MASKING_SQL, charts.masking_curves, {}),
                ChartSection("Conditions", "Every condition, with the paired difference to the unmasked baseline and the exact McNemar p-value.", CONDITIONS_SQL, None, {}),
            ],
        ),
        "samples.html": ("Samples", [ChartSection(f"Samples (first {max_samples})", "Questions, answers and parsing.", SAMPLES_SQL, None, {"max_samples": max_samples})]),
    }


WARNINGS_TITLE = "Damaged runs"
WARNINGS_TEXT = "Runs left out are in none of the charts below; `attnwh verify` names every damaged file."


def build_report(
    warehouse_path: Path | str | None,
    out: Path | str,
    query: str = "gen1",
    formats: tuple[str, ...] = ("html",),
    top: int = 20,
    max_samples: int = 50,
    warn: Callable[[list[str]], None] | None = None,
) -> Path:
    """Write the report set into ``out``; returns the path of ``index.html``.

    Damaged runs (left out of the session, or not resumable) are passed to ``warn`` and listed first on the first page.
    """
    unknown = [fmt for fmt in formats if fmt not in ("html", "png", "svg")]
    if unknown:
        raise UsageError(f"unknown report format {', '.join(unknown)}; choose html, png or svg")
    out = Path(out)
    pages = page_sections(query, top, max_samples)
    links = [(name, title) for name, (title, _) in pages.items()]
    rendered: dict[str, str] = {}
    exports: list[tuple[str, dict]] = []
    with open_session(warehouse_path) as session:
        if warn is not None:
            warn(session.warnings)
        for index, (name, (title, sections)) in enumerate(pages.items()):
            page = Page(title, links=links)
            if index == 0 and session.warnings:
                page.sections.append(Section(WARNINGS_TITLE, WARNINGS_TEXT, "", table=[{"warning": line} for line in session.warnings]))
            for number, section in enumerate(sections):
                built = _section(session, section)
                page.sections.append(built)
                if built.spec is not None:
                    exports.append((f"{name.removesuffix('.html')}-{number + 1}", built.spec))
            rendered[name] = page.render()
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, text in rendered.items():
            (out / name).write_text(text, encoding="utf-8")
        for fmt in formats:
            if fmt != "html":
                _export(out / "charts", exports, fmt)
    except OSError as exc:
        raise AttnwhError(f"cannot write the report into {out}: {exc.strerror or exc}") from exc
    return out / "index.html"


def _section(session: Catalog, section: ChartSection) -> Section:
    if section.mart is not None:
        mart = get_mart(section.mart)
        rows = run_mart(session, section.mart, {key: str(value) for key, value in section.parameters.items()}).to_pylist()
        rows = [{column: row[column] for column in section.columns or row} for row in rows if section.keep is None or section.keep(row)]
        rows.sort(key=lambda row: (row.get("model"), row.get("benchmark"), row.get("rank")))
        shown_sql = f"-- the {mart.name} query (attnwh query {mart.name})\n{mart.sql.strip()}"
    else:
        rows = session.query(section.sql, section.parameters or None).to_pylist()
        shown_sql = section.sql.strip()
    if section.parameters:
        shown_sql += "\n-- parameters: " + ", ".join(f"{key} = {value!r}" for key, value in section.parameters.items())
    if section.chart is None:
        return Section(section.title, section.description, shown_sql, table=rows or None)
    return Section(section.title, section.description, shown_sql, spec=section.chart(rows) if rows else None)


def _export(folder: Path, exports: list[tuple[str, dict]], fmt: str) -> None:
    import vl_convert

    folder.mkdir(parents=True, exist_ok=True)
    for name, spec in exports:
        if fmt == "png":
            (folder / f"{name}.png").write_bytes(vl_convert.vegalite_to_png(spec, scale=2))
        else:
            (folder / f"{name}.svg").write_text(vl_convert.vegalite_to_svg(spec), encoding="utf-8")
