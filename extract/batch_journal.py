"""A sweep's finished batches, kept in the run until the conditions they belong to are committed.

With reuse (``extract.reuse``) a sweep evaluates a group of conditions batch by batch, and each condition's part
is committed only when the group has done every batch: a crash, a Ctrl-C or a preempted job would lose every
batch done so far (on the local loop the group is the whole sweep). So each finished batch's rows, for every
condition of its group, are written to the run's ``_progress/`` folder (``RunPaths.progress``): a folder per group
holding its condition ids (``conditions.json``) and one file per batch, each written whole (a local file through a
rename, an object in one put). A resumed sweep (the same command again, a Dask task retried on another worker, a
rank restarted) takes a batch's rows from there when a file holds the same batch (the same samples, under the same
keys, batched together: the padding, and so the numbers, depend on the batch) with rows for every condition it
evaluates, and evaluates only the other batches. The rows are the run's own (``_progress`` lives in the run's
folder, whose fingerprint fixes the model, benchmark and settings) and are read by no query; a file holds the
rows' schema, and rows that do not fit the sweep tables' schema of this attnwh are not taken.

A file that cannot be read (cut short, damaged, another format or schema) is ignored: its batch is evaluated
again and the file written anew. Each file begins with the sha256 of the rest, so that a byte changed in place (a
digit of a count, which would still be valid JSON of the right types) is a damaged file too, not rows committed. A group's folder goes once its conditions are committed; ``tidy`` removes every
folder whose conditions are all committed (left by a process that grouped them otherwise, or stopped between its
last commit and the removal), and the whole ``_progress/`` once the sweep is complete.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from attnwh.warehouse import parts, storage
from attnwh.warehouse.layout import PROGRESS_MANIFEST, RunPaths, is_progress_batch, progress_listing
from attnwh.warehouse.schema import OBJECT_COUNTS, SWEEP_RESULTS, SWEEP_TARGETS
from attnwh.warehouse.storage import Location

# a line with the sha256 of the rest, then {"format", "schema", "conditions": [id, ...], "samples": [[sample_idx, sample_key], ...],
# "rows": [[row per sample] per condition]}: a byte changed anywhere (a digit of a count, a flipped answer) is a file not taken
FORMAT = 3
SCHEMA = hashlib.sha256(f"{SWEEP_RESULTS}\n{SWEEP_TARGETS}".encode()).hexdigest()[:16]  # the rows' tables as this attnwh writes them

Rows = list[dict[str, Any]]
Samples = tuple[tuple[int, str], ...]  # a batch: (sample_idx, sample_key) of each row, in order


def group_folder_name(condition_ids: Iterable[int]) -> str:
    """The folder of a group's files: named by its conditions, so that a process evaluating the same group finds them."""
    return "group-" + hashlib.sha256(",".join(str(i) for i in sorted(condition_ids)).encode()).hexdigest()[:16]


def batch_file_name(samples: Samples) -> str:
    digest = hashlib.sha256(json.dumps(samples).encode()).hexdigest()[:12]  # the batch's samples (two batchings differ)
    return f"samples-{samples[0][0]}-{samples[-1][0]}-{len(samples)}-{digest}.json"


def encode_batch_rows(condition_ids: Sequence[int], samples: Samples, rows: Sequence[Rows]) -> bytes:
    record = {"format": FORMAT, "schema": SCHEMA, "conditions": list(condition_ids), "samples": [list(sample) for sample in samples], "rows": [list(r) for r in rows]}
    body = json.dumps(record, default=_plain).encode()
    return hashlib.sha256(body).hexdigest().encode() + b"\n" + body


def decode_batch_rows(content: bytes) -> tuple[Samples, dict[int, Rows]] | None:
    """The batch's samples and its rows by condition id, or None where ``content`` is not a whole batch file of this
    format whose rows fit the sweep tables (``SWEEP_RESULTS``, and ``SWEEP_TARGETS`` for rows with targets)."""
    digest, _, body = content.partition(b"\n")
    if hashlib.sha256(body).hexdigest().encode() != digest:  # changed since it was written (or cut short): evaluated again
        return None
    try:
        loaded = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(loaded, dict) or loaded.get("format") != FORMAT or loaded.get("schema") != SCHEMA:
        return None
    conditions, samples, rows = loaded.get("conditions"), loaded.get("samples"), loaded.get("rows")
    if not (isinstance(conditions, list) and isinstance(samples, list) and isinstance(rows, list) and len(conditions) == len(rows) and samples):
        return None
    if not all(type(c) is int for c in conditions) or len(set(conditions)) != len(conditions):
        return None
    if not all(isinstance(s, list) and len(s) == 2 and type(s[0]) is int and isinstance(s[1], str) for s in samples):
        return None
    batch = tuple((idx, key) for idx, key in samples)
    for condition_id, condition_rows in zip(conditions, rows):
        if not (isinstance(condition_rows, list) and len(condition_rows) == len(batch) and all(isinstance(row, dict) for row in condition_rows)):
            return None
        if [(row.get("sample_idx"), row.get("sample_key")) for row in condition_rows] != list(batch) or not _fits(condition_id, condition_rows):
            return None
    return batch, dict(zip(conditions, rows))


def _fits(condition_id: int, rows: Rows) -> bool:
    """Whether ``rows`` make the tables a part writes (every field of the rows' kind present, every type right)."""
    optional = {"run_id", "condition_id", "error", *(name for name, _ in OBJECT_COUNTS)}  # an ok row has no error; object counts: object benchmarks only
    results = [name for name in SWEEP_RESULTS.names if name not in optional]
    targets = [name for name in SWEEP_TARGETS.names if name not in ("run_id", "condition_id", "sample_idx")]
    try:
        for row in rows:
            if any(name not in row for name in results) or (any(name in row for name in targets) and any(name not in row for name in targets)):
                return False
        pa.Table.from_pylist([{"run_id": "", "condition_id": condition_id, **row} for row in rows], schema=SWEEP_RESULTS)
        with_targets = [{"run_id": "", "condition_id": condition_id, **row} for row in rows if "gold_logprob" in row]
        if with_targets:
            pa.Table.from_pylist(with_targets, schema=SWEEP_TARGETS)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return False
    return True


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):  # a numpy or torch scalar
        return value.item()
    raise TypeError(f"a sweep row holds a {type(value).__name__}, which the batch journal cannot keep")


@dataclass
class BatchJournal:
    """The run's journal as this process found it: every readable batch file's rows, by batch and condition."""

    run: RunPaths
    done: dict[Samples, dict[int, Rows]] = field(default_factory=dict)

    @classmethod
    def open(cls, run: RunPaths) -> BatchJournal:
        journal = cls(run)
        paths = [folder / name for folder, names in progress_listing(run).items() for name in names if is_progress_batch(name)]
        for content in storage.read_all(paths):
            decoded = decode_batch_rows(content) if isinstance(content, bytes) else None  # a file removed since the listing: not there
            if decoded is not None:
                samples, rows = decoded
                journal.done.setdefault(samples, {}).update(rows)
        return journal

    def group(self, condition_ids: Sequence[int]) -> GroupJournal:
        return GroupJournal(self, tuple(condition_ids))


@dataclass
class GroupJournal:
    """One group's view: its batches' rows taken from the journal, and its finished batches written to it."""

    journal: BatchJournal
    condition_ids: tuple[int, ...]
    _started: bool = False  # this process wrote the group's manifest

    @property
    def folder(self) -> Location:
        return self.journal.run.progress / group_folder_name(self.condition_ids)

    def rows(self, samples: Samples) -> list[Rows] | None:
        """Each condition's rows for the batch of ``samples`` (sample_idx, sample_key), in the group's order, or None
        unless the journal holds this very batch for every condition of the group."""
        found = self.journal.done.get(tuple(samples), {})
        if not all(condition_id in found for condition_id in self.condition_ids):
            return None
        return [[dict(row) for row in found[condition_id]] for condition_id in self.condition_ids]

    def record(self, samples: Samples, rows: Sequence[Rows]) -> None:
        """Keep a finished batch's rows (one list per condition, in the group's order).

        The group's folder may go while this process works on the group: the same group run twice at once (a Dask
        task the scheduler gave to another worker while its first worker, which it had lost touch with, went on) is
        cleared by the copy that commits first, and a folder emptied by another group's ``clear`` can go between
        its creation and the batch file's. Then the batch is kept in a folder made again, unless every condition of
        the group is committed already (nothing is left to keep: this process's own commits will find them there)."""
        target, content = self.folder / batch_file_name(tuple(samples)), encode_batch_rows(self.condition_ids, tuple(samples), rows)
        try:
            self._start()
            storage.put(target, content)
        except FileNotFoundError:
            if set(self.condition_ids) <= parts.committed_part_ids(self.journal.run):
                return
            self._started = False
            self._start()
            storage.put(target, content)

    def _start(self) -> None:
        """The group's folder and, first, its manifest, so that ``tidy`` knows the folder's conditions whatever its
        batch files hold."""
        if not self._started:
            storage.make_folders(self.folder)
            storage.put(self.folder / PROGRESS_MANIFEST, json.dumps(sorted(self.condition_ids)).encode())
            self._started = True

    def clear(self) -> None:
        """The group's conditions are committed: its files go (and the journal's folder, where nothing else is left)."""
        storage.remove_tree(self.folder)
        _remove_if_empty(self.journal.run.progress)


def tidy(run: RunPaths, condition_ids: Iterable[int]) -> None:
    """Remove what no sweep will read again: the whole ``_progress/`` once every one of ``condition_ids`` (the
    sweep's) is committed, else every group folder whose conditions are all committed (by its manifest; a folder
    without a readable one is left: another process may be about to write it)."""
    committed = parts.committed_part_ids(run)
    if set(condition_ids) <= committed:
        storage.remove_tree(run.progress)
        return
    for folder, names in progress_listing(run).items():
        if PROGRESS_MANIFEST not in names:
            continue
        (content,) = storage.read_all([folder / PROGRESS_MANIFEST])
        try:
            conditions = json.loads(content) if isinstance(content, bytes) else None
        except (ValueError, UnicodeDecodeError, RecursionError):
            conditions = None
        if isinstance(conditions, list) and conditions and all(type(c) is int for c in conditions) and set(conditions) <= committed:
            storage.remove_tree(folder)
    _remove_if_empty(run.progress)


def _remove_if_empty(folder: Location) -> None:
    if not storage.is_object_store(folder):  # on an object store a prefix is gone with its last object
        try:
            folder.rmdir()
        except OSError:  # another group's files are there, or it is gone already
            pass
