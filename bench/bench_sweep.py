"""Sweeps end to end: today's path against reuse (issue 29), side by side in one run.

Each sweep runs as ``attnwh mask`` / ``attnwh prune`` run it (``run_mask`` / ``run_prune``: load the model,
encode the samples, evaluate every condition, commit every part to a fresh warehouse), in a fresh process
per run so that its time and its peak memory are its own; the two paths alternate in paired rounds (this
machine drifts by tens of percent within minutes), and the medians of the paired ratios are printed.

- ``today``: ``--no-reuse`` with the answer length given (every condition from scratch, every token up to
  the limit: what ``attnwh mask`` did before reuse);
- ``reuse``: the default: images once per batch, the baseline's prefix once, each condition started at its
  first intervened layer, answers stopped once decided (within the same limit); ``--stack N`` conditions per pass;
- ``unstacked`` (``--against unstacked``): reuse with one condition per pass, to measure ``--stack N`` against.
- ``whole-last-layer`` (``--against whole-last-layer``): reuse with every prefill's last decoder layer computed for
  every position (``SweepSamples.final_rows`` off), to measure what computing its final position alone saves.

Sweeps: ``mask`` = top / random / bottom × early / mid / late / all at one k (2 heads per stage) with one
random seed: 13 conditions (the baseline included); ``prune`` = the default grid (full; score / uniform /
random at 50%, 25%, 10%, 5%: 13 conditions; the default cache phase); ``attribute`` = ``attnwh attribute``'s
patterns (16 random ablation patterns, p = 0.2, and the baseline: 17 conditions, then the fit; ``--attribute-method single``:
one condition per head of the model, each ablating that head alone, and the baseline). The ranking is a seeded random score per head (a random
model has no visual heads; where a trained model's top heads sit changes where masking starts).

Shapes: ``realistic`` = a LLaVA-1.5-shaped prompt (336-px image → 576 image tokens, ~610 tokens with the
toy-shapes question) through a random text model of 8 layers × 16 heads (hidden 1024) whose vision tower
(24 layers, hidden 128) costs the share of a pass that CLIP-L/336 costs in LLaVA-1.5-7B (~4%); ``toy`` =
the toy zoo (small, medium, large), on toy-shapes.

    python bench/bench_sweep.py                                   # realistic and toy, mask and prune
    python bench/bench_sweep.py --shape realistic --kind mask --benchmark toy-shapes-yesno   # yes / no only, as POPE
    python bench/bench_sweep.py --shape realistic --kind mask --new-tokens 8 --rounds 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path


def build_realistic(folder: Path) -> Path:
    from attnwh.extract.toy.builder import TinyLlavaSpec, save_tiny_llava

    spec = TinyLlavaSpec(n_layers=8, n_heads=16, n_kv_heads=16, hidden_size=1024, vision_layers=24, vision_hidden=128, image_size=336, patch_size=14, seed=0)
    return save_tiny_llava(folder / "realistic", spec)


def models(shape: str, folder: Path) -> list[str]:
    if shape == "realistic":
        return [str(build_realistic(folder))]
    from attnwh.extract.toy.default import ZOO

    return list(ZOO)


def child_main(args) -> int:
    """One sweep, end to end, in this process; prints its seconds, peak RSS and answers as JSON."""
    import random

    import duckdb
    import torch

    from attnwh.extract.attribution import AttributeOptions, prepare_attribute, run_attribute
    from attnwh.extract.mask_run import MaskOptions, prepare_mask, run_mask
    from attnwh.extract.prune_run import PruneOptions, prepare_prune, run_prune
    from attnwh.extract.sweep import HeadRanking

    torch.set_num_threads(args.threads)
    phases = time_decoder_layers()
    stack = args.stack if args.path == "reuse" else 1  # "unstacked": reuse with one condition per pass
    if args.path == "whole-last-layer":  # reuse with the last layer's prefill computed for every position
        from attnwh.extract import sweep

        start_samples = sweep.SweepSamples._start

        def whole_last_layer(self, *arguments, **keywords):
            start_samples(self, *arguments, **keywords)
            self.final_rows = False

        sweep.SweepSamples._start = whole_last_layer
    reuse = args.path != "today"
    common = dict(model=args.model, benchmark=args.benchmark, limit=args.limit, batch_size=args.batch_size, device="cpu", dtype="float32", seeds=1, reuse=reuse, stack=stack)
    common["max_new_tokens"] = None if reuse else args.new_tokens  # reuse: stopped once decided, within the same limit
    start = time.perf_counter()
    if args.kind == "mask":
        options = MaskOptions(**common, strategies=("top", "random", "bottom"), stages=("early", "mid", "late", "all"), k=("2",))
        setup = prepare_mask(options)
        run = run_mask
    elif args.kind == "attribute":
        method = {"patterns": dict(patterns=16, bootstrap=20), "single": {}}[args.attribute_method]
        options = AttributeOptions(**common, method=args.attribute_method, **method)
        setup = prepare_attribute(options)
        run = None
    else:
        options = PruneOptions(**common)
        setup = prepare_prune(options)
        run = run_prune
    info = setup.info
    rng = random.Random(0)
    heads = [(layer, head) for layer in range(info["n_layers"]) for head in range(info["n_heads"])]
    scores = {head: rng.random() for head in heads}
    ranking = HeadRanking("bench", "concentration_x_sum", "gen1", dict(sorted(scores.items(), key=lambda item: -item[1])))
    # both paths under the same limit (toy-shapes' own is 2; POPE's and the study's other benchmarks' is 8)
    setup = dataclasses.replace(setup, run=dataclasses.replace(setup.run, max_new_tokens=args.new_tokens))
    result = run_attribute(args.warehouse, setup) if run is None else run(args.warehouse, setup, ranking)
    seconds = time.perf_counter() - start
    rows = duckdb.sql(
        f"select condition_id, sample_idx, parsed, option_logprobs from read_parquet('{result.run_path}/**/sweep_results*.parquet') order by all"  # noqa: S608 (a bench's own temp path)
    ).fetchall()
    print(
        json.dumps({"seconds": seconds, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rows": rows, "reuse_off": result.reuse_off, "phases": phases})
    )
    return 0


def time_decoder_layers() -> dict[str, list[float]]:
    """Every decoder layer's forward in this (child) process, timed by what it did: computed the prompt (``prefill``)
    or one position (``decode``), or handed on a recorded output without running its attention (``replayed``, a
    reused prefix): ``{phase: [layer calls, seconds]}``, filled as the sweep runs. Where a sweep's time goes: the
    prefill of each condition from its first intervened layer, or its decode steps."""
    import torch

    totals = {"prefill": [0, 0.0], "decode": [0, 0.0], "replayed": [0, 0.0]}
    running: dict[int, list] = {}  # decoder layer -> [start, whether its attention ran]

    def before(module, inputs):
        name = type(module).__name__
        if name.endswith("DecoderLayer") and inputs and isinstance(inputs[0], torch.Tensor):
            running[id(module)] = [time.perf_counter(), False]
        elif name.endswith("Attention"):
            for entry in running.values():
                entry[1] = True

    def after(module, inputs, output):
        entry = running.pop(id(module), None)
        if entry is not None:
            phase = totals[("decode" if inputs[0].shape[1] == 1 else "prefill") if entry[1] else "replayed"]
            phase[0] += 1
            phase[1] += time.perf_counter() - entry[0]

    torch.nn.modules.module.register_module_forward_pre_hook(before)
    torch.nn.modules.module.register_module_forward_hook(after)
    return totals


def run_child(args, model: str, kind: str, path: str, warehouse: Path) -> dict:
    command = [sys.executable, __file__, "--child", "--model", model, "--kind-one", kind, "--path", path, "--warehouse", str(warehouse)]
    command += [
        "--limit",
        str(args.limit),
        "--batch-size",
        str(args.batch_size),
        "--new-tokens",
        str(args.new_tokens),
        "--threads",
        str(args.threads),
        "--benchmark",
        args.benchmark,
        "--attribute-method",
        args.attribute_method,
        "--stack",
        str(args.stack),
    ]
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if completed.returncode != 0:
        raise SystemExit(f"{path} {kind} on {model} failed:\n{completed.stderr[-3000:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    result["wall_seconds"] = wall
    return result


def compare(today: list, reuse: list) -> dict:
    """Answers (parsed) identical per condition and sample; option log-probabilities' largest difference."""
    assert [row[:2] for row in today] == [row[:2] for row in reuse], "the two paths evaluated different conditions or samples"
    parsed_equal = all(a[2] == b[2] for a, b in zip(today, reuse))
    gaps = [(abs(x - y), a[0], a[1], x, y) for a, b in zip(today, reuse) if a[3] and b[3] for x, y in zip(a[3], b[3])]
    largest = max(gaps, default=(0.0, None, None, None, None))
    # where the largest difference is (condition, sample, the two log-probabilities): a figure to trace, not only to read
    return {"answers_identical": parsed_equal, "max_option_logprob_gap": largest[0], "max_option_logprob_gap_at": list(largest[1:]) if largest[0] > 0 else None}


def parent_main(args) -> int:
    results = {"machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": args.threads}, "when": datetime.now(timezone.utc).isoformat(), "runs": []}
    with tempfile.TemporaryDirectory() as temp:
        temp = Path(temp)
        for shape in args.shape:
            for model in models(shape, temp):
                for kind in args.kind:
                    paths = (args.against, "reuse")
                    times = {path: [] for path in paths}
                    walls = {path: [] for path in paths}
                    peaks = {path: [] for path in paths}
                    check = None
                    rows = {path: [] for path in paths}
                    phases = {path: [] for path in paths}
                    for round_index in range(args.rounds):
                        order = paths if round_index % 2 == 0 else paths[::-1]
                        outputs = {}
                        for path in order:
                            outputs[path] = run_child(args, model, kind, path, temp / f"wh-{shape}-{kind}-{path}-{round_index}")
                            times[path].append(outputs[path]["seconds"])
                            walls[path].append(outputs[path]["wall_seconds"])
                            peaks[path].append(outputs[path]["peak_rss_mib"])
                            rows[path].append(outputs[path]["rows"])
                            phases[path].append(outputs[path]["phases"])
                        this_round = compare(outputs[args.against]["rows"], outputs["reuse"]["rows"])
                        if check is None or this_round["max_option_logprob_gap"] > check["max_option_logprob_gap"]:  # the worst round's, not the last's
                            this_round["answers_identical"] = this_round["answers_identical"] and (check is None or check["answers_identical"])
                            check = this_round
                        else:
                            check["answers_identical"] = check["answers_identical"] and this_round["answers_identical"]
                        if outputs["reuse"]["reuse_off"]:
                            check["reuse_off"] = outputs["reuse"]["reuse_off"]
                    # each path against itself in another process (the first round's rows against the others'): the noise floor of the gap above
                    self_gaps = {path: max((compare(rows[path][0], other)["max_option_logprob_gap"] for other in rows[path][1:]), default=None) for path in paths}
                    ratios = [a / b for a, b in zip(times[args.against], times["reuse"])]
                    wall_ratios = [a / b for a, b in zip(walls[args.against], walls["reuse"])]
                    peak_ratios = [b / a for a, b in zip(peaks[args.against], peaks["reuse"])]
                    entry = {
                        "shape": shape,
                        "model": Path(model).name,
                        "kind": kind,
                        **({"attribute_method": args.attribute_method} if kind == "attribute" else {}),
                        "benchmark": args.benchmark,
                        "conditions": len({row[0] for row in outputs["reuse"]["rows"]}),
                        "stack": args.stack,
                        "against": args.against,
                        "samples": args.limit,
                        "batch_size": args.batch_size,
                        "new_tokens": args.new_tokens,
                        "seconds": times,
                        "speedup_median": statistics.median(ratios),
                        "speedup_wall_median": statistics.median(wall_ratios),
                        "peak_rss_mib": peaks,
                        "peak_ratio_median": statistics.median(peak_ratios),
                        **check,
                        "option_logprob_gap_between_rounds": self_gaps,
                        "decoder_layer_phases": phases,  # per path and round: {prefill | decode: [layer calls, seconds]}
                    }
                    results["runs"].append(entry)
                    print(
                        f"{shape:9} {entry['model']:18} {args.benchmark:16} {kind:5} {entry['conditions']:2} conditions: reuse (stack {args.stack}) {entry['speedup_median']:.2f}x faster than {args.against} "
                        f"(process wall {entry['speedup_wall_median']:.2f}x), peak memory {entry['peak_ratio_median']:.2f}x, "
                        f"answers identical: {check['answers_identical']}, option log-prob gap {check['max_option_logprob_gap']:.1e} at {check['max_option_logprob_gap_at']} "
                        f"(between rounds: {', '.join(f'{path} {gap:.1e}' for path, gap in self_gaps.items() if gap is not None) or 'one round'})",
                        flush=True,
                    )
                    for path in paths:  # where each path's time went: the first round's decoder layers, by what they were handed
                        (prefill_calls, prefill_seconds), (decode_calls, decode_seconds) = phases[path][0]["prefill"], phases[path][0]["decode"]
                        print(
                            f"{'':9} {path:>18}: prefill {prefill_calls} layer passes {prefill_seconds:.1f} s, decode {decode_calls} layer steps {decode_seconds:.1f} s, of {times[path][0]:.1f} s",
                            flush=True,
                        )
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", nargs="+", default=["realistic", "toy"], choices=["realistic", "toy"])
    parser.add_argument("--kind", nargs="+", default=["mask", "prune"], choices=["mask", "prune", "attribute"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=8, help="the answer's limit (today: every token up to it; reuse: up to where the answer is decided)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--benchmark",
        default="toy-shapes",
        help="toy-shapes mixes yes / no with colour choices a random model never answers with a letter (decoded to the limit); toy-shapes-yesno is yes / no only, as POPE",
    )
    parser.add_argument(
        "--attribute-method",
        default="patterns",
        choices=["patterns", "single"],
        help="--kind attribute: 16 random ablation patterns (p = 0.2), or single: one head at a time (every head of the model: a condition each)",
    )
    parser.add_argument("--stack", type=int, default=1, help="the reuse path's conditions per pass (attnwh's --stack)")
    parser.add_argument(
        "--against",
        default="today",
        choices=["today", "unstacked", "whole-last-layer"],
        help="what the reuse path is measured against: today's path (--no-reuse), reuse with one condition per pass (to measure --stack), or reuse with each prefill's last layer computed for every position",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results-sweep.json"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--kind-one", dest="kind_one", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--warehouse", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.kind = args.kind_one
        return child_main(args)
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
