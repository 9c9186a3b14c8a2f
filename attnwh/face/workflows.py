"""Work that spans stages, for the CLI and for notebooks: a stage never opens another stage's sessions,
so whatever needs both (rank heads with a query, then run a model) is orchestrated here.

Like the CLI, this module sits above the stages; the small core (``attnwh.core.errors``, ``attnwh.core.output``)
imports none of them.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from pathlib import Path

import pyarrow as pa

from attnwh.core.errors import IntegrityError, UsageError
from attnwh.extract.mask_run import MaskOptions, prepare_mask, run_mask
from attnwh.extract.prune_run import PruneOptions, prepare_prune, run_prune
from attnwh.extract.recompute import RecomputeOptions, RecomputeResult, run_recompute
from attnwh.extract.setup import RunSetup
from attnwh.extract.sweep import HeadRanking, ProgressCallback, SweepOptions, SweepResult
from attnwh.queries.library import STAGING_ORDER, marts, open_session, run_mart
from attnwh.queries.rankings import latest_ranking_run, ranked_scores, run_row
from attnwh.warehouse.layout import open_warehouse

Warn = Callable[[list[str]], None]


def _check_heads_fit(heads: list[tuple[int, int]], info: dict, run_id: str, model: str) -> None:
    """A ranking must order exactly the heads of the model being masked."""
    expected = {(layer, head) for layer in range(info["n_layers"]) for head in range(info["n_heads"])}
    if set(heads) != expected:
        layers = max((layer for layer, _ in heads), default=-1) + 1
        per_layer = max((head for _, head in heads), default=-1) + 1
        raise UsageError(f"ranking run {run_id} ranks {layers} layers × {per_layer} heads, but {model} has {info['n_layers']} layers × {info['n_heads']} heads")


def _ranking(warehouse: Path | str | None, setup: RunSetup, options: SweepOptions, warn: Warn | None) -> HeadRanking:
    """The ranking a sweep follows: the run (``--ranking-run``, else the newest complete extraction of the
    same model revision and benchmark), every head's score best first, and the score's recorded name."""
    open_warehouse(warehouse, create=True)  # a sweep writes into it (a missing one then says which run to extract first)
    with open_session(warehouse) as session:
        if warn is not None:
            warn(session.warnings)
        run_id = options.ranking_run or latest_ranking_run(session, setup.model_label, setup.spec["model_revision"], setup.benchmark.name, options.ranking_query)
        scores, score = ranked_scores(session, run_id, options.score, options.ranking_query)
        row = run_row(session, run_id)
        if warn is not None and row is not None and not row["complete"]:  # only a run named by --ranking-run can be incomplete
            warn([f"ranking run {run_id} is incomplete ({row['parts_committed']} of {row['n_parts']} parts committed): its head scores are those of its committed samples"])
    _check_heads_fit(list(scores), setup.details["model_info"], run_id, setup.model_label)
    unscored = [head for head, value in scores.items() if value is None]
    if warn is not None and unscored and "bottom" in getattr(options, "strategies", ()):
        layer, head = unscored[0]
        warn(
            [
                f"ranking run {run_id} has no {score} for {len(unscored)} of {len(scores)} heads (e.g. layer {layer} head {head}): they rank below every scored head, "
                "so --strategy bottom masks them first"
            ]
        )
    return HeadRanking(run_id, score, options.ranking_query, scores)


def _sweep_table(warehouse: Path | str | None, mart: str, run_id: str) -> pa.Table:
    """The sweep's table; a run the readers leave out (a committed file damaged since) is an error, not an empty table."""
    with open_session(warehouse) as session:
        damaged = next((line for line in session.warnings if line.startswith(f"run {run_id} left out: ")), None)
        if damaged is not None:
            raise IntegrityError(f"{damaged}; its committed conditions are not run again (see `attnwh verify {run_id}`)")
        return run_mart(session, mart, {"run_id": run_id})


def _summary_mart(setup: RunSetup, scored: str) -> str:
    """The table a sweep prints: ``scored`` (accuracy per condition), or AMBER's metrics per condition when the
    benchmark's answers are descriptions scored by their object words (``sweep_hallucination``)."""
    return "sweep_hallucination" if any(sample.objects is not None for sample in setup.samples) else scored


def mask_sweep(warehouse: Path | str | None, options: MaskOptions, on_progress: ProgressCallback | None = None, warn: Warn | None = None) -> tuple[SweepResult, pa.Table]:
    """``attnwh mask``: heads ranked over an extraction run (or an imported ranking), the sweep run or
    resumed, and its table of accuracy per condition (the ``mask_sweep`` mart)."""
    setup = prepare_mask(options)
    result = run_mask(warehouse, setup, _ranking(warehouse, setup.run, options, warn), on_progress)
    return result, _sweep_table(warehouse, _summary_mart(setup.run, "mask_sweep"), result.run_id)


def prune_sweep(warehouse: Path | str | None, options: PruneOptions, on_progress: ProgressCallback | None = None, warn: Warn | None = None) -> tuple[SweepResult, pa.Table]:
    """``attnwh prune``: head scores from an extraction run (or an imported ranking), the pruning sweep
    run or resumed, and its table of accuracy and KV cache per condition (the ``prune_sweep`` mart)."""
    setup = prepare_prune(options)
    result = run_prune(warehouse, setup, _ranking(warehouse, setup.run, options, warn), on_progress)
    return result, _sweep_table(warehouse, _summary_mart(setup.run, "prune_sweep"), result.run_id)


# every toy benchmark the zoo runs, and the positions its extraction captures: the caption benchmark's long answers
# every generated token (``gen``), so that the report's Long answers page and the hallucination marts have data
ZOO_BENCHMARKS = {
    "toy-shapes-yesno": ("prompt", "gen1"),
    "toy-shapes-choice": ("prompt", "gen1"),
    "toy-shapes-region": ("prompt", "gen1"),
    "toy-shapes-caption": ("prompt", "gen1", "gen"),
}
# benchmarks that ask another's questions (toy-shapes-region: toy-shapes-choice's, with the named shape's box): the zoo
# extracts them (their region attention is their own) but does not sweep them, since the sweep would repeat the other's
# answers; the report's masking page says so, from the questions each extraction asked (the repeated_questions mart)
ZOO_SAME_QUESTIONS = {"toy-shapes-region": "toy-shapes-choice"}


# a progress bar for one step of a workflow: (label, unit) -> a context that gives the step's ``on_progress``
ProgressBar = Callable[[str, str], AbstractContextManager[ProgressCallback | None]]


def _bar(progress_bar: ProgressBar | None, label: str, unit: str) -> AbstractContextManager[ProgressCallback | None]:
    return progress_bar(label, unit) if progress_bar is not None else nullcontext(None)


def toy_zoo(
    warehouse: Path | str | None,
    limit: int,
    k: tuple[str, ...],
    seeds: int,
    device: str = "auto",
    on_step: Callable[[str], None] | None = None,
    warn: Warn | None = None,
    progress_bar: ProgressBar | None = None,
) -> list[tuple[str, str, str, str | None]]:
    """``attnwh toy zoo``: every shipped toy (three scales) on every toy benchmark (yes / no, colour
    choice, colour choice with the named shape's box as the region, and descriptions of the shapes, whose
    object words are counted against the scene): an extraction (the descriptions' at every generated token),
    then a masking sweep ranked by it (on the descriptions: CHAIR, Cover and Hal per condition); and the small toy's
    head attribution on the colour choices with a masking sweep ranked by it (``zoo_attribution``, its runs named
    through ``on_step``; each step's progress through ``progress_bar``). Returns (model, benchmark, extraction run, mask
    run) per pair; resumes."""
    from attnwh.extract.run import ExtractOptions, run_extract
    from attnwh.extract.toy.default import ZOO

    check_zoo_options(k, seeds)
    done = []
    for model in ZOO:
        for benchmark, queries in ZOO_BENCHMARKS.items():
            swept = benchmark not in ZOO_SAME_QUESTIONS
            if on_step is not None:
                on_step(f"{model} on {benchmark}: extract" + (", then mask" if swept else f" (no sweep: {ZOO_SAME_QUESTIONS.get(benchmark)}'s questions)"))
            with _bar(progress_bar, "  extract", "samples") as on_progress:
                options = ExtractOptions(model=model, benchmark=benchmark, limit=limit, queries=queries, device=device, command=["attnwh", "toy", "zoo"])
                extraction = run_extract(warehouse, options, on_progress=on_progress)
            if not swept:
                done.append((model, benchmark, extraction.run_id, None))
                continue
            with _bar(progress_bar, "  mask", "conditions") as on_progress:
                mask, _ = mask_sweep(
                    warehouse,
                    MaskOptions(model=model, benchmark=benchmark, limit=limit, k=k, seeds=seeds, device=device, ranking_run=extraction.run_id, command=["attnwh", "toy", "zoo"]),
                    on_progress=on_progress,
                    warn=warn,
                )
            done.append((model, benchmark, extraction.run_id, mask.run_id))
    zoo_attribution(warehouse, ZOO[0], limit, k, seeds, device, on_step, warn, progress_bar)
    return done


def check_zoo_options(k: tuple[str, ...], seeds: int) -> None:
    """The sweeps' ``--k`` (against every toy's heads) and ``--seeds``, before the first extraction: the first sweep
    read them only after it."""
    from attnwh.extract.mask_run import MaskOptions, check_mask_options
    from attnwh.extract.masking import parse_k
    from attnwh.extract.models import load_config, resolve_source
    from attnwh.extract.toy.default import ZOO, model_location

    check_mask_options(MaskOptions(k=k, seeds=seeds))  # what every sweep of the zoo would check first
    for model in ZOO:
        _, spec = load_config(resolve_source(model_location(model)))
        try:
            parse_k(k, spec.n_layers * spec.n_heads)
        except UsageError as exc:
            raise UsageError(f"{exc} (the sweep of {model})") from exc


# the zoo's attribution (attnwh attribute): the small toy on the colour choices, patterns with their defaults on at most
# this many samples, then a mask sweep ranked by it on the same samples as the one ranked by attention (the report's causal page)
ZOO_ATTRIBUTION_BENCHMARK, ZOO_ATTRIBUTION_SAMPLES = "toy-shapes-choice", 64


def zoo_attribution(
    warehouse: Path | str | None,
    model: str,
    limit: int,
    k: tuple[str, ...],
    seeds: int,
    device: str,
    on_step: Callable[[str], None] | None,
    warn: Warn | None,
    progress_bar: ProgressBar | None = None,
) -> tuple[str, str]:
    """Head attribution (patterns) of ``model`` on the zoo's attribution benchmark (its first samples, at most
    ``ZOO_ATTRIBUTION_SAMPLES``), and a mask sweep ranked by it over ``limit`` samples: (attribution run, mask run)."""
    from attnwh.extract.attribution import AttributeOptions, prepare_attribute, run_attribute

    benchmark, command = ZOO_ATTRIBUTION_BENCHMARK, ["attnwh", "toy", "zoo"]
    samples = min(limit, ZOO_ATTRIBUTION_SAMPLES)
    if on_step is not None:
        on_step(f"{model} on {benchmark}: attribute (random ablation patterns, {samples} samples), then mask by it")
    with _bar(progress_bar, "  attribute", "conditions") as on_progress:
        attribution = run_attribute(warehouse, prepare_attribute(AttributeOptions(model=model, benchmark=benchmark, limit=samples, device=device, command=command)), on_progress)
    options = MaskOptions(model=model, benchmark=benchmark, limit=limit, k=k, seeds=seeds, device=device, ranking_run=attribution.run_id, command=command)
    with _bar(progress_bar, "  mask", "conditions") as on_progress:
        mask, _ = mask_sweep(warehouse, options, on_progress=on_progress, warn=warn)
    if on_step is not None:
        on_step(f"{model} on {benchmark}: attribution run {attribution.run_id}, mask run ranked by it {mask.run_id}")
    return attribution.run_id, mask.run_id


def recompute(warehouse: Path | str | None, options: RecomputeOptions, on_progress: Callable[[int, int], None] | None = None) -> RecomputeResult:
    """``attnwh recompute``: a derived table from a run's raw rows, under a view name that no table,
    staging view or mart of attnwh's queries uses."""
    reserved = frozenset(marts()) | frozenset(STAGING_ORDER)
    return run_recompute(warehouse, replace(options, reserved_names=reserved), on_progress)
