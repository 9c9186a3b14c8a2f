"""A pruned KV cache that is really smaller: its memory, and the time of a decode step, against the full cache.

``attnwh prune``'s cache phase (the default) packs each pruned layer's cache after the prefill
(``extract.packed_cache``): each KV head keeps its text keys and its budget of image keys, chosen by SnapKV's
observation window, and decode steps read only those. This script runs greedy generation over a left-padded
batch on two shapes of bench_extract.py's model (8 layers × 16 heads, head size 64, hidden 1024):
``realistic`` (576 image tokens, LLaVA-1.5's) and ``long`` (2,916 image tokens, as LLaVA-NeXT's anyres gives),
for these variants, alternating in every round:

- ``full``: no pruning (the cache holds every key);
- ``packed_25`` / ``packed_50``: uniform budgets, a quarter / half of the image KV kept, the packed cache;
- ``packed_score_25``: a quarter by (random) head scores, budgets that differ per head;
- ``gathered_25``: a quarter, every key left in the cache and the kept ones gathered at every step
  (attnwh's earlier simulation: same answers, no saving).

Figures, each variant against ``full`` in the same round (median over rounds; the machine drifts):

- ``step_ratio``: the median time of a decode step (the time between two steps' ends, the prefill excluded);
- ``cache_bytes``: the bytes of the storages the cache holds at the end (keys, values and, packed, the buckets'
  padding and index), measured from the tensors; on a GPU also ``allocator_bytes``, what the generation left
  allocated (``torch.cuda.memory_allocated`` after it, less before: the cache and the small outputs);
  ``counted_bytes``: the keys the cache should hold (packed: text keys and each head's image budget, what
  ``attnwh prune`` reports as ``kv_keys``; else every key of the padded batch; and the generated keys) × head
  size × 2 × bytes per value; ``measured_over_counted``: their ratio (target ≤ 1.02).

Targets (issue 31): cache bytes equal to the counted within 2%; a decode step at a 25% share ≤ 0.8× the full
cache's on the long shape.

    python bench/bench_prune_cache.py                         # both shapes, 3 rounds, batch 4, 16 new tokens
    python bench/bench_prune_cache.py --device cuda           # on a GPU (bench_gpu.py runs this)
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
from bench_extract import build_model, inputs  # noqa: E402  (one definition of the realistic and long model and prompt)

VARIANTS = {  # name: (allocation, kept share, packed)
    "full": None,
    "packed_50": ("uniform", 0.5, True),
    "packed_25": ("uniform", 0.25, True),
    "packed_score_25": ("score", 0.25, True),
    "gathered_25": ("uniform", 0.25, False),
}
STEP_TARGET, BYTES_TARGET = 0.8, 1.02


class StepClock:
    """A stopping criterion that never stops: it notes the time each generation step ends."""

    def __init__(self, sync):
        self.times: list[float] = []
        self.sync = sync

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        self.sync()
        self.times.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def cache_bytes(cache) -> int:
    """Bytes of the storages the cache's layers hold (a packed layer's own figure: packed keys, values, index, tail)."""
    total = 0
    for layer in cache.layers:
        if hasattr(layer, "nbytes"):
            total += layer.nbytes()
        else:
            total += layer.keys.untyped_storage().nbytes() + layer.values.untyped_storage().nbytes()
    return total


def run_variant(loaded, encoded, intervention, new_tokens: int, sync):
    """Median decode-step time, the bytes the cache holds at the end (from its tensors; on a GPU also from the
    allocator: what generation left allocated), and the tokens."""
    import torch
    from transformers import StoppingCriteriaList

    from attnwh.extract.forward import forward_call
    from attnwh.extract.generation import batch_view

    parts = loaded.parts
    cuda = loaded.device.type == "cuda"
    bound = [] if intervention is None else [intervention.bind(batch_view(loaded, encoded))]
    clock = StepClock(sync)
    before = torch.cuda.memory_allocated(loaded.device) if cuda else 0
    with torch.inference_mode(), forward_call(parts.text_model, parts.attention_modules, parts.decoder_layers, bound):
        output = loaded.model.generate(
            **encoded,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=loaded.processor.tokenizer.pad_token_id,
            stopping_criteria=StoppingCriteriaList([clock]),
            return_dict_in_generate=True,
        )
    held = torch.cuda.memory_allocated(loaded.device) - before if cuda else None  # the cache, and the small outputs
    steps = [later - earlier for earlier, later in zip(clock.times, clock.times[1:])]
    return statistics.median(steps), cache_bytes(output.cache), held, output.sequences


def measure(loaded, encoded, rounds: int, new_tokens: int, sync) -> dict:
    """Every variant on one loaded model and batch, alternating for ``rounds`` rounds: rows of figures."""
    import numpy as np
    import torch

    from attnwh.extract.pruning import KVPrune, allocate

    scores = np.random.default_rng(0).random((loaded.info["n_layers"], loaded.info["n_kv_heads"]))
    interventions = {
        name: None if setting is None else KVPrune(allocate(setting[0], setting[1], scores), "attention", "cache", packed=setting[2]) for name, setting in VARIANTS.items()
    }
    run_variant(loaded, encoded, None, 2, sync)  # warm-up
    times = {name: [] for name in VARIANTS}
    measured, allocated, sequences = {}, {}, {}
    for _ in range(rounds):
        for name, intervention in interventions.items():
            step, held, by_allocator, tokens = run_variant(loaded, encoded, intervention, new_tokens, sync)
            times[name].append(step)
            measured[name], allocated[name], sequences[name] = held, by_allocator, tokens
    rows = {}
    for name, intervention in interventions.items():
        ratios = [time_ / full for time_, full in zip(times[name], times["full"])]
        counted = counted_bytes(loaded, encoded, intervention, new_tokens)
        rows[name] = {
            "step_seconds": round(statistics.median(times[name]), 5),
            "step_ratio": round(statistics.median(ratios), 3),
            "cache_bytes": measured[name],
            "allocator_bytes": allocated[name],
            "counted_bytes": counted,
            "measured_over_counted": round(measured[name] / counted, 4),
            "cache_over_full": round(measured[name] / measured["full"], 3),
            "answers_equal_packed": bool(torch.equal(sequences[name], sequences["packed_25"])) if name == "gathered_25" else None,
        }
    return rows


def counted_bytes(loaded, encoded, intervention, new_tokens: int) -> int:
    """What the cache should hold: pruned and packed, every real text key and each head's image budget (what
    ``attnwh prune`` counts as ``kv_keys``); otherwise every key of the padded batch; and the generated keys."""
    from attnwh.extract.generation import batch_view
    from attnwh.extract.segments import IMAGE

    info = loaded.info
    layers, kv, head_dim = info["n_layers"], info["n_kv_heads"], info["head_dim"]
    view = batch_view(loaded, encoded)
    real = encoded["attention_mask"].sum(dim=1).tolist()
    image = (view.segments == IMAGE).sum(dim=1).tolist()
    if intervention is None or not intervention.packed:  # every key stays, left padding included
        keys = encoded["input_ids"].numel() * layers * kv
    else:
        keys = sum((n_real - n_image) * layers * kv + intervention.kept_image_keys(n_image) for n_real, n_image in zip(real, image))
    keys += len(real) * (new_tokens - 1) * layers * kv  # the generated keys (the last token's are never computed)
    return keys * head_dim * 2 * loaded.dtype.itemsize


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", nargs="+", default=["realistic", "long"], choices=["realistic", "long"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--out", type=Path, default=Path("bench/results-prune-cache.json"))
    args = parser.parse_args()

    import torch

    from attnwh.extract.models import load_model, resolve_source

    torch.set_num_threads(int(os.environ.get("ATTNWH_BENCH_THREADS", "2")))
    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    results = {}
    with tempfile.TemporaryDirectory(prefix="attnwh-bench-prune-cache-") as scratch:
        for shape in args.shape:
            folder = build_model(shape, Path(scratch))
            loaded = load_model(resolve_source(str(folder)), dtype=getattr(torch, args.dtype), device=device)
            _, encoded = inputs(loaded, shape, args.batch_size)
            n_image = int((encoded["input_ids"] == loaded.config.image_token_id).sum(dim=1).max())
            rows = measure(loaded, encoded, args.rounds, args.new_tokens, sync)
            results[shape] = {"image_tokens": n_image, "prompt_tokens": int(encoded["input_ids"].shape[1]), "variants": rows}
            del loaded
    report = {
        "script": "bench/bench_prune_cache.py",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "device": args.device, "torch_threads": torch.get_num_threads()},
        "settings": {"rounds": args.rounds, "batch_size": args.batch_size, "new_tokens": args.new_tokens, "dtype": args.dtype},
        "targets": {"step_ratio_packed_25_long": STEP_TARGET, "measured_over_counted": BYTES_TARGET},
        "results": results,
    }
    for shape, result in results.items():
        print(f"{shape}: {result['image_tokens']} image tokens, prompt {result['prompt_tokens']}")
        for name, row in result["variants"].items():
            print(
                f"  {name:16s} step {row['step_seconds'] * 1000:8.1f} ms  ratio {row['step_ratio']:.3f}  cache {row['cache_bytes'] / 2**20:8.2f} MiB ({row['cache_over_full']:.3f} of full)  measured/counted {row['measured_over_counted']:.4f}"
            )
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    long = results.get("long", {}).get("variants", {})
    ok = all(row["measured_over_counted"] <= BYTES_TARGET for result in results.values() for row in result["variants"].values())
    if long:
        ok = ok and long["packed_25"]["step_ratio"] <= STEP_TARGET
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
