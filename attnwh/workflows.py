"""Work that spans stages, for the CLI and for notebooks: a stage never opens another stage's sessions,
so whatever needs both (rank heads with a query, then run a model) is orchestrated here.

Like the CLI, this module sits above the stages; the small core (``attnwh.errors``, ``attnwh.output``)
imports none of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pyarrow as pa

from attnwh.errors import UsageError
from attnwh.extract.mask_run import MaskOptions, MaskResult, ProgressCallback, Ranking, prepare_mask, run_mask
from attnwh.extract.prune_run import HeadScores, PruneOptions, PruneResult, prepare_prune, run_prune
from attnwh.extract.recompute import RecomputeOptions, RecomputeResult, run_recompute
from attnwh.queries.library import STAGING_ORDER, marts, open_session, run_mart
from attnwh.queries.rankings import head_order, head_scores, imported_order, latest_ranking_run, run_kind
from attnwh.warehouse.layout import open_warehouse

Warn = Callable[[list[str]], None]
IMPORTED_SCORE = "imported"  # the ranking score recorded for a ranking imported from a file


def _check_heads_fit(heads: list[tuple[int, int]], info: dict, run_id: str, model: str) -> None:
    """A ranking must order exactly the heads of the model being masked."""
    expected = {(layer, head) for layer in range(info["n_layers"]) for head in range(info["n_heads"])}
    if set(heads) != expected:
        layers = max((layer for layer, _ in heads), default=-1) + 1
        per_layer = max((head for _, head in heads), default=-1) + 1
        raise UsageError(
            f"ranking run {run_id} ranks {layers} layers × {per_layer} heads, but {model} has {info['n_layers']} layers × {info['n_heads']} heads"
        )


def mask_sweep(
    warehouse: Path | str | None, options: MaskOptions, on_progress: ProgressCallback | None = None, warn: Warn | None = None
) -> tuple[MaskResult, pa.Table]:
    """``attnwh mask``: heads ranked over an extraction run (``--ranking-run``, else the newest complete
    one of the same model revision and benchmark), the sweep run or resumed, and its table of
    accuracy per condition (the ``mask_sweep`` mart)."""
    setup = prepare_mask(options)
    open_warehouse(warehouse, create=True)  # a sweep writes into it (a missing one then says which run to extract first)
    with open_session(warehouse) as session:
        if warn is not None:
            warn(session.warnings)
        run_id = options.ranking_run or latest_ranking_run(session, setup.run.model_label, setup.run.spec["model_revision"], setup.run.benchmark.name)
        if run_kind(session, run_id) == "ranking":  # imported by `attnwh heads import`
            heads, score = imported_order(session, run_id), IMPORTED_SCORE
        else:
            heads, score = head_order(session, run_id, options.score, options.ranking_query), options.score
    _check_heads_fit(heads, setup.run.details["model_info"], run_id, setup.run.model_label)
    result = run_mask(warehouse, setup, Ranking(run_id, score, options.ranking_query, heads), on_progress)
    with open_session(warehouse) as session:
        summary = run_mart(session, "mask_sweep", {"run_id": result.run_id})
    return result, summary


def prune_sweep(
    warehouse: Path | str | None, options: PruneOptions, on_progress: ProgressCallback | None = None, warn: Warn | None = None
) -> tuple[PruneResult, pa.Table]:
    """``attnwh prune``: head scores from an extraction run (``--ranking-run``, else the newest complete
    one of the same model revision and benchmark) or an imported ranking, the pruning sweep run or
    resumed, and its table of accuracy and KV cache per condition (the ``prune_sweep`` mart)."""
    setup = prepare_prune(options)
    open_warehouse(warehouse, create=True)
    with open_session(warehouse) as session:
        if warn is not None:
            warn(session.warnings)
        run_id = options.ranking_run or latest_ranking_run(session, setup.run.model_label, setup.run.spec["model_revision"], setup.run.benchmark.name)
        imported = run_kind(session, run_id) == "ranking"
        scores = head_scores(session, run_id, options.score, options.ranking_query)
    _check_heads_fit(sorted(scores), setup.run.details["model_info"], run_id, setup.run.model_label)
    result = run_prune(warehouse, setup, HeadScores(run_id, IMPORTED_SCORE if imported else options.score, scores), on_progress)
    with open_session(warehouse) as session:
        summary = run_mart(session, "prune_sweep", {"run_id": result.run_id})
    return result, summary


ZOO_BENCHMARKS = ("toy-shapes-yesno", "toy-shapes-choice", "toy-shapes-region")


def toy_zoo(
    warehouse: Path | str | None, limit: int, k: tuple[str, ...], seeds: int, device: str = "auto",
    on_step: Callable[[str], None] | None = None, warn: Warn | None = None,
) -> list[tuple[str, str, str, str]]:
    """``attnwh toy zoo``: every shipped toy (three scales) on every toy benchmark (yes / no, colour
    choice, colour choice with the named shape's box as the region): an extraction, then a masking
    sweep ranked by it. Returns (model, benchmark, extraction run, mask run) per pair; resumes."""
    from attnwh.extract.run import ExtractOptions, run_extract
    from attnwh.extract.toy.default import ZOO

    done = []
    for model in ZOO:
        for benchmark in ZOO_BENCHMARKS:
            if on_step is not None:
                on_step(f"{model} on {benchmark}: extract, then mask")
            extraction = run_extract(warehouse, ExtractOptions(model=model, benchmark=benchmark, limit=limit, device=device, command=["attnwh", "toy", "zoo"]))
            mask, _ = mask_sweep(
                warehouse,
                MaskOptions(model=model, benchmark=benchmark, limit=limit, k=k, seeds=seeds, device=device, ranking_run=extraction.run_id, command=["attnwh", "toy", "zoo"]),
                warn=warn,
            )
            done.append((model, benchmark, extraction.run_id, mask.run_id))
    return done


def recompute(warehouse: Path | str | None, options: RecomputeOptions, on_progress: Callable[[int, int], None] | None = None) -> RecomputeResult:
    """``attnwh recompute``: a derived table from a run's raw rows, under a view name that no table,
    staging view or mart of attnwh's queries uses."""
    reserved = frozenset(marts()) | frozenset(STAGING_ORDER)
    return run_recompute(warehouse, replace(options, reserved_names=reserved), on_progress)
