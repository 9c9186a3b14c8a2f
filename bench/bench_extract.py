"""Extraction against its limit and its alternatives, side by side in one run.

Timing: plain, capture, capture with rows and eager alternate batch by batch in one process for
several rounds (paired ratios: this machine drifts by tens of percent within minutes, at times 4×);
ratios of each variant's fastest round are printed beside the medians of the paired ratios. Memory: each variant in a
fresh subprocess (so that its peak RSS is its own). Variants, on the same saved model and inputs:

- ``plain``: SDPA generation of the same answers, no capture (the practical limit);
- ``capture``: generation with attnwh's capture (statistics and logit lens, no raw rows);
- ``capture_rows``: the same, keeping the raw rows (float16, moved to the CPU as extract does);
- ``eager``: the route most tools take: eager attention with ``output_attentions=True``, then the
  same statistics computed from the returned attention maps;
- ``nnsight`` (when nnsight is installed: ``pip install nnsight``): nnsight tracing ``generate`` on
  the eager-attention model, saving every layer's last attention row for steps 0 and 1, then the
  same statistics;
- ``extract`` / ``extract_rows``: the whole ``run_extract`` (encode, generate, statistics, Parquet
  and Zarr writes, commits), without and with raw rows.

Shapes: ``realistic`` = a LLaVA-1.5-shaped prompt (336-px image → 576 image tokens, ~650 tokens in
all) through a text model of 8 layers × 16 heads (hidden 1024); ``long`` = the same model with a
LLaVA-NeXT-sized image part (756-px image → 2,916 image tokens, as NeXT's anyres grids give up to
2,880); ``toy`` = the shipped toy.

Peak memory is measured every round (each variant in a fresh process, in the same order as the
timing) and reported as the median of per-round ratios. For the in-process variants it is the peak
resident set *while generating* (the high-water mark is reset once the model is loaded, so the
load's own transient peak does not hide the difference), with "working memory" the part of it
above what the process held at that reset; for whole runs it is the process's peak.

    python bench/bench_extract.py                      # realistic and toy, 5 rounds
    python bench/bench_extract.py --shape long --batch-size 2 --batches 1 --rounds 3
    python bench/bench_extract.py --family qwen2_5_vl --shape realistic --variants plain capture --out bench/results-extract-qwen.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

VARIANTS = ("plain", "capture", "capture_rows", "eager", "nnsight", "extract", "extract_rows")
IN_PROCESS = ("plain", "capture", "capture_rows", "eager", "nnsight")  # timed paired in one process


FAMILIES = ("llava", "qwen2_5_vl", "gemma3")  # the generic capture path on three families' module trees and masks


def build_model(shape: str, folder: Path, family: str = "llava") -> Path:
    """The shape's model: LLaVA-1.5-shaped by default; ``qwen2_5_vl`` / ``gemma3``: the same text size and
    image-token count (576 for ``realistic``) through those families' own modules (M-RoPE and GQA;
    sliding-window layers, bidirectional image attention and GQA), built by the tests' builders."""
    from attnwh.extract.toy.builder import TinyLlavaSpec, save_tiny_llava
    from attnwh.extract.toy.default import default_model_folder

    if shape == "toy":
        return default_model_folder()
    side = {"realistic": 24, "long": 54}[shape]  # image tokens per side: 576 or 2,916
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' builders, from a checkout
    if family == "qwen2_5_vl":
        from tests.builders import tiny_qwen

        tiny_qwen.MIN_PIXELS = tiny_qwen.MAX_PIXELS = (side * tiny_qwen.PATCH_SIZE * tiny_qwen.MERGE_SIZE) ** 2  # every image resized to side² tokens
        return tiny_qwen.save_tiny_qwen2_5_vl(folder / f"{shape}-{family}", n_layers=8, n_heads=16, n_kv_heads=2, hidden_size=1024, seed=0)
    if family == "gemma3":
        from tests.builders import tiny_gemma3

        tiny_gemma3.PATCH_SIZE, tiny_gemma3.IMAGE_SIZE, tiny_gemma3.MM_TOKENS_PER_IMAGE = 16, 16 * side, side * side
        tiny_gemma3.SLIDING_WINDOW = 512  # the prompt (~650 tokens) is longer than the window, as real Gemma 3 prompts with several images are
        return tiny_gemma3.save_tiny_gemma3(folder / f"{shape}-{family}", n_layers=8, n_heads=8, n_kv_heads=4, hidden_size=1024, seed=0)
    image_size = {"realistic": 336, "long": 756}[shape]
    spec = TinyLlavaSpec(n_layers=8, n_heads=16, n_kv_heads=16, hidden_size=1024, vision_layers=1, vision_hidden=64, image_size=image_size, patch_size=14, seed=0)
    return save_tiny_llava(folder / shape, spec)


def inputs(loaded, shape: str, batch_size: int):
    """A left-padded batch: toy-shapes questions; for the realistic shape padded out to ~70 text tokens."""
    from attnwh.extract.benchmarks import get_benchmark
    from attnwh.extract.generation import encode_batch
    from attnwh.extract.prompts import FORMATS

    samples = get_benchmark("toy-shapes").load(None, "test")[:batch_size]
    questions = [sample.question for sample in samples]
    if shape in ("realistic", "long"):  # a longer text part, as LLaVA's system prompt + question make (~70 tokens)
        filler = " ".join(["is there a red circle in the image ?"] * 6)
        questions = [f"{filler} {question}" for question in questions]
    prompts = [FORMATS["chat_template"].render(loaded.processor, question) for question in questions]
    images = [sample.load_image() for sample in samples]
    return samples, encode_batch(loaded, images, prompts)


def run_variant(variant: str, shape: str, model_folder: Path, batch_size: int, batches: int, new_tokens: int) -> dict:
    """Runs in the child process: warm up once, then time ``batches`` batches."""
    import torch

    from attnwh.extract.models import load_model, resolve_source
    from attnwh.extract.run import ExtractOptions, run_extract

    torch.set_num_threads(int(os.environ.get("ATTNWH_BENCH_THREADS", "2")))
    source = resolve_source(str(model_folder))
    if variant.startswith("extract"):
        with tempfile.TemporaryDirectory() as scratch:
            options = dict(
                model=str(model_folder),
                limit=batch_size * batches,
                batch_size=batch_size,
                part_size=batch_size,
                max_new_tokens=new_tokens,
                device="cpu",
                rows=variant == "extract_rows",
                command=["bench"],
            )
            run_extract(Path(scratch) / "warm", ExtractOptions(**{**options, "limit": batch_size, "part_size": batch_size}))
            started = time.perf_counter()
            run_extract(Path(scratch) / "wh", ExtractOptions(**options))
            seconds = time.perf_counter() - started
        return {"seconds": seconds, "samples": batch_size * batches}

    loaded = load_model(source, dtype=torch.float32, device=torch.device("cpu"))
    _, encoded = inputs(loaded, shape, batch_size)
    once = routes(loaded, encoded, new_tokens, [variant])[variant]
    n_tokens = int(encoded["input_ids"].shape[1])
    loaded_rss = _reset_peak_rss()  # the peak from here on is generation's, not loading's

    once()  # warm-up
    started = time.perf_counter()
    for _ in range(batches):
        once()
    seconds = time.perf_counter() - started
    result = {"seconds": seconds, "samples": batch_size * batches, "prompt_tokens": n_tokens}
    peak = _status_mib("VmHWM")
    if loaded_rss is not None and peak is not None:
        result.update(loaded_rss_mib=loaded_rss, generation_peak_rss_mib=peak)
    return result


def _status_mib(field: str) -> float | None:
    """A field of /proc/self/status (Linux: VmRSS now, VmHWM the peak), in MiB."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> float | None:
    """Reset this process's peak resident set to its current one (Linux ≥ 4.0: "5" to clear_refs),
    and return the current one; None where that cannot be done."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:
        return None
    return _status_mib("VmRSS")


def nnsight_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("nnsight") is not None


def routes(loaded, encoded, new_tokens: int, wanted) -> dict:
    """One batch of each wanted variant, as a callable, on the same inputs (the eager and nnsight
    routes load their own eager-attention copy of the weights)."""
    import torch

    from attnwh.extract.capture import CaptureSpec
    from attnwh.extract.generation import generate_with_capture
    from attnwh.extract.segments import prompt_segments, with_generated
    from attnwh.extract.stats import row_statistics

    segments = prompt_segments(encoded["input_ids"], encoded["attention_mask"], loaded.spec.image_token_ids)
    location = loaded.source.location
    n_layers = loaded.info["n_layers"]
    found = {}

    def statistics_of(per_step) -> None:  # the same statistics from rows of steps 0 and 1: [batch, head, key] per layer
        for step, layers in enumerate(per_step):
            step_segments = with_generated(segments, step)
            for rows in layers:
                row_statistics(rows, step_segments)

    def capture(rows: bool) -> None:
        _, session, _ = generate_with_capture(loaded, encoded, CaptureSpec(("prompt", "gen1"), rows=rows, lens=True), new_tokens)
        session.stacked_statistics()
        if rows:
            session.stacked_rows(torch.float16)

    found["plain"] = lambda: generate_with_capture(loaded, encoded, None, new_tokens)
    found["capture"] = lambda: capture(False)
    found["capture_rows"] = lambda: capture(True)
    if "eager" in wanted:
        from transformers import AutoModelForImageTextToText

        eager = AutoModelForImageTextToText.from_pretrained(location, dtype=torch.float32, attn_implementation="eager").eval()
        eager.generation_config = loaded.model.generation_config

        def eager_route() -> None:  # full attention maps out of generate, then the statistics from them
            with torch.inference_mode():
                out = eager.generate(**encoded, max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0, output_attentions=True, return_dict_in_generate=True)
                statistics_of([[maps[:, :, -1, :] for maps in out.attentions[step]] for step in (0, 1)])

        found["eager"] = eager_route
    if "nnsight" in wanted:
        from nnsight.modeling.transformers import TransformersModel

        traced = TransformersModel(location, task="image-text-to-text", dispatch=True, attn_implementation="eager", dtype=torch.float32)

        def nnsight_route() -> None:  # the last row of every layer's attention weights, saved by tracing generate
            with torch.inference_mode():
                with traced.generate(dict(encoded), max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0) as tracer:
                    saved = list().save()
                    for _ in tracer.iter[0:2]:
                        saved.append([traced.model.language_model.layers[i].self_attn.output[1][:, :, -1, :] for i in range(n_layers)])
                statistics_of(saved)

        found["nnsight"] = nnsight_route
    return {name: run for name, run in found.items() if name in wanted}


def paired_main(args) -> int:
    """One process, one loaded model: plain / capture / capture_rows / eager (/ nnsight) alternate
    batch by batch for ``rounds`` rounds, so that each ratio is the median of ratios of runs taken
    seconds apart (this machine's speed drifts by tens of percent within minutes; paired ratios
    cancel most of it)."""
    import torch

    from attnwh.extract.models import load_model, resolve_source

    torch.set_num_threads(int(os.environ.get("ATTNWH_BENCH_THREADS", "2")))
    loaded = load_model(resolve_source(args.model), dtype=torch.float32, device=torch.device("cpu"))
    _, encoded = inputs(loaded, args.shape, args.batch_size)
    variants = routes(loaded, encoded, args.new_tokens, [name for name in args.variants if name in IN_PROCESS])
    for run in variants.values():
        run()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        # variants alternate batch by batch, so that a round's variants run seconds apart
        for name in variants:
            times[name].append(0.0)
            cpu[name].append(0.0)
        for _ in range(args.batches):
            for name, run in variants.items():
                wall, started_cpu = time.perf_counter(), time.process_time()
                run()
                times[name][-1] += time.perf_counter() - wall
                cpu[name][-1] += time.process_time() - started_cpu
    print(json.dumps({"times": times, "cpu": cpu, "prompt_tokens": int(encoded["input_ids"].shape[1]), "samples": args.batch_size * args.batches}))
    return 0


def child_main(args) -> int:
    result = run_variant(args.variant, args.shape, Path(args.model), args.batch_size, args.batches, args.new_tokens)
    result["process_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # in-process variants: the peak while generating (weights resident + working memory), which the
    # load's own transient peak (reading safetensors, imports) would otherwise hide; whole runs: the process's
    result["peak_rss_mib"] = result.get("generation_peak_rss_mib", result["process_peak_rss_mib"])
    print(json.dumps(result))
    return 0


def _child(args, extra: list[str]) -> dict:
    command = [
        sys.executable,
        __file__,
        "--batch-size",
        str(args.batch_size),
        "--batches",
        str(args.batches),
        "--new-tokens",
        str(args.new_tokens),
        "--rounds",
        str(args.rounds),
        *extra,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"bench child failed: {' '.join(extra)}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _ratio(values_top: list[float], values_bottom: list[float]) -> float:
    return statistics.median(top / bottom for top, bottom in zip(values_top, values_bottom))


# (numerator, denominator, measure, limit, direction): the targets, and what is only reported
RATIOS = (
    ("capture", "plain", "time", 1.05, "<="),
    ("capture_rows", "plain", "time", 1.05, "<="),
    ("eager", "capture", "time", 2.0, ">="),
    ("nnsight", "capture", "time", 2.0, ">="),
    ("capture", "plain", "CPU time", 1.05, "<="),
    ("capture", "plain", "peak RSS", 1.10, "<="),
    ("capture_rows", "plain", "peak RSS", 1.10, "<="),
    ("eager", "plain", "peak RSS", None, ""),
    ("nnsight", "plain", "peak RSS", None, ""),
    ("extract_rows", "extract", "time", 1.10, "<="),
)


def parent_main(args) -> int:
    selected = [name for name in args.variants if name != "nnsight" or nnsight_available()]
    if len(selected) < len(args.variants):
        print("nnsight is not installed: its route is left out (pip install nnsight)", file=sys.stderr)
    results: dict = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "command": " ".join(["python", *sys.argv]),
        "shapes": {},
    }
    with tempfile.TemporaryDirectory(prefix="attnwh-bench-") as scratch:
        for shape in args.shape:
            model = str(build_model(shape, Path(scratch), args.family))
            paired = _child(args, ["--paired", "--shape", shape, "--model", model, "--variants", *selected])
            print(f"[{shape}] paired timing done", file=sys.stderr)
            memory: dict[str, list[float]] = {variant: [] for variant in selected}
            working: dict[str, list[float]] = {variant: [] for variant in selected}
            whole: dict[str, list[float]] = {variant: [] for variant in selected if variant not in IN_PROCESS}
            for _ in range(args.rounds):
                for variant in selected:
                    result = _child(args, ["--child", "--variant", variant, "--shape", shape, "--model", model])
                    memory[variant].append(result["peak_rss_mib"])
                    if "loaded_rss_mib" in result:
                        working[variant].append(result["peak_rss_mib"] - result["loaded_rss_mib"])
                    if variant in whole:
                        whole[variant].append(result["seconds"])
            print(f"[{shape}] memory and whole runs done", file=sys.stderr)
            samples = paired["samples"]
            times = {**paired["times"], **whole}
            summary = {
                name: {
                    "median_seconds": statistics.median(times[name]),
                    "median_cpu_seconds": statistics.median(paired["cpu"][name]) if name in paired["cpu"] else None,
                    "peak_rss_mib": statistics.median(memory[name]),
                    "working_mib": statistics.median(working[name]) if working[name] else None,
                    "all_seconds": times[name],
                    "all_peak_rss_mib": memory[name],
                }
                for name in selected
            }
            for row in summary.values():
                row["samples_per_second"] = samples / row["median_seconds"]
            measures = {"time": times, "CPU time": paired["cpu"], "peak RSS": memory}
            ratios = {}
            for top, bottom, measure, limit, direction in RATIOS:
                if top not in summary or bottom not in summary:
                    continue
                how = "per round" if measure == "peak RSS" else ("paired" if top in IN_PROCESS else "per round, separate processes")
                value = _ratio(measures[measure][top], measures[measure][bottom])
                met = None if limit is None else (value <= limit if direction == "<=" else value >= limit)
                ratios[f"{top} / {bottom} {measure} ({how})"] = {"ratio": value, "target": f"{direction} {limit}" if limit else "", "met": met}
            # the same time ratios from each variant's fastest round: the least-disturbed runs (this
            # machine's speed swings up to 4× with its neighbours' load; paired medians and minima
            # bracket the uncontended ratio)
            for top, bottom, measure, _, _ in RATIOS:
                if measure == "time" and top in summary and bottom in summary:
                    ratios[f"{top} / {bottom} time (fastest rounds)"] = {"ratio": min(times[top]) / min(times[bottom]), "target": "", "met": None}
            results["shapes"][shape if args.family == "llava" else f"{shape}-{args.family}"] = {"prompt_tokens": paired["prompt_tokens"], "variants": summary, "ratios": ratios}
            print(f"\n{shape}: {args.batches} batches of {args.batch_size}, {args.new_tokens} new tokens, prompt {paired['prompt_tokens']} tokens, {args.rounds} rounds")
            print(f"{'variant':<14}{'median s':>10}{'samples/s':>11}{'peak RSS MiB':>14}{'working MiB':>13}")
            for variant, row in summary.items():
                work = "" if row["working_mib"] is None else f"{row['working_mib']:.0f}"
                print(f"{variant:<14}{row['median_seconds']:>10.2f}{row['samples_per_second']:>11.2f}{row['peak_rss_mib']:>14.0f}{work:>13}")
            for name, row in ratios.items():
                verdict = "" if row["met"] is None else ("met" if row["met"] else "MISSED")
                print(f"  {name:<48} {row['ratio']:.3f}  {row['target']} {verdict}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwritten {args.out}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", nargs="+", default=["realistic", "toy"], choices=["realistic", "long", "toy"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--family", default="llava", choices=FAMILIES, help="the model family of the realistic / long shapes (default llava)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("bench/results-extract.json"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--paired", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child or args.paired:
        args.shape = args.shape if isinstance(args.shape, str) else args.shape[0]
        return child_main(args) if args.child else paired_main(args)
    return parent_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
