"""``attnwh mask``: a sweep of head-masking conditions over one model and benchmark.

Each condition (the unmasked baseline once, then stage × strategy × k × seed) is one part of a
``mask`` run: its ``mask_conditions`` row and its ``mask_results`` rows are committed together, so a
sweep resumes exactly like an extraction. ``top`` and ``bottom`` take heads in the order of a
``Ranking`` the caller brings (``attnwh.workflows`` asks the ``head_ranking`` query over an extraction
run of the same model, same revision, and benchmark): this stage runs models, it opens no query
session.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from functools import partial
from typing import Any

import pyarrow as pa
import torch

from attnwh.errors import UsageError
from attnwh.extract.batches import Batch, Failed, encode_batches, load_samples, prompt_text
from attnwh.extract.benchmarks.templates import DEFAULT_PROMPT_STYLE
from attnwh.extract.forward import Intervention
from attnwh.extract.generation import forward_with, generate_with_capture, letter_token_ids
from attnwh.extract.masking import STAGES, STRATEGIES, Condition, Head, HeadMask, HeadMeans, build_conditions, parse_k
from attnwh.extract.models import LoadedModel, load_model
from attnwh.extract.part_tables import write_parquet
from attnwh.extract.segments import IMAGE
from attnwh.extract.executors import Scheduler, parse_scheduler
from attnwh.extract.ranks import Rank, detect_rank, wait_seconds, writer_of
from attnwh.extract.scoring import score_answer
from attnwh.extract.setup import RunSetup, prepare_run
from attnwh.warehouse import parts, storage
from attnwh.warehouse.definitions import head_score_names
from attnwh.warehouse.layout import RunPaths, open_warehouse
from attnwh.warehouse.runs import Plan, open_or_create_run
from attnwh.warehouse.schema import MASK_CONDITIONS, MASK_RESULTS

ProgressCallback = Callable[[int, int], None]


@dataclass
class SweepOptions:
    """What every sweep over conditions (``attnwh mask``, ``attnwh prune``) is given."""

    model: str | None = None
    benchmark: str | None = None
    data: Path | str | None = None
    split: str | None = None
    limit: int | None = None
    seeds: int = 3
    score: str = "concentration_x_sum"  # the head score that ranks heads (head_score_names())
    ranking_query: str = "gen1"
    ranking_run: str | None = None  # default: the latest complete extraction run of the same model and benchmark
    batch_size: int = 8
    dtype: str = "auto"
    device: str = "auto"
    prompt_format: str = "chat_template"
    prompt_style: str = DEFAULT_PROMPT_STYLE
    max_new_tokens: int | None = None
    run_id: str | None = None
    rank: int | None = None  # this process's rank (default: from torchrun / accelerate / SLURM, else 0 of 1)
    world_size: int | None = None
    scheduler: str | None = None  # as for extraction: local | local:N | tcp://HOST:PORT | scheduler.json
    threads_per_worker: int = 1
    command: list[str] = field(default_factory=lambda: list(sys.argv))


@dataclass
class MaskOptions(SweepOptions):
    strategies: tuple[str, ...] = ("top", "random")
    stages: tuple[str, ...] = ("all",)
    k: tuple[str, ...] = ("0", "0.05", "0.1", "0.2")
    mode: str = "zero"


@dataclass
class MaskResult:
    run_id: str
    run_path: Path
    conditions_total: int
    conditions_skipped: int
    conditions_written: int


@dataclass(frozen=True)
class Ranking:
    """Every head of the model, best first, by a score over an extraction run (what ``top`` masks first)."""

    run_id: str  # the extraction run the heads were ranked over
    score: str  # a head score name (head_score_names() of the warehouse's definitions)
    query: str  # prompt | gen1
    heads: list[Head]


@dataclass(frozen=True)
class MaskSetup:
    """A sweep's options, checked, and what they resolve to before any weight is read."""

    options: MaskOptions
    run: RunSetup
    rank: Rank
    scheduler: Scheduler

    @property
    def n_heads(self) -> int:
        info = self.run.details["model_info"]
        return info["n_layers"] * info["n_heads"]


def prepare_mask(options: MaskOptions) -> MaskSetup:
    """Options checked; benchmark, samples, model config and prompt resolved (the ranking is the caller's to find)."""
    _check_options(options)
    scheduler = parse_scheduler(options.scheduler)
    rank = detect_rank(options.rank, options.world_size)
    return MaskSetup(options, prepare_run(options, rank.local_rank), rank, scheduler)


def run_mask(warehouse_path: Path | str | None, setup: MaskSetup, ranking: Ranking, on_progress: ProgressCallback | None = None) -> MaskResult:
    """Run (or resume) the sweep of ``setup`` with heads taken in the order of ``ranking``."""
    options, info = setup.options, setup.run.details["model_info"]
    if len(ranking.heads) != setup.n_heads:
        raise UsageError(f"extraction run {ranking.run_id} ranks {len(ranking.heads)} heads; {setup.run.model_label} has {setup.n_heads}")
    ks = parse_k(options.k, setup.n_heads)
    conditions = build_conditions(ranking.heads, info["n_layers"], info["n_heads"], options.strategies, options.stages, ks, options.seeds)
    spec = {
        **setup.run.spec,
        "mode": options.mode,
        "batch_size": 1 if options.mode == "paper" else None,  # paper mode runs unpadded
        "ranking_run": ranking.run_id,
        "ranking_metric": ranking.score,  # the stored name of the ranking's score (kept: it is in every run's fingerprint)
        "ranking_query": ranking.query,
        "conditions": [[c.strategy, c.stage, c.k, c.seed, [list(h) for h in c.heads]] for c in conditions],
    }
    run, committed, pending = open_sweep_run(warehouse_path, setup.run, setup.rank, "mask", spec, conditions, options.run_id)
    result = MaskResult(run.run_id, run.paths.root, len(conditions), committed, 0)
    if not pending:
        return result
    if not setup.scheduler.in_process:
        return _mask_on_dask(setup, run, pending, ranking, result, on_progress)
    loaded = load_model(setup.run.source, dtype=setup.run.dtype, device=setup.run.device)
    sweep = Sweep(loaded, setup.run, _batch_size(options))
    means = sweep.head_means() if options.mode == "mean" else {}

    def part_of(condition: Condition) -> _ConditionPart:
        mask = HeadMask(condition.heads, options.mode, {head: means[head] for head in condition.heads} if means else {})
        return _ConditionPart(run.run_id, condition, options.mode, ranking.run_id, ranking.score, sweep.evaluate([mask] if condition.heads else []))

    result.conditions_written += commit_conditions(run, pending, part_of, writer_of(setup.rank), on_progress)
    return result


def open_sweep_run(warehouse_path: Path | str | None, setup: RunSetup, rank: Rank, kind: str, spec: dict[str, Any], conditions: list, run_id: str | None):
    """Create or resume a sweep's run (one part per condition: the plan's "samples" are the conditions),
    recover it, and return it with the count of committed conditions and those this process still runs."""
    warehouse = open_warehouse(warehouse_path, create=True)
    plan = Plan([f"condition-{c.condition_id}" for c in conditions], 1)
    run, _ = open_or_create_run(
        warehouse, kind=kind, model=setup.model_label, benchmark=setup.benchmark.name, spec=spec, plan=plan,
        run_id=run_id, details=setup.details, create=rank.creates_runs, wait_seconds=wait_seconds(),
    )
    parts.recover(run.paths)
    committed = parts.committed_part_ids(run.paths)
    return run, len(committed), [c for c in conditions if c.condition_id not in committed and rank.takes(c.condition_id)]


def commit_conditions(run, conditions: list, part_of: Callable, writer: dict[str, Any], on_progress: ProgressCallback | None) -> int:
    """The in-process loop of a sweep: each condition evaluated (``part_of``) and committed as it finishes; returns how many this process committed."""
    written = 0
    if on_progress:
        on_progress(0, len(conditions))
    for done, condition in enumerate(conditions, start=1):
        written += parts.commit_part(run.paths, condition.condition_id, part_of(condition).write, writer) is not None
        if on_progress:
            on_progress(done, len(conditions))
    return written


def _batch_size(options: MaskOptions) -> int:
    return 1 if options.mode == "paper" else options.batch_size


def _mask_on_dask(setup: MaskSetup, run, pending: list[Condition], ranking: Ranking, result: MaskResult, on_progress: ProgressCallback | None) -> MaskResult:
    """One Dask task per pending condition (heads ranked once, on the client); workers commit their conditions."""
    from attnwh.extract.executors import sweep_on_dask

    result.conditions_written += sweep_on_dask(
        setup.scheduler, setup.options.threads_per_worker, run, pending, mask_condition_task,
        lambda condition: (setup.options, str(run.paths.root), run.run_id, condition, ranking.run_id, ranking.score), on_progress,
    )
    return result


def mask_condition_task(options: MaskOptions, run_root: str, run_id: str, condition: Condition, ranking_run: str, ranking_score: str) -> int:
    """On a Dask worker: evaluate one condition and commit it (1 if this task committed it)."""
    from attnwh.extract.executors import worker_address, worker_cache

    cache = worker_cache()
    setup = cache.run_setup(run_id, lambda: prepare_run(options))
    loaded = cache.model(setup)
    sweep = cache.run_setup(f"{run_id}/sweep", lambda: Sweep(loaded, setup, _batch_size(options)))
    means = cache.run_setup(f"{run_id}/means", sweep.head_means) if options.mode == "mean" else {}
    mask = HeadMask(condition.heads, options.mode, {head: means[head] for head in condition.heads} if means else {})
    rows = sweep.evaluate([mask] if condition.heads else [])
    part = _ConditionPart(run_id, condition, options.mode, ranking_run, ranking_score, rows)
    return int(parts.commit_part(RunPaths(storage.location(run_root)), condition.condition_id, part.write, {"worker": worker_address()}) is not None)


def check_sweep_options(options: SweepOptions, choices: tuple[tuple[tuple[str, ...], tuple[str, ...], str], ...]) -> None:
    """Counts at least 1, each list of ``choices`` (values, allowed, option name) non-empty and known, a known score and query."""
    for name in ("batch_size", "limit", "max_new_tokens", "seeds", "threads_per_worker"):
        value = getattr(options, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    for values, allowed, option in choices:
        unknown = [value for value in values if value not in allowed]
        if unknown or not values:
            raise UsageError(f"--{option} takes {', '.join(allowed)}; got {', '.join(values) or 'nothing'}")
    scores = head_score_names()
    if options.score not in scores:
        raise UsageError(f"--score takes {', '.join(scores)}; got {options.score!r}")
    if options.ranking_query not in ("prompt", "gen1"):
        raise UsageError(f"--ranking-query takes prompt or gen1; got {options.ranking_query!r}")


def _check_options(options: MaskOptions) -> None:
    check_sweep_options(options, ((options.strategies, STRATEGIES, "strategy"), (options.stages, STAGES, "stage")))
    HeadMask((), options.mode)  # checks the mode


class Sweep:
    """The sweep's samples, encoded once per batch (the same batch path as extraction, so a sample the
    loader, the image decoder or the processor rejects is the same error row); evaluated under one
    mask at a time."""

    def __init__(self, loaded: LoadedModel, setup: RunSetup, batch_size: int):
        self.loaded, self.max_new_tokens = loaded, setup.max_new_tokens
        ready, failed = load_samples(setup.samples, list(range(len(setup.samples))))
        prompt_of = partial(prompt_text, loaded, setup.prompt_format, setup.template)
        self.batches: list[Batch] = []
        for batch in encode_batches(loaded, ready, prompt_of, batch_size):
            if isinstance(batch, Failed):
                failed.append(batch)
            else:
                self.batches.append(batch)
        self.errors = [
            {"sample_idx": f.sample_idx, "sample_key": f.sample.key, "status": "error", "error": f.error[:1000], "gold": f.sample.gold} for f in failed
        ]
        self.letter_ids = letter_token_ids(loaded.processor.tokenizer)

    def head_means(self) -> dict[tuple[int, int], torch.Tensor]:
        """Each head's mean output over the real prefill positions of all samples (mode ``mean``)."""
        totals, count = None, 0
        for batch in self.batches:
            recording = HeadMeans()
            forward_with(self.loaded, batch.encoded, [recording])
            recorders = recording.recorders
            sums = torch.stack([recorder.total for recorder in recorders])  # [layer, head, head_dim]
            totals = sums if totals is None else totals + sums
            count += recorders[0].count
        means = (totals / count).cpu()
        return {(layer, head): means[layer, head] for layer in range(means.shape[0]) for head in range(means.shape[1])}

    def evaluate(self, interventions: Sequence[Intervention] = ()) -> list[dict[str, Any]]:
        """Every sample's answer under ``interventions`` (a head mask, a KV pruning, ...; none: the
        baseline); each row also counts the prompt's keys and image keys (padding excluded).
        Safe to call from several threads at once: the interventions are bound per call."""
        tokenizer = self.loaded.processor.tokenizer
        rows = [dict(row) for row in self.errors]
        for batch in self.batches:
            generation, _, segments = generate_with_capture(self.loaded, batch.encoded, None, self.max_new_tokens, interventions=interventions)
            log_probs = torch.log_softmax(generation.first_logits, dim=-1)
            n_prompt = batch.encoded["attention_mask"].sum(dim=1).tolist()
            n_image = (segments == IMAGE).sum(dim=1).tolist()
            for position, (item, answer) in enumerate(zip(batch.items, generation.answers)):
                score = score_answer(tokenizer, item.sample, answer, log_probs[position], self.letter_ids)
                rows.append({
                    "sample_idx": item.sample_idx, "sample_key": item.sample.key, "status": "ok", "gold": item.sample.gold, **score,
                    "n_prompt_keys": int(n_prompt[position]), "n_image_keys": int(n_image[position]),
                })
        return sorted(rows, key=lambda row: row["sample_idx"])


@dataclass
class _ConditionPart:
    run_id: str
    condition: Condition
    mode: str
    ranking_run: str
    ranking_score: str
    rows: list[dict[str, Any]]

    def write(self, folder: Path) -> dict[str, int]:
        c = self.condition
        conditions = pa.Table.from_pylist(
            [
                {
                    "run_id": self.run_id,
                    "condition_id": c.condition_id,
                    "strategy": c.strategy,
                    "stage": c.stage,
                    "k": c.k,
                    "fraction": c.fraction,
                    "seed": c.seed,
                    "mode": self.mode,
                    "ranking_run_id": self.ranking_run,
                    "ranking_metric": self.ranking_score,  # stored under its first name (older parts have it)
                    "heads": [{"layer": layer, "head": head} for layer, head in c.heads],
                }
            ],
            schema=MASK_CONDITIONS,
        )
        results = pa.Table.from_pylist(
            [{"run_id": self.run_id, "condition_id": c.condition_id, "mode": self.mode, **row} for row in self.rows], schema=MASK_RESULTS
        )
        for table, name in ((conditions, "mask_conditions"), (results, "mask_results")):
            write_parquet(table, name, folder)
        return {"mask_conditions": 1, "mask_results": results.num_rows}
