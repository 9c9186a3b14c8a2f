"""Generated fault schedules (``tests/reliability/schedules.py``) on the S3 emulator: the seeds the local
folder runs first (``ATTNWH_S3_SCHEDULES``, default 60: about a minute on 2 cores; the store's requests
cost ~10 ms each there), plus the one kind of fault only a store has: a store that ignores conditional
puts must be refused."""

from __future__ import annotations

import os
import time

from tests.objectstore.s3server import BUCKET
from tests.reliability import schedule_runner, schedules
from tests.reliability.test_schedules import report, scratch  # noqa: F401  (a fixture)

SEEDS = int(os.environ.get("ATTNWH_S3_SCHEDULES", "60"))


def test_fault_schedules_on_s3(s3, scratch):  # noqa: F811
    started = time.monotonic()
    passed, failures = schedule_runner.run_many(schedule_runner.s3_runner(scratch, BUCKET), range(SEEDS))
    print(f"{passed}/{SEEDS} schedules passed on S3 in {time.monotonic() - started:.1f} s")
    assert not failures, report(failures)


def test_schedules_with_a_store_that_ignores_conditional_puts_are_refused_on_s3(s3, scratch):  # noqa: F811
    seeds = [seed for seed in range(10 * SEEDS) if any(step.kind == "ignores" for step in schedules.schedule(seed).steps)][SEEDS // 10 :][:5]
    passed, failures = schedule_runner.run_many(schedule_runner.s3_runner(scratch, BUCKET), seeds)
    assert not failures, report(failures)
