"""What extraction and masking runs resolve alike from their options, before any weight is read:
benchmark and samples, model config and what discovery reads of it, prompt format and style, device, dtype, and the
fingerprinted settings they share.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from attnwh.core.errors import UsageError
from attnwh.extract.benchmarks import Benchmark, Sample, get_benchmark
from attnwh.extract.benchmarks.data import resolve_data
from attnwh.extract.benchmarks.registry import check_split
from attnwh.extract.benchmarks.templates import check_style
from attnwh.extract.discovery import ModelSpec
from attnwh.extract.models import ModelSource, load_config, resolve_device, resolve_dtype, resolve_source, revision
from attnwh.extract.prompts import PromptFormat, get_format
from attnwh.extract.regions import REGION_RULE
from attnwh.extract.toy.default import DEFAULT_BENCHMARK, model_label, model_location
from attnwh.warehouse.runs import environment_info

MAX_NEW_TOKENS = 4096  # the most tokens attnwh generates per answer: LLaVA-1.5's whole context, 8× AMBER's 512


def check_max_new_tokens(value: int | None) -> None:
    """``--max-new-tokens`` between 1 and ``MAX_NEW_TOKENS`` (None: the benchmark's)."""
    if value is not None and not 1 <= value <= MAX_NEW_TOKENS:
        raise UsageError(f"--max-new-tokens must be between 1 and {MAX_NEW_TOKENS} (a whole LLaVA-1.5 context), got {value}")


@dataclass(frozen=True)
class RunSetup:
    """What extraction and masking runs resolve alike from their options, before any weight is read."""

    benchmark: Benchmark
    split: str | None
    data: Path | None
    samples: list[Sample]
    model_label: str
    source: ModelSource
    config: Any
    model_spec: ModelSpec
    prompt_format: PromptFormat
    template: str  # the benchmark's question template in the chosen prompt style
    device: torch.device
    dtype: torch.dtype
    max_new_tokens: int
    spec: dict[str, Any]  # the fingerprinted settings both kinds of run share
    details: dict[str, Any]  # recorded, not fingerprinted


def prepare_run(options, local_rank: int | None = None) -> RunSetup:
    """Benchmark, samples, model config, prompt format, device and dtype from ``ExtractOptions`` / ``MaskOptions``."""
    benchmark = get_benchmark(options.benchmark or DEFAULT_BENCHMARK)
    prompt_style = check_style(options.prompt_style)
    split = check_split(benchmark, options.split)
    data = resolve_data(benchmark, options.data)
    samples = benchmark.load(data, split)
    if options.limit is not None:
        samples = samples[: options.limit]
    if not samples:
        raise UsageError("the benchmark selection has no samples")
    samples = [replace(sample, parser=benchmark.parser_for(prompt_style, sample.parser)) for sample in samples]  # the style's parser (POPE: the study reads the first word)
    label = model_label(options.model)
    source = resolve_source(model_location(options.model))
    config, model_spec = load_config(source)
    prompt_format = get_format(options.prompt_format)
    formats = model_spec.family.prompt_formats
    if prompt_format.name not in formats:
        raise UsageError(f"prompt format {prompt_format.name} does not fit {model_spec.architecture}; choose {', '.join(formats)}")
    device = resolve_device(options.device, local_rank)
    dtype = resolve_dtype(options.dtype, device, config)
    max_new_tokens = options.max_new_tokens or benchmark.max_new_tokens
    spec = {
        "model": label,
        "model_revision": revision(source, config),
        "dtype": str(dtype).removeprefix("torch."),
        "prompt_format": prompt_format.name,
        "prompt_style": prompt_style,
        "benchmark": benchmark.name,
        "benchmark_version": benchmark.version,
        "split": split,
        "data": str(data) if data is not None else None,
        "limit": options.limit,
        "max_new_tokens": max_new_tokens,
        "decoding": "greedy",
    }
    if any(sample.boxes for sample in samples):  # region statistics: the rule their tokens are found by
        spec["regions"] = REGION_RULE
    if model_spec.image_marker_ids:  # typed image since 2026-12-06 (they were text): such a run made before is not resumed
        spec["image_markers"] = list(model_spec.image_marker_ids)
    details = {"model_location": source.location, "model_info": model_spec.info, "device": str(device), "command": options.command, "environment": environment_info()}
    template = benchmark.template_for(prompt_style)
    return RunSetup(benchmark, split, data, samples, label, source, config, model_spec, prompt_format, template, device, dtype, max_new_tokens, spec, details)


def check_parsers_unchanged(run, table: str, samples: list[Sample]) -> None:
    """Refuse to resume a run whose answers were parsed by another version of a parser than this attnwh's: its
    parts would count answers by two rules (a parser's version is stored on every row, not in the fingerprint).
    The run's last committed part of ``table`` (``samples``, ``sweep_results``) tells what its last writer used."""
    import pyarrow.parquet as pq

    from attnwh.extract.benchmarks.parsers import PARSERS
    from attnwh.warehouse import parts, storage

    # the last committed part that holds the table (a sweep's last part may be attribution's fit): its record alone is read
    records = (parts.CommitRecord.load(run.paths.commit_record(part_id)) for part_id in sorted(parts.committed_part_ids(run.paths), reverse=True))
    record = next((record for record in records if table in record.tables), None)
    if record is None:
        return
    path = parts.table_files(run.paths, table, [record])[0]
    try:
        source, filesystem = storage.arrow_source(path)
        columns = pq.read_table(source, filesystem=filesystem, columns=["parser", "parser_version"]).to_pylist()
    except Exception:  # noqa: BLE001  a damaged or older file: the readers' checks and verify say what is wrong with it
        return
    current = {sample.parser: PARSERS[sample.parser].version for sample in samples if sample.parser in PARSERS}
    for row in columns:
        if row["parser"] in current and row["parser_version"] is not None and row["parser_version"] != current[row["parser"]]:
            raise UsageError(
                f"cannot resume run {run.run_id}: its answers were parsed by {row['parser']} v{row['parser_version']}, this attnwh parses by"
                f" v{current[row['parser']]}; its parts would count answers by two rules. Start a new run with --run NEW_ID"
            )
