"""``attnwh attribute``: which heads matter causally, as a ranking run beside the attention-based ones.

Three methods, each a run of kind ``attribution`` whose ``head_attributions`` rows give every query head a score
(the drop of the target when the head is ablated: positive = the head helps the gold answer), its standard error
and a 95% interval, and whose ``attribution_fits`` row records the method's settings and fit:

- ``patterns`` (the default; Kim et al. 2025 on COAR, Shah, Ilyas & Madry 2024): N random ablation patterns, each
  head ablated in a pattern with probability p (a fraction p on average, so that pattern sizes vary and the fit's
  intercept is identified), every pattern applied to every sample. A pattern is one condition of a sweep
  (``extract.sweep``: resumable, on Dask workers and ranks, sharing the batch's encoded images with the other
  patterns), the baseline is condition 0. Per pattern the target's change from the baseline, averaged over
  the samples, is regressed on the pattern's 0/1 ablation indicators with scikit-learn (``ridge``: ``RidgeCV``,
  ``lasso``: ``LassoCV``, ``ols``: ``LinearRegression``); a head's score is minus its coefficient. Intervals:
  Student's t over the samples and the patterns (the spread of per-sample fits plus a bootstrap of the patterns, the
  fit's alpha kept; none for one sample); held-out R² and the Spearman correlation of predicted and observed change
  on a held-out fifth of the patterns, predicted by a fit whose alpha was cross-validated without them (least
  squares: none where that fit would be undetermined). At least MIN_PATTERNS patterns. A head whose effect needs
  a partner ablated with it (a redundant pair) gets p × the pair's joint effect: single-head ablation sees 0.
- ``single``: one head ablated at a time (H conditions of a sweep): the score is the mean drop over samples,
  the standard error over samples. Misses heads whose work another head also does.
- ``gradient``: attribution patching, a first-order estimate: each head's output is multiplied by a gate g = 1
  (mean ablation: g·output + (1 - g)·mean); one forward and one backward pass per batch give dT/dg, the estimated
  drop when g goes to 0. Exact for a target linear in the head's output; wrong where ablating a head moves the
  model far (saturated softmaxes, a head whose removal flips the answer, LayerNorm's rescaling of a large
  output, and heads that compensate for each other: the same redundancy ``single`` misses).

The target is the gold option's log-probability at the answer position (``logprob``) or its margin over the best
wrong option (``margin``); a benchmark without gold options (open answers) is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from attnwh.core.errors import ModelError, UsageError
from attnwh.core.output import kind_phrase
from attnwh.extract.batches import Batch
from attnwh.extract.benchmarks.parsers import PARSERS
from attnwh.extract.forward import BatchView, LayerIntervention, forward_call
from attnwh.extract.generation import batch_view
from attnwh.extract.image_swap import BASELINE_IMAGES, BaselineKV, ImageSwap, mean_image
from attnwh.extract.mask_run import head_means
from attnwh.extract.masking import Head, HeadMask
from attnwh.extract.models import load_model
from attnwh.extract.part_tables import write_parquet
from attnwh.extract.ranks import writer_of
from attnwh.extract.scoring import gold_option, option_ids
from attnwh.extract.sweep import ProgressCallback, SweepCondition, SweepOptions, SweepSamples, SweepSetup, check_sweep_options, open_sweep_run, prepare_sweep, run_sweep
from attnwh.warehouse import parts, storage
from attnwh.warehouse.definitions import patterns_interval
from attnwh.warehouse.layout import RunPaths, open_warehouse
from attnwh.warehouse.runs import MANIFEST_FIELDS, Plan, load_run, open_or_create_run
from attnwh.warehouse.schema import ATTRIBUTION_FITS, HEAD_ATTRIBUTIONS

METHODS = ("patterns", "single", "gradient")
ABLATIONS = ("zero", "mean", *BASELINE_IMAGES)
TARGETS = ("logprob", "margin")
FITS = ("ridge", "lasso", "ols")
TARGET_COLUMN = {"logprob": "gold_logprob", "margin": "gold_margin"}
ALPHAS = tuple(float(a) for a in np.logspace(-4, 3, 15))  # the grid cross-validation chooses ridge's / lasso's alpha from
FIT_PART = "fit"  # the part after a sweep's conditions that holds its heads' scores


@dataclass
class AttributeOptions(SweepOptions):
    method: str = "patterns"
    ablation: str = "zero"
    target: str = "logprob"
    patterns: int | None = None  # N (default: 4 × the model's heads, at least 64)
    p: float = 0.2  # the chance that a pattern ablates a head
    fit: str = "ridge"
    alpha: float | None = None  # None: chosen by cross-validation
    bootstrap: int = 200
    seed: int = 0


MAX_PATTERNS = 65536  # each pattern is a condition run over every sample: more is a typo, not a sweep
# the fewest patterns a fit takes (any --fit): the held-out fifth keeps at least 2 patterns and the fit beside it at
# least 10, two for each of lasso's five cross-validation folds; below, alpha, the held-out R² and the bootstrap
# each rest on a handful of patterns (3 patterns for 12 heads scored 4 of them, on nothing said)
MIN_PATTERNS = 12
MAX_BOOTSTRAP = 100_000


def default_patterns(n_heads: int) -> int:
    return max(64, 4 * n_heads)


MIN_ABLATING = 0.01  # the least chance that a pattern ablates some head (empty ones are drawn again) that --fraction may give


def check_attribute_options(options: AttributeOptions) -> None:
    """The options alone (the model's shape is checked once its config is read)."""
    choices = ((options.method,), METHODS, "method"), ((options.ablation,), ABLATIONS, "ablation"), ((options.target,), TARGETS, "target"), ((options.fit,), FITS, "fit")
    check_sweep_options(options, choices)
    if not (isinstance(options.p, float | int) and 0 < options.p < 1):
        raise UsageError(
            f"--fraction (p) is the chance a pattern ablates a head, strictly between 0 and 1; got {options.p} (0 ablates nothing, 1 every head: no pattern tells heads apart)"
        )
    if options.patterns is not None and not MIN_PATTERNS <= options.patterns <= MAX_PATTERNS:
        raise UsageError(
            f"--patterns takes {MIN_PATTERNS} to {MAX_PATTERNS} (each pattern is a condition of the sweep; fewer than {MIN_PATTERNS} leave the fit's "
            f"cross-validation, held-out fifth and bootstrap a handful each), got {options.patterns}"
        )
    if not 0 <= options.bootstrap <= MAX_BOOTSTRAP:
        raise UsageError(f"--bootstrap takes 0 to {MAX_BOOTSTRAP} resamples, got {options.bootstrap}")
    if not 0 <= options.seed < 2**32:
        raise UsageError(f"--seed takes 0 to {2**32 - 1} (a NumPy seed), got {options.seed}")
    if options.alpha is not None and not (options.alpha > 0 and math.isfinite(options.alpha)):
        raise UsageError(f"--alpha must be a positive number, got {options.alpha}")
    if options.alpha is not None and options.fit == "ols":
        raise UsageError("--alpha sets ridge's or lasso's regularisation; --fit ols has none")
    if options.method == "gradient" and options.ablation in BASELINE_IMAGES:
        raise UsageError(
            f"--method gradient takes --ablation zero or mean; by a baseline image ({options.ablation}) a head's output under the swapped keys would need a second attention "
            "in every layer, which attribution patching here does not run: use --method patterns or single"
        )


def check_against_model(options: AttributeOptions, n_heads: int) -> int:
    """The number of patterns, checked against the model's H heads (``check_least_squares``)."""
    n = options.patterns or default_patterns(n_heads)
    if options.method == "patterns":
        check_least_squares(options, n, n_heads, "ask for at least {needed} (--patterns), or use --fit ridge (the default)")
        ablating = -np.expm1(n_heads * np.log1p(-options.p))  # the chance a pattern ablates some head: 1 - (1 - p)^H
        if ablating < MIN_ABLATING:  # an empty pattern is drawn again: with this few non-empty ones the draws would not end
            raise UsageError(
                f"--fraction {options.p} ablates no head in {1 - ablating:.4%} of patterns on a model of {n_heads} heads: "
                f"choose at least {MIN_ABLATING / n_heads:.2g} (the study's patterns ablate a fraction near 0.2)"
            )
    return n


def check_least_squares(options: AttributeOptions, n: int, n_heads: int, remedy: str, held: str = "") -> None:
    """``--fit ols`` on ``n`` patterns (``held``: the run that holds them, for a refit): a plain least-squares fit needs
    more patterns than heads (H coefficients and an intercept), and twice as many for its bootstrap intervals (a
    resample holds ~63% of the patterns); ridge and lasso do not, they shrink. ``remedy`` says what to do, with the
    patterns ``{needed}``."""
    if options.fit != "ols":
        return
    if n < n_heads + 2:
        raise UsageError(
            f"--fit ols needs more patterns than heads: {held}{n} patterns for {n_heads} heads and an intercept leave the least-squares fit undetermined; "
            f"{remedy.format(needed=n_heads + 2)}, which shrinks the effects toward 0 and still ranks the heads"
        )
    if options.bootstrap > 0 and n < 2 * n_heads:
        raise UsageError(
            f"--fit ols with --bootstrap needs at least twice as many patterns as heads: {held}{n} for {n_heads} heads; a resample holds about 63% of them, too few "
            "to determine every head, and its least-squares fit then takes the smallest coefficients, narrowing the intervals without saying so; "
            f"{remedy.format(needed=2 * n_heads)}, or use --bootstrap 0"
        )


def check_targets(setup: SweepSetup, options: AttributeOptions) -> None:
    """Every sample needs gold options to take a target from (an open answer, or no gold, is refused)."""
    missing = [sample.key for sample in setup.run.samples if sample.error is None and gold_option(sample) is None]
    if missing:
        raise UsageError(
            f"{setup.run.benchmark.name} has {len(missing)} sample(s) without a gold option (e.g. {missing[0]}): attribution needs the gold answer's "
            "log-probability; choose a multiple-choice or yes / no benchmark"
        )
    if options.target == "margin" and any(
        gold_option(sample) is not None and PARSERS[sample.parser].answers == "letter" and len(sample.choices) < 2 for sample in setup.run.samples
    ):
        raise UsageError("--target margin needs at least two options per sample")


def draw_patterns(n_heads: int, n: int, p: float, seed: int) -> np.ndarray:
    """N ablation patterns [n, n_heads] (bool): each head ablated with probability p, deterministic from ``seed``;
    a pattern that ablates nothing is drawn again (it would be the baseline)."""
    rng = np.random.default_rng(seed)
    patterns = rng.random((n, n_heads)) < p
    while (empty := ~patterns.any(axis=1)).any():
        patterns[empty] = rng.random((int(empty.sum()), n_heads)) < p
    return patterns


@dataclass
class HeadFit:
    """What a fit gives per head (scores: minus the coefficients) and how well it predicts."""

    scores: np.ndarray
    std_error: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    alpha: float | None = None
    r2_heldout: float | None = None
    spearman_heldout: float | None = None
    r2_train: float | None = None
    intercept: float = 0.0


def _estimator(fit: str, alpha: float | None, seed: int, n: int):
    """The fit's estimator for ``n`` patterns: lasso's alpha cross-validated in 5 folds, or one per pattern below 5."""
    from sklearn.linear_model import Lasso, LassoCV, LinearRegression, Ridge, RidgeCV

    if fit == "ols":
        return LinearRegression()
    if fit == "ridge":
        return Ridge(alpha=alpha) if alpha is not None else RidgeCV(alphas=ALPHAS)
    return Lasso(alpha=alpha, max_iter=20_000) if alpha is not None else LassoCV(alphas=ALPHAS, cv=min(5, n), max_iter=20_000, random_state=seed)


def _fixed(fit: str, alpha: float | None):
    from sklearn.linear_model import Lasso, LinearRegression, Ridge

    return LinearRegression() if fit == "ols" else Ridge(alpha=alpha) if fit == "ridge" else Lasso(alpha=alpha, max_iter=20_000)


def fit_patterns(patterns: np.ndarray, change: np.ndarray, fit: str = "ridge", alpha: float | None = None, bootstrap: int = 200, seed: int = 0) -> HeadFit:
    """Per-head coefficients of the mean ``change`` over samples (the target's change from the baseline under each
    pattern; ``change`` [n] or [n, samples]) on ``patterns`` [n, heads] (1 = ablated), with scikit-learn; scores are
    minus the coefficients (the drop a head's ablation causes), with the held-out figures (``_held_out``) and the
    intervals over samples and patterns (``_interval``), both drawn from one generator of ``seed``, the split first.
    A head the patterns never ablate, or ablate in every one, has no score (NaN, stored null): its column does not
    vary, and the fit would call it 0 ± 0."""
    from sklearn.metrics import r2_score

    x = np.asarray(patterns, dtype=np.float64)
    grid = np.asarray(change, dtype=np.float64)
    grid = grid[:, None] if grid.ndim == 1 else grid  # [patterns, samples]
    y = grid.mean(axis=1)
    model = _estimator(fit, alpha, seed, len(x)).fit(x, y)
    chosen = None if fit == "ols" else float(getattr(model, "alpha_", alpha))
    scores = -np.asarray(model.coef_, dtype=np.float64)
    rng = np.random.default_rng(seed)
    r2_heldout, spearman_heldout = _held_out(x, y, fit, alpha, seed, rng)
    std_error, low, high = _interval(x, grid, scores, _fixed(fit, chosen), bootstrap, rng)
    constant = x.min(axis=0) == x.max(axis=0)
    for values in (scores, std_error, low, high):
        values[constant] = np.nan
    r2_train = float(r2_score(y, model.predict(x))) if len(x) > 1 else None
    return HeadFit(scores, std_error, low, high, chosen, r2_heldout, spearman_heldout, r2_train, float(model.intercept_))


def _held_out(x: np.ndarray, y: np.ndarray, fit: str, alpha: float | None, seed: int, rng: np.random.Generator) -> tuple[float | None, float | None]:
    """R² and Spearman correlation on a fifth of the patterns (at least 2) of a fit on the others, its alpha (unless
    given) cross-validated on them alone: alpha chosen with the held-out patterns made both optimistic. None where
    the others are fewer than 2, or, for least squares, fewer than H + 2 (its fit on them would be undetermined)."""
    from scipy.stats import spearmanr
    from sklearn.metrics import r2_score

    n = len(x)
    n_out = max(2, n // 5)
    if n - n_out < 2:
        return None, None
    order = rng.permutation(n)  # drawn whenever a split is possible, so that the bootstrap's draws follow the same stream
    held, kept = order[:n_out], order[n_out:]
    if fit == "ols" and len(kept) < x.shape[1] + 2:
        return None, None
    predicted = _estimator(fit, alpha, seed, len(kept)).fit(x[kept], y[kept]).predict(x[held])
    spearman = None
    if np.ptp(predicted) > 0 and np.ptp(y[held]) > 0:  # a constant side has no rank correlation (scipy would warn and give NaN)
        rho = spearmanr(predicted, y[held]).statistic
        spearman = float(rho) if np.isfinite(rho) else None
    return float(r2_score(y[held], predicted)), spearman


def _interval(x: np.ndarray, grid: np.ndarray, scores: np.ndarray, estimator, bootstrap: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standard error and 95% interval per head over both things a sweep draws, its S samples and its N patterns
    (``grid`` [patterns, samples]; ``estimator`` the fit with its alpha kept):

    - over samples: the spread of the per-sample coefficients (each sample's change fitted alone; their mean is the
      score for least squares and ridge), var / S, with S - 1 degrees of freedom, as ``single``'s t interval;
    - over patterns: the variance of the coefficients over ``bootstrap`` resamples of the patterns (the samples' mean
      change kept), with N - 1 degrees of freedom.

    se² is their sum and the interval score ± t(0.975, df) · se, df by Welch and Satterthwaite: S - 1 where the samples
    dominate, toward N - 1 where the patterns do (the planted heads' samples agree and the pattern design alone
    varies). The bootstrap's percentiles over patterns and samples drawn together covered the population mean in
    83% of simulated fits at 5 samples and 91% at 16 (the README gives the simulation). NaN with one sample (nothing
    to say about other samples) or fewer than 2 resamples."""
    from scipy.stats import t as student_t

    n, n_samples = grid.shape
    if n_samples < 2 or bootstrap < 2:
        return tuple(np.full(x.shape[1], np.nan) for _ in range(3))  # type: ignore[return-value]
    per_sample = -np.atleast_2d(estimator.fit(x, grid).coef_)  # [samples, heads]
    over_samples = per_sample.var(axis=0, ddof=1) / n_samples
    y = grid.mean(axis=1)
    draws = []
    for _ in range(bootstrap):
        pick = rng.integers(0, n, n)
        draws.append(-estimator.fit(x[pick], y[pick]).coef_)
    over_patterns = np.asarray(draws).var(axis=0, ddof=1)
    variance = over_samples + over_patterns
    spread = over_samples**2 / (n_samples - 1) + over_patterns**2 / max(n - 1, 1)
    df = np.divide(variance**2, spread, out=np.full_like(variance, np.inf), where=spread > 0)
    half = student_t.ppf(0.975, df) * np.sqrt(variance)
    return np.sqrt(variance), scores - half, scores + half


def mean_effects(drops: np.ndarray) -> HeadFit:
    """Scores from per-sample drops [samples, heads] (single, gradient): their mean, its standard error over
    samples and a 95% interval of Student's t with n - 1 degrees of freedom (± 2.13 standard errors for 16
    samples, where ± 1.96 would be 8% narrower than it should)."""
    from scipy.stats import t as student_t  # scikit-learn's own dependency

    drops = np.asarray(drops, dtype=np.float64)
    mean = drops.mean(axis=0)
    if len(drops) < 2:
        nothing = np.full(drops.shape[1], np.nan)
        return HeadFit(mean, nothing, nothing, nothing)
    se = drops.std(axis=0, ddof=1) / math.sqrt(len(drops))
    quantile = float(student_t.ppf(0.975, len(drops) - 1))
    return HeadFit(mean, se, mean - quantile * se, mean + quantile * se)


@dataclass(frozen=True)
class AttributionSweep:
    """The sweep of attribution's ablations: heads switched off (``zero``), set to their mean output over the
    sweep's samples (``mean``), or reading a baseline image's keys and values in place of the image's
    (``blank-image``, ``mean-image``: extract.image_swap), each row carrying the targets (``sweep_targets``)."""

    ablation: str
    kind = "attribution"
    targets = True

    def batch_size(self, options: SweepOptions) -> int:
        return options.batch_size

    def prepare(self, samples: SweepSamples) -> dict[Head, torch.Tensor] | BaselineKV:
        if self.ablation in BASELINE_IMAGES:
            return BaselineKV(samples.loaded, self.ablation, mean_image(samples.each_batch()) if self.ablation == "mean-image" else None)
        return head_means(samples) if self.ablation == "mean" else {}

    def interventions(self, condition: SweepCondition, prepared: dict[Head, torch.Tensor] | BaselineKV) -> list[HeadMask | ImageSwap]:
        heads = condition.heads
        if not heads:
            return []
        if isinstance(prepared, BaselineKV):
            return [ImageSwap(heads, prepared)]
        return [HeadMask(heads, self.ablation, {head: prepared[head] for head in heads} if prepared else {})]


@dataclass
class AttributionResult:
    run_id: str
    run_path: Path
    method: str
    conditions_total: int = 0
    conditions_written: int = 0
    fitted: bool = False  # the heads' scores are committed (by this process or an earlier one)
    fit: dict[str, Any] = field(default_factory=dict)  # the attribution_fits row
    reuse_off: str | None = None
    stack_lowered: str | None = None  # a stack ran out of memory and later stacks were smaller (extract.reuse.StackSize)


def prepare_attribute(options: AttributeOptions) -> SweepSetup:
    """Options checked; benchmark, samples, model config and prompt resolved; every sample has gold options."""
    check_attribute_options(options)
    setup = prepare_sweep(options)
    check_against_model(options, setup.n_heads)
    check_targets(setup, options)
    return setup


def heads_of(info: dict[str, Any]) -> list[Head]:
    return [(layer, head) for layer in range(info["n_layers"]) for head in range(info["n_heads"])]


def attribution_conditions(options: AttributeOptions, heads: list[Head]) -> list[SweepCondition]:
    """The baseline (condition 0), then one condition per pattern (``patterns``) or per head (``single``)."""
    conditions = [SweepCondition(0, {"method": options.method, "pattern": None, "ablation": options.ablation}, (), ranked=False)]
    if options.method == "single":
        for index, head in enumerate(heads, start=1):
            conditions.append(SweepCondition(index, {"method": "single", "pattern": index - 1, "ablation": options.ablation}, (head,), ranked=False))
        return conditions
    patterns = draw_patterns(len(heads), check_against_model(options, len(heads)), options.p, options.seed)
    for index, row in enumerate(patterns, start=1):
        chosen = tuple(head for head, on in zip(heads, row) if on)
        conditions.append(SweepCondition(index, {"method": "patterns", "pattern": index - 1, "ablation": options.ablation}, chosen, ranked=False))
    return conditions


def settings_of(options: AttributeOptions, n_heads: int) -> dict[str, Any]:
    """The method's settings as the run's fingerprint holds them (a setting a method does not use is left out)."""
    settings: dict[str, Any] = {"method": options.method, "ablation": options.ablation, "target": options.target}
    if options.method == "patterns":
        settings.update(patterns=options.patterns or default_patterns(n_heads), p=options.p, seed=options.seed, fit=options.fit, alpha=options.alpha, bootstrap=options.bootstrap)
    return settings


def run_attribute(warehouse_path, setup: SweepSetup, on_progress: ProgressCallback | None = None) -> AttributionResult:
    """Run (or resume) the attribution of ``setup``: the sweep of its ablations and then the fit, or the gradient pass."""
    options: AttributeOptions = setup.options  # type: ignore[assignment]
    heads = heads_of(setup.info)
    spec = {**setup.run.spec, "attribution": settings_of(options, len(heads))}
    if options.method == "gradient":
        return _run_gradient(warehouse_path, setup, spec, heads)
    conditions = attribution_conditions(options, heads)
    kind = AttributionSweep(options.ablation)
    swept = run_sweep(warehouse_path, setup, kind, spec, conditions, None, on_progress, plan_extra=(FIT_PART,))
    result = AttributionResult(
        swept.run_id, swept.run_path, options.method, swept.conditions_total, swept.conditions_written, reuse_off=swept.reuse_off, stack_lowered=swept.stack_lowered
    )
    run = RunPaths(storage.location(str(swept.run_path)))  # the sweep's run, resumed or created
    fit_id = len(conditions)
    committed = parts.committed_part_ids(run)
    if fit_id in committed:
        result.fitted, result.fit = True, _stored_fit(run)
        return result
    if not all(c.condition_id in committed for c in conditions):
        return result  # the rank whose conditions are committed last fits (it sees every other rank's after its own)
    changes, n_samples = read_changes(run, len(conditions), TARGET_COLUMN[options.target])
    if options.method == "single":
        head_fit = mean_effects(-changes[1:].T)  # per sample: baseline minus ablated
    else:
        matrix = np.array([[head in set(c.heads) for head in heads] for c in conditions[1:]], dtype=bool)
        head_fit = fit_patterns(matrix, changes[1:], options.fit, options.alpha, options.bootstrap, options.seed)
    fit_row = _fit_row(swept.run_id, options, head_fit, len(conditions) - 1, n_samples)
    parts.commit_part(run, fit_id, _writer(swept.run_id, heads, head_fit, fit_row), writer_of(setup.rank))
    result.fitted, result.fit = True, fit_row
    return result


def read_changes(paths, n_conditions: int, column: str) -> tuple[np.ndarray, int]:
    """[conditions, samples]: each condition's target less the baseline's, over the samples every condition scored."""
    table = _table(paths, "sweep_targets")
    values: dict[tuple[int, int], float] = {}
    if table.num_rows:
        for row in table.select(["condition_id", "sample_idx", column]).to_pylist():
            if row[column] is not None:
                values[(row["condition_id"], row["sample_idx"])] = row[column]
    samples = sorted({sample for _, sample in values})
    samples = [s for s in samples if all((c, s) in values for c in range(n_conditions))]
    if not samples:
        raise UsageError("no sample has a target under every condition (all answers were errors?): nothing to attribute")
    grid = np.array([[values[(c, s)] for s in samples] for c in range(n_conditions)])
    return grid - grid[0:1], len(samples)


def _fit_row(run_id: str, options: AttributeOptions, head_fit: HeadFit, n_conditions: int, n_samples: int) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "method": options.method,
        "ablation": options.ablation,
        "target": options.target,
        "fit": options.fit if options.method == "patterns" else None,
        "alpha": head_fit.alpha,
        "n_conditions": n_conditions,
        "n_samples": n_samples,
        "r2_heldout": head_fit.r2_heldout,
        "spearman_heldout": head_fit.spearman_heldout,
        "r2_train": head_fit.r2_train,
        "interval": patterns_interval() if options.method == "patterns" else "t over samples",  # older patterns fits' intervals are hidden (stg_head_attributions)
    }


def _writer(run_id: str, heads: list[Head], head_fit: HeadFit, fit_row: dict[str, Any]):
    def clean(value: float) -> float | None:
        return float(value) if np.isfinite(value) else None

    rows = [
        {
            "run_id": run_id,
            "layer": layer,
            "head": head,
            "score": clean(head_fit.scores[i]),
            "std_error": clean(head_fit.std_error[i]),
            "ci_low": clean(head_fit.ci_low[i]),
            "ci_high": clean(head_fit.ci_high[i]),
        }
        for i, (layer, head) in enumerate(heads)
    ]

    def write(folder: Path) -> dict[str, int]:
        write_parquet(pa.Table.from_pylist(rows, schema=HEAD_ATTRIBUTIONS), "head_attributions", folder)
        write_parquet(pa.Table.from_pylist([fit_row], schema=ATTRIBUTION_FITS), "attribution_fits", folder)
        return {"head_attributions": len(rows), "attribution_fits": 1}

    return write


def _stored_fit(paths) -> dict[str, Any]:
    files = parts.table_files(paths, "attribution_fits")
    return _read(files[0]).to_pylist()[0] if files else {}


def _read(path) -> pa.Table:
    """A committed Parquet file, from a folder or an object store."""
    with path.open("rb") as handle:
        return pq.read_table(handle)


class HeadGate(LayerIntervention):
    """Multiplies each head's output by a gate (1: unchanged) whose gradient is the first-order effect of
    ablating the head; for ``mean`` ablation the head moves toward its mean output instead of toward 0."""

    def __init__(self, gate: torch.Tensor, mean: torch.Tensor | None):
        self.gate, self.mean, self.reached = gate, mean, False  # gate [batch, head]; mean [head, head_dim]

    def output(self, output: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        self.reached = True
        gate = self.gate.to(output.device, output.dtype)[:, None, :, None]
        if self.mean is None:
            return output * gate
        mean = self.mean.to(output.device, output.dtype)[None, None]
        return mean + gate * (output - mean)


@dataclass
class HeadGates:
    """An intervention: a gate per sample and head of every layer (attribution patching)."""

    batch: int
    n_heads: int
    means: dict[Head, torch.Tensor] = field(default_factory=dict)
    kind = "gradient"
    gates: dict[int, HeadGate] = field(default_factory=dict)

    def bind(self, view: BatchView) -> dict[int, LayerIntervention]:
        self.gates = {}
        for layer in range(view.n_layers):
            mean = torch.stack([self.means[(layer, head)] for head in range(view.n_heads)]) if self.means else None
            self.gates[layer] = HeadGate(torch.ones(self.batch, view.n_heads, requires_grad=True), mean)
        return dict(self.gates)


def gradient_drops(loaded, batch: Batch, options: AttributeOptions, letter_ids, means: dict[Head, torch.Tensor]) -> list[np.ndarray | None]:
    """Per sample of ``batch``: [layers × heads] first-order drops of the target (dT/dg at g = 1), or None
    for a sample without a target. One forward and one backward pass for the whole batch."""
    parts_, tokenizer = loaded.parts, loaded.processor.tokenizer
    gates = HeadGates(len(batch.items), loaded.info["n_heads"], means)
    bound = [gates.bind(batch_view(loaded, batch.encoded))]
    column = TARGET_COLUMN[options.target]
    with torch.enable_grad(), forward_call(parts_.text_model, parts_.attention_modules, parts_.decoder_layers, bound):
        logits = loaded.model(**batch.encoded).logits[:, -1].float()
        log_probs = torch.log_softmax(logits, dim=-1)
        targets, kept = [], []
        for position, item in enumerate(batch.items):
            options_ = option_ids(tokenizer, item.sample, letter_ids)
            if options_ is None:
                continue
            value = _target_tensor(options_, log_probs[position], column)
            targets.append(value)
            kept.append(position)
        unreached = [layer for layer, gate in gates.gates.items() if not gate.reached]
        if unreached:
            raise ModelError(f"the heads of layers {unreached} cannot be ablated: their attention does not go through attnwh's attention function")
        if not targets:
            return [None] * len(batch.items)
        layers = sorted(gates.gates)
        grads = torch.autograd.grad(torch.stack(targets).sum(), [gates.gates[layer].gate for layer in layers])
    per_sample = torch.stack(grads, dim=1).detach().cpu().double().numpy()  # [batch, layer, head]: dT/dg = drop when g: 1 -> 0
    result: list[np.ndarray | None] = [None] * len(batch.items)
    for position in kept:
        result[position] = per_sample[position].reshape(-1)
    return result


def _target_tensor(options_, log_probs: torch.Tensor, column: str) -> torch.Tensor:
    """``answer_target`` with autograd (the same formula: logsumexp over each option's tokens)."""
    ids, gold = options_
    values = [torch.logsumexp(log_probs[option], dim=0) for option in ids]
    if column == "gold_logprob":
        return values[gold]
    return values[gold] - torch.stack([v for i, v in enumerate(values) if i != gold]).max()


def _run_gradient(warehouse_path, setup: SweepSetup, spec: dict[str, Any], heads: list[Head]) -> AttributionResult:
    """Attribution patching: one part, the heads' scores and the fit row."""
    options: AttributeOptions = setup.options  # type: ignore[assignment]
    run, committed, _ = open_sweep_run(warehouse_path, setup.run, setup.rank, "attribution", spec, [], options.run_id, (FIT_PART,))
    result = AttributionResult(run.run_id, run.paths.root, "gradient")
    if 0 in parts.committed_part_ids(run.paths):
        result.fitted, result.fit = True, _stored_fit(run.paths)
        return result
    if not setup.rank.creates_runs:
        return result
    loaded = load_model(setup.run.source, dtype=setup.run.dtype, device=setup.run.device)
    samples = SweepSamples(loaded, setup.run, options.batch_size)
    means = head_means(samples) if options.ablation == "mean" else {}
    drops = []
    for batch in samples.each_batch():
        drops.extend(d for d in gradient_drops(loaded, batch, options, samples.letter_ids, means) if d is not None)
    if not drops:
        raise UsageError("no sample has a target (all answers were errors?): nothing to attribute")
    head_fit = mean_effects(np.asarray(drops))
    fit_row = _fit_row(run.run_id, options, head_fit, 0, len(drops))
    parts.commit_part(run.paths, 0, _writer(run.run_id, heads, head_fit, fit_row), writer_of(setup.rank))
    result.fitted, result.fit = True, fit_row
    return result


def refit_attribution(warehouse_path, source_id: str, options: AttributeOptions) -> AttributionResult:
    """A new attribution run fitted again on the stored targets (``sweep_targets``) of a complete ``patterns`` or
    ``single`` run, without running the model: another ``fit`` / ``alpha`` / ``bootstrap`` / held-out and bootstrap
    ``seed``, or the other ``target``. Model, samples and ablations are the source run's (its manifest; the
    ablated heads of each condition read from its ``sweep_conditions`` rows); the new run's fingerprint holds
    its settings and ``targets_from``, and its one part is the fit."""
    check_attribute_options(options)
    warehouse = open_warehouse(warehouse_path)
    paths = warehouse.find_run(source_id)
    if paths is None:
        raise UsageError(f"--refit: no run {source_id!r} in {warehouse.root}")
    source = load_run(paths)
    manifest, kind = source.manifest, source.manifest["kind"]
    settings = dict(manifest["spec"].get("attribution") or {})
    if kind != "attribution":
        raise UsageError(f"--refit takes an attribution run (patterns or single); {source_id} is {kind_phrase(kind)} run")
    if settings.get("method") not in ("patterns", "single"):
        raise UsageError(f"--refit fits again from a run's stored targets; {source_id} is a {settings.get('method')} run, which stores none (use patterns or single)")
    n_conditions = len(source.plan.sample_keys) - 1  # the plan: the conditions, then the fit
    committed = parts.committed_part_ids(paths)
    missing = [c for c in range(n_conditions) if c not in committed]
    if missing:
        raise UsageError(f"--refit: run {source_id} has {len(missing)} of {n_conditions} condition(s) still to commit; finish it first (the command that made it resumes it)")
    info = manifest["model_info"]
    heads = heads_of(info)
    ablated = {row["condition_id"]: {(h["layer"], h["head"]) for h in row["heads"]} for row in _table(paths, "sweep_conditions").to_pylist()}
    changes, n_samples = read_changes(paths, n_conditions, TARGET_COLUMN[options.target])
    method = settings["method"]
    fitted = AttributeOptions(**{**vars(options), "method": method, "ablation": settings["ablation"]})
    if method == "single":
        head_fit = mean_effects(-changes[1:].T)
    else:
        matrix = np.array([[head in ablated[c] for head in heads] for c in range(1, n_conditions)], dtype=bool)
        if len(matrix) < MIN_PATTERNS:
            raise UsageError(
                f"--refit: {source_id} holds {len(matrix)} patterns; a fit takes at least {MIN_PATTERNS} (as --patterns does): sweep again with --patterns {MIN_PATTERNS} or more"
            )
        check_least_squares(options, len(matrix), len(heads), "refit with --fit ridge or lasso", held=f"{source_id} holds ")
        head_fit = fit_patterns(matrix, changes[1:], options.fit, options.alpha, options.bootstrap, options.seed)
    spec = {key: value for key, value in manifest["spec"].items() if key not in ("kind", "plan_hash", "layout_version")}
    refitted = {"target": options.target}
    if method == "patterns":
        refitted.update(fit=options.fit, alpha=options.alpha, bootstrap=options.bootstrap, fit_seed=options.seed)
    spec.update(attribution={**settings, **refitted}, targets_from=source_id)
    details = {key: value for key, value in manifest.items() if key not in MANIFEST_FIELDS and key != "created"} | {"command": options.command}
    run, _ = open_or_create_run(
        warehouse, kind="attribution", model=manifest["model"], benchmark=manifest["benchmark"], spec=spec, plan=Plan([FIT_PART], 1), run_id=options.run_id, details=details
    )
    result = AttributionResult(run.run_id, run.paths.root, method)
    if 0 in parts.committed_part_ids(run.paths):
        result.fitted, result.fit = True, _stored_fit(run.paths)
        return result
    fit_row = _fit_row(run.run_id, fitted, head_fit, n_conditions - 1, n_samples)
    parts.commit_part(run.paths, 0, _writer(run.run_id, heads, head_fit, fit_row))
    result.fitted, result.fit = True, fit_row
    return result


def _table(paths, name: str) -> pa.Table:
    """Every committed file of table ``name`` of a run, as one table (empty where none is committed)."""
    files = parts.table_files(paths, name)
    return pa.concat_tables([_read(path) for path in files]) if files else pa.table({})
