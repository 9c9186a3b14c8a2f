"""How often hallucination_heads' 95% interval holds the true difference, in simulated answers.

The mart's arithmetic is re-implemented here in Python (``tests/integration/test_long_answers.py`` checks the mart
against the same arithmetic by hand, column by column). Simulated answers: each sample has 3-7 object words at
distinct steps of 24, a word at step s hallucinated with probability 0.1 + 0.6 s / 24 (hallucinations come later),
one in five repeated at the next step; a word's value is 0.3 - 0.01 step (image attention falls with the step for
every word) + the sample's own level N(0, sample sd) + delta / 2 for grounded, - delta / 2 for hallucinated words
+ N(0, word sd). The share of intervals holding delta (0.02), for:

- ``bucket``: the kinds compared within step buckets (0, 1, 2-3, 4-7, ...) by Welch, a sample as the unit (the
  first version of this session's mart);
- ``ancova``: the same, adjusted for the step within each bucket (the mart now).

    python bench/bench_hallucination_coverage.py                 # ~1 minute on 2 cores
    python bench/bench_hallucination_coverage.py --sweeps 100 --samples 1000
"""

from __future__ import annotations

import argparse
import math

import numpy as np
from scipy.stats import t as student_t


def step_bucket(step: int) -> int:
    return step if step < 2 else 2 ** int(math.log2(step))


def simulate(rng: np.random.Generator, n_samples: int, sample_sd: float, word_sd: float, delta: float, steps: int = 24) -> list[tuple]:
    words = []
    for sample in range(n_samples):
        level = rng.normal(0, sample_sd)
        for step in np.sort(rng.choice(steps, rng.integers(3, 8), replace=False)):
            kind = "h" if rng.random() < 0.1 + 0.6 * step / steps else "g"
            for repeat in range(1 + (rng.random() < 0.2)):
                at = min(step + repeat, steps - 1)
                words.append((sample, at, kind, 0.3 - 0.01 * at + level + (delta if kind == "g" else -delta) / 2 + rng.normal(0, word_sd)))
    return words


def _units(words: list[tuple]) -> dict:
    units: dict = {}
    for sample, step, kind, value in words:
        units.setdefault((step_bucket(step), kind), {}).setdefault(sample, []).append((step, value))
    return units


def interval(words: list[tuple], adjust: bool) -> tuple[float, float] | None:
    units = _units(words)
    compared = []  # (hallucinated samples, difference, its variance, df)
    for bucket in sorted({bucket for bucket, _ in units}):
        grounded, hallucinated = units.get((bucket, "g"), {}), units.get((bucket, "h"), {})
        if len(grounded) < 2 or len(hallucinated) < 2:
            continue
        kinds = [np.array([(np.mean([s for s, _ in v]), np.mean([y for _, y in v])) for v in side.values()]) for side in (grounded, hallucinated)]
        (g, h) = kinds
        if not adjust:
            a, b = g[:, 1].var(ddof=1) / len(g), h[:, 1].var(ddof=1) / len(h)
            compared.append((len(h), g[:, 1].mean() - h[:, 1].mean(), (a, len(g) - 1), (b, len(h) - 1)))
            continue
        sxx = sum(((k[:, 0] - k[:, 0].mean()) ** 2).sum() for k in kinds)
        sxy = sum(((k[:, 0] - k[:, 0].mean()) * (k[:, 1] - k[:, 1].mean())).sum() for k in kinds)
        syy = sum(((k[:, 1] - k[:, 1].mean()) ** 2).sum() for k in kinds)
        slope = sxy / sxx if sxx > 0 else 0.0
        df = len(g) + len(h) - (3 if sxx > 0 else 2)
        if df < 1:
            continue
        residual = max(syy - slope * sxy, 0) / df
        gap = g[:, 0].mean() - h[:, 0].mean()
        variance = residual * (1 / len(g) + 1 / len(h) + (gap**2 / sxx if sxx > 0 else 0))
        compared.append((len(h), g[:, 1].mean() - h[:, 1].mean() - slope * gap, (variance, df)))
    if not compared:
        return None
    total = sum(c[0] for c in compared)
    weights = [c[0] / total for c in compared]
    difference = sum(w * c[1] for w, c in zip(weights, compared))
    pieces = [(w * w * piece, df) for w, c in zip(weights, compared) for piece, df in c[2:]]
    se2 = sum(piece for piece, _ in pieces)
    if se2 <= 0:
        return None
    df = se2**2 / sum(piece**2 / n for piece, n in pieces)
    half = student_t.ppf(0.975, math.floor(df)) * math.sqrt(se2)
    return difference - half, difference + half


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, nargs="+", default=[20, 60, 200])
    parser.add_argument("--sweeps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    delta = 0.02
    print("samples  sample sd  word sd   bucket  ancova")
    for n_samples in args.samples:
        for sample_sd, word_sd in ((0.05, 0.02), (0.02, 0.05), (0.0, 0.05)):
            rng = np.random.default_rng(args.seed)
            held = {False: [], True: []}
            for _ in range(args.sweeps):
                words = simulate(rng, n_samples, sample_sd, word_sd, delta)
                for adjust in held:
                    found = interval(words, adjust)
                    if found is not None:
                        held[adjust].append(found[0] <= delta <= found[1])
            print(f"{n_samples:7d}  {sample_sd:9.2f}  {word_sd:7.2f}  {np.mean(held[False]):7.3f}  {np.mean(held[True]):6.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
