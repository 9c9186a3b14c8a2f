"""Raw attention rows: one immutable Zarr group per part.

``rows.zarr/attention`` is float16 with dimensions (sample, query, layer, head, key): the row of
each captured query over the sample's keys without padding, NaN past the row's length; one chunk a
sample, all of a part's chunks in one shard (one object). Parts written before shards read alike.
``rows.zarr/sample_idx`` maps the first dimension to the plan.

``rows.zarr/gen_attention`` (runs extracted with ``--queries gen --gen-rows``) is float16 with dimensions
(sample, step, layer, head, key): the row of every generated step (step ``t`` sees the sample's keys and ``t``
generated ones), NaN past a row's end and for steps the answer did not take; one chunk and one shard a sample
(a sample's steps are megabytes, a part's gigabytes at a 7B model's shape). ``rows.zarr/gen_sample_idx`` maps
its first dimension to the plan.

Every chunk is checksummed (crc32c after zstd; parts written before had none), and readers check a part's Zarr files
against its commit record (present, of the recorded size) before reading them: a missing chunk would read as NaN,
Zarr's fill value. Damage found either way is an ``IntegrityError`` naming the file or the part.
"""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from attnwh.core.errors import IntegrityError, WarehouseError, first_line
from attnwh.warehouse import parts, storage
from attnwh.warehouse.layout import ROWS_FOLDER, RunPaths, rows_folder
from attnwh.warehouse.storage import Location

DIMENSIONS = ("sample", "query", "layer", "head", "key")
GEN_DIMENSIONS = ("sample", "step", "layer", "head", "key")
# each chunk compressed, then checksummed: bytes damaged in place fail its read (IntegrityError naming the part) where
# zstd alone decoded most of them into other numbers (the shard's index has its own checksum)
CHUNK_CODECS = (ZstdCodec(level=0), Crc32cCodec())


def write_rows(folder: Path, attention: np.ndarray, sample_idx: np.ndarray, queries: list[str]) -> None:
    """Write ``attention`` [sample, query, layer, head, key] (float16, NaN-padded) into ``folder/rows.zarr``."""
    if attention.ndim != 5 or attention.shape[0] != len(sample_idx):
        raise ValueError(f"attention rows must be [sample, query, layer, head, key], got {attention.shape}")
    group = zarr.open_group(rows_folder(folder), mode="a")
    group.attrs.update({"queries": list(queries), "dimension_names": list(DIMENSIONS)})
    rows = group.create_array(
        "attention",
        shape=attention.shape,
        dtype="float16",
        chunks=(1, *attention.shape[1:]),  # a sample's rows are read together
        # one object holds the part's chunks (Zarr sharding): an object-store warehouse lists a few objects a
        # part, not one per sample (30,000 a run at the study's scale, listed by every reading session)
        shards=attention.shape,
        compressors=CHUNK_CODECS,
        fill_value=np.nan,
        dimension_names=DIMENSIONS,
    )
    rows[...] = attention.astype(np.float16, copy=False)
    index = group.create_array("sample_idx", shape=sample_idx.shape, dtype="int64", dimension_names=("sample",))
    index[...] = sample_idx


def write_gen_rows(folder: Path, rows: list[tuple[int, list[np.ndarray]]]) -> None:
    """Write the rows of every generated step, per sample (sample_idx, per step [layer, head, key]), into
    ``folder/rows.zarr/gen_attention`` [sample, step, layer, head, key] (float16, NaN-padded)."""
    n_steps = max(len(steps) for _, steps in rows)
    width = max(step.shape[-1] for _, steps in rows for step in steps)
    n_layers, n_heads = rows[0][1][0].shape[:2]
    group = zarr.open_group(rows_folder(folder), mode="a")
    array = group.create_array(
        "gen_attention",
        shape=(len(rows), n_steps, n_layers, n_heads, width),
        dtype="float16",
        chunks=(1, n_steps, n_layers, n_heads, width),
        shards=(1, n_steps, n_layers, n_heads, width),
        compressors=CHUNK_CODECS,
        fill_value=np.nan,
        dimension_names=GEN_DIMENSIONS,
    )
    for position, (_, steps) in enumerate(rows):
        sample = np.full((n_steps, n_layers, n_heads, width), np.nan, dtype=np.float16)
        for step, row in enumerate(steps):
            sample[step, :, :, : row.shape[-1]] = row
        array[position] = sample
    index = group.create_array("gen_sample_idx", shape=(len(rows),), dtype="int64", dimension_names=("sample",))
    index[...] = np.array([sample_idx for sample_idx, _ in rows], dtype=np.int64)


def has_rows(record: parts.CommitRecord, name: str = "attention") -> bool:
    """Whether a committed part holds raw rows (runs extracted with ``--no-rows`` have none; ``name``
    ``gen_attention``: the rows of every generated step, ``--gen-rows``)."""
    return any(entry["path"].startswith(f"{ROWS_FOLDER}/{name}/") for entry in record.files)


def _damaged(run: RunPaths, location, exc: BaseException) -> IntegrityError:
    return IntegrityError(f"run {run.root.name}: the raw rows in {location} are unreadable (a damaged zarr.json: {first_line(exc, 200)})")


class CheckedRows:
    """A part's Zarr array of rows whose reads fail as ``IntegrityError`` naming the part (a chunk damaged in place,
    its size kept: its checksum or its compression fails), not as the codec's own error."""

    def __init__(self, array: zarr.Array, run: RunPaths, location: Location):
        self.array, self.shape, self.dtype, self.ndim, self.chunks = array, array.shape, array.dtype, array.ndim, array.chunks
        self.run_name, self.location = run.root.name.removeprefix("run="), str(location)

    def __getitem__(self, key) -> np.ndarray:
        try:
            return self.array[key]
        except MemoryError:
            raise  # a read too large for this machine, not damage
        except Exception as exc:  # the codecs' and the shard index's errors (checksums, zstd, sizes) have no common kind
            raise IntegrityError(f"run {self.run_name}: the raw rows in {self.location} are damaged ({first_line(exc, 200)}); run `attnwh verify`") from exc

    def lazy(self) -> da.Array:
        """The rows as a lazy Dask array of the Zarr's chunks."""
        name = f"attnwh-rows-{self.location}/{self.array.path}"  # a graph's key: one per array (attention, gen_attention) of a part
        return da.from_array(self, chunks=self.chunks, name=name, meta=np.empty((0,) * self.ndim, dtype=self.dtype))


def rows_file_problem(run: RunPaths, record: parts.CommitRecord, names: tuple[str, ...]) -> str | None:
    """The first file of the part's rows arrays ``names`` (or of the group's metadata) that is missing or of another
    size than the part's commit record says, or None. Zarr reads a missing chunk as NaN (its fill value) and a cut
    one as a codec's error: either must be said, naming the file."""
    prefixes = (f"{ROWS_FOLDER}/zarr.json", *(f"{ROWS_FOLDER}/{name}/" for name in names))
    listed = None
    if storage.is_object_store(run.root):  # one listing of the part's rows, not a request a file
        folder = parts.part_folder(run, record)
        relative = record.folder or str(folder).removeprefix(f"{run.root}/")
        listed = {f"{relative}/{ROWS_FOLDER}/{path}": size for path, size in storage.sizes_under(rows_folder(folder)).items()}
    return parts.size_problem(run, [record], listed, lambda path: path.startswith(prefixes))


def open_part_rows(run: RunPaths, record: parts.CommitRecord, name: str = "attention") -> tuple[CheckedRows, np.ndarray, dict]:
    """A committed part's rows array ``name`` (``attention`` or ``gen_attention``), its sample_idx and the group's
    attributes, its files checked against the part's commit record; damage raises ``IntegrityError`` naming the file."""
    index = {"attention": "sample_idx", "gen_attention": "gen_sample_idx"}[name]
    if (problem := rows_file_problem(run, record, (name, index))) is not None:
        raise IntegrityError(f"run {run.root.name.removeprefix('run=')}: {problem}; run `attnwh verify`")
    location = rows_folder(parts.part_folder(run, record))
    try:
        group = zarr.open_group(storage.zarr_store(location), mode="r")
        array, sample_idx, attributes = group[name], group[index], dict(group.attrs)
    except Exception as exc:  # a damaged zarr.json fails in many ways (JSON, encoding, validation, missing keys)
        raise _damaged(run, location, exc) from exc
    return CheckedRows(array, run, location), np.asarray(CheckedRows(sample_idx, run, location)[...]), attributes


def part_rows_at(run: RunPaths, folder: Location, name: str = "attention") -> tuple[CheckedRows, np.ndarray, dict]:
    """``open_part_rows`` of the committed part whose files are in ``folder`` (``parts.part_folder``: ``part-N``, or
    ``part-N.ATTEMPT`` in staging), its commit record read afresh."""
    part_id = parts.part_id_of(folder.name.partition(".")[0])
    record = parts.CommitRecord.load(run.commit_record(part_id)) if part_id is not None else None
    if record is None or parts.part_folder(run, record) != folder:
        raise IntegrityError(f"run {run.root.name.removeprefix('run=')}: {folder} is not the folder of a committed part; run `attnwh verify`")
    return open_part_rows(run, record, name)


def open_gen_rows(run: RunPaths) -> tuple[da.Array, np.ndarray]:
    """All committed rows of every generated step of a run as one lazy Dask array [sample, step, layer, head, key],
    with its sample_idx; parts with fewer steps or keys are NaN-padded to the longest."""
    arrays, indices = [], []
    for record in parts.commit_records(run):
        if not has_rows(record, "gen_attention"):
            continue
        rows, sample_idx, _ = open_part_rows(run, record, "gen_attention")
        arrays.append(rows.lazy())
        indices.append(sample_idx)
    if not arrays:
        raise WarehouseError(f"run {run.root.name} has no committed rows of generated steps (extract with --queries gen --gen-rows)")
    steps, width = max(array.shape[1] for array in arrays), max(array.shape[-1] for array in arrays)
    padded = [da.pad(array, [(0, 0), (0, steps - array.shape[1]), (0, 0), (0, 0), (0, width - array.shape[-1])], constant_values=np.nan) for array in arrays]
    return da.concatenate(padded, axis=0), np.concatenate(indices)


def open_rows(run: RunPaths) -> tuple[da.Array, np.ndarray, list[str]]:
    """All committed rows of a run as one lazy Dask array, with its sample_idx and query names.

    Parts with different key lengths are NaN-padded to the longest. Each part's Zarr files are checked against its
    commit record (present, of the recorded size) and a chunk that fails to decode raises ``IntegrityError`` naming
    the part, when the array is computed.
    """
    arrays, indices, queries = [], [], None
    for record in parts.commit_records(run):
        if not has_rows(record):
            continue
        rows, sample_idx, attributes = open_part_rows(run, record)
        arrays.append(rows.lazy())
        indices.append(sample_idx)
        try:
            queries = queries or list(attributes["queries"])
        except (KeyError, TypeError) as exc:
            raise _damaged(run, rows.location, exc) from exc
    if not arrays:
        raise WarehouseError(f"run {run.root.name} has no committed raw rows")
    width = max(array.shape[-1] for array in arrays)
    padded = [da.pad(array, [(0, 0)] * 4 + [(0, width - array.shape[-1])], constant_values=np.nan) if array.shape[-1] < width else array for array in arrays]
    return da.concatenate(padded, axis=0), np.concatenate(indices), queries
