"""How often ``attnwh attribute --method patterns``'s 95% intervals hold the population effect: simulated sweeps fitted
by ``fit_patterns`` itself (the README's "How well the intervals cover").

Each sample has its own effects, the population effects plus a normal deviation, and the target changes by minus the
ablated heads' effects plus noise per pattern and sample; an interval covers where it holds the population effect.

- ``reviewer``: 8 heads, effects 1 … 0, deviations N(0, 0.5), noise N(0, 0.05), 64 patterns at p = 0.3 (the review's);
- ``toy``: 32 heads, 8 effects 0.8 … 0.2 and 24 of 0, deviations N(0, 0.3), noise N(0, 0.05), 128 patterns at p = 0.2.

    python bench/bench_attribution_coverage.py --design reviewer --fit ols --samples 5 --sweeps 200
    python bench/bench_attribution_coverage.py --design toy --fit ridge --samples 16 --sweeps 100
    python bench/bench_attribution_coverage.py ... --module OLD/extract/attribution.py   # another copy of the fit
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import warnings

import numpy as np

DESIGNS = {  # heads' population effects, per-sample deviation, patterns, p, the seeds' offset
    "reviewer": (np.linspace(1.0, 0.0, 8), 0.5, 64, 0.3, 1000),
    "toy": (np.concatenate([np.linspace(0.8, 0.2, 8), np.zeros(24)]), 0.3, 128, 0.2, 2000),
}


def fit_module(path: str | None):
    """``attnwh.extract.attribution``, or a copy of it at ``path`` (the fit before a change, say)."""
    if path is None:
        from attnwh.extract import attribution

        return attribution
    spec = importlib.util.spec_from_file_location("attribution_copy", path)
    module = sys.modules["attribution_copy"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def coverage(module, design: str, fit: str, n_samples: int, sweeps: int, bootstrap: int = 200) -> tuple[np.ndarray, float]:
    """Per head, the share of ``sweeps`` intervals that hold its population effect; and the mean interval width."""
    population, deviation, n_patterns, p, offset = DESIGNS[design]
    covered, width = np.zeros(len(population)), 0.0
    for sweep in range(sweeps):
        rng = np.random.default_rng(offset + sweep)
        patterns = module.draw_patterns(len(population), n_patterns, p, sweep)
        per_sample = population + rng.normal(0, deviation, (n_samples, len(population)))
        change = -(patterns.astype(float) @ per_sample.T) + rng.normal(0, 0.05, (n_patterns, n_samples))
        fitted = module.fit_patterns(patterns, change, fit, None, bootstrap, sweep)
        covered += (fitted.ci_low <= population) & (population <= fitted.ci_high)
        width += float(np.mean(fitted.ci_high - fitted.ci_low))
    return covered / sweeps, width / sweeps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--design", choices=sorted(DESIGNS), default="reviewer")
    parser.add_argument("--fit", choices=["ols", "ridge", "lasso"], default="ols")
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--sweeps", type=int, default=200)
    parser.add_argument("--module", help="a copy of extract/attribution.py to fit with (default: the installed one)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # lasso's convergence and scikit-learn's warnings on resamples
    shares, width = coverage(fit_module(args.module), args.design, args.fit, args.samples, args.sweeps)
    print(f"{args.design} {args.fit}, {args.samples} samples, {args.sweeps} sweeps: coverage {shares.mean():.3f} (per head {np.round(shares, 2).tolist()}), mean width {width:.3f}")


if __name__ == "__main__":
    main()
