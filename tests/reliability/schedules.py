"""Fault schedules for the part commit protocol (issue 27): Jepsen-style, seeded and reproducible.

A **schedule** is a seeded random choice of steps against one run of 2-5 parts:

- ``kill``: a writer process (forked) is SIGKILLed at one of the protocol's fault points;
- ``takeover``: at a fault point, another process's recovery takes the writer's attempt over, as if
  its lease had expired (a recovering clock far ahead);
- ``renewal``: the lease's renewals fail for a while (``transient``: the writer must commit) or for good
  (``lasting``: the writer must stop, committing nothing);
- ``lost_reply``: the record's exclusive create succeeds but its reply is lost, and the retry is answered
  "exists" (the writer must take it for its success);
- ``slow``: every request of the store is slow, and some renewals fail as a throttled store's do;
- ``race``: at a fault point of one writer, a second writer commits the same part (or two writer
  processes commit it at once);
- ``ranks``: W rank processes (forked, each recovering first, as a run's start does) commit their share,
  one is killed at a fault point, then W' ranks are started with another world size;
- ``ignores``: the store ignores ``If-None-Match`` (object stores; a no-op on a local folder): a writer on a
  machine that has not asked the store yet must be refused.

After the steps, the run is resumed as ``attnwh`` resumes one (recover, then commit what is missing),
and ``check`` requires: every planned part committed exactly once (one record, one writer that was told
it won), its files equal, byte for byte, those of a clean single-process run (and its table read back
equal), ``verify`` clean, and no file under the run that no record names. Writers are cheap: a part is
a small deterministic Parquet table and one nested file, written by ``parts.commit_part``.
``schedule_runner`` runs schedules (the faults of each step) against a local folder or an S3 store.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from attnwh.core.errors import WarehouseError
from attnwh.warehouse import commit, parts, storage
from attnwh.warehouse.layout import RunPaths
from attnwh.warehouse.runs import Plan, open_or_create_run

POINTS = (*parts.FAULT_POINTS, parts.FENCE_POINT)
BEFORE_RECORD = ("after_staging", "after_fsync", "after_record_tmp", parts.FENCE_POINT)
KINDS = {"kill": 3, "takeover": 3, "renewal": 2, "lost_reply": 2, "slow": 1, "race": 3, "ranks": 2, "ignores": 1}  # weights
PART_SIZE = 2


@dataclass(frozen=True)
class Step:
    kind: str
    part: int
    point: str | None = None
    detail: tuple = ()

    def __str__(self) -> str:
        return f"{self.kind}(part {self.part}" + (f", {self.point}" if self.point else "") + "".join(f", {item}" for item in self.detail) + ")"


@dataclass(frozen=True)
class Schedule:
    seed: int
    n_parts: int
    steps: tuple[Step, ...]

    def __str__(self) -> str:
        return f"seed {self.seed}: {self.n_parts} parts; " + ", ".join(map(str, self.steps))


def schedule(seed: int) -> Schedule:
    """The schedule of ``seed`` (the same on every machine)."""
    rng = random.Random(seed)
    n_parts = rng.randint(2, 5)
    steps = []
    for _ in range(rng.randint(1, 4)):
        kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
        part = rng.randrange(n_parts)
        if kind == "race" and rng.random() < 0.3:
            steps.append(Step(kind, part, detail=("at once",)))  # two writer processes, neither waiting for the other
        elif kind in ("kill", "takeover", "race"):
            steps.append(Step(kind, part, rng.choice(POINTS)))
        elif kind == "renewal":
            steps.append(Step(kind, part, detail=(rng.choice(("transient", "lasting")),)))
        elif kind == "slow":
            steps.append(Step(kind, part, detail=(rng.choice((0.002, 0.01, 0.02)),)))
        elif kind == "ranks":
            world = rng.randint(2, 3)
            steps.append(Step(kind, rng.randrange(world), rng.choice(POINTS), detail=(world, rng.choice([w for w in (1, 2, 3, 4) if w != world]))))
        else:
            steps.append(Step(kind, part))
    return Schedule(seed, n_parts, tuple(steps))


def write_part(part: int) -> Callable[[Path], dict[str, int]]:
    """What a part's writer writes: the same bytes for the same part, on every run."""

    def write(folder: Path) -> dict[str, int]:
        samples = [PART_SIZE * part + i for i in range(PART_SIZE)]
        table = pa.table({"sample_idx": samples, "value": [((s * 7919) % 1000) / 7.0 for s in samples], "text": [f"sample {s}" for s in samples]})
        pq.write_table(table, folder / "samples.parquet")
        (folder / "rows.zarr").mkdir()
        (folder / "rows.zarr" / "0.0").write_bytes(bytes(range(part, part + 64)))
        return {"samples": PART_SIZE}

    return write


@dataclass
class Outcomes:
    """What each writer was told: (part, attempt or None, "won" | "lost" | "lease lost" | "killed" | error text)."""

    told: list[tuple[int, str | None, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def new_run(warehouse, n_parts: int, run_id: str) -> RunPaths:
    run, _ = open_or_create_run(
        warehouse, kind="extract", model="m", benchmark="b", spec={}, plan=Plan([f"s{i}" for i in range(n_parts * PART_SIZE)], PART_SIZE), run_id=run_id, details={}
    )
    return run.paths


def attempt(run: RunPaths, part: int, outcomes: Outcomes, hook: Callable[[str, int], None] | None = None) -> str:
    """One writer of ``part`` in this process, with ``hook`` at its fault points: what it was told."""
    token = commit.FAULT_HOOK.set(hook)
    try:
        record = parts.commit_part(run, part, write_part(part))
        told = "won" if record is not None else "lost"
        outcomes.told.append((part, record.attempt if record else None, told))
    except WarehouseError as exc:
        told = "lease lost" if "lost its lease" in str(exc) else f"error: {exc}"
        outcomes.told.append((part, None, told))
        if told != "lease lost":
            outcomes.problems.append(f"writer of part {part}: {exc}")
    finally:
        commit.FAULT_HOOK.reset(token)
    return told


def resume(run: RunPaths, n_parts: int, outcomes: Outcomes) -> None:
    """What ``attnwh`` does when the run's command is given again: recover, then commit every missing part."""
    parts.recover(run)
    for part in sorted(set(range(n_parts)) - parts.committed_part_ids(run)):
        attempt(run, part, outcomes)


def files_under(run: RunPaths) -> dict[str, int]:
    """Every file (object) under the run, by path relative to it."""
    return storage.sizes_under(run.root)


def check(run: RunPaths, n_parts: int, created: set[str], reference: dict[tuple[int, str], str], outcomes: Outcomes, scratch: Path) -> list[str]:
    """The problems of a run after its schedule (see the module's docstring)."""
    problems = []
    told = list(outcomes.told)
    notes = scratch / "told.jsonl"
    if notes.is_file():
        told += [tuple(item) for item in map(json.loads, notes.read_text().splitlines())]
    records = {record.part_id: record for record in parts.commit_records(run)}
    if set(records) != set(range(n_parts)):
        problems.append(f"committed parts {sorted(records)}, planned {list(range(n_parts))}")
    for part, record in records.items():
        winners = [attempt_id for p, attempt_id, what in told if p == part and what == "won"]
        if len(winners) > 1:
            problems.append(f"part {part}: {len(winners)} writers were told they committed it")
        if winners and winners[-1] != record.attempt:
            problems.append(f"part {part}: committed by {record.attempt}, but {winners[-1]} was told it won")
        files = {entry["path"]: entry["sha256"] for entry in record.files}
        expected = {path: digest for (p, path), digest in reference.items() if p == part}
        if files != expected:
            problems.append(f"part {part}: its files differ from a clean run's")
    problems += [f"verify: {line}" for line in parts.verify(run)]
    readable = parts.readable_run(run)  # what a reader's session is built from
    files = parts.table_files(run, "samples", readable.records)
    contents = storage.read_all(files) if storage.is_object_store(run.root) else [path.read_bytes() for path in files]
    table = pa.concat_tables([pq.read_table(pa.BufferReader(content)) for content in contents])
    if table.column("sample_idx").to_pylist() != list(range(n_parts * PART_SIZE)):
        problems.append(f"samples read back: {table.column('sample_idx').to_pylist()}")
    named = set(created) | {f"_commits/{parts.record_name(part)}" for part in records}
    for record in records.values():
        folder = str(parts.part_folder(run, record)).removeprefix(str(run.root) + "/")
        named |= {f"{folder}/{entry['path']}" for entry in record.files}
    orphans = sorted(set(files_under(run)) - named)
    if orphans:
        problems.append(f"files no record names: {orphans}")
    return problems
