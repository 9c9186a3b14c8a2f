"""Head rankings for the stages that act on heads (masking): which extraction run to rank by, and the
order of its heads. Both are marts (``ranking_runs``, ``head_ranking``); these are their typed faces.
"""

from __future__ import annotations

from collections.abc import Callable

from attnwh.core.errors import UsageError
from attnwh.core.output import kind_phrase
from attnwh.queries.library import run_mart
from attnwh.warehouse.catalog import Catalog
from attnwh.warehouse.head_files import check_format, write_heads

Head = tuple[int, int]  # (layer, head)


def latest_ranking_run(session: Catalog, model: str, model_revision: str, benchmark: str, query: str = "gen1") -> str:
    """The newest complete extraction run of this model revision on this benchmark with head scores for ``query``."""
    rows = run_mart(session, "ranking_runs", {"model": model, "model_revision": model_revision, "benchmark": benchmark, "query": query}).to_pylist()
    if not rows:
        raise UsageError(
            f"no complete extraction run of {model} (this revision) on {benchmark} with query {query} in the warehouse to rank heads by; "
            f"run `attnwh extract --model {model} --benchmark {benchmark}` first, or pass --ranking-run"
        )
    return rows[0]["run_id"]


def head_order(session: Catalog, run_id: str, score: str, query: str) -> list[Head]:
    """Every head of the run, best first (``ranked_scores``)."""
    return list(ranked_scores(session, run_id, score, query)[0])


def run_row(session: Catalog, run_id: str) -> dict | None:
    """The run's row of ``run_list`` (kind, parts committed and planned, complete, ...), or None when the warehouse
    has no such run."""
    return next((row for row in run_mart(session, "run_list").to_pylist() if row["run_id"] == run_id), None)


def run_kind(session: Catalog, run_id: str) -> str | None:
    """The kind of a run (extract, mask, derived, ranking), or None when the warehouse has no such run."""
    row = run_row(session, run_id)
    return None if row is None else row["kind"]


RANKING_KINDS = ("extract", "derived", "ranking", "attribution")  # the kinds of run whose head scores rank heads


IMPORTED_SCORE = "imported"  # the score recorded for a ranking imported from a file (``attnwh heads import``)
ATTRIBUTION_SCORE = "attribution"  # the score recorded for an attribution run's causal importance (``attnwh attribute``)


def ranked_scores(session: Catalog, run_id: str, score: str, query: str) -> tuple[dict[Head, float], str]:
    """Every head's score, best first, and the name the score is recorded under: an extraction run's
    mean ``score`` on ``query`` (the ``head_ranking`` mart), an imported ranking's scores (the
    ``imported_ranking`` mart, recorded as ``imported``) or an attribution run's causal importance (the
    ``attribution_ranking`` mart, recorded as ``attribution``); ``score`` and ``query`` do not apply to the last two."""
    kind = run_kind(session, run_id)
    if kind is None:
        raise UsageError(f"no run {run_id!r} in the warehouse to rank heads by (`attnwh runs` lists them)")
    if kind not in RANKING_KINDS:
        raise UsageError(f"run {run_id} is {kind_phrase(kind)} run: heads are ranked by an extraction, attribution or imported ranking run")
    if kind == "ranking":
        rows, recorded = run_mart(session, "imported_ranking", {"run_id": run_id}).to_pylist(), IMPORTED_SCORE
        missing = f"ranking run {run_id} has no committed heads"
    elif kind == "attribution":
        rows, recorded = run_mart(session, "attribution_ranking", {"run_id": run_id}).to_pylist(), ATTRIBUTION_SCORE
        missing = f"attribution run {run_id} has no fitted heads yet (its conditions are not all committed: run the same attnwh attribute again)"
    else:
        rows, recorded = run_mart(session, "head_ranking", {"run_id": run_id, "score": score, "query": query}).to_pylist(), score
        missing = f"extraction run {run_id} has no head metrics for query {query}"
    if not rows:
        raise UsageError(missing)
    if all(row["score"] is None for row in rows):  # else every head ties and the order is the heads' numbering
        raise UsageError(
            f"run {run_id} has no {recorded} value for any head on query {query}: nothing to rank heads by"
            + (" (region_hit needs a benchmark with object boxes)" if recorded == "region_hit" else "")
        )
    return {(row["layer"], row["head"]): row["score"] for row in rows}, recorded


def export_heads(session: Catalog, run_id: str, fmt: str, score: str = "concentration_x_sum", query: str = "gen1", warn: Callable[[list[str]], None] | None = None) -> str:
    """The run's head scores as the text of a ``retrieval-json`` or ``duo-tsv`` file (``warehouse.head_files``; ``warn``
    is told of negative values written as 0): an extraction run's ``score`` on ``query`` in each sample; an attribution
    run's causal importance or an imported ranking's score as one value per head (``score`` and ``query`` do not apply)."""
    check_format(fmt)
    kind = run_kind(session, run_id)
    if kind is None:
        raise UsageError(f"no run {run_id!r} in the warehouse to export heads from (`attnwh runs` lists them)")
    if kind not in RANKING_KINDS:
        raise UsageError(f"run {run_id} is {kind_phrase(kind)} run: heads are exported from an extraction, attribution or imported ranking run")
    if kind in ("attribution", "ranking"):  # one score per head: a one-value list each
        scores, _ = ranked_scores(session, run_id, score, query)
        shape = next(row for row in run_mart(session, "run_overview").to_pylist() if row["run_id"] == run_id)
        rows = [
            {"layer": layer, "head": head, "scores": [] if value is None else [value], "mean_score": value, **{key: shape[key] for key in ("n_layers", "n_heads", "n_kv_heads")}}
            for (layer, head), value in scores.items()
        ]
        return write_heads(rows, fmt, warn)
    rows = run_mart(session, "head_sample_scores", {"run_id": run_id, "score": score, "query": query}).to_pylist()
    if not rows:
        raise UsageError(f"run {run_id} has no head metrics for query {query}")
    return write_heads(rows, fmt, warn)
