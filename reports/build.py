"""The report: every section is one query (shown under its chart) and one chart function."""

from __future__ import annotations

from pathlib import Path

from attnwh.errors import AttnwhError
from attnwh.queries.library import open_session
from attnwh.reports import charts
from attnwh.reports.page import Page, Section

HEATMAP_SQL = """
select model, benchmark, layer, head, n_samples, mean_image_sum
from head_attention
where query = $query
order by model, benchmark, layer, head
"""

RUNS_SQL = """
select run_id, kind, model, benchmark, n_samples, parts_committed, n_parts, complete, n_layers, n_heads, n_kv_heads, dtype, created
from runs
order by created, run_id
"""

SAMPLES_SQL = """
select model, benchmark, sample_key, status, question, output_text, parsed, gold, correct
from stg_samples
order by model, benchmark, sample_idx
limit 50
"""


def build_report(warehouse_path: Path | str | None, out: Path | str, query: str = "gen1") -> Path:
    """Write ``index.html`` into ``out`` and return its path."""
    out = Path(out)
    with open_session(warehouse_path) as session:
        heatmap_rows = session.query(HEATMAP_SQL, {"query": query}).to_pylist()
        runs = session.query(RUNS_SQL).to_pylist()
        samples = session.query(SAMPLES_SQL).to_pylist()
    page = Page("attnwh report")
    page.sections.append(
        Section(
            title=f"Mean image-attention sum per head ({query})",
            description="Attention mass on image tokens, averaged over samples, per layer × head; one panel per model × benchmark, each with its own colour scale.",
            sql=f"{HEATMAP_SQL.strip()}\n-- parameters: query = {query!r}",
            spec=charts.head_heatmaps(heatmap_rows, "mean_image_sum", "image sum") if heatmap_rows else None,
        )
    )
    page.sections.append(Section("Runs", "", RUNS_SQL, table=runs))
    page.sections.append(Section("Samples (first 50)", "Questions, answers and parsing.", SAMPLES_SQL, table=samples))
    try:
        out.mkdir(parents=True, exist_ok=True)
        target = out / "index.html"
        target.write_text(page.render(), encoding="utf-8")
    except OSError as exc:
        raise AttnwhError(f"cannot write the report into {out}: {exc.strerror or exc}") from exc
    return target
