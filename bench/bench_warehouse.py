"""The warehouse side at scale: every mart and the full report over ≥ 10 million head_metrics rows.

Builds a synthetic warehouse through the real commit protocol (default: 10,000 samples × 32 layers ×
32 heads × 1 query = 10,240,000 head_metrics rows, with samples, logit-lens rows and a mask sweep),
then times each mart (median of repeats, each in a fresh session as ``attnwh query`` runs it) and
the full report build. Prints a table and writes JSON.

    python bench/bench_warehouse.py                    # 10k samples, into a temp folder
    python bench/bench_warehouse.py --samples 2000 --out bench/results-warehouse.json
    python bench/bench_warehouse.py --samples 10000 30000 100000 --out bench/results-warehouse-100m.json   # 10 M → 100 M rows
    python bench/bench_warehouse.py --s3 --out bench/results-warehouse-s3.json   # the same warehouse on a local S3 emulator
    python bench/bench_warehouse.py --stale --samples 10000 --out bench/results-warehouse-stale.json   # rollups of older definitions

With ``--s3`` the warehouse is built twice through the commit protocol, into a local folder and into
``s3://`` on moto's S3 server (started on 127.0.0.1), and every mart is timed on both, side by side
in one run: the ratio S3 / local is the figure (target ≤ 3).
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
import pyarrow.parquet as pq

from attnwh.queries.library import marts, open_session, run_mart
from attnwh.reports.build import build_report
from attnwh.warehouse import parts
from attnwh.warehouse.definitions import rollups
from attnwh.warehouse.layout import open_warehouse
from attnwh.warehouse.runs import Plan, open_or_create_run
from attnwh.warehouse.schema import HEAD_METRICS, LOGIT_LENS, SAMPLES, SWEEP_CONDITIONS, SWEEP_RESULTS, with_metadata

MART_TARGET_S = 0.5
MART_TARGET_LARGE_S = 1.0
REPORT_TARGET_S = 30.0
S3_RATIO_TARGET = 3.0


def _write(table: pa.Table, name: str, folder: Path) -> None:
    pq.write_table(table.replace_schema_metadata(with_metadata(name, table.schema).metadata), folder / f"{name}.parquet", compression="zstd")


def build(
    root: Path | str,
    n_samples: int,
    n_layers: int,
    n_heads: int,
    part_size: int,
    seed: int = 0,
    model: str = "synthetic-7b",
    benchmark: str = "synthetic",
    mask_ks: tuple[int, ...] = (8, 32, 64, 128),
) -> tuple[str, int]:
    """A synthetic extraction run (and a mask run) of ``model`` on ``benchmark``, written part by part through commit_part."""
    rng = np.random.default_rng(seed)
    warehouse = open_warehouse(root, create=True)
    plan = Plan([f"s{i}" for i in range(n_samples)], part_size)
    info = {"architecture": "LlavaForConditionalGeneration", "n_layers": n_layers, "n_heads": n_heads, "n_kv_heads": n_heads}
    run, _ = open_or_create_run(
        warehouse,
        kind="extract",
        model=model,
        benchmark=benchmark,
        spec={"dtype": "bfloat16", "model": model, "benchmark": benchmark},
        plan=plan,
        run_id=None,
        details={"model_info": info},
    )
    heads = n_layers * n_heads
    for part_id in range(plan.n_parts):
        indices = np.array(plan.part_range(part_id))
        n = len(indices)

        def write(folder: Path, indices=indices, n=n) -> dict[str, int]:
            samples = pa.table(
                {
                    "run_id": [run.run_id] * n,
                    "sample_idx": indices,
                    "sample_key": [f"s{i}" for i in indices],
                    "status": ["ok"] * n,
                    "question": ["Is there a dog in the image?"] * n,
                    "gold": rng.choice(["yes", "no"], n),
                    "parsed": rng.choice(["yes", "no"], n),
                    "correct": rng.random(n) < 0.85,
                    "n_tokens": np.full(n, 650, np.int32),
                    "n_image": np.full(n, 576, np.int32),
                }
            )
            samples = pa.Table.from_pylist(samples.to_pylist(), schema=SAMPLES)
            rows = n * heads
            image_sum = rng.beta(1, 4, rows).astype(np.float32)
            rest = (1 - image_sum) / 4
            metrics = pa.table(
                {
                    "run_id": pa.array([run.run_id] * rows),
                    "sample_idx": np.repeat(indices, heads),
                    "query": pa.array(["gen1"] * rows),
                    "layer": np.tile(np.repeat(np.arange(n_layers, dtype=np.int16), n_heads), n),
                    "head": np.tile(np.arange(n_heads, dtype=np.int16), n * n_layers),
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
            ).cast(HEAD_METRICS)
            lens_rows = n * (n_layers + 1)
            lens = pa.table(
                {
                    "run_id": pa.array([run.run_id] * lens_rows),
                    "sample_idx": np.repeat(indices, n_layers + 1),
                    "query": pa.array(["gen1"] * lens_rows),
                    "layer": np.tile(np.arange(n_layers + 1, dtype=np.int16), n),
                    "target_token": np.full(lens_rows, 3869, np.int32),
                    "target_text": pa.array(["▁Yes"] * lens_rows),
                    "target_rank": np.maximum(1, (rng.pareto(1.0, lens_rows) * 10 * (1 - np.tile(np.arange(n_layers + 1), n) / n_layers))).astype(np.int32),
                    "target_prob": rng.random(lens_rows).astype(np.float32),
                    "top_token": np.full(lens_rows, 3869, np.int32),
                    "top_text": pa.array(["▁Yes"] * lens_rows),
                    "top_prob": rng.random(lens_rows).astype(np.float32),
                }
            ).cast(LOGIT_LENS)
            _write(samples, "samples", folder)
            _write(metrics.sort_by([("query", "ascending"), ("layer", "ascending"), ("head", "ascending"), ("sample_idx", "ascending")]), "head_metrics", folder)
            _write(lens, "logit_lens", folder)
            scores, ranks = rollups(metrics)
            _write(scores, "head_scores", folder)
            _write(ranks, "head_ranks", folder)
            return {"samples": n, "head_metrics": rows, "logit_lens": lens_rows, "head_scores": scores.num_rows, "head_ranks": ranks.num_rows}

        parts.commit_part(run.paths, part_id, write)
    _build_mask_run(warehouse, n_layers, n_heads, min(n_samples, 1000), rng, model, benchmark, mask_ks)
    return run.run_id, n_samples * heads


def _build_mask_run(warehouse, n_layers: int, n_heads: int, n_samples: int, rng, model: str, benchmark: str, ks: tuple[int, ...]) -> None:
    conditions = [("none", 0, None)] + [(s, k, seed) for k in ks for s, seed in (("top", None), ("random", 0), ("random", 1), ("random", 2))]
    plan = Plan([f"condition-{i}" for i in range(len(conditions))], 1)
    info = {"architecture": "LlavaForConditionalGeneration", "n_layers": n_layers, "n_heads": n_heads, "n_kv_heads": n_heads}
    run, _ = open_or_create_run(
        warehouse, kind="mask", model=model, benchmark=benchmark, spec={"mask": True, "model": model, "benchmark": benchmark}, plan=plan, run_id=None, details={"model_info": info}
    )
    for cid, (strategy, k, seed) in enumerate(conditions):

        def write(folder: Path, cid=cid, strategy=strategy, k=k, seed=seed) -> dict[str, int]:
            heads = [{"layer": int(i // n_heads), "head": int(i % n_heads)} for i in rng.choice(n_layers * n_heads, k, replace=False)]
            settings = {"strategy": strategy, "stage": "all", "k": k, "fraction": k / (n_layers * n_heads), "seed": seed, "mode": "zero"}
            condition = pa.Table.from_pylist(
                [
                    {
                        "run_id": run.run_id,
                        "condition_id": cid,
                        "kind": "mask",
                        "ranking_run_id": "x",
                        "ranking_score": "concentration_x_sum",
                        "heads": heads,
                        "settings": json.dumps(settings),
                    }
                ],
                schema=SWEEP_CONDITIONS,
            )
            accuracy = 0.85 - (0.002 if strategy == "random" else 0.004) * k
            results = pa.Table.from_pylist(
                [
                    {
                        "run_id": run.run_id,
                        "condition_id": cid,
                        "sample_idx": i,
                        "sample_key": f"s{i}",
                        "status": "ok",
                        "gold": "yes",
                        "parsed": "yes",
                        "correct": bool(rng.random() < accuracy),
                    }
                    for i in range(n_samples)
                ],
                schema=SWEEP_RESULTS,
            )
            _write(condition, "sweep_conditions", folder)
            _write(results, "sweep_results", folder)
            return {"sweep_conditions": 1, "sweep_results": n_samples}

        parts.commit_part(run.paths, cid, write)


def time_marts(root: Path, run_id: str, repeats: int) -> dict[str, float]:
    timings = {}
    for name, mart in marts().items():
        known = {"run_id": run_id, "model": "synthetic-7b", "benchmark": "synthetic", "model_revision": "synthetic", "run_a": run_id, "run_b": run_id}
        given = {key: value for key, value in known.items() if key in mart.parameters}
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            with open_session(root) as session:
                table = run_mart(session, name, given)
            seconds.append(time.perf_counter() - started)
        timings[name] = statistics.median(seconds)
        print(f"  {name:<18} {timings[name]:7.3f} s  ({table.num_rows} rows)", file=sys.stderr)
    return timings


def mart_target(n_rows: int) -> float:
    """0.5 s per mart up to ~10 M rows (issue 4), 1 s at the study's scale of ~100 M (issue 17)."""
    return MART_TARGET_S if n_rows <= 20_000_000 else MART_TARGET_LARGE_S


def measure(root: Path, scratch: Path, samples: int, args) -> dict:
    started = time.perf_counter()
    run_id, n_rows = build(root, samples, args.layers, args.heads, args.part_size)
    build_s = time.perf_counter() - started
    print(f"built {n_rows:,} head_metrics rows in {build_s:.1f} s", file=sys.stderr)
    import os

    # the first session on this machine adds up each run's rollups over its parts (then kept in the local cache)
    os.environ["ATTNWH_OBJECT_CACHE"] = str(scratch / f"cache-{samples}")
    started = time.perf_counter()
    with open_session(root) as session:
        run_mart(session, "visual_heads", {})
    first_s = time.perf_counter() - started
    print(f"first session (rollups not yet added up on this machine), visual_heads: {first_s:.2f} s", file=sys.stderr)
    marts_s = time_marts(root, run_id, args.repeats)
    started = time.perf_counter()
    build_report(root, scratch / f"report-{samples}")
    report_s = time.perf_counter() - started
    target = mart_target(n_rows)
    print(f"\n{'what':<22}{'seconds':>9}{'target':>9}{'ratio':>8}  ({n_rows:,} rows)")
    for name, seconds in marts_s.items():
        print(f"{'mart ' + name:<22}{seconds:>9.3f}{target:>9.1f}{seconds / target:>8.2f}")
    print(f"{'report (6 pages)':<22}{report_s:>9.2f}{REPORT_TARGET_S:>9.1f}{report_s / REPORT_TARGET_S:>8.2f}")
    return {
        "head_metrics_rows": n_rows,
        "build_seconds": build_s,
        "marts_seconds": marts_s,
        "first_session_seconds": first_s,  # visual_heads in a session that adds up the run's rollups (later ones read them)
        "report_seconds": report_s,
        "targets": {"mart_s": target, "report_s": REPORT_TARGET_S},
        "all_within_target": all(s <= target for s in marts_s.values()) and report_s <= REPORT_TARGET_S,
    }


def measure_s3(scratch: Path, samples: int, args) -> dict:
    """Every mart on a local folder and on the S3 emulator, rounds alternating (the machine drifts)."""
    import os

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.objectstore.s3server import s3_server

    with s3_server(scratch / "moto.log") as server:
        os.environ.update(server.environment())
        url = server.url("bench")
        local = scratch / "wh"
        timings: dict[str, dict[str, list[float]]] = {"local": {}, "s3": {}}
        for where, root in (("local", local), ("s3", url)):
            started = time.perf_counter()
            run_id, n_rows = build(root, samples, args.layers, args.heads, args.part_size)
            print(f"built {n_rows:,} head_metrics rows on {where} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        os.environ["ATTNWH_OBJECT_CACHE"] = str(scratch / "object-cache")  # empty: the first session reads every footer from the store
        started = time.perf_counter()
        with open_session(url) as session:
            run_mart(session, "head_attention", {})
        cold_s = time.perf_counter() - started
        print(f"first session on s3 (no local footer cache), head_attention: {cold_s:.2f} s", file=sys.stderr)
        for _ in range(args.repeats):
            for where, root in (("local", local), ("s3", url)):
                for name, seconds in time_marts(root, run_id, 1).items():
                    timings[where].setdefault(name, []).append(seconds)
    medians = {where: {name: statistics.median(values) for name, values in found.items()} for where, found in timings.items()}
    ratios = {name: medians["s3"][name] / medians["local"][name] for name in medians["local"]}
    print(f"\n{'mart':<22}{'local s':>9}{'s3 s':>9}{'ratio':>8}  ({n_rows:,} rows, target ratio <= {S3_RATIO_TARGET:g}; first s3 session {cold_s:.2f} s)")
    for name, ratio in ratios.items():
        print(f"{name:<22}{medians['local'][name]:>9.3f}{medians['s3'][name]:>9.3f}{ratio:>8.2f}")
    return {
        "head_metrics_rows": n_rows,
        "local_seconds": medians["local"],
        "s3_seconds": medians["s3"],
        "s3_over_local": ratios,
        "s3_first_session_seconds": cold_s,  # head_attention in the first session, before any footer is cached locally
        "target_ratio": S3_RATIO_TARGET,
        "all_within_target": all(ratio <= S3_RATIO_TARGET for ratio in ratios.values()),
    }


def measure_stale(root: Path, scratch: Path, samples: int, args) -> dict:
    """Every mart over a run whose committed rollups are of other definitions (as after an upgrade that changed
    definitions.sql): recomputed from its rows by every session (the local cache off) against summed from its rows
    once and read from the local cache (on), rounds alternating in one run; and the first session's cost."""
    import os

    from attnwh.warehouse import definitions

    started = time.perf_counter()
    run_id, n_rows = build(root, samples, args.layers, args.heads, args.part_size)
    print(f"built {n_rows:,} head_metrics rows in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    current = definitions.definitions_sql()
    definitions.definitions_sql = lambda: current + "\n-- a later version of the definitions (the same formulas)\n"
    cache = str(scratch / "object-cache")
    os.environ["ATTNWH_OBJECT_CACHE"] = cache
    started = time.perf_counter()
    with open_session(root) as session:
        run_mart(session, "visual_heads", {})
    first_s = time.perf_counter() - started
    print(f"first session (the run's sums computed from its rows and kept), visual_heads: {first_s:.2f} s", file=sys.stderr)
    timings: dict[str, dict[str, list[float]]] = {"off": {}, "on": {}}
    for _ in range(args.repeats):
        for setting in ("off", "on"):
            os.environ["ATTNWH_OBJECT_CACHE"] = "off" if setting == "off" else cache
            for name, seconds in time_marts(root, run_id, 1).items():
                timings[setting].setdefault(name, []).append(seconds)
    medians = {setting: {name: statistics.median(values) for name, values in found.items()} for setting, found in timings.items()}
    print(f"\n{'mart':<22}{'from rows':>10}{'kept':>9}{'ratio':>8}  ({n_rows:,} rows of other definitions; first session {first_s:.2f} s)")
    for name in medians["off"]:
        print(f"{name:<22}{medians['off'][name]:>10.3f}{medians['on'][name]:>9.3f}{medians['off'][name] / medians['on'][name]:>8.2f}")
    return {
        "head_metrics_rows": n_rows,
        "from_rows_seconds": medians["off"],  # every session recomputes the run's sums from its rows (cache off)
        "kept_seconds": medians["on"],  # the sums computed once from the rows, read from the local cache
        "first_session_seconds": first_s,  # visual_heads in the session that computes and keeps them
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[10_000], help="one warehouse per size, built and timed in turn")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--part-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warehouse", type=Path, default=None, help="build here (default: a temp folder; one size only)")
    parser.add_argument("--out", type=Path, default=Path("bench/results-warehouse.json"))
    parser.add_argument("--s3", action="store_true", help="time every mart on a local folder and on a local S3 emulator, side by side")
    parser.add_argument(
        "--stale", action="store_true", help="rollups of other definitions: every mart recomputed from the rows (cache off) against computed once and kept, side by side"
    )
    args = parser.parse_args()
    if args.warehouse is not None and len(args.samples) > 1:
        parser.error("--warehouse takes one --samples size")
    if args.s3 and (len(args.samples) > 1 or args.warehouse is not None):
        parser.error("--s3 takes one --samples size and builds in a temp folder")

    sizes = []
    for samples in args.samples:
        with tempfile.TemporaryDirectory(prefix="attnwh-bench-") as scratch:
            root = args.warehouse or Path(scratch) / "wh"
            measured = measure_s3 if args.s3 else measure_stale if args.stale else measure
            sizes.append(measured(Path(scratch), samples, args) if args.s3 else measured(root, Path(scratch), samples, args))
    if len(sizes) > 1 and not args.stale:
        names = list(sizes[0]["marts_seconds"])
        print(f"\n{'what':<22}" + "".join(f"{size['head_metrics_rows'] / 1e6:>9.0f}M" for size in sizes))
        for name in names:
            print(f"{'mart ' + name:<22}" + "".join(f"{size['marts_seconds'][name]:>10.3f}" for size in sizes))
        print(f"{'report (6 pages)':<22}" + "".join(f"{size['report_seconds']:>10.2f}" for size in sizes))
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "python": platform.python_version()},
        "command": " ".join(["python", *sys.argv]),
        **(sizes[0] if len(sizes) == 1 else {"sizes": sizes}),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
