"""Capturing every generated position (``--queries gen``, issue 30): its cost against plain generation and
the eager route, side by side in one run, and the bytes per sample of its tables.

1. Time and memory of generating exactly ``--new-tokens`` (64) tokens per row (``eos_token_ids = ()``: no
   row stops early), on the same saved model and inputs as ``bench_extract.py`` (``realistic``: a
   LLaVA-1.5-shaped 658-token prompt through 8 layers × 16 heads, hidden 1024, random weights; ``toy``: the
   shipped toy). Variants:

   - ``plain``: ``generate_with_capture`` without a capture (the limit);
   - ``gen``: ``CaptureSpec(("gen",), rows=False, lens=False)``: the statistics of every step;
   - ``gen_lens``: the same with the logit lens of every step (``lens=True``);
   - ``prompt_gen1``: today's default capture (``prompt``, ``gen1``, raw rows, lens), for context;
   - ``eager``: the route other tools take: eager attention with ``output_attentions=True`` over
     ``generate``, then the same statistics for every step (each step's layers reduced in one call).

   Timing is paired: the variants alternate batch by batch in one process for ``--rounds`` rounds (this
   machine's speed drifts by tens of percent within minutes); each ratio is the median of per-round
   ratios, printed beside the ratio of each variant's fastest round. Memory: each variant in a fresh process
   per round, the peak resident set *while generating* (reset once the model is loaded), and the working
   memory above what the process held at that reset. After the timed rounds, one untimed pass each of ``plain``, ``gen`` and
   ``gen_lens`` with timers around the capture's pieces (``last_query_rows``, ``observe``,
   ``observe_hidden``, ``end_step``, ``row_statistics``, ``logit_lens``) says where the extra time goes,
   and a check compares ``gen``'s statistics with the eager route's.

2. Storage: a part of ``--storage-samples`` samples of a 64-token answer on a 32-layer × 32-head model
   (65,536 ``gen_metrics`` rows per sample) from synthetic but structured attention rows (per-head logit
   profiles over a LLaVA-1.5 prompt's segments, per-sample image saliency, per-step noise; softmaxed and
   reduced by ``attnwh.extract.stats.row_statistics``), written with the real writer
   (``part_tables.write_parquet``) and with alternatives (pyarrow's defaults, dictionary pages on the float
   columns, other levels and sort orders, unsorted rows, float16), beside ``head_metrics`` for ``prompt`` +
   ``gen1``.

On a shared 2-core machine, run with one torch thread: with two threads, another process on one core
makes every parallel operation wait for a descheduled thread (measured here: the same plain generation
7 s, then 46 s with 3x the CPU time), which hits the capture's many small operations hardest.

    ATTNWH_BENCH_THREADS=1 python bench/bench_gen.py --rounds 3
    python bench/bench_gen.py --shape toy --rounds 5 --skip-storage
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_extract  # noqa: E402  (the shapes, inputs and RSS helpers)

VARIANTS = ("plain", "gen", "gen_lens", "prompt_gen1", "eager")
TARGET = 1.10  # issue 30: gen capture <= 1.10x plain generation
LENS_VOCABS = (32000,)  # LLaVA-1.5's vocabulary: what the lens of every step would cost there


def routes(loaded, encoded, new_tokens: int, wanted) -> dict:
    """One batch of each wanted variant, as a callable, on the same inputs (eager loads its own copy)."""
    import torch

    from attnwh.extract.capture import CaptureSpec
    from attnwh.extract.generation import generate_with_capture
    from attnwh.extract.segments import prompt_segments, with_generated
    from attnwh.extract.stats import row_statistics

    segments = prompt_segments(encoded["input_ids"], encoded["attention_mask"], loaded.spec.image_token_ids)
    found = {}

    def capture(spec: CaptureSpec):
        generation, session, _ = generate_with_capture(loaded, encoded, spec, new_tokens)
        gen = session.stacked_gen_statistics()  # [step, layer, batch, head, stat] on CPU, as extract reads it
        if spec.fixed_queries:
            session.stacked_statistics()
            session.stacked_rows(torch.float16)
        return generation, gen

    found["plain"] = lambda: generate_with_capture(loaded, encoded, None, new_tokens)
    found["gen"] = lambda: capture(CaptureSpec(("gen",), rows=False, lens=False))
    found["gen_lens"] = lambda: capture(CaptureSpec(("gen",), rows=False, lens=True))
    found["prompt_gen1"] = lambda: capture(CaptureSpec(("prompt", "gen1"), rows=True, lens=True))  # extract's default
    if "eager" in wanted:
        from transformers import AutoModelForImageTextToText

        eager = AutoModelForImageTextToText.from_pretrained(loaded.source.location, dtype=torch.float32, attn_implementation="eager").eval()
        eager.generation_config = loaded.model.generation_config

        def eager_route():  # every step's full attention maps out of generate, then the same statistics per step
            with torch.inference_mode():
                out = eager.generate(**encoded, max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0, output_attentions=True, return_dict_in_generate=True)
                per_step = []
                for step, layers in enumerate(out.attentions):
                    rows = torch.stack([maps[:, :, -1, :] for maps in layers])  # [layer, batch, head, key]
                    n_layers, batch = rows.shape[:2]
                    stats = row_statistics(rows.reshape(n_layers * batch, *rows.shape[2:]), with_generated(segments, step).repeat(n_layers, 1))
                    per_step.append(stats.reshape(n_layers, batch, *stats.shape[1:]))
                return out.sequences, torch.stack(per_step)

        found["eager"] = eager_route
    return {name: found[name] for name in wanted if name in found}


def load(model: str, shape: str, batch_size: int):
    import torch

    from attnwh.extract.models import load_model, resolve_source

    torch.set_num_threads(int(os.environ.get("ATTNWH_BENCH_THREADS", "2")))
    loaded = load_model(resolve_source(model), dtype=torch.float32, device=torch.device("cpu"))
    loaded.eos_token_ids = ()  # no row stops early: every variant generates exactly --new-tokens tokens
    _, encoded = bench_extract.inputs(loaded, shape, batch_size)
    return loaded, encoded


def paired_main(args) -> int:
    """One process: the variants alternate batch by batch for ``rounds`` rounds; then the check and the profile."""
    import torch

    loaded, encoded = load(args.model, args.shape, args.batch_size)
    variants = routes(loaded, encoded, args.new_tokens, args.variants)
    for run in variants.values():
        run()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    loads: dict[str, list[float]] = {name: [] for name in variants}  # 1-minute load average after each run: other processes' share of the cores
    for round_ in range(args.rounds):
        for name in variants:
            times[name].append(0.0)
            cpu[name].append(0.0)
        order = list(variants.items()) if round_ % 2 == 0 else list(variants.items())[::-1]  # no variant always first
        for _ in range(args.batches):
            for name, run in order:
                wall, started_cpu = time.perf_counter(), time.process_time()
                run()
                times[name][-1] += time.perf_counter() - wall
                cpu[name][-1] += time.process_time() - started_cpu
                loads[name].append(os.getloadavg()[0])
    result = {
        "times": times,
        "cpu": cpu,
        "load": loads,
        "threads": torch.get_num_threads(),
        "prompt_tokens": int(encoded["input_ids"].shape[1]),
        "samples": args.batch_size * args.batches,
        "vocab": int(loaded.parts.lm_head.weight.shape[0]),
        "n_layers": int(loaded.info["n_layers"]),
        "n_heads": int(loaded.info["n_heads"]),
        "hidden": int(loaded.parts.lm_head.weight.shape[1]),
    }
    result["check"] = check(loaded, encoded, args.new_tokens, variants)
    result["profile"] = profile(loaded, encoded, args.new_tokens, variants)
    print(json.dumps(result))
    return 0


def check(loaded, encoded, new_tokens: int, variants: dict) -> dict:
    """``gen``'s statistics against the eager route's, over the steps before the two answers first differ."""
    import torch

    from attnwh.extract.stats import STAT_NAMES

    if "gen" not in variants or "eager" not in variants:
        return {}
    generation, gen = variants["gen"]()
    sequences, eager = variants["eager"]()
    prompt = encoded["input_ids"].shape[1]
    ours = torch.tensor(generation.steps)  # [batch, step]
    theirs = sequences[:, prompt:]
    same = (ours[:, : theirs.shape[1]] == theirs[:, : ours.shape[1]]).all(0)
    steps = int(same.int().cumprod(0).sum()) + 1 if bool(same[0]) else 1  # step t's row depends on the tokens of steps < t
    steps = min(steps, gen.shape[0], eager.shape[0])
    keep = [i for i, name in enumerate(STAT_NAMES) if name not in ("image_argmax", "region_sum", "region_entropy", "region_hit")]
    diff = (gen[:steps][..., keep] - eager[:steps][..., keep]).abs()
    argmax = STAT_NAMES.index("image_argmax")
    return {
        "steps_compared": steps,
        "steps_generated": int(gen.shape[0]),
        "max_abs_diff": float(diff.max()),
        "image_argmax_agreement": float((gen[:steps][..., argmax] == eager[:steps][..., argmax]).float().mean()),
    }


def profile(loaded, encoded, new_tokens: int, variants: dict) -> dict:
    """Untimed in the rounds: one pass each of plain, gen and gen_lens with timers around the capture's pieces
    (wall seconds, summed over the pass; nested timers overlap: observe contains last_query_rows, end_step
    contains with_generated, row_statistics and logit_lens)."""
    import torch

    from attnwh.extract import capture as capture_module
    from attnwh.extract import generation as generation_module
    from attnwh.extract.lens import logit_lens

    spent: dict[str, float] = {}
    calls: dict[str, int] = {}

    def timed(name, function):
        def wrapper(*a, **k):
            started = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - started
                calls[name] = calls.get(name, 0) + 1

        return wrapper

    session_class = capture_module.CaptureSession
    originals = {
        "last_query_rows": (capture_module, "last_query_rows"),
        "row_statistics": (capture_module, "row_statistics"),
        "with_generated": (capture_module, "with_generated"),
        "logit_lens": (generation_module, "logit_lens"),
        "observe": (session_class, "observe"),
        "observe_hidden": (session_class, "observe_hidden"),
        "end_step": (session_class, "end_step"),
        "stacked_gen_statistics": (session_class, "stacked_gen_statistics"),
    }
    saved = {name: getattr(owner, attribute) for name, (owner, attribute) in originals.items()}
    out: dict = {}
    try:
        for name, (owner, attribute) in originals.items():
            setattr(owner, attribute, timed(name, saved[name]))
        for variant in ("plain", "gen", "gen_lens"):
            if variant not in variants:
                continue
            spent.clear()
            calls.clear()
            started = time.perf_counter()
            variants[variant]()
            out[variant] = {"seconds": time.perf_counter() - started, "pieces": dict(spent), "calls": dict(calls)}
    finally:
        for name, (owner, attribute) in originals.items():
            setattr(owner, attribute, saved[name])
    # what the lens of every step would cost at a real vocabulary (this random model's word-level vocabulary is tiny)
    parts = loaded.parts
    hidden_size = parts.lm_head.weight.shape[1]
    batch = encoded["input_ids"].shape[0]
    n_hidden = len(parts.decoder_layers) + 1
    for vocab in LENS_VOCABS:
        head = torch.nn.Linear(hidden_size, vocab, bias=False)
        hidden = torch.randn(n_hidden, batch, hidden_size)
        with torch.inference_mode():
            logit_lens(hidden, parts.final_norm, head)
            started = time.perf_counter()
            for _ in range(5):
                logit_lens(hidden, parts.final_norm, head)
            lens_ms = (time.perf_counter() - started) / 5 * 1000
            rows = torch.randn(batch, hidden_size)
            head(rows)
            started = time.perf_counter()
            for _ in range(5):
                head(rows)
            head_ms = (time.perf_counter() - started) / 5 * 1000
        out[f"lens_per_step_ms_vocab_{vocab}"] = lens_ms
        out[f"lm_head_per_step_ms_vocab_{vocab}"] = head_ms  # what plain generation's own lm_head costs per step at that vocabulary
    out["steps"] = new_tokens
    return out


def child_main(args) -> int:
    """A fresh process per variant: the peak resident set while generating one batch."""
    import resource

    loaded, encoded = load(args.model, args.shape, args.batch_size)
    run = routes(loaded, encoded, args.new_tokens, [args.variant])[args.variant]
    loaded_rss = bench_extract._reset_peak_rss()
    started = time.perf_counter()
    run()
    seconds = time.perf_counter() - started
    peak = bench_extract._status_mib("VmHWM")
    result = {"seconds": seconds, "loaded_rss_mib": loaded_rss, "peak_rss_mib": peak}
    result["process_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
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


def _ratio(top: list[float], bottom: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(top, bottom))


# (numerator, denominator, measure, limit)
RATIOS = (
    ("gen", "plain", "time", TARGET),
    ("gen_lens", "plain", "time", None),
    ("prompt_gen1", "plain", "time", None),
    ("eager", "plain", "time", None),
    ("eager", "gen", "time", None),
    ("gen", "plain", "CPU time", None),
    ("gen", "plain", "peak RSS", None),
    ("gen_lens", "plain", "peak RSS", None),
    ("prompt_gen1", "plain", "peak RSS", None),
    ("eager", "plain", "peak RSS", None),
    ("gen", "plain", "working memory", None),
    ("gen_lens", "plain", "working memory", None),
    ("eager", "plain", "working memory", None),
)


def timing(args, shape: str, scratch: Path) -> dict:
    model = str(bench_extract.build_model(shape, scratch))
    selected = list(args.variants)
    paired = _child(args, ["--paired", "--shape", shape, "--model", model, "--variants", *selected])
    print(f"[{shape}] paired timing done", file=sys.stderr)
    memory: dict[str, list[float]] = {v: [] for v in selected}
    working: dict[str, list[float]] = {v: [] for v in selected}
    for _ in range(args.memory_rounds):
        for variant in selected:
            result = _child(args, ["--child", "--variant", variant, "--shape", shape, "--model", model])
            memory[variant].append(result["peak_rss_mib"])
            working[variant].append(result["peak_rss_mib"] - result["loaded_rss_mib"])
    print(f"[{shape}] memory done", file=sys.stderr)
    times, cpu = paired["times"], paired["cpu"]
    summary = {
        name: {
            "median_seconds": statistics.median(times[name]),
            "fastest_seconds": min(times[name]),
            "median_cpu_seconds": statistics.median(cpu[name]),
            "peak_rss_mib": statistics.median(memory[name]),
            "working_mib": statistics.median(working[name]),
            "all_seconds": times[name],
            "all_cpu_seconds": cpu[name],
            "all_peak_rss_mib": memory[name],
            "all_working_mib": working[name],
        }
        for name in selected
    }
    measures = {"time": times, "CPU time": cpu, "peak RSS": memory, "working memory": working}
    ratios = {}
    for top, bottom, measure, limit in RATIOS:
        if top in summary and bottom in summary:
            how = "paired" if measure in ("time", "CPU time") else "per round"
            value = _ratio(measures[measure][top], measures[measure][bottom])
            ratios[f"{top} / {bottom} {measure} ({how})"] = {"ratio": value, "target": f"<= {limit}" if limit else "", "met": None if limit is None else value <= limit}
    for top, bottom, measure, limit in RATIOS:
        if measure == "time" and top in summary and bottom in summary:
            value = min(times[top]) / min(times[bottom])
            ratios[f"{top} / {bottom} time (fastest rounds)"] = {"ratio": value, "target": f"<= {limit}" if limit else "", "met": None if limit is None else value <= limit}
    tokens = args.new_tokens * paired["samples"]
    for row in summary.values():
        row["ms_per_generated_token_row"] = row["median_seconds"] / tokens * 1000
    return {k: paired[k] for k in ("prompt_tokens", "samples", "vocab", "n_layers", "n_heads", "hidden")} | {
        "variants": summary,
        "ratios": ratios,
        "check": paired["check"],
        "profile": paired["profile"],
        "threads": paired["threads"],
        "load_after_each_run": paired["load"],
    }


def print_timing(shape: str, args, result: dict) -> None:
    print(
        f"\n{shape}: {args.batches} batch(es) of {args.batch_size}, {args.new_tokens} new tokens, prompt {result['prompt_tokens']} tokens, "
        f"{result['n_layers']} layers x {result['n_heads']} heads, vocab {result['vocab']}, {args.rounds} rounds (memory: {args.memory_rounds}), {result['threads']} torch threads"
    )
    print(f"{'variant':<13}{'median s':>10}{'fastest s':>11}{'peak RSS MiB':>14}{'working MiB':>13}")
    for variant, row in result["variants"].items():
        print(f"{variant:<13}{row['median_seconds']:>10.2f}{row['fastest_seconds']:>11.2f}{row['peak_rss_mib']:>14.0f}{row['working_mib']:>13.0f}")
    for name, row in result["ratios"].items():
        verdict = "" if row["met"] is None else ("met" if row["met"] else "MISSED")
        print(f"  {name:<48} {row['ratio']:.3f}  {row['target']} {verdict}")
    loads = [value for values in result["load_after_each_run"].values() for value in values]
    print(f"  1-minute load average after the timed runs: {min(loads):.2f}-{max(loads):.2f} on {os.cpu_count()} cores")
    check_ = result["check"]
    if check_:
        print(
            f"  check gen vs eager: {check_['steps_compared']} of {check_['steps_generated']} steps, max |diff| {check_['max_abs_diff']:.2e}, argmax agreement {check_['image_argmax_agreement']:.3f}"
        )
    prof = result["profile"]
    for variant in ("plain", "gen", "gen_lens"):
        if variant in prof:
            pieces = ", ".join(f"{name} {seconds * 1000:.0f} ms/{prof[variant]['calls'][name]}" for name, seconds in sorted(prof[variant]["pieces"].items(), key=lambda kv: -kv[1]))
            print(f"  profile {variant}: {prof[variant]['seconds'] * 1000:.0f} ms total; {pieces}")
    for vocab in LENS_VOCABS:
        print(
            f"  lens per step at vocab {vocab}: {prof[f'lens_per_step_ms_vocab_{vocab}']:.1f} ms (plain's own lm_head per step: {prof[f'lm_head_per_step_ms_vocab_{vocab}']:.1f} ms)"
        )


# ---------------------------------------------------------------- storage


def synthetic_statistics(n_samples: int, n_steps: int, n_layers: int, n_heads: int, seed: int = 0):
    """[sample, step, layer, head, stat] statistics of structured synthetic attention rows, and per sample the
    [layer, head, stat] rows of ``prompt`` (step 0) and ``gen1`` (step 1).

    The prompt is LLaVA-1.5's: BOS, 35 system tokens, 576 image tokens, 46 question tokens (658), then the
    generated tokens. Each head has its own logit profile (a sink on BOS of its own strength, a temperature on
    the image, a preference for text and for recent generated tokens), each sample its image saliency (shared by
    heads in part), each step noise: rows of differing concentration, as real heads have.
    """
    import numpy as np
    import torch

    from attnwh.extract.segments import BOS, IMAGE, PROMPT, SYSTEM, with_generated
    from attnwh.extract.stats import row_statistics

    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    n_system, n_image, n_question = 35, 576, 46
    prompt = torch.tensor([BOS] + [SYSTEM] * n_system + [IMAGE] * n_image + [PROMPT] * n_question).unsqueeze(0)
    n_prompt = prompt.shape[1]
    heads = n_layers * n_heads
    depth = torch.arange(n_layers).repeat_interleave(n_heads).float() / max(1, n_layers - 1)  # 0..1 per head
    bos_logit = 3.0 + 3.0 * randn(heads) + 2.0 * depth  # sinks grow with depth
    image_temperature = torch.exp(0.2 + 0.7 * randn(heads))  # how peaked a head is over the image
    image_shared = torch.sigmoid(2 * randn(heads))  # how much a head follows the sample's saliency
    text_bias = 0.5 * randn(heads)
    recency = torch.rand(heads, generator=generator) * 0.3
    all_steps, fixed = [], []
    for _ in range(n_samples):
        saliency = randn(n_image)
        own = randn(heads, n_image)
        image_logits = image_temperature[:, None] * (image_shared[:, None] * saliency + (1 - image_shared[:, None] ** 2).sqrt() * own)
        base = torch.empty(heads, n_prompt)
        base[:, 0] = bos_logit
        base[:, 1 : 1 + n_system] = text_bias[:, None] + 0.5 * randn(heads, n_system)
        base[:, 1 + n_system : 1 + n_system + n_image] = image_logits
        base[:, 1 + n_system + n_image :] = text_bias[:, None] + 0.8 + 0.7 * randn(heads, n_question)
        generated = torch.empty(heads, 0)
        per_step = []
        for step in range(n_steps):
            noise = 0.35 * randn(heads, n_prompt + step) * image_temperature[:, None].sqrt()
            logits = torch.cat([base, generated], dim=1) + noise
            rows = torch.softmax(logits, dim=-1).unsqueeze(0)  # [1, layer x head, key]
            stats = row_statistics(rows, with_generated(prompt, step))[0].reshape(n_layers, n_heads, -1)
            per_step.append(stats)
            position = torch.arange(step + 1).float()
            generated = text_bias[:, None] + 0.5 * randn(heads, step + 1) + recency[:, None] * (position - step)[None, :] * 0.5 + 0.6  # recent tokens favoured
        stacked = torch.stack(per_step).numpy()  # [step, layer, head, stat]
        all_steps.append(stacked)
        fixed.append({"prompt": stacked[0], "gen1": stacked[1]})
    return np.stack(all_steps), fixed, n_image


def storage(args) -> dict:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from attnwh.extract.part_tables import gen_metrics_table, metrics_table, write_parquet
    from attnwh.warehouse.layout import table_file
    from attnwh.warehouse.schema import GEN_LENS, GEN_LENS_SORT, GEN_METRICS_SORT, GEN_TOKENS, HEAD_METRICS_SORT

    n, steps, layers, heads = args.storage_samples, args.new_tokens, args.storage_layers, args.storage_heads
    started = time.perf_counter()
    stats, fixed, n_image = synthetic_statistics(n, steps, layers, heads)
    built = time.perf_counter() - started
    run_id = "bench-gen-run-0123456789abcdef"
    rng = np.random.default_rng(1)
    gen_metrics = pa.concat_tables(gen_metrics_table(run_id, i, n_image, stats[i]) for i in range(n)).sort_by(GEN_METRICS_SORT)
    head_metrics = pa.concat_tables(metrics_table(run_id, i, n_image, fixed[i]) for i in range(n)).sort_by(HEAD_METRICS_SORT)
    # gen_tokens: a word-level answer (a few hundred distinct tokens, words of one to three tokens, some objects)
    words = [f"word{k}" for k in range(300)]
    objects = ["dog", "cat", "car", "table", "person", "chair", "cup", "tree"]
    tokens: dict[str, list] = {name: [] for name in GEN_TOKENS.names}
    for i in range(n):
        word_index = 0
        for step in range(steps):
            token = int(rng.integers(0, len(words)))
            start = step == 0 or rng.random() < 0.6
            word_index += 0 if step == 0 or not start else 1
            obj = objects[int(rng.integers(0, len(objects)))] if rng.random() < 0.1 else None
            tokens["run_id"].append(run_id)
            tokens["sample_idx"].append(i)
            tokens["step"].append(step)
            tokens["token_id"].append(token + 3)
            tokens["token_text"].append("▁" + words[token] if start else words[token])
            tokens["eos"].append(False)
            tokens["word_index"].append(word_index)
            tokens["word"].append(words[token])
            tokens["word_start"].append(start)
            tokens["object"].append(obj)
            tokens["object_status"].append(None if obj is None else ("grounded" if rng.random() < 0.7 else "hallucinated"))
    gen_tokens = pa.table(tokens, schema=GEN_TOKENS)
    # gen_lens: per step, the rank of the generated token falls with depth to 1 at the last layer
    lens: dict[str, list] = {name: [] for name in GEN_LENS.names}
    for i in range(n):
        for step in range(steps):
            settle = int(rng.integers(layers // 2, layers + 1))
            for layer in range(layers + 1):
                rank = 1 if layer >= settle else int(np.exp(rng.uniform(0, 10) * (settle - layer) / settle)) + 1
                lens["run_id"].append(run_id)
                lens["sample_idx"].append(i)
                lens["step"].append(step)
                lens["layer"].append(layer)
                lens["token_rank"].append(rank)
                lens["token_prob"].append(float(rng.beta(1, 20) if rank > 1 else rng.beta(5, 2)))
    gen_lens = pa.table(lens, schema=GEN_LENS).sort_by(GEN_LENS_SORT)
    try:
        from attnwh.warehouse.definitions import gen_rollup

        gen_scores = gen_rollup(gen_metrics, gen_tokens)
    except Exception as error:  # the rollup is being written beside this bench; its size is reported when it runs
        print(f"gen_rollup failed ({error!r}): gen_scores left out", file=sys.stderr)
        gen_scores = None

    def size(path: Path) -> int:
        return path.stat().st_size

    result: dict = {"samples": n, "steps": steps, "layers": layers, "heads": heads, "gen_metrics_rows": gen_metrics.num_rows, "synthetic_build_seconds": built}
    with tempfile.TemporaryDirectory(prefix="attnwh-bench-gen-") as scratch:
        folder = Path(scratch)
        tables = {"gen_metrics": gen_metrics, "gen_tokens": gen_tokens, "gen_lens": gen_lens, "head_metrics": head_metrics}
        if gen_scores is not None:
            tables["gen_scores"] = gen_scores
        sizes = {}
        for name, table in tables.items():
            write_parquet(table, name, folder)  # the real writer
            sizes[name] = {"rows": table.num_rows, "bytes": size(table_file(folder, name))}
        result["tables"] = {
            name: {**value, "bytes_per_sample": value["bytes"] / n, "bytes_per_row": value["bytes"] / value["rows"] if value["rows"] else None} for name, value in sizes.items()
        }
        gen_total = sum(value["bytes"] for name, value in sizes.items() if name.startswith("gen_"))
        result["gen_tables_bytes_per_sample"] = gen_total / n
        # alternatives for gen_metrics, written with pyarrow directly (same schema and metadata-free)
        shuffled = gen_metrics.take(np.random.default_rng(2).permutation(gen_metrics.num_rows))
        by_head = gen_metrics.sort_by([("layer", "ascending"), ("head", "ascending"), ("sample_idx", "ascending"), ("step", "ascending")])
        floats = [name for name, kind in zip(gen_metrics.schema.names, gen_metrics.schema.types) if pa.types.is_floating(kind)]
        tuned = dict(compression="zstd", compression_level=6, use_dictionary=True, row_group_size=1 << 20)
        others = [name for name in gen_metrics.schema.names if name not in floats]
        plain_floats = {**tuned, "use_dictionary": others}  # dictionary pages for the integer and string columns only
        alternatives = {
            "real writer (part_tables.write_parquet), sorted sample, step, layer, head": (gen_metrics, None),
            "zstd 6, dictionary on every column, 1 Mi-row groups (the writer before BYTE_STREAM_SPLIT), sorted": (gen_metrics, tuned),
            "pyarrow default (snappy), sorted": (gen_metrics, {}),
            "zstd with pyarrow's defaults (level 1, dictionary, 1 Mi-row groups), sorted": (gen_metrics, dict(compression="zstd")),
            "zstd 9, dictionary on every column, sorted": (gen_metrics, {**tuned, "compression_level": 9}),
            "zstd 6, dictionary on every column, unsorted (shuffled rows)": (shuffled, tuned),
            "zstd 6, dictionary on every column, sorted layer, head, sample, step": (by_head, tuned),
            "zstd 6, dictionary for ints/strings only (plain floats)": (gen_metrics, plain_floats),
            "zstd 6, dictionary for ints/strings, byte_stream_split floats": (gen_metrics, {**plain_floats, "use_byte_stream_split": floats}),
            "zstd 6, dictionary for ints/strings, byte_stream_split floats, unsorted": (shuffled, {**plain_floats, "use_byte_stream_split": floats}),
            "float16 floats, zstd 6, dictionary on every column (a schema change)": (
                gen_metrics.cast(pa.schema([pa.field(f.name, pa.float16()) if f.name in floats else f for f in gen_metrics.schema])),
                tuned,
            ),
            "float16 floats, dictionary for ints/strings, byte_stream_split floats (a schema change)": (
                gen_metrics.cast(pa.schema([pa.field(f.name, pa.float16()) if f.name in floats else f for f in gen_metrics.schema])),
                {**plain_floats, "use_byte_stream_split": floats},
            ),
        }
        result["gen_metrics_alternatives"] = {}
        for label, (table, options) in alternatives.items():
            path = folder / "alternative.parquet"
            started = time.perf_counter()
            try:
                if options is None:
                    (folder / "real").mkdir(exist_ok=True)
                    write_parquet(table, "gen_metrics", folder / "real")
                    path = table_file(folder / "real", "gen_metrics")
                else:
                    pq.write_table(table, path, **options)
            except Exception as error:  # an option this pyarrow lacks
                result["gen_metrics_alternatives"][label] = {"error": repr(error)}
                continue
            seconds = time.perf_counter() - started
            started = time.perf_counter()
            pq.read_table(path)
            read = time.perf_counter() - started
            result["gen_metrics_alternatives"][label] = {
                "bytes": size(path),
                "bytes_per_sample": size(path) / n,
                "bytes_per_row": size(path) / table.num_rows,
                "write_seconds": seconds,
                "read_seconds": read,
            }
        # where the bytes of the real file go, by column
        metadata = pq.ParquetFile(table_file(folder, "gen_metrics")).metadata
        columns: dict[str, int] = {}
        for group in range(metadata.num_row_groups):
            for index in range(metadata.num_columns):
                column = metadata.row_group(group).column(index)
                columns[column.path_in_schema] = columns.get(column.path_in_schema, 0) + column.total_compressed_size
        result["gen_metrics_bytes_per_row_by_column"] = {name: value / gen_metrics.num_rows for name, value in sorted(columns.items(), key=lambda kv: -kv[1])}
    return result


def print_storage(result: dict) -> None:
    print(
        f"\nstorage: {result['samples']} samples x {result['steps']} steps x {result['layers']} layers x {result['heads']} heads ({result['gen_metrics_rows']:,} gen_metrics rows)"
    )
    print(f"{'table':<14}{'rows':>11}{'bytes':>13}{'bytes/sample':>14}{'bytes/row':>11}")
    for name, row in result["tables"].items():
        per_row = "" if row["bytes_per_row"] is None else f"{row['bytes_per_row']:.2f}"
        print(f"{name:<14}{row['rows']:>11,}{row['bytes']:>13,}{row['bytes_per_sample']:>14,.0f}{per_row:>11}")
    print(f"  gen tables together: {result['gen_tables_bytes_per_sample']:,.0f} bytes per sample")
    print("  gen_metrics alternatives:")
    for label, row in result["gen_metrics_alternatives"].items():
        if "error" in row:
            print(f"    {label}: {row['error']}")
        else:
            print(
                f"    {row['bytes_per_sample']:>11,.0f} B/sample {row['bytes_per_row']:>6.2f} B/row  write {row['write_seconds']:.2f} s read {row['read_seconds']:.2f} s  {label}"
            )
    print("  gen_metrics bytes per row by column: " + ", ".join(f"{name} {value:.2f}" for name, value in result["gen_metrics_bytes_per_row_by_column"].items()))


def parent_main(args) -> int:
    results: dict = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(), "threads": int(os.environ.get("ATTNWH_BENCH_THREADS", "2"))},
        "command": " ".join([*([f"ATTNWH_BENCH_THREADS={os.environ['ATTNWH_BENCH_THREADS']}"] if "ATTNWH_BENCH_THREADS" in os.environ else []), "python", *sys.argv]),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("child", "paired", "variant", "model")},
        "shapes": {},
    }
    try:
        import pyarrow
        import torch
        import transformers

        results["machine"].update(torch=torch.__version__, transformers=transformers.__version__, pyarrow=pyarrow.__version__)
    except ImportError:
        pass
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="attnwh-bench-") as scratch:
        for shape in [] if args.skip_timing else args.shape:
            results["shapes"][shape] = timing(args, shape, Path(scratch))
            print_timing(shape, args, results["shapes"][shape])
    if not args.skip_storage:
        results["storage"] = storage(args)
        print_storage(results["storage"])
    results["bench_seconds"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwritten {args.out} ({results['bench_seconds']:.0f} s)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", nargs="+", default=["realistic", "toy"], choices=["realistic", "long", "toy"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-rounds", type=int, default=1, help="fresh processes per variant for peak memory (default 1)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--batches", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--storage-samples", type=int, default=16)
    parser.add_argument("--storage-layers", type=int, default=32)
    parser.add_argument("--storage-heads", type=int, default=32)
    parser.add_argument("--skip-storage", action="store_true")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench/results-gen.json"))
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
