"""Decode steps that write into room reserved in the cache (``packed_cache.ReservedLayer``, attnwh's default)
against transformers' ``DynamicLayer`` (a new tensor of the whole layer per step), side by side in one run.

Each configuration (answer length × batch size) runs plain generation (``generate_with_capture`` without a
capture, as ``attnwh extract`` and every sweep condition generate) on the bench's realistic shape (a
LLaVA-1.5-shaped ~650-token prompt through 8 layers × 16 heads, hidden 1024, random weights; or ``gemma3``,
whose sliding-window layers keep transformers' own), exactly ``--new-tokens`` tokens per row (no row stops
early). The two variants run in fresh processes, alternating in paired rounds (this machine's speed drifts);
the ratio is DynamicLayer's time over the reserved layers', median of the rounds. Peak memory: the process's
peak resident set while generating (reset once the model is loaded), and the working memory above what the
loaded process held (a few hundred MiB here, so the allocator's noise shows in it). Every step's logits are compared between
the variants (the same process order each round).

    python bench/bench_cache.py                                     # 8, 64 and 256 tokens, batch 4 and 8
    python bench/bench_cache.py --new-tokens 64 --batch-size 4 --rounds 3
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

VARIANTS = ("dynamic", "reserved")


def child_main(args) -> int:
    import torch

    from attnwh.extract import forward
    from attnwh.extract.generation import generate_with_capture
    from attnwh.extract.models import load_model, resolve_source

    torch.set_num_threads(args.threads)
    if args.variant == "dynamic":  # transformers' own layers: the cache is left as generate makes it
        forward.reserve_room = lambda cache, room: None
    loaded = load_model(resolve_source(args.model), dtype=torch.float32, device=torch.device("cpu"))
    loaded.eos_token_ids = ()  # every row generates exactly --new-tokens tokens
    _, encoded = bench_extract.inputs(loaded, "realistic", args.batch_size)
    logits = []
    hook = loaded.parts.lm_head.register_forward_hook(lambda module, inputs, output: logits.append(output[:, -1].float().clone()))
    generate_with_capture(loaded, encoded, None, 2)  # warm-up
    loaded_rss = bench_extract._reset_peak_rss()
    logits.clear()
    started = time.perf_counter()
    generate_with_capture(loaded, encoded, None, args.new_tokens)
    seconds = time.perf_counter() - started
    hook.remove()
    torch.save(torch.stack(logits), args.logits)
    print(json.dumps({"seconds": seconds, "prompt_tokens": int(encoded["input_ids"].shape[1]), "loaded_rss_mib": loaded_rss, "peak_rss_mib": bench_extract._status_mib("VmHWM")}))
    return 0


def run_child(args, model: Path, variant: str, new_tokens: int, batch_size: int, logits: Path) -> dict:
    command = [sys.executable, __file__, "--child", "--model", str(model), "--variant", variant, "--logits", str(logits)]
    command += ["--new-tokens", str(new_tokens), "--batch-size", str(batch_size), "--threads", str(args.threads)]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def parent_main(args) -> int:
    import torch

    results = {
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "threads": args.threads},
        "when": datetime.now(timezone.utc).isoformat(),
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as temp:
        temp = Path(temp)
        model = bench_extract.build_model("realistic", temp, args.family)
        for new_tokens in args.new_tokens:
            for batch_size in args.batch_size:
                seconds = {variant: [] for variant in VARIANTS}
                peaks = {variant: [] for variant in VARIANTS}  # while generating, above what the loaded process held
                whole = {variant: [] for variant in VARIANTS}  # the process's peak resident set while generating
                gap = 0.0
                for round_index in range(args.rounds):
                    order = VARIANTS if round_index % 2 == 0 else VARIANTS[::-1]
                    outputs = {}
                    for variant in order:
                        outputs[variant] = run_child(args, model, variant, new_tokens, batch_size, temp / f"{variant}.pt")
                        seconds[variant].append(outputs[variant]["seconds"])
                        peaks[variant].append(outputs[variant]["peak_rss_mib"] - outputs[variant]["loaded_rss_mib"])
                        whole[variant].append(outputs[variant]["peak_rss_mib"])
                    mine, theirs = torch.load(temp / "reserved.pt"), torch.load(temp / "dynamic.pt")
                    gap = max(gap, float((mine - theirs).abs().max()))
                ratios = [dynamic / reserved for dynamic, reserved in zip(seconds["dynamic"], seconds["reserved"])]
                memory = [reserved / dynamic for dynamic, reserved in zip(whole["dynamic"], whole["reserved"])]
                entry = {
                    "family": args.family,
                    "new_tokens": new_tokens,
                    "batch_size": batch_size,
                    "prompt_tokens": outputs["reserved"]["prompt_tokens"],
                    "seconds": seconds,
                    "working_mib": peaks,
                    "peak_rss_mib": whole,
                    "speedup_median": statistics.median(ratios),
                    "peak_memory_ratio_median": statistics.median(memory),
                    "max_logit_gap": gap,
                }
                results["runs"].append(entry)
                print(
                    f"{args.family} {new_tokens:4} tokens × {batch_size} rows ({entry['prompt_tokens']}-token prompt): reserved "
                    f"{entry['speedup_median']:.2f}x faster than DynamicLayer (rounds {', '.join(f'{r:.2f}' for r in ratios)}), "
                    f"peak memory {entry['peak_memory_ratio_median']:.2f}x (working: {', '.join(f'{variant} {statistics.median(values):.0f} MiB' for variant, values in peaks.items())}), "
                    f"every step's logits within {gap:.1e}",
                    flush=True,
                )
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="llava", choices=["llava", "gemma3"])
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[8, 64, 256])
    parser.add_argument("--batch-size", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("ATTNWH_BENCH_THREADS", "2")))
    parser.add_argument("--out", type=Path, default=Path("bench/results-cache.json"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--logits", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.new_tokens, args.batch_size = args.new_tokens[0], args.batch_size[0]
        return child_main(args)
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
