"""``attnwh prune``: a sweep of head-wise image-KV pruning conditions over one model and benchmark.

Each condition (``full`` once: every key kept, the reference; then allocation × kept share × keep
rule, × seed for ``random``) is one part of a ``prune`` run: its ``prune_conditions`` row and its
``prune_results`` rows are committed together, so a sweep resumes, and spreads over ranks and Dask
workers, exactly like a masking sweep. ``score`` budgets come from the head scores of a ranking the
caller brings (``attnwh.workflows`` asks them of an extraction run or an imported ranking).

A kept share of 1 keeps every key whatever the allocation: it is the ``full`` condition, not repeated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from attnwh.errors import UsageError
from attnwh.extract.executors import Scheduler, parse_scheduler
from attnwh.extract.mask_run import Sweep, SweepOptions, check_sweep_options, commit_conditions, open_sweep_run
from attnwh.extract.models import load_model
from attnwh.extract.part_tables import write_parquet
from attnwh.extract.pruning import ALLOCATIONS, KEEP, KVPrune, allocate, kv_bytes
from attnwh.extract.ranks import Rank, detect_rank, writer_of
from attnwh.extract.setup import RunSetup, prepare_run
from attnwh.warehouse import parts, storage
from attnwh.warehouse.layout import RunPaths
from attnwh.warehouse.schema import PRUNE_CONDITIONS, PRUNE_RESULTS

ProgressCallback = Callable[[int, int], None]
DEFAULT_SHARES = ("1", "0.5", "0.25", "0.1", "0.05")


@dataclass
class PruneOptions(SweepOptions):
    kv_shares: tuple[str, ...] = DEFAULT_SHARES
    allocations: tuple[str, ...] = ("score", "uniform", "random")
    keep: tuple[str, ...] = ("attention",)
    floor: float = 0.1


@dataclass
class PruneResult:
    run_id: str
    run_path: Path
    conditions_total: int
    conditions_skipped: int
    conditions_written: int


@dataclass(frozen=True)
class HeadScores:
    """A score per query head of the model (what ``score`` budgets follow), and where it came from."""

    run_id: str
    score: str
    scores: dict[tuple[int, int], float]


@dataclass(frozen=True)
class PruneCondition:
    condition_id: int
    allocation: str
    kv_share: float
    keep: str
    floor: float | None
    seed: int | None
    kept: np.ndarray  # [layer, kv_head] shares kept


@dataclass(frozen=True)
class PruneSetup:
    options: PruneOptions
    run: RunSetup
    rank: Rank
    scheduler: Scheduler

    @property
    def info(self) -> dict[str, Any]:
        return self.run.details["model_info"]


def parse_shares(values: tuple[str, ...]) -> list[float]:
    """Kept shares of image KV (``0.25`` or ``25%``), each in (0, 1]; sorted, largest first."""
    shares = []
    for value in values:
        text = str(value).strip()
        try:
            share = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError as exc:
            raise UsageError(f"--kv-share takes shares of the image KV cache kept (1, 0.5, 25%); got {text!r}") from exc
        if not 0.0 < share <= 1.0:
            raise UsageError(f"--kv-share {text} is outside (0, 1]")
        shares.append(share)
    if not shares:
        raise UsageError("--kv-share needs at least one share")
    return sorted(set(shares), reverse=True)


def kv_head_scores(scores: dict[tuple[int, int], float], n_layers: int, n_heads: int, n_kv_heads: int) -> np.ndarray:
    """[layer, kv_head]: the sum of the scores of each KV head's query heads (GQA; as SparseMM sums them)."""
    table = np.zeros((n_layers, n_kv_heads))
    group = n_heads // n_kv_heads
    for (layer, head), value in scores.items():
        if 0 <= layer < n_layers and 0 <= head < n_heads and value is not None and np.isfinite(value):
            table[layer, head // group] += value
    return table


def build_prune_conditions(
    shares: list[float], allocations: tuple[str, ...], keeps: tuple[str, ...], seeds: int, floor: float, kv_scores: np.ndarray
) -> list[PruneCondition]:
    """``full`` (condition 0), then keep × share × allocation (× seed for random), shares below 1 only."""
    conditions = [PruneCondition(0, "full", 1.0, keeps[0], None, None, np.ones(kv_scores.shape))]
    for keep in keeps:
        for share in shares:
            if share >= 1.0:
                continue
            for allocation in allocations:
                if allocation == "full":
                    continue
                for seed in range(seeds) if allocation == "random" else [None]:
                    kept = allocate(allocation, share, kv_scores, floor, seed or 0)
                    conditions.append(PruneCondition(len(conditions), allocation, share, keep, floor if allocation in ("score", "random") else None, seed, kept))
    return conditions


def prepare_prune(options: PruneOptions) -> PruneSetup:
    _check_options(options)
    scheduler = parse_scheduler(options.scheduler)
    rank = detect_rank(options.rank, options.world_size)
    return PruneSetup(options, prepare_run(options, rank.local_rank), rank, scheduler)


def run_prune(warehouse_path: Path | str | None, setup: PruneSetup, ranking: HeadScores, on_progress: ProgressCallback | None = None) -> PruneResult:
    """Run (or resume) the pruning sweep of ``setup``; ``score`` budgets follow ``ranking``."""
    options, info = setup.options, setup.info
    kv_scores = kv_head_scores(ranking.scores, info["n_layers"], info["n_heads"], info["n_kv_heads"])
    conditions = build_prune_conditions(parse_shares(options.kv_shares), options.allocations, options.keep, options.seeds, options.floor, kv_scores)
    spec = {
        **setup.run.spec,
        "ranking_run": ranking.run_id,
        "ranking_score": ranking.score,
        "ranking_query": options.ranking_query,
        "conditions": [[c.allocation, c.kv_share, c.keep, c.floor, c.seed, np.round(c.kept, 9).ravel().tolist()] for c in conditions],
    }
    run, committed, pending = open_sweep_run(warehouse_path, setup.run, setup.rank, "prune", spec, conditions, options.run_id)
    result = PruneResult(run.run_id, run.paths.root, len(conditions), committed, 0)
    if not pending:
        return result
    if not setup.scheduler.in_process:
        return _prune_on_dask(setup, run, pending, ranking, result, on_progress)
    loaded = load_model(setup.run.source, dtype=setup.run.dtype, device=setup.run.device)
    sweep = Sweep(loaded, setup.run, options.batch_size)
    part_of = partial(_condition_part, run.run_id, ranking=ranking, sweep=sweep, info=info, bytes_per_value=loaded.dtype.itemsize)
    result.conditions_written += commit_conditions(run, pending, part_of, writer_of(setup.rank), on_progress)
    return result


def _condition_part(run_id: str, condition: PruneCondition, ranking: HeadScores, sweep: Sweep, info: dict[str, Any], bytes_per_value: int) -> "_ConditionPart":
    prune = None if condition.allocation == "full" else KVPrune(condition.kept, condition.keep)
    rows = sweep.evaluate([prune] if prune is not None else [])
    n_layers, n_kv = info["n_layers"], info["n_kv_heads"]
    for row in rows:
        if row["status"] != "ok":
            continue
        n_prompt, n_image = row["n_prompt_keys"], row["n_image_keys"]
        kept_image = int(prune.counts(n_image).sum()) if prune is not None else n_image * n_layers * n_kv
        row["kv_keys"] = (n_prompt - n_image) * n_layers * n_kv + kept_image
        row["kv_keys_full"] = n_prompt * n_layers * n_kv
        row["kv_bytes"] = kv_bytes(row["kv_keys"], info["head_dim"], bytes_per_value)
        row["kv_bytes_full"] = kv_bytes(row["kv_keys_full"], info["head_dim"], bytes_per_value)
    return _ConditionPart(run_id, condition, ranking, rows)


def _prune_on_dask(setup: PruneSetup, run, pending: list[PruneCondition], ranking: HeadScores, result: PruneResult, on_progress) -> PruneResult:
    """One Dask task per pending condition; workers commit their conditions."""
    from attnwh.extract.executors import sweep_on_dask

    result.conditions_written += sweep_on_dask(
        setup.scheduler, setup.options.threads_per_worker, run, pending, prune_condition_task,
        lambda condition: (setup.options, str(run.paths.root), run.run_id, condition, ranking), on_progress,
    )
    return result


def prune_condition_task(options: PruneOptions, run_root: str, run_id: str, condition: PruneCondition, ranking: HeadScores) -> int:
    """On a Dask worker: evaluate one pruning condition and commit it (1 if this task committed it)."""
    from attnwh.extract.executors import worker_address, worker_cache

    cache = worker_cache()
    setup = cache.run_setup(run_id, lambda: prepare_run(options))
    loaded = cache.model(setup)
    sweep = cache.run_setup(f"{run_id}/sweep", lambda: Sweep(loaded, setup, options.batch_size))
    part = _condition_part(run_id, condition, ranking, sweep, setup.details["model_info"], loaded.dtype.itemsize)
    return int(parts.commit_part(RunPaths(storage.location(run_root)), condition.condition_id, part.write, {"worker": worker_address()}) is not None)


def _check_options(options: PruneOptions) -> None:
    check_sweep_options(options, ((options.allocations, ALLOCATIONS, "allocation"), (options.keep, KEEP, "keep")))
    if not 0.0 <= options.floor <= 1.0:
        raise UsageError(f"--floor must lie in [0, 1], got {options.floor}")
    parse_shares(options.kv_shares)


@dataclass
class _ConditionPart:
    run_id: str
    condition: PruneCondition
    ranking: HeadScores
    rows: list[dict[str, Any]]

    def write(self, folder: Path) -> dict[str, int]:
        c = self.condition
        conditions = pa.Table.from_pylist(
            [
                {
                    "run_id": self.run_id,
                    "condition_id": c.condition_id,
                    "allocation": c.allocation,
                    "kv_share": c.kv_share,
                    "keep": c.keep,
                    "floor": c.floor,
                    "seed": c.seed,
                    "ranking_run_id": self.ranking.run_id if c.allocation == "score" else None,
                    "ranking_score": self.ranking.score if c.allocation == "score" else None,
                    "kept_shares": c.kept.ravel().tolist(),
                }
            ],
            schema=PRUNE_CONDITIONS,
        )
        results = pa.Table.from_pylist([{"run_id": self.run_id, "condition_id": c.condition_id, **row} for row in self.rows], schema=PRUNE_RESULTS)
        for table, name in ((conditions, "prune_conditions"), (results, "prune_results")):
            write_parquet(table, name, folder)
        return {"prune_conditions": 1, "prune_results": results.num_rows}
