"""The extraction run loop: plan → parts → batches → generate with capture → committed parts.

Running the same settings again resumes the run: committed parts are skipped, and a complete run
loads no model at all.
"""

from __future__ import annotations

import hashlib
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from attnwh.errors import UsageError
from attnwh.extract.benchmarks import Benchmark, Sample, get_benchmark
from attnwh.extract.benchmarks.data import resolve_data
from attnwh.extract.benchmarks.parsers import PARSERS
from attnwh.extract.benchmarks.registry import check_split
from attnwh.extract.benchmarks.templates import DEFAULT_PROMPT_STYLE, LETTERS, check_style, render_question
from attnwh.extract.capture import QUERY_STEPS, CaptureSpec, capture_session
from attnwh.extract.models import Adapter, LoadedModel, ModelSource, load_config, load_model, model_info, resolve_device, resolve_dtype, resolve_source, revision
from attnwh.extract.prompts import PromptFormat, get_format
from attnwh.extract.lens import LensResult, logit_lens
from attnwh.extract.masking import HeadMask, head_masking
from attnwh.extract.regions import region_mask
from attnwh.extract.segments import image_spans, prompt_segments
from attnwh.extract.stats import STAT_NAMES
from attnwh.extract.toy.default import DEFAULT_BENCHMARK, DEFAULT_MODEL, model_location
from attnwh.warehouse import arrays, parts
from attnwh.warehouse.layout import open_warehouse
from attnwh.warehouse.runs import Plan, environment_info, open_or_create_run
from attnwh.warehouse.definitions import rollups
from attnwh.warehouse.schema import HEAD_METRICS, HEAD_METRICS_SORT, LOGIT_LENS, LOGIT_LENS_SORT, SAMPLES, with_metadata

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
    batch_size: int = 8
    dtype: str = "auto"
    device: str = "auto"
    part_size: int | None = None
    max_new_tokens: int | None = None
    run_id: str | None = None
    max_parts: int | None = None  # stop after writing this many parts (the rest resumes later)
    prompt_format: str = "chat_template"
    prompt_style: str = DEFAULT_PROMPT_STYLE  # llava-eval | study: how the benchmark's question is worded
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


def run_extract(warehouse_path: Path | str | None, options: ExtractOptions, on_progress: ProgressCallback | None = None) -> ExtractResult:
    _check_options(options)
    setup = prepare_run(options)
    capture = CaptureSpec(queries=tuple(options.queries), rows=options.rows, lens=options.lens)
    part_size = options.part_size or DEFAULT_PART_SIZE
    spec = {**setup.spec, "queries": list(capture.queries), "rows": capture.rows, "lens": capture.lens}
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
    )
    parts.recover(run.paths)
    committed = parts.committed_part_ids(run.paths)
    pending = [part_id for part_id in range(plan.n_parts) if part_id not in committed]
    if options.max_parts is not None:
        pending = pending[: options.max_parts]
    result = ExtractResult(run.run_id, run.paths.root, new_run, plan.n_parts, len(committed), 0, 0, 0)
    if not pending:
        return result
    loaded = load_model(setup.source, dtype=setup.dtype, device=setup.device)
    settings = BatchSettings(
        loaded, setup.prompt_format, setup.template, capture, setup.max_new_tokens, letter_token_ids(loaded.processor.tokenizer)
    )
    total = sum(len(plan.part_range(part_id)) for part_id in pending)
    progress = {"done": 0}
    if on_progress:
        on_progress(0, total)

    def finish(commit: Future, part: PartData, count: int) -> None:
        if commit.result() is not None:
            result.parts_written += 1
            result.samples_written += count
            result.errors += part.errors
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
            in_flight = (writer.submit(parts.commit_part, run.paths, part_id, part.write), part, len(indices))
        if in_flight is not None:
            finish(*in_flight)
    return result


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
    adapter: Adapter
    prompt_format: PromptFormat
    template: str  # the benchmark's question template in the chosen prompt style
    device: torch.device
    dtype: torch.dtype
    max_new_tokens: int
    spec: dict[str, Any]  # the fingerprinted settings both kinds of run share
    details: dict[str, Any]  # recorded, not fingerprinted


def prepare_run(options) -> RunSetup:
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
    model_label = options.model or DEFAULT_MODEL
    source = resolve_source(model_location(options.model))
    config, adapter = load_config(source)
    prompt_format = get_format(options.prompt_format)
    if prompt_format.name not in adapter.prompt_formats:
        raise UsageError(
            f"prompt format {prompt_format.name} does not fit {adapter.architecture}; choose {', '.join(adapter.prompt_formats)}"
        )
    device = resolve_device(options.device)
    dtype = resolve_dtype(options.dtype, device, config)
    max_new_tokens = options.max_new_tokens or benchmark.max_new_tokens
    spec = {
        "model": model_label,
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
    details = {
        "model_location": source.location,
        "model_info": model_info(config, adapter),
        "device": str(device),
        "command": options.command,
        "environment": environment_info(),
    }
    template = benchmark.template_for(prompt_style)
    return RunSetup(
        benchmark, split, data, samples, model_label, source, config, adapter, prompt_format, template, device, dtype, max_new_tokens, spec, details
    )


def _check_options(options: ExtractOptions) -> None:
    for name in ("batch_size", "part_size", "limit", "max_new_tokens", "max_parts"):
        value = getattr(options, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    try:
        CaptureSpec(queries=tuple(options.queries))
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


@dataclass
class PartData:
    """Everything one part writes: sample rows, head metrics and raw rows."""

    run_id: str
    queries: tuple[str, ...]
    samples: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[pa.Table] = field(default_factory=list)
    lens: list[pa.Table] = field(default_factory=list)
    rows: list[tuple[int, list[np.ndarray]]] = field(default_factory=list)  # (sample_idx, per query [layer, head, key])
    errors: int = 0

    def write(self, folder: Path) -> dict[str, int]:
        samples = pa.Table.from_pylist(self.samples, schema=SAMPLES)
        metrics = pa.concat_tables(self.metrics) if self.metrics else HEAD_METRICS.empty_table()
        metrics = metrics.sort_by(HEAD_METRICS_SORT)
        _write_parquet(samples, "samples", folder / "samples.parquet")
        _write_parquet(metrics, "head_metrics", folder / "head_metrics.parquet")
        summary, ranks = rollups(metrics)
        _write_parquet(summary, "head_summary", folder / "head_summary.parquet")
        _write_parquet(ranks, "head_ranks", folder / "head_ranks.parquet")
        if self.lens:
            _write_parquet(pa.concat_tables(self.lens).sort_by(LOGIT_LENS_SORT), "logit_lens", folder / "logit_lens.parquet")
        if self.rows:
            width = max(row.shape[-1] for _, per_query in self.rows for row in per_query)
            n_layers, n_heads = self.rows[0][1][0].shape[:2]
            attention = np.full((len(self.rows), len(self.queries), n_layers, n_heads, width), np.nan, dtype=np.float16)
            for position, (_, per_query) in enumerate(self.rows):
                for query_index, row in enumerate(per_query):
                    attention[position, query_index, :, :, : row.shape[-1]] = row
            arrays.write_rows(folder, attention, np.array([idx for idx, _ in self.rows], dtype=np.int64), list(self.queries))
        counts = {"samples": samples.num_rows, "head_metrics": metrics.num_rows, "head_summary": summary.num_rows, "head_ranks": ranks.num_rows}
        if self.lens:
            counts["logit_lens"] = sum(table.num_rows for table in self.lens)
        return counts


def _write_parquet(table: pa.Table, name: str, path: Path) -> None:
    table = table.replace_schema_metadata(with_metadata(name, table.schema).metadata)
    pq.write_table(table, path, compression="zstd")


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
    part = PartData(run_id, settings.capture.queries)
    ready: list[tuple[int, Sample, Any, str]] = []
    for sample_idx, sample in zip(indices, samples):
        if sample.error is not None:  # a malformed benchmark row
            part.samples.append(_error_row(run_id, sample_idx, sample, f"data: {sample.error}"))
            part.errors += 1
            continue
        try:
            image = sample.load_image().convert("RGB")
        except Exception as exc:  # noqa: BLE001  a broken image fails its sample only
            part.samples.append(_error_row(run_id, sample_idx, sample, f"image: {_describe(exc)}"))
            part.errors += 1
            continue
        ready.append((sample_idx, sample, image, _image_sha256(image)))
    for start in range(0, len(ready), batch_size):
        _extract_batch(settings, ready[start : start + batch_size], part)
    part.samples.sort(key=lambda row: row["sample_idx"])
    return part


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return text if type(exc).__name__ == "ImageLoadError" else f"{type(exc).__name__}: {text}"


class _StopAfterAnswers:
    """Stops a row once it produced EOS and the forward passes the capture needs have run."""

    def __init__(self, prompt_length: int, eos_ids: torch.Tensor, passes_needed: int):
        self.prompt_length, self.eos_ids, self.passes_needed = prompt_length, eos_ids, passes_needed

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        generated = input_ids[:, self.prompt_length :]
        finished = torch.isin(generated, self.eos_ids).any(dim=1)
        return finished & (generated.shape[1] >= self.passes_needed)


def encode_batch(loaded: LoadedModel, images: list, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Processor output for one left-padded batch, on the model's device; float tensors in the model's dtype.

    Everything the processor returns goes to the model (``image_sizes``, ``image_grid_thw``,
    ``token_type_ids``, ``mm_token_type_ids``, ...): families need different extras.
    """
    encoded = loaded.processor(images=loaded.adapter.processor_images(images), text=prompts, return_tensors="pt", padding=True)
    return {
        key: value.to(loaded.device, dtype=loaded.dtype if value.is_floating_point() else None)
        for key, value in encoded.items()
        if isinstance(value, torch.Tensor)
    }


@dataclass
class Generation:
    answers: list[list[int]]  # generated token ids per row, cut at the first EOS and at max_new_tokens
    first_logits: torch.Tensor  # [batch, vocab] fp32 on CPU: the logits at the answer position
    lens: dict[str, LensResult]  # per captured query, when the capture keeps hidden states


def generate_with_capture(
    loaded: LoadedModel,
    encoded: dict[str, torch.Tensor],
    capture: CaptureSpec | None,
    max_new_tokens: int,
    region: torch.Tensor | None = None,
    mask: HeadMask | None = None,
):
    """Greedy generation, with the capture session active (unless ``capture`` is None) and the heads of
    ``mask`` switched off. Returns (generation, session or None, segments).

    Generation runs at least as many forward passes as the captured queries need (``gen1`` needs the
    decode step of the first generated token, even when that token is EOS), so ``generate`` is not
    told the EOS tokens; a stopping criterion ends rows at EOS instead, and answers are cut at the
    first EOS and at ``max_new_tokens``.
    """
    from transformers import StoppingCriteriaList

    tokenizer = loaded.processor.tokenizer
    eos_ids = torch.tensor(loaded.eos_token_ids, dtype=torch.long, device=loaded.device)
    adapter, model = loaded.adapter, loaded.model
    segments = prompt_segments(encoded["input_ids"], encoded["attention_mask"], adapter.image_token_ids(loaded.config))
    prompt_length = encoded["input_ids"].shape[1]
    passes = capture.forward_passes_needed if capture is not None else 1
    stop = StoppingCriteriaList([_StopAfterAnswers(prompt_length, eos_ids, passes)])
    info = loaded.info
    capturing = (
        capture_session(
            adapter.text_model(model), adapter.attention_modules(model), capture, segments, region, adapter.decoder_layers(model)
        )
        if capture is not None
        else nullcontext()
    )
    with torch.inference_mode(), head_masking(adapter.attention_modules(model), mask, info["n_heads"], info["n_kv_heads"]), capturing as session:
        output = model.generate(
            **encoded,
            max_new_tokens=max(max_new_tokens, passes),
            do_sample=False,
            num_beams=1,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=None,
            stopping_criteria=stop,
            output_logits=True,
            return_dict_in_generate=True,
        )
    if session is not None and not session.complete():
        raise RuntimeError("capture did not see every layer of every captured query")
    end = set(loaded.eos_token_ids)
    answers = []
    for row in output.sequences[:, prompt_length:].tolist():
        row = row[:max_new_tokens]
        cut = next((i for i, token in enumerate(row) if token in end), len(row))
        answers.append(row[:cut])
    lens = {}
    if session is not None and capture.lens:
        softcap = getattr(loaded.config.get_text_config(), "final_logit_softcapping", None)
        norm, lm_head = adapter.final_norm(model), adapter.lm_head(model)
        lens = {name: logit_lens(hidden, norm, lm_head, softcap) for name, hidden in session.stacked_hidden().items()}
    return Generation(answers, output.logits[0].float().cpu(), lens), session, segments


def score_answer(tokenizer, sample: Sample, answer: list[int], log_probs: torch.Tensor, letter_ids: list[torch.Tensor]) -> dict[str, Any]:
    """The answer's columns: decoded text, parser name and version, parsed answer, correct, option log-probs.

    ``log_probs`` [vocab]: log-softmax of the logits at the answer position of this sample.
    """
    text = tokenizer.decode(answer, skip_special_tokens=True).strip()
    parser = PARSERS[sample.parser]
    parsed = parser.parse(text, sample.choices)
    return {
        "output_text": text,
        "parser": parser.name,
        "parser_version": parser.version,
        "parsed": parsed,
        "correct": (parsed == sample.gold) if sample.gold is not None else None,
        "option_logprobs": option_log_probs(log_probs, letter_ids, len(sample.choices)),
    }


def option_log_probs(log_probs: torch.Tensor, letter_ids: list[torch.Tensor], n_choices: int) -> list[float] | None:
    """Log-probability of each option letter at the answer position (any single token spelling it)."""
    if not n_choices:
        return None
    return [float(torch.logsumexp(log_probs[ids], dim=0)) for ids in letter_ids[:n_choices]]


def _extract_batch(settings: BatchSettings, batch, part: PartData) -> None:
    loaded, capture = settings.loaded, settings.capture
    prompts = [settings.prompt_format.render(loaded.processor, render_question(settings.template, sample)) for _, sample, _, _ in batch]
    images = [image for _, _, image, _ in batch]
    try:
        encoded = encode_batch(loaded, images, prompts)
        region = _region(loaded, encoded, batch)
    except Exception as exc:  # noqa: BLE001  isolate the sample the processor rejects
        if len(batch) == 1:
            sample_idx, sample, _, _ = batch[0]
            part.samples.append(_error_row(part.run_id, sample_idx, sample, f"processor: {type(exc).__name__}: {exc}"))
            part.errors += 1
            return
        for item in batch:
            _extract_batch(settings, [item], part)
        return
    generation, session, segments = generate_with_capture(loaded, encoded, capture, settings.max_new_tokens, region)
    statistics = {name: tensor.numpy() for name, tensor in session.stacked_statistics().items()}  # [layer, batch, head, stat]
    rows = {name: tensor.numpy() for name, tensor in session.stacked_rows(torch.float16).items()}  # [layer, batch, head, key]
    spans = image_spans(segments)
    tokenizer = loaded.processor.tokenizer
    prompt_length = segments.shape[1]
    log_probs = torch.log_softmax(generation.first_logits, dim=-1)
    for position, ((sample_idx, sample, _, image_hash), prompt, answer, span) in enumerate(zip(batch, prompts, generation.answers, spans)):
        part.samples.append(
            {
                "run_id": part.run_id,
                "sample_idx": sample_idx,
                "sample_key": sample.key,
                "status": "ok",
                "error": None,
                "prompt": prompt,
                "question": sample.question,
                "hint": sample.hint,
                "choices": list(sample.choices),
                "gold": sample.gold,
                "category": sample.category,
                "group_key": sample.group,
                **score_answer(tokenizer, sample, answer, log_probs[position], settings.letter_ids),
                "n_tokens": span.n_tokens,
                "n_image": span.n_image,
                "image_start": span.image_start,
                "image_end": span.image_end,
                "image_sha256": image_hash,
                "n_region": int(region[position].sum()) if region is not None and sample.boxes else None,
            }
        )
        part.metrics.append(
            _metrics_table(part.run_id, sample_idx, span.n_image, {name: stats[:, position] for name, stats in statistics.items()})
        )
        if generation.lens:
            part.lens.append(_lens_table(part.run_id, sample_idx, position, generation.lens, tokenizer))
        if rows:
            pad = prompt_length - span.n_tokens
            part.rows.append(
                (sample_idx, [rows[name][:, position, :, pad : prompt_length + QUERY_STEPS[name]] for name in capture.queries])
            )


def letter_token_ids(tokenizer) -> list[torch.Tensor]:
    """Per option letter, the ids of the single tokens that spell it at the start of an answer (``B``, ``▁B``)."""
    ids = []
    for letter in LETTERS:
        candidates = {tokenizer.convert_tokens_to_ids(letter)}
        for text in (letter, " " + letter):
            encoded = tokenizer.encode(text, add_special_tokens=False)
            if len(encoded) == 1:
                candidates.add(encoded[0])
        candidates.discard(tokenizer.unk_token_id)
        candidates.discard(None)
        ids.append(torch.tensor(sorted(candidates), dtype=torch.long))
    return ids


def _region(loaded: LoadedModel, encoded: dict[str, torch.Tensor], batch) -> torch.Tensor | None:
    """[batch, prompt_position] bool: the image positions inside each sample's boxes; None when no sample has boxes."""
    if not any(sample.boxes for _, sample, _, _ in batch):
        return None
    image_ids = torch.tensor(loaded.adapter.image_token_ids(loaded.config), device=encoded["input_ids"].device)
    is_image = torch.isin(encoded["input_ids"], image_ids) & encoded["attention_mask"].bool()
    region = torch.zeros_like(is_image)
    for row, (_, sample, image, _) in enumerate(batch):
        if not sample.boxes:
            continue
        inside = region_mask(loaded, image, sample.boxes)  # [n_image] bool, in the order of the image tokens
        positions = is_image[row].nonzero().flatten()
        if len(inside) != len(positions):
            raise ValueError(f"region mask has {len(inside)} image tokens, the prompt {len(positions)}")
        region[row, positions] = inside.to(region.device)
    return region


def _metrics_table(run_id: str, sample_idx: int, n_image: int, statistics: dict[str, np.ndarray]) -> pa.Table:
    """Head metrics of one sample from per-query [layer, head, stat] arrays."""
    columns: dict[str, list[np.ndarray]] = {name: [] for name in ("query", "layer", "head", *STAT_NAMES)}
    for name, values in statistics.items():
        n_layers, n_heads, _ = values.shape
        layer, head = np.meshgrid(np.arange(n_layers), np.arange(n_heads), indexing="ij")
        columns["query"].append(np.full(n_layers * n_heads, name, dtype=object))
        columns["layer"].append(layer.ravel())
        columns["head"].append(head.ravel())
        for index, stat in enumerate(STAT_NAMES):
            columns[stat].append(values[:, :, index].ravel())
    data = {key: np.concatenate(parts_) for key, parts_ in columns.items()}
    n = len(data["layer"])
    argmax = data["image_argmax"].astype(np.int32)
    table = {
        "run_id": pa.array([run_id] * n, pa.string()),
        "sample_idx": pa.array(np.full(n, sample_idx, dtype=np.int64)),
        "query": pa.array(data["query"], pa.string()),
        "layer": pa.array(data["layer"].astype(np.int16)),
        "head": pa.array(data["head"].astype(np.int16)),
        "n_image": pa.array(np.full(n, n_image, dtype=np.int32)),
        "image_argmax": pa.array(argmax, mask=argmax < 0),
    }
    for stat in STAT_NAMES:
        if stat != "image_argmax":
            table[stat] = pa.array(data[stat].astype(np.float32), from_pandas=True)  # NaN (no region) -> null
    return pa.table(table).select(HEAD_METRICS.names).cast(HEAD_METRICS)


def _lens_table(run_id: str, sample_idx: int, position: int, lens: dict[str, LensResult], tokenizer) -> pa.Table:
    """Logit-lens rows of one sample: one per (query, layer 0..L)."""
    columns: dict[str, list] = {name: [] for name in LOGIT_LENS.names}
    for query, result in lens.items():
        n = result.target_rank.shape[0]
        target = int(result.target_token[position])
        top = result.top_token[:, position].tolist()
        columns["run_id"] += [run_id] * n
        columns["sample_idx"] += [sample_idx] * n
        columns["query"] += [query] * n
        columns["layer"] += list(range(n))
        columns["target_token"] += [target] * n
        columns["target_text"] += [tokenizer.convert_ids_to_tokens(target)] * n
        columns["target_rank"] += result.target_rank[:, position].tolist()
        columns["target_prob"] += result.target_prob[:, position].tolist()
        columns["top_token"] += top
        columns["top_text"] += tokenizer.convert_ids_to_tokens(top)
        columns["top_prob"] += result.top_prob[:, position].tolist()
    return pa.table(columns, schema=LOGIT_LENS)


def _error_row(run_id: str, sample_idx: int, sample: Sample, error: str) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "sample_idx": sample_idx,
        "sample_key": sample.key,
        "status": "error",
        "error": error[:1000],
        "question": sample.question,
        "hint": sample.hint,
        "choices": list(sample.choices),
        "gold": sample.gold,
        "category": sample.category,
        "group_key": sample.group,
        "parser": sample.parser,
        "parser_version": PARSERS[sample.parser].version if sample.parser in PARSERS else None,
    }


def _image_sha256(image) -> str:
    """Hash of the decoded pixels (mode, size, bytes): equal images hash equal whatever their file format."""
    digest = hashlib.sha256(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()
