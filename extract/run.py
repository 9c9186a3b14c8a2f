"""The extraction run loop: plan → parts → batches → generate with capture → committed parts.

Running the same settings again resumes the run: committed parts are skipped, and a complete run
loads no model at all. The pieces live beside it: ``setup`` (options → benchmark, model config,
prompt), ``batches`` (images, prompts, encoding, error rows), ``generation`` (the model with the
capture session), ``scoring`` (answers), ``part_tables`` (what a part writes).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from attnwh.core.errors import UsageError
from attnwh.extract.batches import Batch, Failed, Ready, encode_batches, load_samples, prompt_text
from attnwh.extract.benchmarks import Sample
from attnwh.extract.benchmarks.templates import DEFAULT_PROMPT_STYLE
from attnwh.extract.capture import QUERY_STEPS, CaptureSpec
from attnwh.extract.executors import parse_scheduler
from attnwh.extract.generation import generate_with_capture, letter_token_ids
from attnwh.extract.models import LoadedModel, load_model
from attnwh.extract.part_tables import PartData, error_row, gen_lens_table, gen_metrics_table, gen_tokens_table, lens_table, metrics_table, sample_fields
from attnwh.extract.prompts import PromptFormat
from attnwh.extract.ranks import detect_rank, wait_seconds, writer_of
from attnwh.extract.regions import region_mask
from attnwh.extract.scoring import score_answer
from attnwh.extract.segments import image_spans
from attnwh.extract.setup import check_max_new_tokens, check_parsers_unchanged, prepare_run
from attnwh.warehouse import parts, storage
from attnwh.warehouse.catalog import Catalog
from attnwh.warehouse.layout import RunPaths, open_warehouse
from attnwh.warehouse.runs import Plan, Run, open_or_create_run

DEFAULT_PART_SIZE = 256
ProgressCallback = Callable[[int, int], None]  # (samples done, samples to do)


@dataclass
class ExtractOptions:
    model: str | None = None
    benchmark: str | None = None
    data: Path | None = None
    split: str | None = None
    limit: int | None = None
    queries: tuple[str, ...] = ("prompt", "gen1")
    rows: bool = True
    lens: bool = True
    gen_rows: bool = False  # with gen: the raw rows of every generated step too
    batch_size: int = 8
    dtype: str = "auto"
    device: str = "auto"
    part_size: int | None = None
    max_new_tokens: int | None = None
    run_id: str | None = None
    max_parts: int | None = None  # stop after writing this many parts (the rest resumes later)
    prompt_format: str = "chat_template"
    prompt_style: str = DEFAULT_PROMPT_STYLE  # llava-eval | study: how the benchmark's question is worded
    rank: int | None = None  # this process's rank (default: from torchrun / accelerate / SLURM, else 0 of 1)
    world_size: int | None = None
    scheduler: str | None = None  # local | local:N | tcp://HOST:PORT | scheduler.json (default: $DASK_SCHEDULER_ADDRESS, else local)
    threads_per_worker: int = 1  # for local:N
    command: list[str] = field(default_factory=lambda: list(sys.argv))


@dataclass
class ExtractResult:
    run_id: str
    run_path: Path
    new_run: bool
    parts_total: int
    parts_skipped: int
    parts_written: int
    samples_written: int
    errors: int
    dashboard: str | None = None  # the Dask dashboard, when a cluster computed the parts
    model_loads: dict[str, int] | None = None  # models loaded per Dask worker
    damaged: str | None = None  # why readers leave the run out (the catalog's warning: a committed table damaged since), else None
    first_error: str | None = None  # the first error row's reason among the parts this process wrote (an image not found, ...)
    parts_committed: int | None = None  # the run's committed parts at the end, by any process (another writer's too)

    def note_errors(self, error: str | None) -> None:
        if self.first_error is None and error is not None:
            self.first_error = error


def run_extract(warehouse_path: Path | str | None, options: ExtractOptions, on_progress: ProgressCallback | None = None) -> ExtractResult:
    _check_options(options)
    scheduler = parse_scheduler(options.scheduler)
    rank = detect_rank(options.rank, options.world_size)
    setup = prepare_run(options, rank.local_rank)
    capture = capture_spec(options)
    part_size = options.part_size or setup.benchmark.part_size or DEFAULT_PART_SIZE
    spec = {**setup.spec, "queries": list(capture.queries), "rows": capture.rows, "lens": capture.lens}
    if capture.gen_rows:
        spec["gen_rows"] = True  # only when asked: the fingerprints of runs without it stay as they were
    if not scheduler.in_process:
        from attnwh.extract.executors import check_reachable

        check_reachable(scheduler)  # before the run is created
    warehouse = open_warehouse(warehouse_path, create=True)
    samples = setup.samples
    plan = Plan([sample.key for sample in samples], part_size)
    run, new_run = open_or_create_run(
        warehouse,
        kind="extract",
        model=setup.model_label,
        benchmark=setup.benchmark.name,
        spec=spec,
        plan=plan,
        run_id=options.run_id,
        details=setup.details,
        create=rank.creates_runs,
        wait_seconds=wait_seconds(),
    )
    parts.recover(run.paths)
    committed = parts.committed_part_ids(run.paths)
    pending = [part_id for part_id in range(plan.n_parts) if part_id not in committed and rank.takes(part_id)]
    if committed and pending:
        check_parsers_unchanged(run, "samples", samples)
    if options.max_parts is not None:
        pending = pending[: options.max_parts]
    result = ExtractResult(run.run_id, run.paths.root, new_run, plan.n_parts, len(committed), 0, 0, 0)
    if committed:  # a committed part is not computed again, even one damaged since: say so rather than report it sound
        with Catalog(warehouse) as catalog:  # the readers' own checks: sizes against the commit records, each table's footer
            result.damaged = next((line for line in catalog.warnings if line.startswith(f"run {run.run_id} left out: ")), None)
    if not pending:
        return result
    if not scheduler.in_process:
        return _extract_on_dask(scheduler, options, run, plan, pending, result, on_progress)
    loaded = load_model(setup.source, dtype=setup.dtype, device=setup.device)
    settings = BatchSettings(loaded, setup.prompt_format, setup.template, capture, setup.max_new_tokens, letter_token_ids(loaded.processor.tokenizer))
    total = sum(len(plan.part_range(part_id)) for part_id in pending)
    progress = {"done": 0}
    if on_progress:
        on_progress(0, total)

    def finish(commit: Future, part: PartData, count: int) -> None:
        if commit.result() is not None:
            result.parts_written += 1
            result.samples_written += count
            result.errors += part.errors
            result.note_errors(part.first_error())
        progress["done"] += count
        if on_progress:
            on_progress(progress["done"], total)

    # Part N is written and committed in a background thread while part N + 1 computes; at most one
    # commit is in flight, and each is atomic on its own, so a crash loses at most uncommitted work.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="attnwh-commit") as writer:
        in_flight: tuple[Future, PartData, int] | None = None
        for part_id in pending:
            indices = list(plan.part_range(part_id))
            part = extract_part(settings, [samples[i] for i in indices], indices, run.run_id, options.batch_size)
            if in_flight is not None:
                finish(*in_flight)
            in_flight = (writer.submit(parts.commit_part, run.paths, part_id, part.write, writer_of(rank)), part, len(indices))
        if in_flight is not None:
            finish(*in_flight)
    result.parts_committed = len(parts.committed_part_ids(run.paths))
    return result


def _extract_on_dask(scheduler, options: ExtractOptions, run: Run, plan: Plan, pending: list[int], result: ExtractResult, on_progress: ProgressCallback | None) -> ExtractResult:
    """One Dask task per pending part; each worker commits its parts itself (``extract_part_task``)."""
    from distributed import as_completed

    from attnwh.extract.executors import dask_client, model_loads

    total = sum(len(plan.part_range(part_id)) for part_id in pending)
    with dask_client(scheduler, options.threads_per_worker) as client:
        result.dashboard = client.dashboard_link
        futures = {
            client.submit(extract_part_task, options, str(run.paths.root), run.run_id, plan.part_size, part_id, key=f"attnwh-{run.run_id}-{part_id}", pure=False): part_id
            for part_id in pending
        }
        done = 0
        if on_progress:
            on_progress(0, total)
        for future in as_completed(futures, loop=client.loop):  # the client is not the default one
            written, samples, errors, first_error = future.result()
            result.parts_written += written
            result.samples_written += samples
            result.errors += errors
            result.note_errors(first_error)
            done += len(plan.part_range(futures[future]))
            if on_progress:
                on_progress(done, total)
        result.model_loads = model_loads(client)
    parts.recover(run.paths)  # attempts of workers that died (their tasks ran again elsewhere)
    result.parts_committed = len(parts.committed_part_ids(run.paths))
    return result


def extract_part_task(options: ExtractOptions, run_root: str, run_id: str, part_size: int, part_id: int) -> tuple[int, int, int]:
    """On a Dask worker: compute one part and commit it (parts written, samples written, error rows)."""
    from attnwh.extract.executors import commit_beside_next_task, worker_address, worker_cache, worker_run_setup

    cache = worker_cache()
    # built once per worker, and checked against the run's settings and plan before this worker commits anything
    setup = worker_run_setup(cache, run_root, run_id, lambda: prepare_run(options))
    loaded = cache.model(setup)
    capture = capture_spec(options)
    settings = BatchSettings(loaded, setup.prompt_format, setup.template, capture, setup.max_new_tokens, letter_token_ids(loaded.processor.tokenizer))
    indices = list(Plan([sample.key for sample in setup.samples], part_size).part_range(part_id))
    part = extract_part(settings, [setup.samples[i] for i in indices], indices, run_id, options.batch_size)
    with commit_beside_next_task(cache):
        record = parts.commit_part(RunPaths(storage.location(run_root)), part_id, part.write, {"worker": worker_address()})
    return (1, len(indices), part.errors, part.first_error()) if record is not None else (0, 0, 0, None)


def _check_options(options: ExtractOptions) -> None:
    check_max_new_tokens(options.max_new_tokens)
    for name in ("batch_size", "part_size", "limit", "max_parts", "threads_per_worker"):
        value = getattr(options, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    try:
        capture_spec(options)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def capture_spec(options: ExtractOptions) -> CaptureSpec:
    return CaptureSpec(queries=tuple(options.queries), rows=options.rows, lens=options.lens, gen_rows=options.gen_rows)


@dataclass(frozen=True)
class BatchSettings:
    """What every batch of a run shares."""

    loaded: LoadedModel
    prompt_format: PromptFormat
    template: str  # the benchmark's question template
    capture: CaptureSpec
    max_new_tokens: int
    letter_ids: list[torch.Tensor]  # per option letter, the tokens that spell it (computed once per run)


def extract_part(settings: BatchSettings, samples: list[Sample], indices: list[int], run_id: str, batch_size: int) -> PartData:
    part = PartData(run_id, settings.capture.fixed_queries, every_step=settings.capture.every_step)
    ready, failed = load_samples(samples, indices)
    prompt_of = partial(prompt_text, settings.loaded, settings.prompt_format, settings.template)
    for batch in itertools.chain(failed, encode_batches(settings.loaded, ready, prompt_of, batch_size, prepare=_region)):  # lazily: one encoded batch at a time
        if isinstance(batch, Failed):
            part.samples.append(error_row(run_id, batch.sample_idx, batch.sample, batch.error))
            part.errors += 1
        else:
            _extract_batch(settings, batch, part)
    part.samples.sort(key=lambda row: row["sample_idx"])
    return part


def _extract_batch(settings: BatchSettings, batch: Batch, part: PartData) -> None:
    loaded, capture = settings.loaded, settings.capture
    encoded, region = batch.encoded, batch.prepared
    generation, session, segments = generate_with_capture(loaded, encoded, capture, settings.max_new_tokens, region)
    statistics = {name: tensor.numpy() for name, tensor in session.stacked_statistics().items()}  # [layer, batch, head, stat]
    gen_statistics = session.stacked_gen_statistics()  # [step, layer, batch, head, stat] or None
    gen_statistics = gen_statistics.numpy() if gen_statistics is not None else None
    rows = {name: tensor.numpy() for name, tensor in session.stacked_rows(torch.float16).items()}  # [layer, batch, head, key]
    spans = image_spans(segments)
    tokenizer = loaded.processor.tokenizer
    prompt_length = segments.shape[1]
    log_probs = torch.log_softmax(generation.first_logits, dim=-1)
    for position, (item, prompt, answer, span) in enumerate(zip(batch.items, batch.prompts, generation.answers, spans)):
        sample_idx, sample = item.sample_idx, item.sample
        part.samples.append(
            {
                **sample_fields(part.run_id, sample_idx, sample),
                "status": "ok",
                "error": None,
                "prompt": prompt,
                **score_answer(tokenizer, sample, answer, log_probs[position], settings.letter_ids),
                "n_tokens": span.n_tokens,
                "n_image": span.n_image,
                "image_start": span.image_start,
                "image_end": span.image_end,
                "image_sha256": item.image_sha256,
                "n_region": int(region[position].sum()) if region is not None and sample.boxes else None,
            }
        )
        if statistics:
            part.metrics.append(metrics_table(part.run_id, sample_idx, span.n_image, {name: stats[:, position] for name, stats in statistics.items()}))
        if gen_statistics is not None:
            steps = generation.steps[position]
            part.gen_metrics.append(gen_metrics_table(part.run_id, sample_idx, span.n_image, gen_statistics[: len(steps), :, position]))
            part.gen_tokens.append(gen_tokens_table(part.run_id, sample_idx, steps, loaded.eos_token_ids, tokenizer, sample))
            if session.gen_lens:
                part.gen_lens.append(gen_lens_table(part.run_id, sample_idx, steps, session.gen_lens, position))
            if session.gen_rows:
                pad = prompt_length - span.n_tokens
                part.gen_rows.append((sample_idx, [session.gen_rows[step][:, position, :, pad : prompt_length + step].numpy() for step in range(len(steps))]))
        if generation.lens:
            part.lens.append(lens_table(part.run_id, sample_idx, position, generation.lens, tokenizer))
        if rows:
            pad = prompt_length - span.n_tokens
            part.rows.append((sample_idx, [rows[name][:, position, :, pad : prompt_length + QUERY_STEPS[name]] for name in capture.fixed_queries]))


def _region(loaded: LoadedModel, encoded: dict[str, torch.Tensor], items: list[Ready]) -> torch.Tensor | None:
    """[batch, prompt_position] bool: the image positions inside each sample's boxes; None when no sample has boxes."""
    if not any(item.sample.boxes for item in items):
        return None
    image_ids = torch.tensor(loaded.spec.image_token_ids, device=encoded["input_ids"].device)
    is_image = torch.isin(encoded["input_ids"], image_ids) & encoded["attention_mask"].bool()
    region = torch.zeros_like(is_image)
    for row, item in enumerate(items):
        sample, image = item.sample, item.image
        if not sample.boxes:
            continue
        inside = region_mask(loaded, image, sample.boxes)  # [n_image] bool, in the order of the image tokens
        positions = is_image[row].nonzero().flatten()
        if len(inside) != len(positions):
            raise ValueError(f"region mask has {len(inside)} image tokens, the prompt {len(positions)}")
        region[row, positions] = inside.to(region.device)
    return region
