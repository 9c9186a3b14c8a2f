"""Extraction on a GPU at LLaVA-1.5-7B size: samples/s with capture, plain and eager, and the
model-FLOPs utilisation against the card's bf16 peak.

The model has LLaVA-1.5-7B's configuration (CLIP ViT-L/14-336 tower taking the second-to-last
layer, two-layer GELU projector, Llama-2-7B text model: 32 layers × 32 heads, hidden 4096, MLP
11008, vocabulary 32064) with random weights in bf16, made on the card, saved with
``save_pretrained`` and loaded back through attnwh's own loader (the path a hub id takes). Inputs:
the toy-shapes images at 336 px (576 image tokens) with ~80 text tokens, left-padded batches.

Variants, alternating in one process for several rounds (paired ratios), each timed between
``torch.cuda.synchronize()`` calls, with the peak of ``torch.cuda.max_memory_allocated``:

- ``plain``: SDPA generation of the same answers, no capture (the limit);
- ``plain_dynamic``: the same with transformers' ``DynamicLayer`` instead of attnwh's ``ReservedLayer`` (a new
  tensor of each layer's whole cache per decode step instead of a write into reserved room; run it with
  ``--new-tokens 64`` or more, where the decode steps weigh);
- ``capture``: attnwh's capture (statistics of every head for prompt and gen1, logit lens);
- ``capture_rows``: the same keeping the raw rows (float16, copied to the host as extract does);
- ``eager``: eager attention with ``output_attentions=True`` and the same statistics afterwards;
- ``extract`` (with ``--whole``): the whole ``run_extract`` over ``--samples`` samples (image
  decoding, processor, generation, statistics, Parquet writes and commits).

With ``--prune-cache``: image-KV pruning's packed cache (bench_prune_cache.py's variants: full, 50% and 25%
uniform, 25% by score, 25% gathered) over ``--prune-new-tokens`` decode steps: time per step against the full
cache, the cache's bytes from its tensors and from ``torch.cuda.memory_allocated``, against the counted.

With ``--sweep``: the 13-condition masking sweep (top / random / bottom × early / mid / late / all, 2
heads per stage, one random seed, the baseline) over ``--sweep-samples`` samples, evaluated today's way
(each condition from scratch, every token up to ``--sweep-new-tokens``) and with reuse (images once, the
baseline's prefix once, answers stopped once decided), alternating in paired rounds on the same loaded
model; printed: condition-samples/s of each, their ratio, peak memory, and what the study's grid (about 4
million condition-samples: nine models × five benchmarks × 13 conditions, the figure issue 29 gives)
costs in GPU-hours at each rate.

Model FLOPs per sample count the vision tower, projector, the text model's linear layers for every
prompt and generated token, causal attention (2·s²·d per layer for the prompt, 4·s·d per decode
step) and the last position's lm_head per generated token; MFU = FLOPs × samples/s ÷ peak.

    python bench/bench_gpu.py                            # on a CUDA machine: 7B-shaped, batch 16
    python bench/bench_gpu.py --batch-size 32 --whole    # plus the whole run_extract
    python bench/bench_gpu.py --sweep --variants plain            # plus the masking sweep, today's path against reuse
    python bench/bench_gpu.py --prune-cache --variants plain      # plus the packed pruned cache's decode steps and memory
    python bench/bench_gpu.py --variants plain plain_dynamic --new-tokens 256 --batches 1   # reserved room against DynamicLayer
    python bench/bench_gpu.py --scale tiny --device cpu --rounds 1   # a smoke run of the script itself
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

# dense bf16 tensor-core peaks (TFLOP/s, without sparsity) from the vendors' data sheets
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}


@dataclass(frozen=True)
class Shape:
    """The sizes that fix a LLaVA-1.5 model's cost."""

    text_layers: int
    text_hidden: int
    text_heads: int
    text_intermediate: int
    vocab: int
    vision_layers: int
    vision_hidden: int
    vision_heads: int
    vision_intermediate: int
    image_size: int
    patch_size: int

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


SCALES = {
    "7b": Shape(32, 4096, 32, 11008, 32064, 24, 1024, 16, 4096, 336, 14),  # llava-hf/llava-1.5-7b-hf
    "tiny": Shape(2, 64, 4, 128, 4096, 2, 32, 2, 64, 336, 14),  # the same structure, for a smoke run
}


def text_linear_params(shape: Shape) -> int:
    """Weights of the text model's per-token matrix multiplies, without embeddings and lm_head."""
    d = shape.text_hidden
    return shape.text_layers * (4 * d * d + 3 * d * shape.text_intermediate)


def vision_layer_params(shape: Shape) -> int:
    """Weights of one CLIP encoder layer's matrix multiplies (q, k, v, out, fc1, fc2)."""
    h = shape.vision_hidden
    return 4 * h * h + 2 * h * shape.vision_intermediate


def projector_params(shape: Shape) -> int:
    return shape.vision_hidden * shape.text_hidden + shape.text_hidden * shape.text_hidden


def vision_flops(shape: Shape) -> float:
    """CLIP tower up to the second-to-last layer (LLaVA-1.5 takes its output) and the projector."""
    tokens = shape.image_tokens + 1  # + CLS
    h = shape.vision_hidden
    layers = shape.vision_layers - 1
    per_layer = 2 * tokens * vision_layer_params(shape) + 4 * tokens * tokens * h
    patches = 2 * shape.image_tokens * (3 * shape.patch_size**2) * h
    return layers * per_layer + patches + 2 * shape.image_tokens * projector_params(shape)


def model_flops_per_sample(shape: Shape, prompt_tokens: int, new_tokens: int) -> float:
    """Useful FLOPs of generating ``new_tokens`` answer tokens after a ``prompt_tokens`` prompt."""
    d, layers = shape.text_hidden, shape.text_layers
    linear = 2 * text_linear_params(shape) * (prompt_tokens + new_tokens - 1)
    prompt_attention = layers * 2 * prompt_tokens * prompt_tokens * d  # QKᵀ and AV, causal half
    decode_attention = sum(layers * 4 * (prompt_tokens + step) * d for step in range(1, new_tokens))
    head = 2 * d * shape.vocab * new_tokens
    return vision_flops(shape) + linear + prompt_attention + decode_attention + head


def peak_tflops(device_name: str, given: float | None) -> float | None:
    if given:
        return given
    for name, value in BF16_PEAK_TFLOPS.items():
        if name.lower() in device_name.lower():
            return value
    return None


def build(shape: Shape, folder: Path, device, dtype) -> Path:
    """Random weights of the given shape, made on ``device``, saved with save_pretrained."""
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
    from transformers.utils import logging as hf_logging

    from attnwh.extract.toy import shapes
    from attnwh.extract.toy.builder import BOS_ID, EOS_ID, IMAGE_ID, PAD_ID, TinyLlavaSpec, build_processor, save_pretrained_atomically, set_generation_tokens

    vision = CLIPVisionConfig(
        hidden_size=shape.vision_hidden,
        intermediate_size=shape.vision_intermediate,
        num_hidden_layers=shape.vision_layers,
        num_attention_heads=shape.vision_heads,
        image_size=shape.image_size,
        patch_size=shape.patch_size,
        projection_dim=768,
    )
    text = LlamaConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.text_hidden,
        intermediate_size=shape.text_intermediate,
        num_hidden_layers=shape.text_layers,
        num_attention_heads=shape.text_heads,
        num_key_value_heads=shape.text_heads,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=IMAGE_ID, vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu"
    )
    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=dtype)
    set_generation_tokens(model, PAD_ID, BOS_ID, EOS_ID)
    processor = build_processor(TinyLlavaSpec(image_size=shape.image_size, patch_size=shape.patch_size), shapes.vocabulary())
    save_pretrained_atomically(folder, model, processor)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return folder


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def paired(args, folder: Path, device, dtype) -> dict:
    import torch
    from transformers import AutoModelForImageTextToText

    from attnwh.extract.capture import CaptureSpec
    from attnwh.extract.generation import generate_with_capture
    from attnwh.extract.models import load_model, resolve_source
    from attnwh.extract.segments import prompt_segments, with_generated
    from attnwh.extract.stats import row_statistics

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_extract import inputs  # the same prompts as the CPU bench's realistic shape

    loaded = load_model(resolve_source(str(folder)), dtype=dtype, device=device)
    _, encoded = inputs(loaded, "realistic", args.batch_size)
    segments = prompt_segments(encoded["input_ids"], encoded["attention_mask"], loaded.spec.image_token_ids)
    prompt_tokens = int(encoded["input_ids"].shape[1])

    def plain():
        generate_with_capture(loaded, encoded, None, args.new_tokens)

    def capture(rows: bool):
        _, session, _ = generate_with_capture(loaded, encoded, CaptureSpec(("prompt", "gen1"), rows=rows, lens=True), args.new_tokens)
        session.stacked_statistics()
        if rows:
            session.stacked_rows(torch.float16)

    def plain_dynamic():  # transformers' DynamicLayer: a new tensor of every layer's whole cache per decode step
        from attnwh.extract import forward

        reserve = forward.reserve_room
        forward.reserve_room = lambda cache, room: None  # this bench process only, restored after the batch
        try:
            plain()
        finally:
            forward.reserve_room = reserve

    variants = {"plain": plain, "plain_dynamic": plain_dynamic, "capture": lambda: capture(False), "capture_rows": lambda: capture(True)}
    eager = None
    if "eager" in args.variants:
        eager = AutoModelForImageTextToText.from_pretrained(str(folder), dtype=dtype, attn_implementation="eager").to(device).eval()
        eager.generation_config = loaded.model.generation_config

        def eager_route():
            with torch.inference_mode():
                out = eager.generate(
                    **encoded, max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0, output_attentions=True, return_dict_in_generate=True
                )
                for step in (0, 1):
                    step_segments = with_generated(segments, step)
                    for layer_maps in out.attentions[step]:
                        row_statistics(layer_maps[:, :, -1, :], step_segments)

        variants["eager"] = eager_route
    variants = {name: run for name, run in variants.items() if name in args.variants}

    failed: dict[str, str] = {}
    peak_memory: dict[str, float] = {}
    for name, run in list(variants.items()):  # warm-up, and each variant's peak memory
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        try:
            run()
            _synchronize(device)
        except torch.OutOfMemoryError as exc:
            failed[name] = f"out of memory at batch {args.batch_size}: {str(exc).splitlines()[0][:200]}"
            del variants[name]
            continue
        if device.type == "cuda":
            peak_memory[name] = torch.cuda.max_memory_allocated(device) / 2**30
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, run in variants.items():
            _synchronize(device)
            started = time.perf_counter()
            for _ in range(args.batches):
                run()
            _synchronize(device)
            times[name].append(time.perf_counter() - started)
    return {"times": times, "peak_memory_gib": peak_memory, "failed": failed, "prompt_tokens": prompt_tokens, "samples": args.batch_size * args.batches}


def whole(args, folder: Path, device_name: str) -> dict:
    from attnwh.extract.run import ExtractOptions, run_extract

    with tempfile.TemporaryDirectory(prefix="attnwh-bench-gpu-") as scratch:
        options = dict(
            model=str(folder),
            limit=args.samples,
            batch_size=args.batch_size,
            part_size=max(args.batch_size, 64),
            max_new_tokens=args.new_tokens,
            device=device_name,
            dtype=args.dtype,
            rows=False,
            command=["bench"],
        )
        run_extract(Path(scratch) / "warm", ExtractOptions(**{**options, "limit": args.batch_size}))
        started = time.perf_counter()
        run_extract(Path(scratch) / "wh", ExtractOptions(**options))
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "samples": args.samples}


GRID_CONDITION_SAMPLES = 4_000_000  # the study's grid as issue 29 sizes it (9 models × 5 benchmarks × 13 conditions)


def prune_cache(args, folder: Path, device, dtype) -> dict:
    """Image-KV pruning's packed cache on the 7B-shaped model (bench_prune_cache.py's variants and figures:
    decode time per step against the full cache, the cache's bytes from its tensors and from the allocator,
    against the counted); the long-image shape on the GPU: ``python bench/bench_prune_cache.py --device cuda
    --dtype bfloat16 --shape long``."""
    import torch

    from attnwh.extract.models import load_model, resolve_source

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_extract import inputs
    from bench_prune_cache import measure

    loaded = load_model(resolve_source(str(folder)), dtype=dtype, device=device)
    _, encoded = inputs(loaded, "realistic", args.batch_size)
    rows = measure(loaded, encoded, args.rounds, args.prune_new_tokens, lambda: _synchronize(device))
    del loaded
    torch.cuda.empty_cache() if device.type == "cuda" else None
    return {"new_tokens": args.prune_new_tokens, "prompt_tokens": int(encoded["input_ids"].shape[1]), "variants": rows}


def sweep(args, folder: Path, device, dtype) -> dict:
    """The 13-condition masking sweep, today's path against reuse, in paired rounds on one loaded model."""
    import dataclasses
    import random

    import torch

    from attnwh.extract.mask_run import MaskOptions, MaskSweep, mask_condition, prepare_mask
    from attnwh.extract.masking import build_conditions, parse_k
    from attnwh.extract.models import load_model
    from attnwh.extract.sweep import SweepSamples

    options = MaskOptions(model=str(folder), benchmark=args.sweep_benchmark, limit=args.sweep_samples, batch_size=args.batch_size, device=str(device), dtype=args.dtype, seeds=1)
    options.strategies, options.stages, options.k = ("top", "random", "bottom"), ("early", "mid", "late", "all"), ("2",)
    setup = prepare_mask(options)
    run = dataclasses.replace(setup.run, max_new_tokens=args.sweep_new_tokens)
    info = setup.info
    rng = random.Random(0)
    heads = sorted(((layer, head) for layer in range(info["n_layers"]) for head in range(info["n_heads"])), key=lambda _: rng.random())
    conditions = build_conditions(heads, info["n_layers"], info["n_heads"], options.strategies, options.stages, parse_k(options.k, setup.n_heads), 1)
    kind = MaskSweep("zero")
    group = [[] if c.condition_id == 0 else kind.interventions(mask_condition(c, "zero"), {}) for c in conditions]
    loaded = load_model(run.source, dtype=dtype, device=device)
    today = SweepSamples(loaded, run, args.batch_size)
    reused = SweepSamples(loaded, run, args.batch_size, args.sweep_stack, stop_when_decided=True)
    paths = {"today": lambda: [today.evaluate(interventions) for interventions in group], "reuse": lambda: reused.evaluate_group(group)}
    for warm_up in paths.values():  # both paths: a shape's first kernels (oneDNN primitives, cuBLAS plans) cost seconds, and reuse's first batch checks against the plain path
        warm_up()
    times: dict[str, list[float]] = {name: [] for name in paths}
    peaks: dict[str, float] = {}
    answers = {}
    for round_index in range(args.rounds):
        for name in list(paths) if round_index % 2 == 0 else list(paths)[::-1]:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            _synchronize(device)
            started = time.perf_counter()
            rows = paths[name]()
            _synchronize(device)
            times[name].append(time.perf_counter() - started)
            answers[name] = [[row.get("parsed") for row in condition] for condition in rows]
            if device.type == "cuda":  # reuse's passes reset the counter to measure themselves (--stack auto): the highest they saw counts too
                peaks[name] = max(torch.cuda.max_memory_allocated(device), reused.stack.peak_bytes if name == "reuse" else 0) / 2**30
    condition_samples = len(group) * args.sweep_samples
    rates = {name: condition_samples / statistics.median(seconds) for name, seconds in times.items()}
    return {
        "conditions": len(group),
        "benchmark": args.sweep_benchmark,
        "stack": "auto" if args.sweep_stack is None else args.sweep_stack,
        "largest_stack_run": reused.stack.largest,
        "stack_lowered": reused.stack.lowered,
        "samples": args.sweep_samples,
        "new_tokens": args.sweep_new_tokens,
        "seconds": times,
        "condition_samples_per_second": rates,
        "speedup_paired_median": statistics.median(a / b for a, b in zip(times["today"], times["reuse"])),
        "peak_memory_gib": peaks,
        "answers_identical": answers["today"] == answers["reuse"],
        "reuse_off": reused.reuse_off,
        "grid_gpu_hours": {name: GRID_CONDITION_SAMPLES / rate / 3600 for name, rate in rates.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="7b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--variants", nargs="+", default=["plain", "capture", "capture_rows", "eager"], choices=["plain", "plain_dynamic", "capture", "capture_rows", "eager"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=4)
    parser.add_argument("--whole", action="store_true", help="also time the whole run_extract over --samples samples")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--sweep", action="store_true", help="also time the 13-condition masking sweep, today's path against reuse")
    parser.add_argument("--sweep-samples", type=int, default=64)
    parser.add_argument("--sweep-new-tokens", type=int, default=8, help="the answers' limit (POPE's and the study's other benchmarks' in attnwh)")
    parser.add_argument(
        "--sweep-benchmark",
        default="toy-shapes",
        help="toy-shapes mixes yes / no with colour choices a random model decodes to the limit; toy-shapes-yesno is yes / no only, as POPE",
    )
    parser.add_argument(
        "--sweep-stack",
        type=lambda value: None if value == "auto" else int(value),
        default=None,
        help="reuse's conditions per pass (attnwh mask --stack; default auto, as attnwh's: as many as the card's free memory holds): decode steps read the weights once for all of them",
    )
    parser.add_argument("--prune-cache", action="store_true", help="also time decode steps over the packed pruned cache against the full cache (bench_prune_cache.py's variants)")
    parser.add_argument("--prune-new-tokens", type=int, default=32)
    parser.add_argument("--peak-tflops", type=float, help="the card's dense bf16 peak, when its name is not in the table")
    parser.add_argument("--out", type=Path, default=Path("bench/results-gpu.json"))
    args = parser.parse_args()

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here; run it on a GPU machine (or --device cpu --scale tiny for a smoke run)", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    shape = SCALES[args.scale]
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    peak = peak_tflops(device_name, args.peak_tflops) if device.type == "cuda" else args.peak_tflops

    with tempfile.TemporaryDirectory(prefix="attnwh-bench-gpu-") as scratch:
        started = time.perf_counter()
        folder = build(shape, Path(scratch) / f"llava-1.5-{args.scale}-random", device, dtype)
        print(f"built and saved the {args.scale} model in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        measured = paired(args, folder, device, dtype)
        whole_run = whole(args, folder, args.device) if args.whole else None
        sweep_run = sweep(args, folder, device, dtype) if args.sweep else None
        prune_run = prune_cache(args, folder, device, dtype) if args.prune_cache else None

    flops = model_flops_per_sample(shape, measured["prompt_tokens"], args.new_tokens)
    rows = {}
    for name, seconds in measured["times"].items():
        per_second = measured["samples"] / statistics.median(seconds)
        rows[name] = {
            "median_seconds": statistics.median(seconds),
            "all_seconds": seconds,
            "samples_per_second": per_second,
            "tflops": flops * per_second / 1e12,
            "mfu": flops * per_second / 1e12 / peak if peak else None,
            "peak_memory_gib": measured["peak_memory_gib"].get(name),
        }
    if whole_run:
        per_second = whole_run["samples"] / whole_run["seconds"]
        rows["extract"] = {
            "median_seconds": whole_run["seconds"],
            "samples_per_second": per_second,
            "tflops": flops * per_second / 1e12,
            "mfu": flops * per_second / 1e12 / peak if peak else None,
            "peak_memory_gib": None,
        }
    ratios = {}
    times = measured["times"]
    for top, bottom in (("capture", "plain"), ("capture_rows", "plain"), ("eager", "capture"), ("plain_dynamic", "plain")):
        if top in times and bottom in times:
            ratios[f"{top} / {bottom} time (paired)"] = statistics.median(a / b for a, b in zip(times[top], times[bottom]))
    results = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "device": device_name,
        "scale": args.scale,
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "prompt_tokens": measured["prompt_tokens"],
        "new_tokens": args.new_tokens,
        "model_tflop_per_sample": flops / 1e12,
        "peak_tflops": peak,
        "variants": rows,
        "ratios": ratios,
        "failed": measured["failed"],
        "sweep": sweep_run,
        "prune_cache": prune_run,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
    }
    print(
        f"\n{device_name}, {args.scale}, {args.dtype}, batch {args.batch_size}, prompt {measured['prompt_tokens']} tokens, "
        f"{args.new_tokens} new tokens, {flops / 1e12:.2f} TFLOP per sample, peak {peak or '?'} TFLOP/s"
    )
    print(f"{'variant':<14}{'samples/s':>11}{'TFLOP/s':>10}{'MFU':>8}{'peak GiB':>10}")
    for name, row in rows.items():
        mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "-"
        memory = f"{row['peak_memory_gib']:.1f}" if row["peak_memory_gib"] is not None else "-"
        print(f"{name:<14}{row['samples_per_second']:>11.2f}{row['tflops']:>10.2f}{mfu:>8}{memory:>10}")
    for name, value in ratios.items():
        print(f"  {name:<32} {value:.3f}")
    for name, why in measured["failed"].items():
        print(f"  {name}: {why}")
    if sweep_run:
        rates, hours = sweep_run["condition_samples_per_second"], sweep_run["grid_gpu_hours"]
        print(
            f"\nmasking sweep, {sweep_run['conditions']} conditions × {sweep_run['samples']} samples: today {rates['today']:.1f} condition-samples/s, "
            f"reuse {rates['reuse']:.1f} ({sweep_run['speedup_paired_median']:.2f}x paired); the study's grid: {hours['today']:.1f} GPU-hours today, "
            f"{hours['reuse']:.1f} with reuse; answers identical: {sweep_run['answers_identical']}; peak GiB {sweep_run['peak_memory_gib']}; "
            f"--stack {sweep_run['stack']}: largest stack run {sweep_run['largest_stack_run']}{'; ' + sweep_run['stack_lowered'] if sweep_run['stack_lowered'] else ''}"
        )
    if prune_run:
        print(f"\npacked pruned cache, {prune_run['new_tokens']} new tokens, prompt {prune_run['prompt_tokens']} tokens:")
        for name, row in prune_run["variants"].items():
            held = f"{row['allocator_bytes'] / 2**20:.1f} MiB allocated" if row["allocator_bytes"] is not None else ""
            print(
                f"  {name:16s} step ratio {row['step_ratio']:.3f}  cache {row['cache_bytes'] / 2**20:.1f} MiB ({row['cache_over_full']:.3f} of full, {row['measured_over_counted']:.4f} of counted) {held}"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
