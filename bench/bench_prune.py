"""The cost of a pruning condition against a plain generation pass, side by side in one run.

A LLaVA-1.5-shaped prompt (576 image tokens, ~650 in all) through a text model of 8 layers × 16
heads (hidden 1024), generated greedily (as ``attnwh prune`` runs it), alternating batch by batch:

- ``plain``: SDPA generation, no pruning (what the ``full`` condition and ``attnwh mask``'s baseline run);
- ``uniform_attention`` / ``score_attention``: a quarter of the image KV kept, budgets uniform or by
  (random) head scores, each head keeping the image keys its last prompt row attends most;
- ``uniform_stride``: the same budget, evenly spaced keys.

Each ratio is the median over rounds of the variant's time over ``plain``'s in the same round (this
machine drifts); target ≤ 1.1.

    python bench/bench_prune.py                       # 5 rounds of 2 batches of 4
    python bench/bench_prune.py --rounds 7 --out bench/results-prune.json
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
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_extract import build_model, inputs  # noqa: E402  (one definition of the realistic model and prompt, beside this script)

TARGET = 1.1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=4)
    parser.add_argument("--share", type=float, default=0.25)
    parser.add_argument("--out", type=Path, default=Path("bench/results-prune.json"))
    args = parser.parse_args()

    import numpy as np
    import torch

    from attnwh.extract.generation import generate_with_capture
    from attnwh.extract.models import load_model, resolve_source
    from attnwh.extract.pruning import KVPrune, allocate

    torch.set_num_threads(int(os.environ.get("ATTNWH_BENCH_THREADS", "2")))
    with tempfile.TemporaryDirectory(prefix="attnwh-bench-prune-") as scratch:
        folder = build_model("realistic", Path(scratch))
        loaded = load_model(resolve_source(str(folder)), dtype=torch.float32, device=torch.device("cpu"))
        _, encoded = inputs(loaded, "realistic", args.batch_size)
        shape = (loaded.info["n_layers"], loaded.info["n_kv_heads"])
        scores = np.random.default_rng(0).random(shape)
        conditions = {
            "plain": None,
            "uniform_attention": KVPrune(allocate("uniform", args.share, scores), "attention", phase="prefill"),
            "score_attention": KVPrune(allocate("score", args.share, scores), "attention", phase="prefill"),
            "uniform_stride": KVPrune(allocate("uniform", args.share, scores), "stride", phase="prefill"),
        }

        def run(prune) -> None:
            generate_with_capture(loaded, encoded, None, args.new_tokens, interventions=[prune] if prune is not None else [])

        for prune in conditions.values():
            run(prune)  # warm-up
        times: dict[str, list[float]] = {name: [] for name in conditions}
        for _ in range(args.rounds):
            for name in conditions:
                times[name].append(0.0)
            for _ in range(args.batches):
                for name, prune in conditions.items():
                    started = time.perf_counter()
                    run(prune)
                    times[name][-1] += time.perf_counter() - started
    ratios = {name: statistics.median(t / p for t, p in zip(times[name], times["plain"])) for name in conditions if name != "plain"}
    prompt = int(encoded["input_ids"].shape[1])
    print(f"{'variant':<20}{'median s':>10}{'ratio':>8}  (prompt {prompt} tokens, batch {args.batch_size}, {args.new_tokens} new tokens, target <= {TARGET})")
    print(f"{'plain':<20}{statistics.median(times['plain']):>10.3f}{1.0:>8.2f}")
    for name, ratio in ratios.items():
        print(f"{name:<20}{statistics.median(times[name]):>10.3f}{ratio:>8.2f}")
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "python": platform.python_version()},
        "command": " ".join(["python", *sys.argv]),
        "prompt_tokens": prompt,
        "times": times,
        "ratios_over_plain": ratios,
        "target": TARGET,
        "all_within_target": all(ratio <= TARGET for ratio in ratios.values()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
