"""Scaling out: samples/s of ``attnwh extract`` on 1 and 2 Dask workers, on 1 and 2 ranks, against the local loop.

Every variant is the real command (``attnwh extract ...`` in its own processes, a fresh warehouse
each time) on the *realistic* shape of ``bench_extract.py``: a LLaVA-1.5-shaped prompt (336-px image
→ 576 image tokens) through a random-weight text model of 8 layers × 16 heads, hidden 1024; every
process and Dask worker computes on one thread (``OMP_NUM_THREADS=1``), so "2 workers" is two cores
against one. Variants, run in turn in every round (the order rotates), so that the machine's drift
falls on all of them alike:

- ``local``: the in-process loop (``--scheduler local``); this is also "1 rank" (a world of size 1
  takes the same code path);
- ``dask-1`` / ``dask-2``: ``--scheduler local:1`` / ``local:2`` (a ``distributed.LocalCluster``);
- ``ranks-2``: two processes with ``RANK=0/1``, ``WORLD_SIZE=2`` on one warehouse (as torchrun starts them).

Two rates per variant: *whole command* (samples ÷ wall time from launch to the last process's exit,
start-up, cluster start and model loads included) and *steady* (the rate ``attnwh status`` reports:
parts committed after the first ÷ the time between the first and the last commit, × part size),
which is what a long run converges to. Ratios are medians of per-round ratios. Targets (issue 16):
dask-2 / dask-1 ≥ 1.8× samples/s, dask-1 time ≤ 1.05× local's, ranks-2 / local ≥ 1.8×.

    python bench/bench_scale.py                       # 64 samples, 3 rounds (~12 min on 2 cores)
    python bench/bench_scale.py --samples 32 --rounds 1   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

VARIANTS = ("local", "dask-1", "dask-2", "ranks-2")
TARGETS = {  # name: (numerator variant, denominator variant, rate or time, bound, at least?)
    "dask-2 / dask-1 samples/s": ("dask-2", "dask-1", "rate", 1.8, True),
    "dask-1 / local time": ("dask-1", "local", "time", 1.05, False),
    "ranks-2 / 1 rank samples/s": ("ranks-2", "local", "rate", 1.8, True),
}


def rotated(variants, round_index: int) -> list:
    """The variants in the order of one round: each round starts one later, so drift falls on all alike."""
    shift = round_index % len(variants)
    return [*variants[shift:], *variants[:shift]]


def attnwh_command() -> list[str]:
    found = shutil.which("attnwh", path=str(Path(sys.executable).parent)) or shutil.which("attnwh")
    if not found:
        raise SystemExit("bench_scale: the attnwh command is not installed (pip install -e .)")
    return [found]


def run_variant(variant: str, model: Path, warehouse: Path, args) -> dict:
    """Run one variant into a fresh warehouse; its wall time and the run's steady rate."""
    from attnwh.warehouse.layout import open_warehouse
    from attnwh.warehouse.status import run_status

    command = [
        *attnwh_command(),
        "extract",
        "--model",
        str(model),
        "--benchmark",
        "toy-shapes",
        "--limit",
        str(args.samples),
        "--batch-size",
        str(args.batch_size),
        "--part-size",
        str(args.part_size),
        "--max-new-tokens",
        str(args.new_tokens),
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--warehouse",
        str(warehouse),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "ATTNWH_RANK_WAIT_SECONDS": "300"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "DASK_SCHEDULER_ADDRESS"):
        env.pop(name, None)
    launches = {
        "local": [(command, {})],
        "dask-1": [([*command, "--scheduler", "local:1"], {})],
        "dask-2": [([*command, "--scheduler", "local:2"], {})],
        "ranks-2": [(command, {"RANK": "0", "WORLD_SIZE": "2"}), (command, {"RANK": "1", "WORLD_SIZE": "2"})],
    }[variant]
    started = time.perf_counter()
    processes = [subprocess.Popen(line, env={**env, **extra}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for line, extra in launches]
    for process in processes:
        out, err = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"bench_scale: {variant} failed ({process.returncode}):\n{err[-3000:]}")
    seconds = time.perf_counter() - started
    runs = open_warehouse(warehouse).run_folders()
    if len(runs) != 1:
        raise SystemExit(f"bench_scale: {variant} left {len(runs)} runs in {warehouse}")
    status = run_status(runs[0])
    if status["parts_committed"] != status["parts_planned"]:
        raise SystemExit(f"bench_scale: {variant} committed {status['parts_committed']} of {status['parts_planned']} parts")
    return {"seconds": seconds, "samples_per_second": args.samples / seconds, "steady_samples_per_second": status["samples_per_second"], "writers": len(status["writers"])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--part-size", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--out", default=str(Path(__file__).with_name("results-scale.json")))
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_extract import build_model

    rounds: list[dict[str, dict]] = []
    with tempfile.TemporaryDirectory(prefix="attnwh-bench-scale-") as scratch:
        model = build_model("realistic", Path(scratch))
        for round_index in range(args.rounds):
            order = rotated(args.variants, round_index)
            measured = {}
            for variant in order:
                measured[variant] = run_variant(variant, model, Path(scratch) / f"wh-{round_index}-{variant}", args)
                shutil.rmtree(Path(scratch) / f"wh-{round_index}-{variant}")
                line = measured[variant]
                print(
                    f"round {round_index + 1} {variant:8s} {line['seconds']:7.1f} s  {line['samples_per_second']:5.2f} samples/s "
                    f"(steady {line['steady_samples_per_second']:.2f}, {line['writers']} writers)",
                    flush=True,
                )
            rounds.append(measured)

    def median_of(variant: str, field: str) -> float:
        return statistics.median(measured[variant][field] for measured in rounds)

    print(f"\n{args.samples} samples, batch {args.batch_size}, parts of {args.part_size}, {args.new_tokens} new tokens, {args.rounds} rounds, 1 thread per process")
    print(f"{'variant':10s} {'median s':>9s} {'samples/s':>10s} {'steady samples/s':>17s}")
    for variant in args.variants:
        print(f"{variant:10s} {median_of(variant, 'seconds'):9.1f} {median_of(variant, 'samples_per_second'):10.2f} {median_of(variant, 'steady_samples_per_second'):17.2f}")

    ratios = {}
    print(f"\n{'ratio':28s} {'whole command':>14s} {'steady':>8s} {'target':>8s}")
    for name, (top, bottom, kind, bound, at_least) in TARGETS.items():
        if top not in args.variants or bottom not in args.variants:
            continue
        if kind == "rate":
            whole = statistics.median(m[top]["samples_per_second"] / m[bottom]["samples_per_second"] for m in rounds)
            steady = statistics.median(m[top]["steady_samples_per_second"] / m[bottom]["steady_samples_per_second"] for m in rounds)
        else:  # time: the inverse of the rate
            whole = statistics.median(m[top]["seconds"] / m[bottom]["seconds"] for m in rounds)
            steady = statistics.median(m[bottom]["steady_samples_per_second"] / m[top]["steady_samples_per_second"] for m in rounds)
        met = (steady >= bound) if at_least else (steady <= bound)
        ratios[name] = {"whole_command": round(whole, 3), "steady": round(steady, 3), "target": f"{'≥' if at_least else '≤'} {bound}", "met": met}
        print(f"{name:28s} {whole:14.2f} {steady:8.2f} {('≥ ' if at_least else '≤ ') + str(bound):>8s} {'met' if met else 'NOT met'}")

    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "settings": {key: getattr(args, key) for key in ("samples", "batch_size", "part_size", "new_tokens", "rounds")},
        "rounds": rounds,
        "ratios": ratios,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
