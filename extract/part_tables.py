"""The tables of one extraction part: sample rows, head metrics, logit lens, raw rows and rollups, and
how a part writes them (Parquet with the schema version in its metadata, Zarr for raw rows).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from attnwh.extract.benchmarks import Sample
from attnwh.extract.benchmarks.parsers import PARSERS
from attnwh.extract.lens import LensResult
from attnwh.extract.stats import STAT_NAMES
from attnwh.warehouse import arrays
from attnwh.warehouse.definitions import gen_rollup, rollups
from attnwh.warehouse.layout import table_file
from attnwh.warehouse.schema import (
    GEN_LENS,
    GEN_LENS_SORT,
    GEN_METRICS,
    GEN_METRICS_SORT,
    GEN_TOKENS,
    HEAD_METRICS,
    HEAD_METRICS_SORT,
    LOGIT_LENS,
    LOGIT_LENS_SORT,
    SAMPLES,
    with_metadata,
)


@dataclass
class PartData:
    """Everything one part writes: sample rows, head metrics and raw rows."""

    run_id: str
    queries: tuple[str, ...]
    samples: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[pa.Table] = field(default_factory=list)
    lens: list[pa.Table] = field(default_factory=list)
    rows: list[tuple[int, list[np.ndarray]]] = field(default_factory=list)  # (sample_idx, per query [layer, head, key])
    gen_metrics: list[pa.Table] = field(default_factory=list)  # ``gen``: every generated step's statistics
    gen_tokens: list[pa.Table] = field(default_factory=list)
    gen_lens: list[pa.Table] = field(default_factory=list)
    every_step: bool = False  # whether the run captures ``gen`` (its tables are written, empty when every sample failed)
    gen_rows: list[tuple[int, list[np.ndarray]]] = field(default_factory=list)  # (sample_idx, per step [layer, head, key]), with --gen-rows
    errors: int = 0

    def first_error(self) -> str | None:
        """The first error row's reason (by sample), or None."""
        return next((row["error"] for row in self.samples if row["status"] == "error"), None)

    def write(self, folder: Path) -> dict[str, int]:
        samples = pa.Table.from_pylist(self.samples, schema=SAMPLES)
        metrics = pa.concat_tables(self.metrics) if self.metrics else HEAD_METRICS.empty_table()
        metrics = metrics.sort_by(HEAD_METRICS_SORT)
        write_parquet(samples, "samples", folder)
        write_parquet(metrics, "head_metrics", folder)
        scores, ranks = rollups(metrics)
        write_parquet(scores, "head_scores", folder)
        write_parquet(ranks, "head_ranks", folder)
        if self.lens:
            write_parquet(pa.concat_tables(self.lens).sort_by(LOGIT_LENS_SORT), "logit_lens", folder)
        if self.rows:
            width = max(row.shape[-1] for _, per_query in self.rows for row in per_query)
            n_layers, n_heads = self.rows[0][1][0].shape[:2]
            attention = np.full((len(self.rows), len(self.queries), n_layers, n_heads, width), np.nan, dtype=np.float16)
            for position, (_, per_query) in enumerate(self.rows):
                for query_index, row in enumerate(per_query):
                    attention[position, query_index, :, :, : row.shape[-1]] = row
            arrays.write_rows(folder, attention, np.array([idx for idx, _ in self.rows], dtype=np.int64), list(self.queries))
        if self.gen_rows:
            arrays.write_gen_rows(folder, self.gen_rows)
        counts = {"samples": samples.num_rows, "head_metrics": metrics.num_rows, "head_scores": scores.num_rows, "head_ranks": ranks.num_rows}
        if self.lens:
            counts["logit_lens"] = sum(table.num_rows for table in self.lens)
        if self.every_step:
            gen_metrics = (pa.concat_tables(self.gen_metrics) if self.gen_metrics else GEN_METRICS.empty_table()).sort_by(GEN_METRICS_SORT)
            gen_tokens = (pa.concat_tables(self.gen_tokens) if self.gen_tokens else GEN_TOKENS.empty_table()).sort_by([("sample_idx", "ascending"), ("step", "ascending")])
            write_parquet(gen_metrics, "gen_metrics", folder)
            write_parquet(gen_tokens, "gen_tokens", folder)
            gen_scores, gen_head_scores = gen_rollup(gen_metrics, gen_tokens)
            write_parquet(gen_scores, "gen_scores", folder)
            write_parquet(gen_head_scores, "gen_head_scores", folder)
            counts.update(gen_metrics=gen_metrics.num_rows, gen_tokens=gen_tokens.num_rows, gen_scores=gen_scores.num_rows, gen_head_scores=gen_head_scores.num_rows)
            if self.gen_lens:
                gen_lens = pa.concat_tables(self.gen_lens).sort_by(GEN_LENS_SORT)
                write_parquet(gen_lens, "gen_lens", folder)
                counts["gen_lens"] = gen_lens.num_rows
        return counts


# the generated-step tables, the largest a run writes (65,536 gen_metrics rows per sample for 64 tokens of a 32 × 32-head
# model): dictionary pages for the integer and text columns, byte-stream-split floats (zstd then finds the exponent
# bytes alike), row groups large enough that a part's steps compress together: 24.4 bytes per gen_metrics row against
# 30.1 with pyarrow's zstd defaults and 28.0 unsorted (bench/bench_gen.py, 16-sample parts of structured statistics)
GEN_TABLES = ("gen_metrics", "gen_tokens", "gen_lens", "gen_scores", "gen_head_scores")


def write_parquet(table: pa.Table, name: str, folder: Path) -> None:
    """A part's table ``name``, with the schema version in its metadata."""
    table = table.replace_schema_metadata(with_metadata(name, table.schema).metadata)
    if name in GEN_TABLES:
        floats = [field.name for field in table.schema if pa.types.is_floating(field.type)]
        others = [field.name for field in table.schema if field.name not in floats]
        pq.write_table(table, table_file(folder, name), compression="zstd", compression_level=6, use_dictionary=others, use_byte_stream_split=floats, row_group_size=1 << 20)
    else:
        pq.write_table(table, table_file(folder, name), compression="zstd")


def gen_metrics_table(run_id: str, sample_idx: int, n_image: int, statistics: np.ndarray) -> pa.Table:
    """``gen_metrics`` of one sample from its [step, layer, head, stat] array (the steps its answer took)."""
    n_steps, n_layers, n_heads, _ = statistics.shape
    step, layer, head = (axis.ravel() for axis in np.meshgrid(np.arange(n_steps), np.arange(n_layers), np.arange(n_heads), indexing="ij"))
    flat = statistics.reshape(-1, statistics.shape[-1])
    n = len(step)
    argmax = flat[:, STAT_NAMES.index("image_argmax")].astype(np.int32)
    table = {
        "run_id": pa.array([run_id] * n, pa.string()),
        "sample_idx": pa.array(np.full(n, sample_idx, dtype=np.int64)),
        "step": pa.array(step.astype(np.int16)),
        "layer": pa.array(layer.astype(np.int16)),
        "head": pa.array(head.astype(np.int16)),
        "n_image": pa.array(np.full(n, n_image, dtype=np.int32)),
        "image_argmax": pa.array(argmax, mask=argmax < 0),
    }
    for index, stat in enumerate(STAT_NAMES):
        if stat != "image_argmax":
            table[stat] = pa.array(flat[:, index].astype(np.float32), from_pandas=True)  # NaN (no region) -> null
    return pa.table(table).select(GEN_METRICS.names).cast(GEN_METRICS)


def probabilities(values) -> list[float | None]:
    """A lens's probabilities as column values: NaN (left out: ``extract.lens.without_probabilities``) as null."""
    return [None if value != value else value for value in values.tolist()]


def gen_lens_table(run_id: str, sample_idx: int, steps: list[int], lens: list[LensResult], position: int) -> pa.Table:
    """``gen_lens`` of one sample: per step and layer, the rank and probability of the token the step produced.
    A step whose lens target (the final layer's top-1) is not the token generation chose (a logits processor of the
    model's generation config changed the choice) gets no rows: a rank of another token would be mislabelled."""
    columns: dict[str, list] = {name: [] for name in GEN_LENS.names}
    for step, token in enumerate(steps):
        result = lens[step]
        if int(result.target_token[position]) != token:
            continue
        n = result.target_rank.shape[0]
        columns["run_id"] += [run_id] * n
        columns["sample_idx"] += [sample_idx] * n
        columns["step"] += [step] * n
        columns["layer"] += list(range(n))
        columns["token_rank"] += result.target_rank[:, position].tolist()
        columns["token_prob"] += probabilities(result.target_prob[:, position])
    return pa.table(columns, schema=GEN_LENS)


def gen_tokens_table(run_id: str, sample_idx: int, steps: list[int], eos_ids, tokenizer, sample: Sample) -> pa.Table:
    """``gen_tokens`` of one sample: each step's token, the word of the answer it belongs to and what the word names.

    Each token's characters are found by decoding the answer's prefixes (the text a tokenizer gives for tokens
    1..i, less that of 1..i-1, each cut where it stops agreeing with the whole answer's text: a byte token of an
    unfinished character has none); a token belongs to the first word its characters overlap. Words and the objects
    they name come from the benchmark's object vocabulary when its samples are annotated, else every run of
    letters and digits is a word with no object."""
    eos_ids = set(eos_ids)
    answer = [token for token in steps if token not in eos_ids]
    text = tokenizer.decode(answer, skip_special_tokens=True)
    ends, end = [], 0
    for count in range(1, len(answer) + 1):
        # where the prefix's text stops agreeing with the answer's: a byte-fallback tokenizer decodes a character cut
        # between its byte tokens as one U+FFFD per byte, a prefix longer than the answer's text at that point
        end = max(end, len(os.path.commonprefix([tokenizer.decode(answer[:count], skip_special_tokens=True), text])))
        ends.append(end)
    words = _answer_words(text, sample)
    columns: dict[str, list] = {name: [] for name in GEN_TOKENS.names}
    start, seen_words, answer_index = 0, set(), 0
    for step, token in enumerate(steps):
        eos = token in eos_ids
        word = None
        if not eos:
            end = ends[answer_index]
            answer_index += 1
            word = next((w for w in words if w.start < end and w.end > start and text[max(start, w.start) : min(end, w.end)].strip()), None)
            start = end
        columns["run_id"].append(run_id)
        columns["sample_idx"].append(sample_idx)
        columns["step"].append(step)
        columns["token_id"].append(token)
        columns["token_text"].append(tokenizer.convert_ids_to_tokens(token))
        columns["eos"].append(eos)
        columns["word_index"].append(None if word is None else word.index)
        columns["word"].append(None if word is None else word.text)
        columns["word_start"].append(None if word is None else word.index not in seen_words)
        columns["object"].append(None if word is None else word.object)
        status = None
        if word is not None and word.object is not None and sample.objects is not None:
            status = sample.objects.vocabulary.status(word, sample.objects)
        columns["object_status"].append(status)
        if word is not None:
            seen_words.add(word.index)
    return pa.table(columns, schema=GEN_TOKENS)


_PLAIN_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")


@dataclass(frozen=True)
class _PlainWord:
    index: int
    start: int
    end: int
    text: str
    object: str | None = None


def _answer_words(text: str, sample: Sample) -> list:
    """The words of an answer: the benchmark's object vocabulary's (``WordSpan``s) when the sample is annotated."""
    if sample.objects is not None:
        return sample.objects.vocabulary.words(text)
    return [_PlainWord(index, match.start(), match.end(), match.group(0)) for index, match in enumerate(_PLAIN_WORD.finditer(text))]


def metrics_table(run_id: str, sample_idx: int, n_image: int, statistics: dict[str, np.ndarray]) -> pa.Table:
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


def lens_table(run_id: str, sample_idx: int, position: int, lens: dict[str, LensResult], tokenizer) -> pa.Table:
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
        columns["target_prob"] += probabilities(result.target_prob[:, position])
        columns["top_token"] += top
        columns["top_text"] += tokenizer.convert_ids_to_tokens(top)
        columns["top_prob"] += probabilities(result.top_prob[:, position])
    return pa.table(columns, schema=LOGIT_LENS)


def error_row(run_id: str, sample_idx: int, sample: Sample, error: str) -> dict[str, Any]:
    return {
        **sample_fields(run_id, sample_idx, sample),
        "status": "error",
        "error": error[:1000],
        "parser": sample.parser,
        "parser_version": PARSERS[sample.parser].version if sample.parser in PARSERS else None,
    }


def sample_fields(run_id: str, sample_idx: int, sample: Sample) -> dict[str, Any]:
    """The columns of a samples row that come from the benchmark's sample itself."""
    return {
        "run_id": run_id,
        "sample_idx": sample_idx,
        "sample_key": sample.key,
        "question": sample.question,
        "hint": sample.hint,
        "choices": list(sample.choices),
        "gold": sample.gold,
        "category": sample.category,
        "group_key": sample.group,
    }


def image_sha256(image) -> str:
    """Hash of the decoded pixels (mode, size, bytes): equal images hash equal whatever their file format."""
    digest = hashlib.sha256(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()
