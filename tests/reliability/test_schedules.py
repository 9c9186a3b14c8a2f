"""Generated fault schedules (``schedules``) on a local folder: every schedule ends with each planned part
committed exactly once, byte-equal to a clean single-process run, ``verify`` clean and no orphaned file.
``ATTNWH_SCHEDULES`` sets how many seeds run (default 200, about 25 s on 2 cores); the same seeds run on
the S3 emulator in ``tests/objectstore/test_schedules_s3.py``; ``scripts/fault_schedules.py`` runs thousands."""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.reliability import schedule_runner, schedules

SEEDS = int(os.environ.get("ATTNWH_SCHEDULES", "200"))


def report(failures) -> str:
    return f"{len(failures)} schedules failed; rerun one with scripts/fault_schedules.py --seed N\n\n" + "\n\n".join(
        f"{plan}\n" + "\n".join(problems) for plan, problems in failures[:5]
    )


@pytest.fixture
def scratch(tmp_path):
    """A folder in memory when the machine has one (fsync and unlink on a busy disk cost milliseconds each)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        with tempfile.TemporaryDirectory(prefix="attnwh-schedules-", dir=shm) as folder:
            yield Path(folder)
    else:
        yield tmp_path


def test_schedules_are_seeded_and_cover_every_kind_of_fault():
    generated = [schedules.schedule(seed) for seed in range(SEEDS)]
    kinds = Counter(step.kind for plan in generated for step in plan.steps)
    assert set(kinds) == set(schedules.KINDS) and min(kinds.values()) >= SEEDS // 20, kinds
    points = {step.point for plan in generated for step in plan.steps if step.kind in ("kill", "takeover", "race") and step.point}
    assert points == set(schedules.POINTS)
    assert any(step.kind == "race" and step.detail for plan in generated for step in plan.steps)  # two writer processes at once
    assert schedules.schedule(12) == schedules.schedule(12) and schedules.schedule(12) != schedules.schedule(13)


def test_fault_schedules_on_a_local_folder(scratch):
    started = time.monotonic()
    passed, failures = schedule_runner.run_many(schedule_runner.local_runner(scratch), range(SEEDS))
    print(f"{passed}/{SEEDS} schedules passed on a local folder in {time.monotonic() - started:.1f} s")
    assert not failures, report(failures)


def test_the_checks_catch_a_protocol_without_its_fence(scratch, monkeypatch):
    """The harness is not blind: with the lease's confirmation before the record disabled, the takeover
    schedules fail."""
    from attnwh.warehouse import leases

    monkeypatch.setattr(leases.Lease, "confirm", lambda self: None)
    seeds = [seed for seed in range(SEEDS) if any(step.kind == "takeover" and step.point in schedules.BEFORE_RECORD for step in schedules.schedule(seed).steps)][:10]
    passed, failures = schedule_runner.run_many(schedule_runner.local_runner(scratch), seeds)
    assert failures, "no schedule noticed writers committing without a lease"
