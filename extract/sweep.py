"""A sweep: a baseline and a grid of conditions over one model and benchmark, each condition one part of a
run, each compared with the baseline on the same samples.

What differs between sweeps is only the intervention and its grid: ``attnwh mask`` switches heads off
(``extract.mask_run``), ``attnwh prune`` evicts image keys from heads' caches (``extract.prune_run``). Each
is a ``SweepKind``: it names the intervention, builds the grid of ``SweepCondition`` (condition 0: the
baseline, no intervention) and turns a condition into ``Intervention`` objects. Everything else is here,
once: the samples encoded once per batch (``SweepSamples``), the run (one part per condition: resumes,
ranks and Dask workers as for extraction), the evaluation of a condition, and the part it commits, in the
sweep tables every kind shares (``sweep_conditions``, ``sweep_results``). A condition's own settings are
stored as the intervention's JSON; the staging views of ``queries`` type them per kind, and one mart
(``sweep_accuracy``) compares every condition with its baseline.

Conditions evaluate independently and hold their per-call state in the call (``extract.forward``), so a
worker may evaluate several at once on one model.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import torch

from attnwh.core.errors import UsageError
from attnwh.extract.batches import Batch, Failed, encode_batches, load_samples, prompt_text
from attnwh.extract.benchmarks.templates import DEFAULT_PROMPT_STYLE
from attnwh.extract.executors import Scheduler, parse_scheduler
from attnwh.extract.forward import Intervention
from attnwh.extract.generation import forward_with, generate_with_capture, letter_token_ids
from attnwh.extract.masking import Head
from attnwh.extract.models import LoadedModel, load_model
from attnwh.extract.part_tables import write_parquet
from attnwh.extract.pruning import kv_bytes
from attnwh.extract.ranks import Rank, detect_rank, wait_seconds, writer_of
from attnwh.extract.scoring import score_answer
from attnwh.extract.segments import IMAGE
from attnwh.extract.setup import RunSetup, prepare_run
from attnwh.warehouse import parts, storage
from attnwh.warehouse.definitions import head_score_names
from attnwh.warehouse.layout import RunPaths, open_warehouse
from attnwh.warehouse.runs import Plan, open_or_create_run
from attnwh.warehouse.schema import SWEEP_CONDITIONS, SWEEP_RESULTS

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


@dataclass(frozen=True)
class HeadRanking:
    """A score per query head of the model, best first, over a run (an extraction or an imported ranking):
    what ``top`` masks first and what ``score`` budgets follow."""

    run_id: str
    score: str  # a head score name (head_score_names() of the warehouse's definitions), or 'imported'
    query: str  # prompt | gen1
    scores: dict[Head, float]  # every head, best first

    @property
    def heads(self) -> list[Head]:
        return list(self.scores)


@dataclass(frozen=True)
class SweepCondition:
    """One condition of a sweep: the intervention's settings (stored as JSON), the heads it acts on, and
    whether a head ranking chose it (its run and score are then recorded with it)."""

    condition_id: int
    settings: dict[str, Any]
    heads: tuple[Head, ...] = ()
    ranked: bool = True

    @property
    def baseline(self) -> bool:
        return self.condition_id == 0


class SweepKind(Protocol):
    """What makes a sweep a masking or a pruning sweep (picklable: Dask workers receive it)."""

    kind: str  # stored with every condition ('mask', 'prune', ...)

    def batch_size(self, options: SweepOptions) -> int: ...

    def prepare(self, samples: "SweepSamples") -> Any:
        """What every condition of the run needs from the samples, computed once per model (e.g. head means)."""
        ...

    def interventions(self, condition: SweepCondition, prepared: Any) -> list[Intervention]: ...


@dataclass(frozen=True)
class SweepSetup:
    """A sweep's options, checked, and what they resolve to before any weight is read."""

    options: SweepOptions
    run: RunSetup
    rank: Rank
    scheduler: Scheduler

    @property
    def info(self) -> dict[str, Any]:
        return self.run.details["model_info"]

    @property
    def n_heads(self) -> int:
        return self.info["n_layers"] * self.info["n_heads"]


def prepare_sweep(options: SweepOptions) -> SweepSetup:
    """Benchmark, samples, model config and prompt resolved for a sweep whose options were checked
    (the ranking is the caller's to find)."""
    scheduler = parse_scheduler(options.scheduler)
    rank = detect_rank(options.rank, options.world_size)
    return SweepSetup(options, prepare_run(options, rank.local_rank), rank, scheduler)


@dataclass
class SweepResult:
    run_id: str
    run_path: Path
    conditions_total: int
    conditions_skipped: int
    conditions_written: int


class SweepSamples:
    """The sweep's samples, encoded once per batch (the same batch path as extraction, so a sample the
    loader, the image decoder or the processor rejects is the same error row); evaluated under one
    condition's interventions per call."""

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
        self.errors = [{"sample_idx": f.sample_idx, "sample_key": f.sample.key, "status": "error", "error": f.error[:1000], "gold": f.sample.gold} for f in failed]
        self.letter_ids = letter_token_ids(loaded.processor.tokenizer)

    def forward_each(self, interventions: Callable[[], Sequence[Intervention]]) -> list[Sequence[Intervention]]:
        """One plain forward pass per batch with fresh ``interventions()`` (recorders); returns them, per batch."""
        used = []
        for batch in self.batches:
            batch_interventions = interventions()
            forward_with(self.loaded, batch.encoded, batch_interventions)
            used.append(batch_interventions)
        return used

    def evaluate(self, interventions: Sequence[Intervention] = ()) -> list[dict[str, Any]]:
        """Every sample's answer under ``interventions`` (none: the baseline), with the prompt's keys, its
        image keys (padding excluded) and the KV cache the interventions leave (``kept_image_keys``).
        Safe to call from several threads at once: the interventions are bound per call."""
        tokenizer, info = self.loaded.processor.tokenizer, self.loaded.info
        n_layers, n_kv = info["n_layers"], info["n_kv_heads"]
        rows = [dict(row) for row in self.errors]
        for batch in self.batches:
            generation, _, segments = generate_with_capture(self.loaded, batch.encoded, None, self.max_new_tokens, interventions=interventions)
            log_probs = torch.log_softmax(generation.first_logits, dim=-1)
            n_prompt = batch.encoded["attention_mask"].sum(dim=1).tolist()
            n_image = (segments == IMAGE).sum(dim=1).tolist()
            for position, (item, answer) in enumerate(zip(batch.items, generation.answers)):
                score = score_answer(tokenizer, item.sample, answer, log_probs[position], self.letter_ids)
                prompt_keys, image_keys = int(n_prompt[position]), int(n_image[position])
                kept_image = image_keys * n_layers * n_kv
                for intervention in interventions:
                    kept = getattr(intervention, "kept_image_keys", None)
                    kept_image = min(kept_image, kept(image_keys)) if kept is not None else kept_image
                kv_keys, kv_keys_full = (prompt_keys - image_keys) * n_layers * n_kv + kept_image, prompt_keys * n_layers * n_kv
                rows.append(
                    {
                        "sample_idx": item.sample_idx,
                        "sample_key": item.sample.key,
                        "status": "ok",
                        "gold": item.sample.gold,
                        **score,
                        "n_prompt_keys": prompt_keys,
                        "n_image_keys": image_keys,
                        "kv_keys": kv_keys,
                        "kv_keys_full": kv_keys_full,
                        "kv_bytes": kv_bytes(kv_keys, info["head_dim"], self.loaded.dtype.itemsize),
                        "kv_bytes_full": kv_bytes(kv_keys_full, info["head_dim"], self.loaded.dtype.itemsize),
                    }
                )
        return sorted(rows, key=lambda row: row["sample_idx"])


@dataclass
class SweepPart:
    """One condition's part: its ``sweep_conditions`` row and its ``sweep_results`` rows, committed together."""

    run_id: str
    kind: str
    condition: SweepCondition
    ranking: HeadRanking | None
    rows: list[dict[str, Any]]

    def write(self, folder: Path) -> dict[str, int]:
        c, ranked = self.condition, self.ranking is not None and self.condition.ranked
        conditions = pa.Table.from_pylist(
            [
                {
                    "run_id": self.run_id,
                    "condition_id": c.condition_id,
                    "kind": self.kind,
                    "ranking_run_id": self.ranking.run_id if ranked else None,
                    "ranking_score": self.ranking.score if ranked else None,
                    "heads": [{"layer": layer, "head": head} for layer, head in c.heads],
                    "settings": json.dumps(c.settings, sort_keys=True),
                }
            ],
            schema=SWEEP_CONDITIONS,
        )
        results = pa.Table.from_pylist([{"run_id": self.run_id, "condition_id": c.condition_id, **row} for row in self.rows], schema=SWEEP_RESULTS)
        write_parquet(conditions, "sweep_conditions", folder)
        write_parquet(results, "sweep_results", folder)
        return {"sweep_conditions": 1, "sweep_results": results.num_rows}


def evaluate_condition(run_id: str, kind: SweepKind, condition: SweepCondition, ranking: HeadRanking | None, samples: SweepSamples, prepared: Any) -> SweepPart:
    rows = samples.evaluate([] if condition.baseline else kind.interventions(condition, prepared))
    return SweepPart(run_id, kind.kind, condition, ranking, rows)


def run_sweep(
    warehouse_path: Path | str | None,
    sweep: SweepSetup,
    kind: SweepKind,
    spec: dict[str, Any],
    conditions: list[SweepCondition],
    ranking: HeadRanking | None,
    on_progress: ProgressCallback | None = None,
) -> SweepResult:
    """Create or resume the sweep's run (``spec``: what fingerprints it beyond the run set-up) and evaluate
    and commit the conditions this process takes: in this process, or one Dask task per condition."""
    setup, rank, scheduler, options = sweep.run, sweep.rank, sweep.scheduler, sweep.options
    run, committed, pending = open_sweep_run(warehouse_path, setup, rank, kind.kind, spec, conditions, options.run_id)
    result = SweepResult(run.run_id, run.paths.root, len(conditions), committed, 0)
    if not pending:
        return result
    if not scheduler.in_process:
        from attnwh.extract.executors import samples_digest, sweep_on_dask

        digest = samples_digest(setup.samples)  # a sweep's plan lists conditions: workers check their samples against this
        result.conditions_written += sweep_on_dask(
            scheduler,
            options.threads_per_worker,
            run,
            pending,
            sweep_condition_task,
            lambda condition: (options, kind, str(run.paths.root), run.run_id, condition, ranking, digest),
            on_progress,
        )
        return result
    loaded = load_model(setup.source, dtype=setup.dtype, device=setup.device)
    samples = SweepSamples(loaded, setup, kind.batch_size(options))
    prepared = kind.prepare(samples)
    writer = writer_of(rank)
    if on_progress:
        on_progress(0, len(pending))
    for done, condition in enumerate(pending, start=1):
        part = evaluate_condition(run.run_id, kind, condition, ranking, samples, prepared)
        result.conditions_written += parts.commit_part(run.paths, condition.condition_id, part.write, writer) is not None
        if on_progress:
            on_progress(done, len(pending))
    return result


def open_sweep_run(warehouse_path: Path | str | None, setup: RunSetup, rank: Rank, kind: str, spec: dict[str, Any], conditions: list, run_id: str | None):
    """Create or resume a sweep's run (one part per condition: the plan's "samples" are the conditions),
    recover it, and return it with the count of committed conditions and those this process still runs."""
    warehouse = open_warehouse(warehouse_path, create=True)
    plan = Plan([f"condition-{c.condition_id}" for c in conditions], 1)
    run, _ = open_or_create_run(
        warehouse,
        kind=kind,
        model=setup.model_label,
        benchmark=setup.benchmark.name,
        spec=spec,
        plan=plan,
        run_id=run_id,
        details=setup.details,
        create=rank.creates_runs,
        wait_seconds=wait_seconds(),
    )
    parts.recover(run.paths)
    committed = parts.committed_part_ids(run.paths)
    return run, len(committed), [c for c in conditions if c.condition_id not in committed and rank.takes(c.condition_id)]


def sweep_condition_task(options: SweepOptions, kind: SweepKind, run_root: str, run_id: str, condition: SweepCondition, ranking: HeadRanking | None, samples_digest: str) -> int:
    """On a Dask worker: evaluate one condition and commit it (1 if this task committed it). The samples and
    what the kind prepares from them are built once per worker and run, and shared by its threads; before
    the first, the worker's settings and samples are checked against the run's (``samples_digest``: the client's)."""
    from attnwh.extract.executors import worker_address, worker_cache, worker_run_setup

    cache = worker_cache()
    setup = worker_run_setup(cache, run_root, run_id, lambda: prepare_run(options), samples=samples_digest)
    loaded = cache.model(setup)
    samples = cache.run_setup(f"{run_id}/samples", lambda: SweepSamples(loaded, setup, kind.batch_size(options)))
    prepared = cache.run_setup(f"{run_id}/prepared", lambda: kind.prepare(samples))
    part = evaluate_condition(run_id, kind, condition, ranking, samples, prepared)
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
        raise UsageError(f"the ranking's query takes prompt or gen1; got {options.ranking_query!r}")
