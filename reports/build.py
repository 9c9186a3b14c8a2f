"""The report set: one page per theme, every section one query (shown under its chart) and one chart function.

Pages: ``index.html`` (links, run overview), ``attention.html`` (heatmaps of sum, concentration and
their product; sum against concentration; top heads), ``layers.html`` (cross-model layer profiles,
segment shares), ``lens.html`` (logit-lens rank heatmap and median-rank curves), ``masking.html``
(masking curves and conditions), ``pruning.html``, ``long-answers.html`` (every generated token: attention by
step, grounded against hallucinated object words, lens settling, AMBER's metrics), ``causal.html`` (attention against
causal importance: ``reports.causal``), ``samples.html`` (answers). Charts get data aggregated in SQL.
With ``formats`` png / svg, every chart is also written as a file under ``charts/`` for papers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnwh.core.errors import AttnwhError, UsageError
from attnwh.queries.library import Catalog, get_mart, open_session, run_mart
from attnwh.reports import causal, charts, flips, story
from attnwh.reports.page import Page, Section

HALLUCINATION_HEADS = 10  # heads shown per run on the long-answer page
TOP_HEADS_COLUMNS = ("model", "benchmark", "run_id", "rank", "layer", "head", "mean_score", "detection_score", "n_samples")
LENS_ANSWER_QUERY = "prompt"  # the lens heatmap (Fig. 9): the position whose next token is the answer's first


@dataclass(frozen=True)
class ChartSection:
    title: str
    description: str
    mart: str  # the query of the library (queries/marts) that feeds it
    chart: Callable[[list[dict]], dict] | None  # None: shown as a table
    parameters: dict[str, Any]
    keep: Callable[[dict], bool] | None = None  # rows of the mart to show (then sorted by model, benchmark, rank)
    one_run: bool = False  # a mart of every run: per model and benchmark, the rows of the run the report shows (shown_runs)
    columns: tuple[str, ...] | None = None
    name: str | None = None  # a chart's name for ``attnwh.open(...).chart(NAME)``
    figures: tuple[int, ...] = ()  # the figures of the study (CVPR 2025 and its supplement) the chart reproduces


def _per_head(title: str, description: str, score: str, label: str, params: dict, figures: tuple[int, ...]) -> ChartSection:
    """A layer × head heatmap of a head's mean ``score`` (``report_heads``' ``mean_<score>``)."""
    return ChartSection(title, description, "report_heads", lambda rows: charts.head_heatmaps(rows, f"mean_{score}", label), params, name=f"head_{score}", figures=figures)


def _per_layer(title: str, description: str, score: str, label: str, params: dict, figures: tuple[int, ...]) -> ChartSection:
    """Profiles on normalised depth of a layer's mean ``score`` (``report_layers``' ``mean_<score>``)."""
    return ChartSection(title, description, "report_layers", lambda rows: charts.layer_profiles(rows, f"mean_{score}", label), params, name=f"layer_{score}", figures=figures)


def page_sections(query: str, top: int, max_samples: int) -> dict[str, tuple[str, list[ChartSection]]]:
    """The report set: file name -> (page title, sections)."""
    q = {"query": query}
    return {
        "index.html": ("attnwh report", [ChartSection("Runs", "Every run in the warehouse: progress, errors, unparseable answers and accuracy.", "report_overview", None, {})]),
        "attention.html": (
            "Image attention per head",
            [
                _per_head(
                    f"Image-attention sum per head ({query})",
                    "Attention mass on image tokens, mean over samples, per layer × head; one panel per model × benchmark, each with its own colour scale.",
                    "image_sum",
                    "image sum",
                    q,
                    (10, 15),
                ),
                _per_head(
                    f"Concentration per head ({query})",
                    "1 − entropy / ln(n_image) of the attention over image tokens: 1 = one token, 0 = uniform.",
                    "concentration",
                    "concentration",
                    q,
                    (11,),
                ),
                _per_head(
                    f"Concentration × sum per head ({query})",
                    "The visual-head score: heads that give the image much and focused attention.",
                    "concentration_x_sum",
                    "concentration × sum",
                    q,
                    (14,),
                ),
                ChartSection(
                    f"Sum against concentration ({query})",
                    "One point per head, coloured by layer.",
                    "report_heads",
                    charts.sum_vs_concentration,
                    q,
                    name="sum_vs_concentration",
                    figures=(1,),
                ),
                ChartSection(
                    f"Top {top} heads ({query})",
                    "Ranked by mean concentration × sum, in the run the heatmaps above show for each model and benchmark (run_id); "
                    "detection score = share of samples in which the head is among that sample's top 10.",
                    "visual_heads",
                    None,
                    {"query": query},
                    keep=lambda row: row["rank"] <= top,
                    columns=TOP_HEADS_COLUMNS,
                    one_run=True,
                ),
            ],
        ),
        "layers.html": (
            "Layers and segments",
            [
                _per_layer(
                    f"Image attention by depth ({query})",
                    "Mean image-attention sum per layer, on normalised depth so that models of different depth compare.",
                    "image_sum",
                    "mean image sum",
                    q,
                    (10, 15),
                ),
                _per_layer(f"Concentration × sum by depth ({query})", "Mean visual-head score per layer.", "concentration_x_sum", "mean concentration × sum", q, (14,)),
                ChartSection(
                    f"Where attention goes ({query})",
                    "Mean share of attention on image, BOS, system, prompt and generated tokens per layer.",
                    "report_segments",
                    charts.segment_shares,
                    q,
                    name="segment_shares",
                ),
            ],
        ),
        "lens.html": (
            "Logit lens",
            [
                ChartSection(
                    f"Rank of the answer per layer (prompt, first {max_samples} samples per run)",
                    "At the prompt's last position, which predicts the answer's first token: blue where that token is already top-1; orange: its rank (log scale). "
                    "(At gen1 the target is the token after the first, the end of a one-word answer.)",
                    "report_lens_samples",
                    charts.lens_rank_heatmap,
                    {"query": LENS_ANSWER_QUERY, "max_samples": max_samples},
                    name="lens_ranks",
                    figures=(9,),
                ),
                ChartSection(
                    "Median rank per layer",
                    "Median rank of the token each query's position predicts (prompt: the answer's first token; gen1: the next one) across samples, per benchmark and query.",
                    "report_lens_curves",
                    charts.lens_median_rank,
                    {},
                    name="lens_median_rank",
                    figures=(9,),
                ),
                ChartSection(
                    "When the answer settles",
                    "First layer from which the predicted token stays top-1, summarised over samples (prompt: the answer's first token).",
                    "report_lens_settling",
                    None,
                    {},
                ),
            ],
        ),
        "masking.html": (
            "Head masking",
            [
                ChartSection(
                    "Accuracy as heads are masked",
                    "Heads ranked by an attention score (runs ranked by attribution or an imported ranking: Attention against causal importance). "
                    "Top heads solid, random dashed (mean over seeds), bottom dotted; bands: 95% Wilson intervals (random: their envelope over seeds); one colour per benchmark. "
                    "Each masking mode is drawn apart: the study's Figs. 12–13 masked in its code's way, attnwh mask --mode paper; zero (the default) switches a head's output off.",
                    "report_masking",
                    charts.masking_curves,
                    {},
                    name="masking_curves",
                    figures=(12, 13),
                ),
                ChartSection("Conditions", "Every condition, with the paired difference to the unmasked baseline and the exact McNemar p-value.", "report_conditions", None, {}),
            ],
        ),
        "pruning.html": (
            "Image-KV pruning",
            [
                ChartSection(
                    "Accuracy as each head's image KV is pruned",
                    "Share of all image KV kept (budgets per KV head: by head score with a floor, uniform, or random scores; mean over seeds) against accuracy; bands: 95% Wilson intervals (random: their envelope over seeds). The study's supplement proposed this; it never tested it. "
                    "In the cache phase (SnapKV's: --phase cache) keys leave after the prefill, so an answer decided at its first token (yes / no, a letter) is the full cache's by construction: "
                    "a panel none of whose conditions changed an answer says so in its title; --phase prefill drops the keys in the prefill too.",
                    "report_pruning",
                    charts.pruning_curves,
                    {},
                    name="pruning_curves",
                ),
                ChartSection(
                    "Conditions",
                    "Every condition, with the paired difference to the full cache, answer stability, the exact McNemar p-value and the KV bytes saved.",
                    "report_prune_conditions",
                    None,
                    {},
                ),
            ],
        ),
        "long-answers.html": (
            "Long answers",
            [
                ChartSection(
                    "Image attention as the answer grows",
                    "Every generated token's attention to the image (runs captured with --queries gen), by generated step: one line per layer, "
                    "coloured by stage; the mean over the layer's heads and the tokens of each step bucket (0, 1, 2–3, 4–7, ...); one run per panel.",
                    "gen_attention_by_step",
                    charts.gen_attention_by_step,
                    {"score": "image_sum"},
                    name="gen_attention_by_step",
                    one_run=True,
                ),
                ChartSection(
                    f"Heads that tell grounded from hallucinated object words (top {HALLUCINATION_HEADS})",
                    "Per head, its image attention at the first token of object words that name an object in the image, less at those naming "
                    "one that is not (by the benchmark's annotation), with 95% Welch intervals; the heads that separate the two best (|t|); one run per panel.",
                    "hallucination_heads",
                    charts.hallucination_heads,
                    {"score": "image_sum"},
                    keep=lambda row: row["separation_rank"] <= HALLUCINATION_HEADS,
                    name="hallucination_heads",
                    one_run=True,
                ),
                ChartSection(
                    "When generated words settle",
                    "From which layer the logit lens keeps each word's first token top-1, per kind of word (grounded and hallucinated object words, other words).",
                    "gen_lens_settling",
                    None,
                    {},
                ),
                ChartSection(
                    "Object hallucination (AMBER's metrics)",
                    "CHAIR (hallucinated object mentions / object mentions), Cover (annotated objects named), Hal (answers naming a hallucinated "
                    "object, with a 95% Wilson interval) and Cog, per extraction run and per sweep condition, with the change against the sweep's baseline.",
                    "object_hallucination",
                    None,
                    {},
                ),
            ],
        ),
        causal.PAGE: (causal.TITLE, []),  # its sections: reports/causal.py
        "samples.html": (
            "Samples",
            [
                ChartSection(
                    f"Samples (first {max_samples} per run)",
                    "Questions, answers and parsing; one extraction run per model and benchmark (run_id).",
                    "report_samples",
                    None,
                    {"max_samples": max_samples},
                )
            ],
        ),
    }


CHART_FORMATS = ("png", "svg", "pdf")
FIGURES_TITLE = "Figures of the study"
FIGURES_TEXT = (
    'The charts that reproduce the figures of "Unveiling Visual Perception in Language Models: An Attention Head '
    'Analysis Approach" (CVPR 2025) and its supplement; `attnwh report --figure N` writes one as a file.'
)
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
    pictures: Callable[[Catalog], list[Section]] | None = None,
) -> Path:
    """Write the report set into ``out``; returns the path of ``index.html``.

    Damaged runs (left out of the session, or not resumable) are passed to ``warn`` and listed first on the first page.
    ``pictures`` gives the Samples page's sections after its table (the face's ``pictures.report_sections``: where heads
    look, drawn from stored rows over the benchmark's images, which this layer cannot read; it includes
    ``flips.sample_sections``, which the page has without it too: the masking page links there).
    """
    unknown = [fmt for fmt in formats if fmt not in ("html", *CHART_FORMATS)]
    if unknown:
        raise UsageError(f"unknown report format {', '.join(unknown)}; choose html, png, svg or pdf")
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
            if index == 0:
                page.sections.append(story.section(session, story.figure_hrefs(pages), query))
                page.sections.append(Section(FIGURES_TITLE, FIGURES_TEXT, "", table=figure_index(pages)))
            for number, section in enumerate(sections):
                built = _section(session, section)
                page.sections.append(built)
                if built.spec is not None:
                    exports.append((f"{name.removesuffix('.html')}-{number + 1}", built.spec))
            if name == causal.PAGE:  # sections built from several marts (reports/causal.py)
                for built in causal.sections(session, query):
                    page.sections.append(built)
                    exports.extend([(f"causal-{len(page.sections)}", built.spec)] if built.spec is not None else [])
            if name == "masking.html":
                page.sections.append(flips.masking_section(session))
                page.sections.extend(story.repeated_sections(session))
            if name == "samples.html":
                page.sections.extend(pictures(session) if pictures is not None else flips.sample_sections(session))
            rendered[name] = page.render()
    if out.exists() and not out.is_dir():
        raise AttnwhError(f"cannot write the report into {out}: it is a file; --out takes a folder")
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


def chart_sections(query: str = "gen1", top: int = 20, max_samples: int = 50) -> dict[str, ChartSection]:
    """Every chart of the report by its name (``head_image_sum``, ``masking_curves``, ...)."""
    return {section.name: section for _, sections in page_sections(query, top, max_samples).values() for section in sections if section.name}


def chart_spec(session: Catalog, name: str, query: str = "gen1", max_samples: int = 50) -> dict | None:
    """The Vega-Lite spec of one chart of the report, from its mart over this session (None: no rows)."""
    found = chart_sections(query, max_samples=max_samples)
    if name not in found:
        raise UsageError(f"unknown chart {name!r}; charts: {', '.join(sorted(found))}")
    return _section(session, found[name]).spec


# the report's panels show one run per model and benchmark: of the runs with rows for the panel, the first by
# stg_runs.shown_order (complete before incomplete, then the newest), as the report's own marts choose in SQL
SHOWN_RUNS_SQL = "select run_id, model, benchmark, shown_order from stg_runs where run_id in (select unnest($runs))"


def shown_runs(session: Catalog, rows: list[dict]) -> list[dict]:
    """Of a mart's rows of every run, those of the one run per model and benchmark the report shows (``SHOWN_RUNS_SQL``)."""
    runs = session.query(SHOWN_RUNS_SQL, {"runs": sorted({row["run_id"] for row in rows})}).to_pylist()
    first: dict[tuple[str, str], dict] = {}
    for run in runs:
        panel = (run["model"], run["benchmark"])
        if panel not in first or run["shown_order"] < first[panel]["shown_order"]:
            first[panel] = run
    shown = {run["run_id"] for run in first.values()}
    return [row for row in rows if row["run_id"] in shown]


def _section(session: Catalog, section: ChartSection) -> Section:
    mart = get_mart(section.mart)
    rows = run_mart(session, section.mart, {key: str(value) for key, value in section.parameters.items()}).to_pylist()
    if section.one_run:
        rows = shown_runs(session, rows)
    if section.keep is not None:
        rows = [{column: row[column] for column in section.columns or row} for row in rows if section.keep(row)]
        rows.sort(key=lambda row: (row.get("model"), row.get("benchmark"), row.get("rank")))
    shown_sql = f"-- the {mart.name} query (attnwh query {mart.name})\n{mart.sql.strip()}"
    if section.parameters:
        shown_sql += "\n-- parameters: " + ", ".join(f"{key} = {value!r}" for key, value in section.parameters.items())
    if section.one_run:
        shown_sql += f"\n-- shown: per model and benchmark the rows of one run, the first by shown_order of those with rows\n{SHOWN_RUNS_SQL}"
    description = f"{figure_label(section.figures)} of the study. {section.description}" if section.figures else section.description
    if section.chart is None:
        return Section(section.title, description, shown_sql, table=rows or None)
    return Section(section.title, description, shown_sql, spec=section.chart(rows) if rows else None)


def figure_label(figures: tuple[int, ...]) -> str:
    """``(10, 15)`` -> "Figs. 10 and 15"; ``(12, 13)`` -> "Figs. 12-13"; ``(1,)`` -> "Fig. 1"."""
    if len(figures) == 1:
        return f"Fig. {figures[0]}"
    if list(figures) == list(range(figures[0], figures[-1] + 1)):
        return f"Figs. {figures[0]}–{figures[-1]}"
    return "Figs. " + ", ".join(map(str, figures[:-1])) + f" and {figures[-1]}"


def figure_index(pages: dict[str, tuple[str, list[ChartSection]]]) -> list[dict]:
    """The index of the study's figures: which chart on which page reproduces each."""
    rows = []
    for page, (_, sections) in pages.items():
        for section in sections:
            for figure in section.figures:
                rows.append({"figure": f"Fig. {figure}", "chart": section.title, "page": page, "name": section.name})
    return sorted(rows, key=lambda row: (int(row["figure"].removeprefix("Fig. ")), row["page"], row["chart"]))


def _export(folder: Path, exports: list[tuple[str, dict]], fmt: str) -> list[Path]:
    import vl_convert

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, spec in exports:
        path = folder / f"{name}.{fmt}"
        if fmt == "png":
            path.write_bytes(vl_convert.vegalite_to_png(spec, scale=2))
        elif fmt == "pdf":
            path.write_bytes(vl_convert.vegalite_to_pdf(spec))
        else:
            path.write_text(vl_convert.vegalite_to_svg(spec), encoding="utf-8")
        written.append(path)
    return written


def write_figure(
    warehouse_path: Path | str | None, out: Path | str, figure: int, fmt: str = "svg", query: str = "gen1", warn: Callable[[list[str]], None] | None = None
) -> list[Path]:
    """Write only the charts that reproduce one figure of the study, as ``fmt`` files under ``out``."""
    if fmt not in CHART_FORMATS:
        raise UsageError(f"--figure writes png, svg or pdf; got --format {fmt}")
    sections = [section for section in chart_sections(query).values() if figure in section.figures]
    if not sections:
        known = sorted({number for section in chart_sections(query).values() for number in section.figures})
        raise UsageError(f"no chart reproduces Fig. {figure}; figures: {', '.join(map(str, known))}")
    exports = []
    with open_session(warehouse_path) as session:
        if warn is not None:
            warn(session.warnings)
        for section in sections:
            spec = _section(session, section).spec
            if spec is not None:
                exports.append((f"fig-{figure}-{section.name}", spec))
    if not exports:
        raise UsageError(f"Fig. {figure} has no data in the warehouse yet")
    try:
        return _export(Path(out), exports, fmt)
    except OSError as exc:
        raise AttnwhError(f"cannot write into {out}: {exc.strerror or exc}") from exc
