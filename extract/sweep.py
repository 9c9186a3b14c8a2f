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
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import torch

from attnwh.core.errors import UsageError, first_line
from attnwh.extract.batch_journal import BatchJournal, GroupJournal, tidy
from attnwh.extract.batches import Batch, Failed, Ready, encode_batches, load_samples, prompt_text
from attnwh.extract.benchmarks.parsers import PARSERS
from attnwh.extract.benchmarks.templates import DEFAULT_PROMPT_STYLE
from attnwh.extract.executors import Scheduler, parse_scheduler, worker_memory_limit
from attnwh.extract.forward import Intervention, forward_call
from attnwh.extract.generation import Generation, StopRows, batch_view, forward_with, generate, letter_token_ids
from attnwh.extract.masking import Head
from attnwh.extract.models import LoadedModel, load_model
from attnwh.extract.part_tables import write_parquet
from attnwh.extract.pruning import kv_bytes
from attnwh.extract.ranks import Rank, detect_rank, processes_on_this_machine, wait_seconds, writer_of
from attnwh.extract.reuse import (
    PrefixRecording,
    PrefixReplay,
    ReuseError,
    StackSize,
    compare_inputs,
    encode_media,
    first_layer,
    has_final_rows,
    out_of_memory,
    plan_stacks,
    replays_interventions,
    same_conditions,
    stack_interventions,
    text_model_inputs,
    tile,
)
from attnwh.extract.scoring import answer_target, option_ids, score_answer
from attnwh.extract.segments import IMAGE
from attnwh.extract.setup import RunSetup, check_max_new_tokens, check_parsers_unchanged, prepare_run
from attnwh.warehouse import parts, storage
from attnwh.warehouse.definitions import head_score_names
from attnwh.warehouse.layout import RunPaths, open_warehouse
from attnwh.warehouse.runs import Plan, open_or_create_run
from attnwh.warehouse.schema import SWEEP_CONDITIONS, SWEEP_RESULTS, SWEEP_TARGETS

ProgressCallback = Callable[[float, int], None]  # (conditions done, a fraction while a group runs; conditions in all)


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
    reuse: bool = True  # share the conditions' common work (extract.reuse); False: each condition on its own, as before
    stack: int | None = None  # with reuse: conditions of one batch per forward pass (rows: stack × batch size); None: auto (extract.reuse.StackSize)
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
    reuse_off: str | None = None  # why this process evaluated its conditions one by one after all
    left_out: tuple[str, ...] = ()  # conditions of the grid asked for that the sweep leaves out, one line each
    stack_lowered: str | None = None  # a stack ran out of memory and later stacks were smaller (extract.reuse.StackSize)


MAX_SEEDS = 1000  # random draws per stage and k (and pruning seeds): 1,000 conditions each already

HOST_SHARE = 0.25  # of the memory this process may use that a sweep's encoded batches may hold


def host_budget() -> int:
    """Bytes of encoded batches a sweep holds on the host: ``HOST_SHARE`` of the memory this process may use; past it,
    batches are encoded again each time they are evaluated. That memory is the machine's, or its cgroup's limit
    where lower (a SLURM job's, a container's), shared by the sweep's processes on the machine (torchrun's
    ``LOCAL_WORLD_SIZE``, SLURM's tasks per node); on a Dask worker, the worker's memory limit."""
    memory = _machine_memory()
    worker_limit = worker_memory_limit()
    if worker_limit:
        return int(min(memory, worker_limit) * HOST_SHARE)
    return int(memory / processes_on_this_machine(os.environ) * HOST_SHARE)


def _machine_memory() -> int:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system: a modest default
        total = 16 << 30
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


Settle = Callable[[int, Generation], None]  # a condition's generation on a batch, handed on as soon as it is final


@dataclass
class HeldBatch:
    """A batch as a sweep holds it: its samples, and its encoding on the host (None past the host budget: encoded again when visited)."""

    samples: tuple[tuple[int, str], ...]  # (sample_idx, sample_key) of each row
    batch: Batch | None


class SweepSamples:
    """The sweep's samples, encoded once per batch (the same batch path as extraction, so a sample the
    loader, the image decoder or the processor rejects is the same error row); evaluated under one
    condition's interventions per call (``evaluate``: the plain path), or under a group of conditions that
    share the work they have in common (``evaluate_group``: extract.reuse)."""

    def __init__(self, loaded: LoadedModel, setup: RunSetup, batch_size: int, stack: int | None = 1, stop_when_decided: bool = False, targets: bool = False):
        self._start(loaded, setup.max_new_tokens, stack, stop_when_decided, targets)
        self._samples, self._prompt_of = setup.samples, partial(prompt_text, loaded, setup.prompt_format, setup.template)
        # each batch encoded on the host (the device holds only the batch at hand: ``each_batch``), up to
        # ``host_budget()`` bytes; a batch past it is held as its samples' indices and encoded again when visited
        self._held: list[HeldBatch] = []
        failed, held_bytes, budget = [], 0, host_budget()
        for batch in self._encoded(range(len(setup.samples)), batch_size):
            if isinstance(batch, Failed):
                failed.append(batch)
                continue
            size = sum(tensor.numel() * tensor.element_size() for tensor in batch.encoded.values())
            held_bytes += size
            samples = tuple((item.sample_idx, item.sample.key) for item in batch.items)
            self._held.append(HeldBatch(samples, batch if held_bytes <= budget else None))
        self.errors = [{"sample_idx": f.sample_idx, "sample_key": f.sample.key, "status": "error", "error": f.error[:1000], "gold": f.sample.gold} for f in failed]
        self.letter_ids = letter_token_ids(loaded.processor.tokenizer)

    def _start(self, loaded: LoadedModel, max_new_tokens: int, stack: int | None, stop_when_decided: bool, targets: bool) -> None:
        self.loaded, self.max_new_tokens = loaded, max_new_tokens
        self.stack = StackSize(stack, loaded.device)  # conditions per pass with reuse (None: auto)
        self.targets = targets  # each row also carries the gold option's log-probability and margin (sweep_targets)
        self.stop_when_decided = stop_when_decided
        self.reuse_checked = False  # the first group evaluated compares reuse with the plain path
        self._check_lock = threading.Lock()  # held by the thread that checks; the others wait for its verdict
        self.reuse_off: str | None = None  # why reuse was turned off for this model, after a failed comparison
        # a prefill's last decoder layer computes the final position alone (reuse.FinalRows), checked against the whole
        # layer by the first batch's replay of that layer: a model of one decoder layer has no prefix to replay it from;
        # a pass or a check that fails with it turns it off first, and the group runs again without it
        self.final_rows = loaded.spec.n_decoder_layers > 1 and has_final_rows(loaded.parts.decoder_layers)
        self.final_rows_off: str | None = None  # why the final rows were turned off for this model

    @classmethod
    def of_inputs(cls, loaded: LoadedModel, inputs: dict[str, torch.Tensor], max_new_tokens: int, stack: int | None = 1) -> tuple[SweepSamples, Batch]:
        """Samples already encoded as one batch (``inputs``: what a processor returns), without their benchmark: for
        ``plain_generation`` and ``reused_generations`` only (the conformance matrix's tiny models, which have no processor)."""
        samples = cls.__new__(cls)
        samples._start(loaded, max_new_tokens, stack, stop_when_decided=False, targets=False)
        batch = Batch(items=[], prompts=[], encoded=inputs)
        samples._held, samples.errors, samples._samples = [HeldBatch((), batch)], [], []
        return samples, batch

    def _encoded(self, indices: Iterable[int], batch_size: int) -> Iterator[Batch | Failed]:
        """Batches of ``batch_size`` samples whose images decoded (in order; one image decoded at a time, so
        that no more than a batch of pictures is held), encoded on the host and without their pictures."""
        ready: list[Ready] = []
        for index in [*indices, None]:
            if index is not None:
                loaded, failed = load_samples([self._samples[index]], [index])
                yield from failed
                ready.extend(loaded)
            if ready and (len(ready) == batch_size or index is None):
                for batch in encode_batches(self.loaded, ready, self._prompt_of, batch_size, device=torch.device("cpu")):
                    yield batch if isinstance(batch, Failed) else replace(batch, items=[replace(item, image=None) for item in batch.items])
                ready = []

    @property
    def n_batches(self) -> int:
        return len(self._held)

    def each_batch(self) -> Iterator[Batch]:
        """The batches in order, each on the model's device while it is evaluated."""
        for held in self._held:
            yield self._on_device(held)

    def _on_device(self, held: HeldBatch) -> Batch:
        """A held batch on the model's device (one past the host budget encoded again from its images: the same
        samples the processor took together before)."""
        batch = held.batch
        if batch is None:
            again = list(self._encoded([idx for idx, _ in held.samples], len(held.samples)))
            if len(again) != 1 or not isinstance(again[0], Batch):
                keys = ", ".join(key for _, key in held.samples)
                raise UsageError(f"the images of samples {keys} could not be read and encoded again as when the sweep began: were the benchmark's files changed during the sweep?")
            batch = again[0]
        return replace(batch, encoded={key: value.to(self.loaded.device) for key, value in batch.encoded.items()})

    def forward_each(self, interventions: Callable[[], Sequence[Intervention]]) -> list[Sequence[Intervention]]:
        """One plain forward pass per batch with fresh ``interventions()`` (recorders); returns them, per batch."""
        used = []
        for batch in self.each_batch():
            batch_interventions = interventions()
            forward_with(self.loaded, batch.encoded, batch_interventions)
            used.append(batch_interventions)
        return used

    def _stop(self, batch: Batch, times: int = 1) -> StopRows:
        deciders = None
        if self.stop_when_decided:
            deciders = [partial(PARSERS[item.sample.parser].decided, choices=tuple(item.sample.choices)) for item in batch.items] * times
        return StopRows(batch.encoded["input_ids"].shape[1], self.loaded.eos_token_ids, 1, getattr(self.loaded.processor, "tokenizer", None), deciders)

    def plain_generation(self, batch: Batch, interventions: Sequence[Intervention]) -> Generation:
        """Today's path: the batch's own inputs (pixels included) through ``generate``, the interventions bound to it."""
        parts = self.loaded.parts
        bound = [intervention.bind(batch_view(self.loaded, batch.encoded)) for intervention in interventions]
        with forward_call(parts.text_model, parts.attention_modules, parts.decoder_layers, bound):
            return generate(self.loaded, batch.encoded, self.max_new_tokens, self._stop(batch))

    def evaluate(self, interventions: Sequence[Intervention] = ()) -> list[dict[str, Any]]:
        """Every sample's answer under ``interventions`` (none: the baseline), with the prompt's keys, its
        image keys (padding excluded) and the KV cache the interventions leave (``kept_image_keys``).
        Safe to call from several threads at once: the interventions are bound per call."""
        rows = [dict(row) for row in self.errors]
        for batch in self.each_batch():
            rows.extend(self._rows(batch, self.plain_generation(batch, interventions), interventions))
        return sorted(rows, key=lambda row: row["sample_idx"])

    def evaluate_group(
        self, group: Sequence[Sequence[Intervention]], on_batch: Callable[[int, int], None] | None = None, journal: GroupJournal | None = None
    ) -> list[list[dict[str, Any]]]:
        """Every sample's answer under each condition of ``group`` (its interventions; none: the baseline),
        equal to ``evaluate`` of each: per batch, the images encoded once, the baseline's prefix recorded
        once, and the conditions stacked and started at their first intervened layer (extract.reuse). With a
        ``journal`` (extract.batch_journal), a batch whose rows it holds is taken from it, and each batch
        evaluated is written to it."""
        rows: list[list[dict[str, Any]]] = [[dict(row) for row in self.errors] for _ in group]
        for done, held in enumerate(self._held, start=1):
            batch_rows = journal.rows(held.samples) if journal is not None else None
            if batch_rows is None:  # not kept by an earlier try: evaluated (and only then encoded again or moved to the device)
                batch_rows = self._batch_rows(self._on_device(held), group)
                if journal is not None:
                    journal.record(held.samples, batch_rows)
            for index, condition_rows in enumerate(batch_rows):
                rows[index].extend(condition_rows)
            if on_batch is not None:
                on_batch(done, self.n_batches)
        return [sorted(condition_rows, key=lambda row: row["sample_idx"]) for condition_rows in rows]

    def _batch_rows(self, batch: Batch, group: Sequence[Sequence[Intervention]]) -> list[list[dict[str, Any]]]:
        """Each condition's rows on ``batch``, made from its generation as soon as that is final (not every condition's
        logits held at once)."""
        found: list[list[dict[str, Any]]] = [[] for _ in group]

        def settle(index: int, generation: Generation) -> None:
            found[index] = self._rows(batch, generation, group[index])

        generations = self._plain_each(batch, group, settle) if self.reuse_off is not None else self.reused_generations(batch, group, settle)
        for index, generation in enumerate(generations):
            if generation is not None:
                settle(index, generation)
        return found

    def reused_generations(self, batch: Batch, group: Sequence[Sequence[Intervention]], settle: Settle | None = None) -> list[Generation | None]:
        """The group's generations on ``batch`` with reuse; the first call checks reuse first, and calls from
        other threads (a Dask worker's, sharing these samples) wait for that check rather than run unchecked.

        With ``settle``, each condition's generation is handed to ``settle(index, generation)`` as soon as it is final
        and is not kept (its entry is None), so that a batch never holds every condition's logits at once (attribution's
        thousands of patterns, each ``[batch, vocab]``); the caller hands on the entries returned that are not None,
        which replace what it was handed (the plain path's generations, where a check turned reuse off)."""
        if not self.reuse_checked:
            with self._check_lock:
                if not self.reuse_checked:
                    generations = self._reused_or_plain(batch, group, True, settle)
                    self.reuse_checked = True
                    return generations
        if self.reuse_off is not None:
            return self._plain_each(batch, group, settle)
        return self._reused_or_plain(batch, group, False, settle)

    def _reused_or_plain(self, batch: Batch, group: Sequence[Sequence[Intervention]], checking: bool, settle: Settle | None) -> list[Generation | None]:
        """``_reused``; a replay that raises (a model whose later layers read a KV store the skipped layers fill: on the
        first batch, or on a later group's, as a Dask worker's first group may replay nothing) turns reuse off, and the
        group runs the plain way. Running out of memory is raised (``_run_stack`` splits what it can)."""
        try:
            return self._reused(batch, group, checking, settle)
        except Exception as error:  # noqa: BLE001  any error of a replayed pass: the plain path is the reference
            if out_of_memory(error):
                raise
            if self.final_rows:  # the last layer's final rows may not suit this model: reuse without them first
                self.final_rows, self.final_rows_off = False, f"{type(error).__name__}: {first_line(error)}"
                return self._reused_or_plain(batch, group, checking, settle)
            self.reuse_off = f"a replayed prefix failed ({type(error).__name__}: {first_line(error)})"
            return self._plain_each(batch, group, settle)

    def _check_failed(self, batch: Batch, group: Sequence[Sequence[Intervention]], settle: Settle | None) -> list[Generation | None]:
        """A check of the replay (``reuse_off`` says what differed): made again without the last layer's final rows where
        they were on (``_reused_or_plain``), else every condition the plain way."""
        if self.final_rows:
            differed, self.reuse_off = self.reuse_off, None
            raise ReuseError(differed)
        return self._plain_each(batch, group, settle)

    def _reused(self, batch: Batch, group: Sequence[Sequence[Intervention]], checking: bool, settle: Settle | None = None) -> list[Generation | None]:
        loaded, parts = self.loaded, self.loaded.parts
        spec = loaded.spec
        view = batch_view(loaded, batch.encoded)
        bound = [[intervention.bind(view) for intervention in interventions] for interventions in group]
        same = same_conditions(group, bound)  # a condition computed by an earlier one is not computed again
        computed = [index for index in range(len(group)) if same[index] == index]
        attention_starts = [first_layer(edits, spec.n_layers) for edits in bound]
        starts = [spec.attention_layers[start] if start < spec.n_layers else spec.n_decoder_layers for start in attention_starts]
        inputs = encode_media(loaded.model, batch.encoded)
        generations: list[Generation | None] = [None] * len(group)
        baseline = [index for index in computed if not any(bound[index])]
        others = [index for index in computed if any(bound[index])]
        most = self.stack.most()
        stacks = [[others[member] for member in stack] for stack in plan_stacks([starts[index] for index in others], spec.n_decoder_layers, most)]
        stack_starts = [starts[stack[0]] for stack in stacks]
        sharing: dict[int, list[int]] = {}  # each computed condition: the conditions that take its generation
        for index, computed_by in enumerate(same):
            sharing.setdefault(computed_by, []).append(index)
        checked = next((i for i, edits in enumerate(bound) if replays_interventions([edits])), None) if checking else None
        kept = same[checked] if checked is not None else None  # the generation the last check reads

        def settled(indices: list[int]) -> None:
            for index in indices if settle is not None else ():
                for member in sharing[index]:
                    settle(member, generations[index])
                if index != kept:
                    generations[index] = None

        if checking:  # before the recording is held, so that the check's passes do not add to the peak
            # a stack's inputs are checked tiled as often as the largest stack (twice where later batches may stack)
            self.reuse_off = self._check_inputs(batch, inputs, max([len(stack) for stack in stacks] + [2 if self.stack.may_stack else 1]))
        if self.reuse_off is not None:
            return self._plain_each(batch, group, settle)
        # stacks that start at the first layer read no prefix: they run before the recording is held; the others
        # run deepest first, and the recording drops what no stack left reads after each (``keep_for``)
        for stack in [stack for stack, start in zip(stacks, stack_starts) if start == 0]:
            self._run_stack(batch, group, view, inputs, stack, 0, None, generations)
            settled(stack)
        later = sorted([(start, stack) for stack, start in zip(stacks, stack_starts) if start > 0], key=lambda pair: -pair[0])
        deepest = max((start for start, _ in later), default=0)
        # the check replays the baseline from the deepest start; with the last layer's final rows (the recording's and
        # every stack's), from the last layer at the deepest, so that the replay computes that layer whole
        check_from = min(deepest or spec.n_decoder_layers - 1, spec.n_decoder_layers - 1) if self.final_rows else deepest
        if baseline or later or (checking and check_from > 0):
            starts_held = [start for start, _ in later] + ([check_from] if checking and check_from > 0 else [])
            recording = PrefixRecording(frozenset(start - 1 for start in starts_held), max(starts_held, default=0), replays_interventions(bound))
            # the prefill alone, unless the baseline's answers are wanted or this batch checks the replay (whose decode steps read the replayed cache)
            limit = self.max_new_tokens if baseline or checking else 1
            with self.stack.measured(1), forward_call(parts.text_model, parts.attention_modules, parts.decoder_layers, prefix=recording, final_rows=self.final_rows):
                recorded = generate(loaded, inputs, limit, self._stop(batch))
            for index in baseline:
                generations[index] = recorded
            settled(baseline)
            if checking:
                self.reuse_off = self._check_replay(batch, inputs, recording, recorded, limit, check_from)
                if self.reuse_off is not None:
                    return self._check_failed(batch, group, settle)
                recording.keep_for([start for start, _ in later])  # what the check alone read
            for position, (start, stack) in enumerate(later):
                self._run_stack(batch, group, view, inputs, stack, start, recording, generations)
                settled(stack)
                recording.keep_for([start for start, _ in later[position + 1 :]])
        for index in range(len(group)):
            generations[index] = generations[same[index]]
        if checking:
            self.reuse_off = self._check_replayed_interventions(batch, group, bound, generations)
            if self.reuse_off is not None:
                return self._check_failed(batch, group, settle)
        return generations

    def _plain_each(self, batch: Batch, group: Sequence[Sequence[Intervention]], settle: Settle | None) -> list[Generation | None]:
        """Every condition of ``group`` the plain way (reuse off, or a check that failed), each handed to ``settle`` as
        soon as it is done (replacing what it was handed before) instead of all held."""
        if settle is None:
            return [self.plain_generation(batch, interventions) for interventions in group]
        for index, interventions in enumerate(group):
            settle(index, self.plain_generation(batch, interventions))
        return [None] * len(group)

    def _run_stack(self, batch: Batch, group, view, inputs: dict[str, Any], stack: list[int], start: int, recording: PrefixRecording | None, generations: list) -> None:
        """One stack of conditions in one pass, started at layer ``start`` from ``recording`` (0: no prefix); a
        stack that runs out of memory runs again in parts (``StackSize.did_not_fit``)."""
        parts, size, times = self.loaded.parts, batch.encoded["input_ids"].shape[0], len(stack)
        ceiling = self.stack.ceiling
        if ceiling is not None and times > ceiling:  # planned before a stack ran out of memory (this batch's, or another thread's)
            for first in range(0, times, ceiling):
                self._run_stack(batch, group, view, inputs, stack[first : first + ceiling], start, recording, generations)
            return
        fresh = [[intervention.bind(view) for intervention in group[index]] for index in stack]  # per-call state: bound again for this pass
        edits = fresh[0] if times == 1 else [stack_interventions(fresh, size)]  # one condition: its own interventions, as the plain path binds them
        prefix = PrefixReplay(recording, start, times) if start > 0 else None
        stacked = None
        try:
            with self.stack.measured(times), forward_call(parts.text_model, parts.attention_modules, parts.decoder_layers, edits, prefix=prefix, final_rows=self.final_rows):
                stacked = generate(self.loaded, tile(inputs, times), self.max_new_tokens, self._stop(batch, times))
        except (RuntimeError, MemoryError) as error:  # torch.OutOfMemoryError is a RuntimeError; anything else is raised again
            if times == 1 or not out_of_memory(error):
                raise
        if stacked is None:  # the failed pass's tensors are let go (the exception is gone): the lowered ceiling splits it
            del fresh, edits, prefix
            self.stack.did_not_fit(times)
            self._run_stack(batch, group, view, inputs, stack, start, recording, generations)
            return
        for position, index in enumerate(stack):
            rows = slice(position * size, (position + 1) * size)
            generations[index] = Generation(stacked.answers[rows], stacked.steps[rows], stacked.first_logits[rows], {})

    def _check_replayed_interventions(self, batch: Batch, group, bound, generations: list[Generation]) -> str | None:
        """The last part of the check: the first condition whose interventions were handed a replayed prefill
        (cache-phase pruning) answers as it does on the plain path (its kept keys chosen in its own prefill)."""
        index = next((i for i, edits in enumerate(bound) if replays_interventions([edits])), None)
        if index is None:
            return None
        differs = self._differs(self.plain_generation(batch, group[index]), generations[index], "steps")
        return None if differs is None else f"with its prefill replayed, a pruning condition answers differently ({differs})"

    def _check_inputs(self, batch: Batch, inputs: dict[str, Any], times: int) -> str | None:
        """Part of the first batch's check that reuse gives this model's plain results: what the text model is
        handed with the images encoded once, and tiled for a stack of ``times``, equals what it is handed from
        the pixels (each block alike; the pass stops at the text model). None, or what differed."""
        plain = text_model_inputs(self.loaded, batch.encoded)
        for label, candidate, blocks in (("encoded once", inputs, 1), (f"stacked {times} times", tile(inputs, times), times))[: 1 + (times > 1)]:
            differs = compare_inputs(plain, text_model_inputs(self.loaded, candidate), blocks)
            if differs:
                return f"with the images {label}, the text model is handed a different {differs}"
        return None

    def _check_replay(self, batch: Batch, inputs: dict[str, Any], recording: PrefixRecording, recorded: Generation, limit: int, start: int) -> str | None:
        """The rest of the check: the baseline started at layer ``start`` (the deepest start, or the last layer at
        the deepest: see ``_reused``), with every layer it runs computed whole, answers as the recorded baseline did
        (first-token log-probabilities within 1e-4 in fp32, 5e-2 in half precision)."""
        if start == 0:
            return None
        parts = self.loaded.parts
        with forward_call(parts.text_model, parts.attention_modules, parts.decoder_layers, prefix=PrefixReplay(recording, start, 1)):
            replayed = generate(self.loaded, inputs, limit, self._stop(batch))
        differs = self._differs(recorded, replayed, "answers")
        return None if differs is None else f"started at layer {start} from the recorded prefix, the baseline answers differently ({differs})"

    def _differs(self, expected: Generation, got: Generation, tokens: str) -> str | None:
        """None where ``got`` generated ``expected``'s tokens (its ``answers`` or its ``steps``) and its first-token
        log-probabilities lie within 1e-4 of them in fp32 (5e-2 in half precision); else how they differ."""
        tolerance = 1e-4 if self.loaded.dtype == torch.float32 else 5e-2
        gap = float((torch.log_softmax(got.first_logits, -1) - torch.log_softmax(expected.first_logits, -1)).abs().max())
        equal = getattr(got, tokens) == getattr(expected, tokens)
        return None if equal and gap <= tolerance else f"answers equal: {equal}; log-probabilities up to {gap:.2g} apart"

    def _rows(self, batch: Batch, generation: Generation, interventions: Sequence[Intervention]) -> list[dict[str, Any]]:
        tokenizer, info = self.loaded.processor.tokenizer, self.loaded.info
        n_layers, n_kv = info["n_layers"], info["n_kv_heads"]
        log_probs = torch.log_softmax(generation.first_logits, dim=-1)
        n_prompt = batch.encoded["attention_mask"].sum(dim=1).tolist()
        n_image = (batch_view(self.loaded, batch.encoded).segments == IMAGE).sum(dim=1).tolist()
        rows = []
        for position, (item, answer) in enumerate(zip(batch.items, generation.answers)):
            score = score_answer(tokenizer, item.sample, answer, log_probs[position], self.letter_ids)
            if self.targets and (options := option_ids(tokenizer, item.sample, self.letter_ids)) is not None:
                score.update(answer_target(options, log_probs[position]))
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
        return rows


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
        written = {"sweep_conditions": 1, "sweep_results": results.num_rows}
        targets = [{"run_id": self.run_id, "condition_id": c.condition_id, **row} for row in self.rows if "gold_logprob" in row]
        if targets:  # a sweep whose samples were asked for targets (attnwh attribute)
            write_parquet(pa.Table.from_pylist(targets, schema=SWEEP_TARGETS), "sweep_targets", folder)
            written["sweep_targets"] = len(targets)
        return written


def evaluate_conditions(
    run_id: str,
    kind: SweepKind,
    conditions: Sequence[SweepCondition],
    ranking: HeadRanking | None,
    samples: SweepSamples,
    prepared: Any,
    reuse: bool,
    on_batch=None,
    journal: BatchJournal | None = None,
) -> list[SweepPart]:
    """The parts of ``conditions``: evaluated together, sharing their common work (``reuse``; ``on_batch(done,
    batches)`` after each batch; finished batches kept in ``journal`` until the parts are committed), or one by one."""
    interventions = [[] if condition.baseline else kind.interventions(condition, prepared) for condition in conditions]
    if reuse:
        group = journal.group([condition.condition_id for condition in conditions]) if journal is not None else None
        rows = samples.evaluate_group(interventions, on_batch, group)
    else:
        rows = [samples.evaluate(condition_interventions) for condition_interventions in interventions]
    return [SweepPart(run_id, kind.kind, condition, ranking, condition_rows) for condition, condition_rows in zip(conditions, rows)]


def group_conditions(conditions: Sequence[SweepCondition], groups: int) -> list[list[SweepCondition]]:
    """``conditions`` in ``groups`` groups of near-equal size (each group shares its work: fewer, larger groups
    reuse more; more groups run in parallel on Dask workers), in condition order."""
    groups = max(1, min(groups, len(conditions)))
    size, extra = divmod(len(conditions), groups)
    result, start = [], 0
    for index in range(groups):
        end = start + size + (index < extra)
        result.append(list(conditions[start:end]))
        start = end
    return [group for group in result if group]


def sweep_samples(loaded: LoadedModel, setup: RunSetup, kind: SweepKind, options: SweepOptions, n_conditions: int) -> SweepSamples:
    """The sweep's samples in its batches; with reuse, up to ``--stack`` conditions of a batch per pass."""
    stack = options.stack if options.reuse else 1
    return SweepSamples(loaded, setup, kind.batch_size(options), stack, stop_when_decided=options.max_new_tokens is None, targets=getattr(kind, "targets", False))


def run_sweep(
    warehouse_path: Path | str | None,
    sweep: SweepSetup,
    kind: SweepKind,
    spec: dict[str, Any],
    conditions: list[SweepCondition],
    ranking: HeadRanking | None,
    on_progress: ProgressCallback | None = None,
    plan_extra: tuple[str, ...] = (),
) -> SweepResult:
    """Create or resume the sweep's run (``spec``: what fingerprints it beyond the run set-up) and evaluate
    and commit the conditions this process takes: in this process, or one Dask task per group of conditions."""
    setup, rank, scheduler, options = sweep.run, sweep.rank, sweep.scheduler, sweep.options
    spec = {**spec, "answers": "until decided" if options.max_new_tokens is None else "max_new_tokens"}  # what the stored answer text holds
    if not scheduler.in_process:
        from attnwh.extract.executors import check_reachable

        check_reachable(scheduler)  # before the run is created
    run, committed, pending = open_sweep_run(warehouse_path, setup, rank, kind.kind, spec, conditions, options.run_id, plan_extra)
    result = SweepResult(run.run_id, run.paths.root, len(conditions), committed, 0)
    every_condition = [c.condition_id for c in conditions]
    if not pending:
        tidy(run.paths, every_condition)  # what an earlier process left in _progress/, if it stopped after its last commit
        return result
    n_conditions = len(conditions)
    if not scheduler.in_process:
        from attnwh.extract.executors import samples_digest, sweep_on_dask

        digest = samples_digest(setup.samples)  # a sweep's plan lists conditions: workers check their samples against this
        written, notes = sweep_on_dask(
            scheduler,
            options.threads_per_worker,
            run,
            pending,
            lambda threads: group_conditions(pending, threads if options.reuse else len(pending)),
            sweep_conditions_task,
            lambda group: (options, kind, str(run.paths.root), run.run_id, group, ranking, digest, n_conditions),
            on_progress,
        )
        result.conditions_written += written
        result.reuse_off = next((note.reuse_off for note in notes if note.reuse_off), None)  # the workers' own, said once
        result.stack_lowered = next((note.stack_lowered for note in notes if note.stack_lowered), None)
        tidy(run.paths, every_condition)
        return result
    loaded = load_model(setup.source, dtype=setup.dtype, device=setup.device)
    samples = sweep_samples(loaded, setup, kind, options, n_conditions)
    prepared = kind.prepare(samples)
    writer = writer_of(rank)
    if on_progress:
        on_progress(0, len(pending))
    done = 0
    journal = BatchJournal.open(run.paths) if options.reuse else None
    for group in group_conditions(pending, 1 if options.reuse else len(pending)):
        # a group's conditions are committed when its last batch is done: until then, progress counts batches
        # (and the journal keeps them, so that a resumed sweep does not evaluate them again)
        on_batch = (lambda batches, of, before=done, size=len(group): on_progress(before + size * batches / of, len(pending))) if on_progress else None
        for part in evaluate_conditions(run.run_id, kind, group, ranking, samples, prepared, options.reuse, on_batch, journal):
            result.conditions_written += parts.commit_part(run.paths, part.condition.condition_id, part.write, writer) is not None
            done += 1
            if on_progress:
                on_progress(done, len(pending))
        if journal is not None:
            journal.group([condition.condition_id for condition in group]).clear()
    tidy(run.paths, every_condition)  # and any folder of conditions committed by another grouping, or by --no-reuse
    result.reuse_off = samples.reuse_off
    result.stack_lowered = samples.stack.lowered
    return result


def open_sweep_run(
    warehouse_path: Path | str | None, setup: RunSetup, rank: Rank, kind: str, spec: dict[str, Any], conditions: list, run_id: str | None, plan_extra: tuple[str, ...] = ()
):
    """Create or resume a sweep's run (one part per condition: the plan's "samples" are the conditions, then
    ``plan_extra``: parts the caller commits after them, as attribution's fit), recover it, and return it with the
    count of committed conditions and those this process still runs."""
    warehouse = open_warehouse(warehouse_path, create=True)
    plan = Plan([f"condition-{c.condition_id}" for c in conditions] + list(plan_extra), 1)
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
    committed = parts.committed_part_ids(run.paths) & {c.condition_id for c in conditions}
    pending = [c for c in conditions if c.condition_id not in committed and rank.takes(c.condition_id)]
    if committed and pending:
        check_parsers_unchanged(run, "sweep_results", setup.samples)
    return run, len(committed), pending


@dataclass(frozen=True)
class TaskReport:
    """What a Dask task of a sweep hands back: how many conditions it committed, and what its worker's samples would
    have the user warned of (the client says it)."""

    written: int
    reuse_off: str | None = None
    stack_lowered: str | None = None


def sweep_conditions_task(
    options: SweepOptions, kind: SweepKind, run_root: str, run_id: str, group: list[SweepCondition], ranking: HeadRanking | None, samples_digest: str, n_conditions: int
) -> TaskReport:
    """On a Dask worker: evaluate a group of conditions together and commit each (returns how many this task
    committed, with the worker's warnings). The samples and what the kind prepares from them are built once per worker and run, and shared
    by its threads; before the first, the worker's settings and samples are checked against the run's
    (``samples_digest``: the client's)."""
    from attnwh.extract.executors import worker_address, worker_cache, worker_run_setup

    cache = worker_cache()
    setup = worker_run_setup(cache, run_root, run_id, lambda: prepare_run(options), samples=samples_digest)
    loaded = cache.model(setup)
    samples = cache.run_setup(f"{run_id}/samples", lambda: sweep_samples(loaded, setup, kind, options, n_conditions))
    prepared = cache.run_setup(f"{run_id}/prepared", lambda: kind.prepare(samples))
    paths, written = RunPaths(storage.location(run_root)), 0
    journal = BatchJournal.open(paths) if options.reuse else None  # a task retried on another worker takes the batches its first try finished
    for part in evaluate_conditions(run_id, kind, group, ranking, samples, prepared, options.reuse, journal=journal):
        written += parts.commit_part(paths, part.condition.condition_id, part.write, {"worker": worker_address()}) is not None
    if journal is not None:
        journal.group([condition.condition_id for condition in group]).clear()
    return TaskReport(written, samples.reuse_off, samples.stack.lowered)


def check_sweep_options(options: SweepOptions, choices: tuple[tuple[tuple[str, ...], tuple[str, ...], str], ...]) -> None:
    """Counts at least 1, ``--stack`` above 1 only with reuse, each list of ``choices`` (values, allowed, option name) non-empty and known, a known score and query."""
    check_max_new_tokens(options.max_new_tokens)
    for name in ("batch_size", "limit", "seeds", "stack", "threads_per_worker"):
        value = getattr(options, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if options.stack not in (None, 1) and not options.reuse:  # stacking is a way of reusing: without it, one condition per pass
        raise UsageError(f"--stack {options.stack} needs reuse: --no-reuse runs one condition per pass")
    if options.seeds > MAX_SEEDS:  # each seed is a condition per stage and k: more is a typo, not a sweep
        raise UsageError(f"--seeds takes at most {MAX_SEEDS}, got {options.seeds}")
    for values, allowed, option in choices:
        unknown = [value for value in values if value not in allowed]
        if unknown or not values:
            raise UsageError(f"--{option} takes {', '.join(allowed)}; got {', '.join(values) or 'nothing'}")
    scores = head_score_names()
    if options.score not in scores:
        raise UsageError(f"--score takes {', '.join(scores)}; got {options.score!r}")
    if options.ranking_query not in ("prompt", "gen1"):
        raise UsageError(f"the ranking's query takes prompt or gen1; got {options.ranking_query!r}")
