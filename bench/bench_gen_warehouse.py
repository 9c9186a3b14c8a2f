"""The long-answer marts at scale: ``gen_metrics`` rows of every generated token (``--queries gen``), 10 M to 100 M.

Builds a synthetic extraction run through the real commit protocol and the real part writer (``write_parquet``
and the ``gen_scores`` rollup of ``gen_rollup``): per sample, 64 generated steps × 32 layers × 32 heads = 65,536
``gen_metrics`` rows (the issue's 32 × 32-head model with 64-token answers), with ``gen_tokens`` (a tenth of the
tokens start a grounded object word, a twentieth a hallucinated one), ``gen_lens`` (33 lens layers a step) and
AMBER's object counts on ``samples``. Then times each long-answer mart (median of repeats, each in a fresh
session as ``attnwh query`` runs it) against the per-command targets of ``bench_warehouse.py`` (0.5 s up to
~10 M rows, 1 s at ~100 M), and reports the bytes per sample of each table.

    python bench/bench_gen_warehouse.py                                   # 160 samples (10 M gen_metrics rows)
    python bench/bench_gen_warehouse.py --samples 160 1536 --out bench/results-gen-warehouse.json   # 10 M and 100 M
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

from attnwh.extract.part_tables import write_parquet
from attnwh.queries.library import open_session, run_mart
from attnwh.warehouse import parts
from attnwh.warehouse.definitions import gen_rollup
from attnwh.warehouse.layout import open_warehouse
from attnwh.warehouse.runs import Plan, open_or_create_run
from attnwh.warehouse.schema import GEN_LENS, GEN_METRICS, GEN_TOKENS, SAMPLES

MARTS = ("gen_attention_by_step", "hallucination_heads", "gen_lens_settling", "object_hallucination")
MART_TARGET_S, MART_TARGET_LARGE_S = 0.5, 1.0
TABLES = ("gen_metrics", "gen_tokens", "gen_lens", "gen_scores", "gen_head_scores", "samples")


def build(root: Path, n_samples: int, steps: int, n_layers: int, n_heads: int, part_size: int, seed: int = 0) -> tuple[str, int]:
    rng = np.random.default_rng(seed)
    warehouse = open_warehouse(root, create=True)
    plan = Plan([f"s{i}" for i in range(n_samples)], part_size)
    info = {"architecture": "LlavaForConditionalGeneration", "n_layers": n_layers, "n_heads": n_heads, "n_kv_heads": n_heads}
    run, _ = open_or_create_run(
        warehouse, kind="extract", model="synthetic-7b", benchmark="synthetic-captions", spec={"queries": ["gen"]}, plan=plan, run_id=None, details={"model_info": info}
    )
    per_sample = steps * n_layers * n_heads
    for part_id in range(plan.n_parts):
        indices = np.array(plan.part_range(part_id))
        n = len(indices)

        def write(folder: Path, indices=indices, n=n) -> dict[str, int]:
            counts = rng.integers(0, 6, (n, 6)).astype(np.int32)
            samples = pa.Table.from_pylist(
                [
                    {
                        "run_id": run.run_id,
                        "sample_idx": int(i),
                        "sample_key": f"s{i}",
                        "status": "ok",
                        "n_image": 576,
                        **dict(zip(("object_mentions", "hallucinated", "truth_objects", "truth_mentioned", "hallu_objects", "hallu_mentioned"), map(int, row))),
                    }
                    for i, row in zip(indices, counts)
                ],
                schema=SAMPLES,
            )
            rows = n * per_sample
            image_sum = rng.beta(1, 4, rows).astype(np.float32)
            rest = ((1 - image_sum) / 4).astype(np.float32)
            step_of = np.tile(np.repeat(np.arange(steps, dtype=np.int16), n_layers * n_heads), n)
            metrics = pa.table(
                {
                    "run_id": pa.array([run.run_id] * rows),
                    "sample_idx": np.repeat(indices, per_sample),
                    "step": step_of,
                    "layer": np.tile(np.repeat(np.arange(n_layers, dtype=np.int16), n_heads), n * steps),
                    "head": np.tile(np.arange(n_heads, dtype=np.int16), n * steps * n_layers),
                    "n_image": np.full(rows, 576, np.int32),
                    "image_sum": image_sum,
                    "image_entropy": (rng.random(rows) * np.log(576)).astype(np.float32),
                    "image_max": (image_sum * rng.random(rows)).astype(np.float32),
                    "image_argmax": rng.integers(0, 576, rows, dtype=np.int32),
                    "bos_sum": rest,
                    "system_sum": rest,
                    "prompt_sum": rest,
                    "generated_sum": rest,
                    "region_sum": pa.nulls(rows, pa.float32()),
                    "region_entropy": pa.nulls(rows, pa.float32()),
                    "region_hit": pa.nulls(rows, pa.float32()),
                }
            ).cast(GEN_METRICS)
            n_tokens = n * steps
            draw = rng.random(n_tokens)
            status = np.where(draw < 0.1, "grounded", np.where(draw < 0.15, "hallucinated", None))
            tokens = pa.table(
                {
                    "run_id": pa.array([run.run_id] * n_tokens),
                    "sample_idx": np.repeat(indices, steps),
                    "step": np.tile(np.arange(steps, dtype=np.int16), n),
                    "token_id": rng.integers(3, 32000, n_tokens, dtype=np.int32),
                    "token_text": pa.array(["▁word"] * n_tokens),
                    "eos": np.zeros(n_tokens, bool),
                    "word_index": np.tile(np.arange(steps, dtype=np.int16), n),
                    "word": pa.array(["word"] * n_tokens),
                    "word_start": np.ones(n_tokens, bool),
                    "object": pa.array([None if s is None else "dog" for s in status], pa.string()),
                    "object_status": pa.array(list(status), pa.string()),
                }
            ).cast(GEN_TOKENS)
            lens_rows = n_tokens * (n_layers + 1)
            depth = np.tile(np.arange(n_layers + 1), n_tokens)
            lens = pa.table(
                {
                    "run_id": pa.array([run.run_id] * lens_rows),
                    "sample_idx": np.repeat(indices, steps * (n_layers + 1)),
                    "step": np.tile(np.repeat(np.arange(steps, dtype=np.int16), n_layers + 1), n),
                    "layer": depth.astype(np.int16),
                    "token_rank": np.maximum(1, rng.pareto(1.0, lens_rows) * 10 * (1 - depth / n_layers)).astype(np.int32),
                    "token_prob": rng.random(lens_rows).astype(np.float32),
                }
            ).cast(GEN_LENS)
            scores, heads = gen_rollup(metrics, tokens)
            tables = {"samples": samples, "gen_metrics": metrics, "gen_tokens": tokens, "gen_lens": lens, "gen_scores": scores, "gen_head_scores": heads}
            for name, table in tables.items():
                write_parquet(table, name, folder)
            return {name: table.num_rows for name, table in tables.items()}

        parts.commit_part(run.paths, part_id, write)
        if part_id % 10 == 0:
            print(f"  part {part_id + 1} of {plan.n_parts}", file=sys.stderr)
    return run.run_id, n_samples * per_sample


def table_bytes(root: Path, n_samples: int) -> dict[str, float]:
    sizes = {name: sum(path.stat().st_size for path in root.rglob(f"{name}.parquet")) for name in TABLES}
    return {name: size / n_samples for name, size in sizes.items()}


def time_marts(root: Path, repeats: int) -> dict[str, float]:
    timings = {}
    for name in MARTS:
        seconds, rows = [], 0
        for _ in range(repeats):
            started = time.perf_counter()
            with open_session(root) as session:
                rows = run_mart(session, name, {}).num_rows
            seconds.append(time.perf_counter() - started)
        timings[name] = statistics.median(seconds)
        print(f"  {name:<24} {timings[name]:7.3f} s  ({rows} rows)", file=sys.stderr)
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[160])
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--part-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="attnwh-gen-bench-") as scratch:
        for samples in args.samples:
            root = Path(scratch) / f"wh-{samples}"
            started = time.perf_counter()
            _, n_rows = build(root, samples, args.steps, args.layers, args.heads, args.part_size)
            build_s = time.perf_counter() - started
            print(f"built {n_rows:,} gen_metrics rows in {build_s:.1f} s", file=sys.stderr)
            timings = time_marts(root, args.repeats)
            target = MART_TARGET_S if n_rows <= 20_000_000 else MART_TARGET_LARGE_S
            per_sample = table_bytes(root, samples)
            print(f"\n{'mart':<26}{'seconds':>9}{'target':>9}{'ratio':>8}  ({n_rows:,} gen_metrics rows)")
            for name, seconds in timings.items():
                print(f"{name:<26}{seconds:>9.3f}{target:>9.1f}{seconds / target:>8.2f}")
            print("bytes per sample: " + ", ".join(f"{name} {value / 1024:.1f} KiB" for name, value in per_sample.items()))
            print(f"gen_metrics: {per_sample['gen_metrics'] / (n_rows / samples):.2f} bytes per row")
            results.append(
                {
                    "samples": samples,
                    "gen_metrics_rows": n_rows,
                    "build_seconds": build_s,
                    "marts_seconds": timings,
                    "target_s": target,
                    "bytes_per_sample": per_sample,
                    "all_within_target": all(s <= target for s in timings.values()),
                }
            )
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "date": datetime.now(timezone.utc).isoformat(),
                    "machine": platform.platform(),
                    "processor": platform.processor(),
                    "args": vars(args) | {"out": str(args.out)},
                    "results": results,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
