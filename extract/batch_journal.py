"""A sweep's finished batches, kept in the run until the conditions they belong to are committed.

With reuse (``extract.reuse``) a sweep evaluates a group of conditions batch by batch, and each condition's part
is committed only when the group has done every batch: a crash, a Ctrl-C or a preempted job would lose every
batch done so far (on the local loop the group is the whole sweep). So each finished batch's rows, for every
condition of its group, are written to the run's ``_progress/`` folder (``RunPaths.progress``): one file per
group and batch, written whole (a local file through a rename, an object in one put). A resumed sweep (the
same command again, a Dask task retried on another worker, a rank restarted) takes a batch's rows from there
when every condition it evaluates has them for every sample of the batch, under the same sample keys, and
evaluates only the other batches. The rows are the run's own (``_progress`` lives in the run's folder, whose
fingerprint fixes the model, benchmark and settings); they are not read by queries, which read committed parts.

A file that cannot be read (cut short, damaged, another format) is ignored: its batch is evaluated again and
the file written anew. A group's files are removed once its conditions are committed; files whose conditions
are all committed (left by an earlier process that grouped the conditions otherwise) are removed when a sweep
opens the journal.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from attnwh.warehouse import parts, storage
from attnwh.warehouse.layout import RunPaths, progress_files
from attnwh.warehouse.storage import Location

FORMAT = 1  # the files' layout: {"format", "conditions": [id, ...], "rows": [[row, ...] per condition]}

Rows = list[dict[str, Any]]


def group_folder_name(condition_ids: Sequence[int]) -> str:
    """The folder of a group's files: named by its conditions, so that a process evaluating the same group finds them."""
    return "group-" + hashlib.sha256(",".join(str(i) for i in sorted(condition_ids)).encode()).hexdigest()[:16]


def batch_file_name(sample_idx: Sequence[int]) -> str:
    return f"samples-{min(sample_idx)}-{max(sample_idx)}-{len(sample_idx)}.json"


def encode_batch_rows(condition_ids: Sequence[int], rows: Sequence[Rows]) -> bytes:
    return json.dumps({"format": FORMAT, "conditions": list(condition_ids), "rows": [list(r) for r in rows]}, default=_plain).encode()


def decode_batch_rows(content: bytes) -> dict[int, Rows] | None:
    """Rows by condition id, or None where ``content`` is not a whole batch file of this format."""
    try:
        loaded = json.loads(content)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(loaded, dict) or loaded.get("format") != FORMAT:
        return None
    conditions, rows = loaded.get("conditions"), loaded.get("rows")
    if not (isinstance(conditions, list) and isinstance(rows, list) and len(conditions) == len(rows)):
        return None
    if not all(type(c) is int for c in conditions) or len(set(conditions)) != len(conditions):
        return None
    if not all(isinstance(r, list) and all(isinstance(row, dict) and type(row.get("sample_idx")) is int and isinstance(row.get("sample_key"), str) for row in r) for r in rows):
        return None
    return dict(zip(conditions, rows))


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):  # a numpy or torch scalar
        return value.item()
    raise TypeError(f"a sweep row holds a {type(value).__name__}, which the batch journal cannot keep")


@dataclass
class BatchJournal:
    """The run's journal as this process found it: every readable batch file's rows, by condition and sample."""

    run: RunPaths
    done: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)  # (condition_id, sample_idx) -> row

    @classmethod
    def open(cls, run: RunPaths) -> BatchJournal:
        journal = cls(run)
        committed = parts.committed_part_ids(run)
        for folder, files in progress_files(run).items():
            seen: set[int] = set()
            for path in files:
                try:
                    content = storage.read_tagged(path, None)
                except FileNotFoundError:  # removed by another process since the listing
                    continue
                batch = decode_batch_rows(content)
                if batch is None:
                    continue
                seen.update(batch)
                for condition_id, rows in batch.items():
                    for row in rows:
                        journal.done[(condition_id, row["sample_idx"])] = row
            if seen and seen <= committed:
                storage.remove_tree(folder)
        return journal

    def group(self, condition_ids: Sequence[int]) -> GroupJournal:
        return GroupJournal(self, tuple(condition_ids))


@dataclass
class GroupJournal:
    """One group's view: its batches' rows taken from the journal, and its finished batches written to it."""

    journal: BatchJournal
    condition_ids: tuple[int, ...]

    @property
    def folder(self) -> Location:
        return self.journal.run.progress / group_folder_name(self.condition_ids)

    def rows(self, samples: Sequence[tuple[int, str]]) -> list[Rows] | None:
        """Each condition's rows for the batch of ``samples`` (sample_idx, sample_key), in that order, or None
        unless the journal holds every one of them under the same key."""
        found = []
        for condition_id in self.condition_ids:
            rows = [self.journal.done.get((condition_id, idx)) for idx, _ in samples]
            if any(row is None or row["sample_key"] != key for row, (_, key) in zip(rows, samples)):
                return None
            found.append([dict(row) for row in rows])
        return found

    def record(self, samples: Sequence[tuple[int, str]], rows: Sequence[Rows]) -> None:
        """Keep a finished batch's rows (one list per condition, in the group's order)."""
        folder = self.folder
        storage.make_folders(folder)
        storage.put(folder / batch_file_name([idx for idx, _ in samples]), encode_batch_rows(self.condition_ids, rows))

    def clear(self) -> None:
        """The group's conditions are committed: its files go (and the journal's folder, where nothing else is left)."""
        storage.remove_tree(self.folder)
        progress = self.journal.run.progress
        if not storage.is_object_store(progress):  # on an object store a prefix is gone with its last object
            try:
                progress.rmdir()
            except OSError:  # another group's files are there, or it is gone already
                pass
