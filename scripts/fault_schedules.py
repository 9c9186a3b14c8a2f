"""Run many generated fault schedules of the commit protocol and say how many passed.

    python scripts/fault_schedules.py                        # 2,000 seeds on a local folder and on the S3 emulator
    python scripts/fault_schedules.py --schedules 10000 --target local
    python scripts/fault_schedules.py --seed 1234 -v         # one schedule, its steps and any problem in full

A schedule is a seeded random choice of faults (``tests/reliability/schedules.py`` says which and what is
checked after each, ``schedule_runner.py`` how each fault is made); the same seed is the same schedule
on every machine. The S3 target starts moto's server on 127.0.0.1 (``pip install 'attnwh[test]'``).
Needs nothing else: no model, no data, no GPU.
Exit status 1 when any schedule failed.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", type=int, default=2000, help="how many seeds each target runs (default 2000)")
    parser.add_argument("--start", type=int, default=0, help="the first seed")
    parser.add_argument("--seed", type=int, help="run this one seed only")
    parser.add_argument("--target", choices=("local", "s3", "both"), default="both")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each schedule as it runs")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped: the emulator and the scratch folder still go
    seeds = [args.seed] if args.seed is not None else list(range(args.start, args.start + args.schedules))

    from tests.reliability import schedule_runner, schedules

    failed_any = False
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="attnwh-schedules-", dir=_memory_folder())))
        os.environ["ATTNWH_HOME"] = str(scratch / "home")  # never the user's own cache
        targets = []
        if args.target in ("local", "both"):
            targets.append(("a local folder", schedule_runner.local_runner(scratch / "local")))
        if args.target in ("s3", "both"):
            from tests.objectstore.s3server import BUCKET, s3_server

            server = stack.enter_context(s3_server(scratch / "moto.log"))
            os.environ.update(server.environment())
            targets.append(("the S3 emulator (moto)", schedule_runner.s3_runner(scratch / "s3", BUCKET)))
        for name, runner in targets:
            runner.scratch.mkdir(parents=True, exist_ok=True)
            started = time.monotonic()
            passed = 0
            for done, seed in enumerate(seeds, 1):
                plan = schedules.schedule(seed)
                if args.verbose:
                    print(plan, flush=True)
                problems = runner.run(plan)
                if problems:
                    failed_any = True
                    print(f"FAILED on {name}: {plan}\n  " + "\n  ".join(line for problem in problems for line in problem.splitlines()), flush=True)
                else:
                    passed += 1
                if done % 250 == 0:
                    print(f"  {name}: {passed}/{done} passed ({time.monotonic() - started:.0f} s)", flush=True)
            print(f"{date.today().isoformat()}: {passed}/{len(seeds)} schedules passed on {name} (seeds {seeds[0]}-{seeds[-1]}, {time.monotonic() - started:.0f} s)", flush=True)
    return 1 if failed_any else 0


def _memory_folder() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


if __name__ == "__main__":
    sys.exit(main())
