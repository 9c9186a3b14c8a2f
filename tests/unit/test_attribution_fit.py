"""Head attribution's fit (extract.attribution) on synthetic targets: exact on a linear target, equal to reference
solvers, and a planted ranking with redundant pairs that random patterns recover and single-head ablation misses."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import spearmanr

from attnwh.core.errors import UsageError
from attnwh.extract.attribution import MIN_PATTERNS, AttributeOptions, check_against_model, check_attribute_options, draw_patterns, fit_patterns, mean_effects

H = 24


def test_fit_is_exact_on_a_linear_target():
    """A target linear in the ablation indicators: least squares gives the coefficients back exactly (numpy's
    lstsq agrees), ridge with a tiny alpha within its shrinkage."""
    rng = np.random.default_rng(1)
    effects = rng.normal(0, 1, H)
    patterns = draw_patterns(H, 4 * H, 0.2, seed=3)
    change = 0.7 - patterns @ effects  # an ablated head lowers the target by its effect
    fitted = fit_patterns(patterns, np.column_stack([change, change]), "ols", bootstrap=5)  # two samples alike: an interval of width 0
    assert np.allclose(fitted.scores, effects, atol=1e-9) and fitted.intercept == pytest.approx(0.7)
    design = np.hstack([np.ones((len(change), 1)), patterns.astype(float)])
    reference = np.linalg.lstsq(design, change, rcond=None)[0]
    assert np.allclose(-reference[1:], fitted.scores, atol=1e-9)
    assert fitted.r2_train == pytest.approx(1.0) and fitted.r2_heldout == pytest.approx(1.0)
    assert np.allclose(fitted.ci_low, effects, atol=1e-8) and np.allclose(fitted.ci_high, effects, atol=1e-8)  # every resample fits exactly
    assert np.allclose(fit_patterns(patterns, change, "ridge", alpha=1e-8, bootstrap=0).scores, effects, atol=1e-6)


@pytest.mark.parametrize("alpha", [None, 0.5])
def test_ridge_equals_the_closed_form(alpha):
    """Ridge (cross-validated alpha, or a given one) equals (XcᵀXc + αI)⁻¹ Xcᵀ yc on centred data, solved by numpy."""
    rng = np.random.default_rng(2)
    patterns = draw_patterns(H, 60, 0.25, seed=4)
    change = -(patterns @ rng.normal(0, 1, H)) + rng.normal(0, 0.3, 60)
    fitted = fit_patterns(patterns, change, "ridge", alpha=alpha, bootstrap=0)
    x = patterns.astype(float)
    xc, yc = x - x.mean(axis=0), change - change.mean()
    reference = np.linalg.solve(xc.T @ xc + fitted.alpha * np.eye(H), xc.T @ yc)
    assert np.allclose(-fitted.scores, reference, atol=1e-8)
    if alpha is None:  # RidgeCV's choice is a value of the grid, and the fit at it is the plain Ridge fit
        from attnwh.extract.attribution import ALPHAS

        assert fitted.alpha in ALPHAS


def test_lasso_meets_its_optimality_conditions():
    """Lasso's solution checked by its KKT conditions (computed with numpy): for every coefficient,
    |xⱼᵀ r| / n ≤ α, with equality and the coefficient's sign where it is not zero."""
    rng = np.random.default_rng(5)
    patterns = draw_patterns(H, 120, 0.2, seed=6)
    truth = np.where(rng.random(H) < 0.3, rng.normal(0, 1, H), 0.0)
    change = -(patterns @ truth) + rng.normal(0, 0.05, 120)
    fitted = fit_patterns(patterns, change, "lasso", alpha=0.01, bootstrap=0)
    x, coef = patterns.astype(float), -fitted.scores
    residual = change - fitted.intercept - x @ coef
    gradient = x.T @ residual / len(change)
    assert np.all(np.abs(gradient) <= 0.01 + 1e-5)
    active = np.abs(coef) > 1e-10
    assert np.allclose(gradient[active], 0.01 * np.sign(coef[active]), atol=1e-5)
    assert abs(residual.mean()) < 1e-8  # the intercept is the mean residual's zero


def planted_target(pattern: np.ndarray, singles: dict[int, float], pairs: dict[tuple[int, int], float]) -> float:
    """A model's target change under a pattern: each single head lowers it by its effect; a redundant pair only
    when both of its heads are ablated (either suffices)."""
    drop = sum(effect for head, effect in singles.items() if pattern[head])
    drop += sum(effect for (a, b), effect in pairs.items() if pattern[a] and pattern[b])
    return -drop


def test_patterns_recover_a_planted_ranking_that_single_ablation_misses():
    pairs = {(2, 11): 4.0, (7, 19): 2.6}  # redundant: only both together change the target
    nulls = [4, 10, 15, 22]  # no effect at all
    graded = [head for head in range(H) if head not in nulls and all(head not in pair for pair in pairs)]
    singles = dict(zip(graded, np.linspace(3.0, 0.25, len(graded)).round(3).tolist()))  # known, distinct amounts
    p, n = 0.25, 16 * H
    rng = np.random.default_rng(7)
    patterns = draw_patterns(H, n, p, seed=8)
    # 8 samples, each the planted change with its own noise (one sample would have no interval)
    change = np.array([planted_target(row, singles, pairs) for row in patterns])[:, None] + rng.normal(0, 0.05, (n, 8))
    fitted = fit_patterns(patterns, change, "ridge", bootstrap=100, seed=1)
    # the planted importance under the patterns' design: a single head's effect; a pair's head, the pair's effect
    # times the chance its partner is ablated with it (p)
    planted = np.zeros(H)
    for head, effect in singles.items():
        planted[head] = effect
    for pair, effect in pairs.items():
        planted[list(pair)] = p * effect
    assert spearmanr(fitted.scores, planted).statistic >= 0.9
    paired = [head for pair in pairs for head in pair]
    assert all(fitted.ci_low[head] > 0 for head in paired)  # the pairs are found: intervals above 0
    assert min(fitted.scores[paired]) > max(fitted.scores[nulls])
    assert fitted.r2_heldout > 0.8

    one_at_a_time = np.eye(H, dtype=bool)
    single = mean_effects(-np.array([[planted_target(row, singles, pairs) for row in one_at_a_time]]).repeat(2, axis=0))
    assert np.allclose(single.scores[paired], 0.0)  # single-head ablation misses every redundant head
    assert all(single.scores[head] == effect for head, effect in singles.items())
    assert spearmanr(single.scores, planted).statistic < spearmanr(fitted.scores, planted).statistic


def test_patterns_are_deterministic_and_never_empty():
    first, again = draw_patterns(H, 50, 0.05, seed=9), draw_patterns(H, 50, 0.05, seed=9)
    assert np.array_equal(first, again) and first.any(axis=1).all()
    assert not np.array_equal(first, draw_patterns(H, 50, 0.05, seed=10))
    assert 0.02 < draw_patterns(H, 400, 0.2, seed=0).mean() < 0.25


@settings(max_examples=25, deadline=None)
@given(st.one_of(st.floats(max_value=0.0, allow_nan=False), st.floats(min_value=1.0, allow_nan=False), st.just(float("nan"))))
def test_a_fraction_outside_zero_one_is_refused(p):
    with pytest.raises(UsageError, match="strictly between 0 and 1"):
        check_attribute_options(AttributeOptions(p=p))


@settings(max_examples=20, deadline=None)
@given(st.integers(min_value=MIN_PATTERNS, max_value=H + 1))
def test_too_few_patterns_for_least_squares_are_refused_and_ridge_takes_them(n):
    with pytest.raises(UsageError, match="--fit ols needs more patterns than heads.*ridge"):
        check_against_model(AttributeOptions(fit="ols", patterns=n), H)
    assert check_against_model(AttributeOptions(fit="ridge", patterns=n), H) == n


@settings(max_examples=20, deadline=None)
@given(st.integers(min_value=H + 2, max_value=2 * H - 1))
def test_least_squares_intervals_need_twice_as_many_patterns_as_heads(n):
    """A resample of n patterns holds ~63% of them: at n < 2H least squares is undetermined in most resamples and
    would narrow the intervals silently; refused unless no interval is asked for."""
    with pytest.raises(UsageError, match="at least twice as many patterns as heads"):
        check_against_model(AttributeOptions(fit="ols", patterns=n, bootstrap=10), H)
    assert check_against_model(AttributeOptions(fit="ols", patterns=n, bootstrap=0), H) == n
    assert check_against_model(AttributeOptions(fit="ols", patterns=2 * H, bootstrap=10), H) == 2 * H


def test_intervals_resample_the_samples_too():
    """Each sample has its own effects (the planted mean plus a per-sample deviation) and the target is exactly
    linear in the patterns: resampling the patterns alone gives intervals of width 0. Over the samples as well, each
    head's interval is the t interval over the samples' own planted effects, computed here with scipy (the patterns
    add nothing: every resample of them fits exactly), and it covers the samples' mean effect."""
    from scipy.stats import t as student_t

    rng = np.random.default_rng(21)
    n_samples = 12
    per_sample = rng.normal(0, 1, H) + rng.normal(0, 0.8, (n_samples, H))  # [samples, heads]
    patterns = draw_patterns(H, 6 * H, 0.2, seed=22)
    change = -(patterns.astype(float) @ per_sample.T)  # [patterns, samples]
    fitted = fit_patterns(patterns, change, "ols", bootstrap=400, seed=3)
    mean_effect = per_sample.mean(axis=0)
    assert np.allclose(fitted.scores, mean_effect, atol=1e-9)
    se = per_sample.std(axis=0, ddof=1) / np.sqrt(n_samples)
    half = student_t.ppf(0.975, n_samples - 1) * se
    assert np.allclose(fitted.std_error, se, rtol=1e-6) and np.allclose(fitted.ci_high - fitted.scores, half, rtol=1e-6)
    assert np.mean((fitted.ci_low <= mean_effect) & (mean_effect <= fitted.ci_high)) == 1.0


def test_where_the_samples_agree_the_patterns_set_the_interval():
    """Every sample the same, noise across patterns only: the samples add no spread and the interval is the patterns'
    bootstrap, its degrees of freedom N - 1 (Welch and Satterthwaite with a zero sample term), so 2 samples do not
    widen it to t(0.975, 1) = 12.7 standard errors (the planted-heads model's 2 questions, whose pairs were no longer
    told from the null heads). The standard error is the spread of least-squares refits on resampled patterns,
    computed here with numpy's lstsq from the same draws (the generator's split first, then the resamples)."""
    from scipy.stats import t as student_t

    rng = np.random.default_rng(23)
    n = 4 * H
    patterns = draw_patterns(H, n, 0.3, seed=24)
    column = -(patterns.astype(float) @ rng.normal(0, 1, H)) + rng.normal(0, 0.2, n)
    fitted = fit_patterns(patterns, np.column_stack([column, column]), "ols", bootstrap=50, seed=6)
    draws = np.random.default_rng(6)
    draws.permutation(n)  # the held-out split
    design = np.hstack([np.ones((n, 1)), patterns.astype(float)])
    refits = []
    for _ in range(50):
        pick = draws.integers(0, n, n)
        refits.append(-np.linalg.lstsq(design[pick], column[pick], rcond=None)[0][1:])
    se = np.std(refits, axis=0, ddof=1)
    assert np.allclose(fitted.std_error, se, rtol=1e-6)
    assert np.allclose(fitted.ci_high - fitted.scores, student_t.ppf(0.975, n - 1) * se, rtol=1e-6)


@pytest.mark.parametrize("fit", ["ols", "ridge", "lasso"])
def test_one_sample_has_no_interval(fit):
    """One sample: resampling the samples draws it every time, so a bootstrap covers the patterns only (the intervals
    were stored as over patterns and samples, width 0 on a linear target); standard error and interval are NaN
    (stored null), as single's are for one sample, and the scores stay those of the fit without a bootstrap."""
    rng = np.random.default_rng(31)
    patterns = draw_patterns(H, 4 * H, 0.2, seed=32)
    change = -(patterns.astype(float) @ rng.normal(0, 1, H))[:, None] + rng.normal(0, 0.1, (4 * H, 1))  # [patterns, 1 sample]
    one_sample = fit_patterns(patterns, change, fit, bootstrap=50, seed=3)
    for values in (one_sample.std_error, one_sample.ci_low, one_sample.ci_high):
        assert np.isnan(values).all()
    assert np.array_equal(one_sample.scores, fit_patterns(patterns, change, fit, bootstrap=0, seed=3).scores)
    assert np.isfinite(fit_patterns(patterns, np.hstack([change, change + 0.01]), fit, bootstrap=50, seed=3).ci_low).all()  # two samples: one


def _coverage(n_samples: int, repeats: int, fit: str = "ols") -> float:
    """The share of 95% intervals that cover each head's population mean effect (the planted one: per-sample effects
    scatter around it), over ``repeats`` simulated sweeps of 8 heads, 64 patterns and ``n_samples`` samples (the
    reviewer's simulation, /tmp/rev44/cover.py)."""
    heads = 8
    population = np.linspace(1.0, 0.0, heads)
    covered = 0
    for repeat in range(repeats):
        rng = np.random.default_rng(1000 + repeat)
        patterns = draw_patterns(heads, 64, 0.3, repeat)
        per_sample = population + rng.normal(0, 0.5, (n_samples, heads))
        change = -(patterns.astype(float) @ per_sample.T) + rng.normal(0, 0.05, (64, n_samples))
        fitted = fit_patterns(patterns, change, fit, 1e-6 if fit != "ols" else None, bootstrap=100, seed=repeat)
        covered += int(((fitted.ci_low <= population) & (population <= fitted.ci_high)).sum())
    return covered / (repeats * heads)


@pytest.mark.parametrize("n_samples", [3, 5])
def test_intervals_cover_the_population_mean_with_few_samples(n_samples):
    """The bootstrap's percentiles over patterns and samples covered the population mean effect in about 72% of
    intervals at 3 samples and 83% at 5 (too narrow: the resampled samples' spread is the plug-in one, and a normal
    quantile where S - 1 degrees of freedom ask for Student's t); Student's t over samples and patterns covers about
    95% (over 320 intervals here the share's standard error is about 0.012); the same seed gives the same intervals."""
    assert _coverage(n_samples, 40) >= 0.91
    rng = np.random.default_rng(0)
    patterns, change = draw_patterns(8, 64, 0.3, 1), rng.normal(size=(64, n_samples))
    first, again = fit_patterns(patterns, change, "ols", bootstrap=20, seed=4), fit_patterns(patterns, change, "ols", bootstrap=20, seed=4)
    assert np.array_equal(first.ci_low, again.ci_low) and np.array_equal(first.std_error, again.std_error)


def test_a_head_the_patterns_never_or_always_ablate_has_no_score():
    """Its column is constant: the fit cannot tell its effect (least squares' minimum norm and ridge both say 0), so
    its score and interval are NaN (stored null), not a certain 0; the other heads keep theirs."""
    effects = np.linspace(1, 2, H)
    patterns = draw_patterns(H, 4 * H, 0.3, seed=5)
    patterns[:, 0] = False  # never ablated
    patterns[:, 1] = True  # always ablated
    for fit in ("ols", "ridge"):
        fitted = fit_patterns(patterns, np.column_stack([-(patterns @ effects)] * 2), fit, bootstrap=20)
        for values in (fitted.scores, fitted.std_error, fitted.ci_low, fitted.ci_high):
            assert np.isnan(values[[0, 1]]).all() and np.isfinite(values[2:]).all()
    assert np.allclose(fit_patterns(patterns, -(patterns @ effects), "ols", bootstrap=0).scores[2:], effects[2:], atol=1e-8)


def test_ridge_ranks_with_fewer_patterns_than_heads():
    """N < H: least squares is undetermined; ridge shrinks the coefficients toward 0 (effects are underestimated)
    and still puts the heads that matter on top."""
    effects = np.zeros(H)
    effects[[1, 4]] = [3.0, 2.0]
    for seed in (11, 12):
        few = draw_patterns(H, 2 * H // 3, 0.3, seed=seed)
        fitted = fit_patterns(few, -(few @ effects), "ridge", bootstrap=0)
        assert set(np.argsort(-fitted.scores)[:2]) == {1, 4}
        assert np.all(fitted.scores[[1, 4]] < effects[[1, 4]])


@pytest.mark.parametrize("mean", [False, True])
def test_a_gate_at_one_changes_nothing_and_at_zero_ablates(mean):
    """Attribution patching's gate: g = 1 leaves the head's output as it is, g = 0 ablates it (zero, or its mean
    output), and the derivative in g is the first-order drop: (output − reference) · ∂T/∂output, by hand."""
    import torch

    from attnwh.extract.attribution import HeadGate

    generator = torch.Generator().manual_seed(0)
    output = torch.randn(2, 5, 3, 4, generator=generator, dtype=torch.float64)  # [batch, query, head, head_dim]
    means = torch.randn(3, 4, generator=generator, dtype=torch.float64) if mean else None
    weights = torch.randn_like(output)  # a target linear in the output: T = Σ weights · output
    reference = means[None, None] if mean else torch.zeros_like(output)
    for value, expected in ((1.0, output), (0.0, reference.expand_as(output))):
        gate = HeadGate(torch.full((2, 3), value, dtype=torch.float64), means)
        assert torch.allclose(gate.output(output.clone(), None), expected)
    gate = HeadGate(torch.ones(2, 3, dtype=torch.float64, requires_grad=True), means)
    (grad,) = torch.autograd.grad((weights * gate.output(output.clone(), None)).sum(), gate.gate)
    by_hand = ((output - reference) * weights).sum(dim=(1, 3))  # per sample and head
    assert torch.allclose(grad, by_hand) and gate.reached
    # where the target is linear in the head's output, the first-order estimate is the ablation's true drop
    ablated = HeadGate(torch.zeros(2, 3, dtype=torch.float64), means).output(output.clone(), None)
    for sample in range(2):
        for head in range(3):
            one = output.clone()
            one[sample, :, head] = ablated[sample, :, head]
            assert float((weights * output).sum() - (weights * one).sum()) == pytest.approx(float(grad[sample, head]))


def test_mean_effects_interval_is_student_t():
    """Per head: the mean drop, its standard error, and mean ± t(0.975, n - 1) × se, each computed here by hand
    (the t quantile of 15 degrees of freedom from its table value, 2.131449545559323)."""
    rng = np.random.default_rng(5)
    drops = rng.normal(0.3, 1.0, (16, 3))
    fitted = mean_effects(drops)
    for head in range(3):
        column = [float(value) for value in drops[:, head]]
        mean = sum(column) / 16
        se = (sum((value - mean) ** 2 for value in column) / 15) ** 0.5 / 4
        assert (fitted.scores[head], fitted.std_error[head]) == pytest.approx((mean, se), rel=1e-12)
        assert (fitted.ci_low[head], fitted.ci_high[head]) == pytest.approx((mean - 2.131449545559323 * se, mean + 2.131449545559323 * se), rel=1e-12)
    assert np.isnan(mean_effects(drops[:1]).ci_low).all()


@pytest.mark.parametrize("fit", ["ridge", "lasso"])
def test_the_held_out_patterns_do_not_choose_alpha(fit):
    """The held-out R² and Spearman are those of a fit whose alpha scikit-learn's cross-validation chose on the kept
    patterns alone (computed here with RidgeCV / LassoCV on the same split): alpha chosen on every pattern, the held-out
    fifth included, made them optimistic. The data are such that the two choices differ."""
    from sklearn.linear_model import LassoCV, RidgeCV
    from sklearn.metrics import r2_score

    from attnwh.extract.attribution import ALPHAS

    rng = np.random.default_rng(12)
    n = 40
    patterns = draw_patterns(H, n, 0.2, seed=12)
    change = -(patterns @ rng.normal(0, 1.0, H)) + rng.normal(0, 1.0, n)
    fitted = fit_patterns(patterns, change, fit, bootstrap=0, seed=7)
    x, order = patterns.astype(float), np.random.default_rng(7).permutation(n)  # the split fit_patterns draws first
    held, kept = order[: n // 5], order[n // 5 :]
    estimator = RidgeCV(alphas=ALPHAS) if fit == "ridge" else LassoCV(alphas=ALPHAS, cv=5, max_iter=20_000, random_state=7)
    reference = estimator.fit(x[kept], change[kept])
    assert reference.alpha_ != fitted.alpha  # the kept patterns alone choose another alpha than all of them
    predicted = reference.predict(x[held])
    assert fitted.r2_heldout == pytest.approx(r2_score(change[held], predicted), abs=1e-9)
    assert fitted.spearman_heldout == pytest.approx(spearmanr(predicted, change[held]).statistic, abs=1e-9)


@pytest.mark.filterwarnings("error::scipy.stats.ConstantInputWarning")  # a constant prediction has no Spearman: null, without scipy's warning on the console
@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_lasso_cross_validates_alpha_with_few_patterns(n):
    """The fit takes 2 patterns and more (``--patterns`` asks for MIN_PATTERNS): lasso's cross-validation takes as many
    folds as it has patterns below 5 (its five folds raised a ValueError after the whole sweep had run, from the full
    fit below 5 patterns and from the held-out fit's kept patterns below 7); its alpha is the one scikit-learn's
    LassoCV chooses in those folds."""
    from sklearn.linear_model import LassoCV

    from attnwh.extract.attribution import ALPHAS

    patterns = draw_patterns(6, n, 0.3, seed=1)
    change = np.random.default_rng(0).normal(size=(n, 3))
    fitted = fit_patterns(patterns, change, "lasso", bootstrap=3, seed=2)
    reference = LassoCV(alphas=ALPHAS, cv=min(5, n), max_iter=20_000, random_state=2).fit(patterns.astype(float), change.mean(axis=1))
    assert fitted.alpha == reference.alpha_
    assert (fitted.r2_heldout is None) == (n - max(2, n // 5) < 2)


@settings(max_examples=60, deadline=None)
@given(p=st.floats(min_value=1e-320, max_value=0.5, exclude_min=False), n_heads=st.integers(1, 1024))
def test_a_fraction_that_leaves_almost_every_pattern_empty_is_refused_before_drawing(p, n_heads):
    """An empty pattern is drawn again, so a fraction whose patterns ablate nothing almost always (1e-320: found
    by the audit, the draws never ended) is refused in one line; any fraction accepted draws its patterns at once."""
    options = AttributeOptions(p=p, patterns=MIN_PATTERNS)
    check_attribute_options(options)
    if 1 - (1 - p) ** n_heads < 0.009:  # below the 1% the check keeps, with the rounding of this plain formula
        with pytest.raises(UsageError, match="--fraction"):
            check_against_model(options, n_heads)
        return
    try:
        check_against_model(options, n_heads)
    except UsageError:
        assert 1 - (1 - p) ** n_heads < 0.011
        return
    patterns = draw_patterns(n_heads, MIN_PATTERNS, p, seed=0)
    assert patterns.shape == (MIN_PATTERNS, n_heads) and patterns.any(axis=1).all()


@pytest.mark.parametrize("n", range(2, MIN_PATTERNS))
def test_fewer_patterns_than_a_fit_takes_are_refused(n):
    """3 patterns for 12 heads were fitted without a word (4 heads scored, alpha and the held-out R² from a pattern or
    two). The fewest a fit takes, any --fit: a held-out fifth of at least 2 patterns beside at least 10 for the fit,
    two for each of lasso's five folds (worked here from that rule, not read from the code)."""
    fewest = next(count for count in range(2, 100) if count - max(2, count // 5) >= 2 * 5)
    assert fewest == MIN_PATTERNS == 12
    with pytest.raises(UsageError, match=f"--patterns takes {fewest} to 65536 .* got {n}"):
        check_attribute_options(AttributeOptions(patterns=n))
    for fit in ("ridge", "lasso"):
        check_attribute_options(AttributeOptions(patterns=fewest, fit=fit))
        assert check_against_model(AttributeOptions(patterns=fewest, fit=fit), H) == fewest  # below H: ridge and lasso shrink


def test_least_squares_has_no_held_out_figures_from_an_undetermined_fit():
    """--fit ols --bootstrap 0 takes H + 2 patterns, but its held-out fit sees only those outside the held-out fifth:
    26 - 5 = 21 patterns for 24 heads and an intercept, undetermined (its R² came out of a minimum-norm fit): None.
    From the fewest patterns whose kept part is H + 2, the figures are numpy's lstsq on the same split (the split is
    the first draw of the seed's generator)."""
    rng = np.random.default_rng(41)
    effects = rng.normal(0, 1, H)
    few = draw_patterns(H, H + 2, 0.3, seed=42)
    undetermined = fit_patterns(few, -(few @ effects) + rng.normal(0, 0.1, H + 2), "ols", bootstrap=0, seed=5)
    assert (undetermined.r2_heldout, undetermined.spearman_heldout) == (None, None)
    n = next(count for count in range(H + 2, 10 * H) if count - max(2, count // 5) >= H + 2)
    patterns = draw_patterns(H, n, 0.3, seed=43)
    change = -(patterns @ effects) + rng.normal(0, 0.1, n)
    fitted = fit_patterns(patterns, change, "ols", bootstrap=0, seed=5)
    order = np.random.default_rng(5).permutation(n)
    held, kept = order[: max(2, n // 5)], order[max(2, n // 5) :]
    design = np.hstack([np.ones((n, 1)), patterns.astype(float)])
    assert np.linalg.matrix_rank(design[kept]) == H + 1  # determined: one least-squares solution
    predicted = design[held] @ np.linalg.lstsq(design[kept], change[kept], rcond=None)[0]
    residual, spread = ((change[held] - predicted) ** 2).sum(), ((change[held] - change[held].mean()) ** 2).sum()
    assert fitted.r2_heldout == pytest.approx(1 - residual / spread, abs=1e-9)
    assert fit_patterns(patterns[:-1], change[:-1], "ols", bootstrap=0, seed=5).r2_heldout is None  # one fewer: kept H + 1
