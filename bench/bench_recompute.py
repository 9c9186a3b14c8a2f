"""``attnwh recompute`` throughput: derived rows per second in the local loop, on 1 and on 2 Dask workers.

Builds a synthetic extraction run with raw rows of the LLaVA-1.5-7B shape (32 layers × 32 heads,
2 queries, 650 keys of which 576 image tokens: 2.7 MB of float16 rows per sample, as a real run
stores) through the commit protocol, then runs the real command (``attnwh recompute``, in its own
process, ``OMP_NUM_THREADS=1``) for each variant in turn, several rounds with the order rotated:

- ``local``: the in-process loop;
- ``dask-1`` / ``dask-2``: ``--scheduler local:1`` / ``local:2``.

Rates: *whole command* (derived rows ÷ wall time, start-up and cluster start included) and *steady*
(the rate ``attnwh status`` reports for the derived run, × rows per sample). Target (issue 17):
dask-2 / dask-1 ≥ 1.7× rows/s.

    python bench/bench_recompute.py                       # 192 samples, 3 rounds, topk_mass
    python bench/bench_recompute.py --statistic image_sum_without_sinks --samples 96 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).parent))
from bench_scale import attnwh_command, rotated  # noqa: E402  (one definition of both, beside this script)

VARIANTS = ("local", "dask-1", "dask-2")
QUERIES = ["prompt", "gen1"]
ARGUMENTS = {"topk_mass": ["--k", "8"], "image_sum_without_sinks": ["--tau", "0.05", "--share", "0.1"]}


def build(root: Path, n_samples: int, part_size: int, n_layers: int = 32, n_heads: int = 32, n_keys: int = 650, n_image: int = 576) -> str:
    """A synthetic extraction run: samples and raw rows (softmax-like rows, image tokens at 35..611)."""
    from attnwh.extract.part_tables import write_parquet
    from attnwh.warehouse import arrays, parts
    from attnwh.warehouse.layout import open_warehouse
    from attnwh.warehouse.runs import Plan, open_or_create_run
    from attnwh.warehouse.schema import SAMPLES

    rng = np.random.default_rng(0)
    warehouse = open_warehouse(root, create=True)
    plan = Plan([f"s{i}" for i in range(n_samples)], part_size)
    info = {"architecture": "LlavaForConditionalGeneration", "n_layers": n_layers, "n_heads": n_heads, "n_kv_heads": n_heads}
    run, _ = open_or_create_run(warehouse, kind="extract", model="synthetic-7b", benchmark="synthetic", spec={"rows": True}, plan=plan, run_id=None, details={"model_info": info})
    start = 35
    for part_id in range(plan.n_parts):
        indices = np.array(plan.part_range(part_id))

        def write(folder: Path, indices=indices) -> dict[str, int]:
            n = len(indices)
            samples = pa.Table.from_pylist(
                [
                    {
                        "run_id": run.run_id,
                        "sample_idx": int(i),
                        "sample_key": f"s{i}",
                        "status": "ok",
                        "n_tokens": n_keys - 1,
                        "n_image": n_image,
                        "image_start": start,
                        "image_end": start + n_image,
                    }
                    for i in indices
                ],
                schema=SAMPLES,
            )
            logits = rng.standard_normal((n, len(QUERIES), n_layers, n_heads, n_keys), dtype=np.float32) * 2
            rows = np.exp(logits)
            rows /= rows.sum(-1, keepdims=True)
            write_parquet(samples, "samples", folder)
            arrays.write_rows(folder, rows.astype(np.float16), indices.astype(np.int64), QUERIES)
            return {"samples": n}

        parts.commit_part(run.paths, part_id, write)
    return run.run_id


def run_variant(variant: str, warehouse: Path, run_id: str, name: str, args) -> dict:
    from attnwh.warehouse.layout import open_warehouse
    from attnwh.warehouse.status import run_status

    command = [
        *attnwh_command(),
        "recompute",
        run_id,
        "--statistic",
        args.statistic,
        *ARGUMENTS[args.statistic],
        "--name",
        name,
        "--warehouse",
        str(warehouse),
        *({"local": [], "dask-1": ["--scheduler", "local:1"], "dask-2": ["--scheduler", "local:2"]}[variant]),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"bench_recompute: {variant} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    (derived,) = [paths for paths in open_warehouse(warehouse).run_folders() if f'"name": "{name}"' in paths.manifest.read_text()]
    status = run_status(derived)
    per_sample = len(QUERIES) * 32 * 32
    rows = args.samples * per_sample
    return {"seconds": seconds, "rows_per_second": rows / seconds, "steady_rows_per_second": status["samples_per_second"] * per_sample}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=192)
    parser.add_argument("--part-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--statistic", choices=sorted(ARGUMENTS), default="topk_mass")
    parser.add_argument("--out", default=str(Path(__file__).with_name("results-recompute.json")))
    args = parser.parse_args()

    rounds: list[dict[str, dict]] = []
    with tempfile.TemporaryDirectory(prefix="attnwh-bench-recompute-") as scratch:
        warehouse = Path(scratch) / "wh"
        started = time.perf_counter()
        run_id = build(warehouse, args.samples, args.part_size)
        print(f"built {args.samples} samples of raw rows ({args.samples * 2.66:.0f} MB float16) in {time.perf_counter() - started:.1f} s", flush=True)
        for round_index in range(args.rounds):
            order = rotated(VARIANTS, round_index)
            measured = {}
            for variant in order:
                measured[variant] = run_variant(variant, warehouse, run_id, f"r{round_index}_{variant.replace('-', '')}", args)
                line = measured[variant]
                print(
                    f"round {round_index + 1} {variant:7s} {line['seconds']:6.1f} s  {line['rows_per_second']:10,.0f} rows/s (steady {line['steady_rows_per_second']:,.0f})",
                    flush=True,
                )
            rounds.append(measured)

    def median_of(variant: str, field: str) -> float:
        return statistics.median(measured[variant][field] for measured in rounds)

    print(f"\n{args.statistic}, {args.samples} samples × 2 queries × 1,024 heads = {args.samples * 2048:,} rows, parts of {args.part_size}, {args.rounds} rounds")
    print(f"{'variant':8s} {'median s':>9s} {'rows/s':>12s} {'steady rows/s':>14s}")
    for variant in VARIANTS:
        print(f"{variant:8s} {median_of(variant, 'seconds'):9.1f} {median_of(variant, 'rows_per_second'):12,.0f} {median_of(variant, 'steady_rows_per_second'):14,.0f}")
    whole = statistics.median(m["dask-2"]["rows_per_second"] / m["dask-1"]["rows_per_second"] for m in rounds)
    steady = statistics.median(m["dask-2"]["steady_rows_per_second"] / m["dask-1"]["steady_rows_per_second"] for m in rounds)
    print(f"\ndask-2 / dask-1 rows/s: steady {steady:.2f}, whole command {whole:.2f} (target ≥ 1.7: {'met' if steady >= 1.7 else 'NOT met'})")
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "settings": {key: getattr(args, key) for key in ("samples", "part_size", "rounds", "statistic")},
        "rounds": rounds,
        "ratio_dask2_dask1": {"steady": round(steady, 3), "whole_command": round(whole, 3), "target": 1.7, "met": steady >= 1.7},
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
