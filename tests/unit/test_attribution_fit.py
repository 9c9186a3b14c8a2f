"""Head attribution's fit (extract.attribution) on synthetic targets: exact on a linear target, equal to reference
solvers, and a planted ranking with redundant pairs that random patterns recover and single-head ablation misses."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import spearmanr

from attnwh.core.errors import UsageError
from attnwh.extract.attribution import AttributeOptions, check_against_model, check_attribute_options, draw_patterns, fit_patterns, mean_effects

H = 24


def test_fit_is_exact_on_a_linear_target():
    """A target linear in the ablation indicators: least squares gives the coefficients back exactly (numpy's
    lstsq agrees), ridge with a tiny alpha within its shrinkage."""
    rng = np.random.default_rng(1)
    effects = rng.normal(0, 1, H)
    patterns = draw_patterns(H, 4 * H, 0.2, seed=3)
    change = 0.7 - patterns @ effects  # an ablated head lowers the target by its effect
    fitted = fit_patterns(patterns, change, "ols", bootstrap=5)
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
    change = np.array([planted_target(row, singles, pairs) for row in patterns]) + rng.normal(0, 0.05, n)
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
@given(st.integers(min_value=2, max_value=H + 1))
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
    linear in the patterns: resampling the patterns alone gives intervals of width 0. Resampling samples as well,
    each head's interval has about the half-width a t interval over the samples' own effects has (computed here from
    the planted per-sample effects), and it covers the samples' mean effect."""
    from scipy.stats import t as student_t

    rng = np.random.default_rng(21)
    n_samples = 12
    per_sample = rng.normal(0, 1, H) + rng.normal(0, 0.8, (n_samples, H))  # [samples, heads]
    patterns = draw_patterns(H, 6 * H, 0.2, seed=22)
    change = -(patterns.astype(float) @ per_sample.T)  # [patterns, samples]
    fitted = fit_patterns(patterns, change, "ols", bootstrap=400, seed=3)
    mean_effect = per_sample.mean(axis=0)
    assert np.allclose(fitted.scores, mean_effect, atol=1e-9)
    half = (fitted.ci_high - fitted.ci_low) / 2
    expected = student_t.ppf(0.975, n_samples - 1) * per_sample.std(axis=0, ddof=1) / np.sqrt(n_samples)
    assert np.all(half > 0.5 * expected) and np.all(half < 1.5 * expected)
    assert np.mean((fitted.ci_low <= mean_effect) & (mean_effect <= fitted.ci_high)) == 1.0
    one_sample = fit_patterns(patterns, change[:, :1], "ols", bootstrap=50, seed=3)  # one sample: nothing to resample
    assert np.allclose(one_sample.ci_low, one_sample.ci_high, atol=1e-8)


def test_a_head_the_patterns_never_or_always_ablate_has_no_score():
    """Its column is constant: the fit cannot tell its effect (least squares' minimum norm and ridge both say 0), so
    its score and interval are NaN (stored null), not a certain 0; the other heads keep theirs."""
    effects = np.linspace(1, 2, H)
    patterns = draw_patterns(H, 4 * H, 0.3, seed=5)
    patterns[:, 0] = False  # never ablated
    patterns[:, 1] = True  # always ablated
    for fit in ("ols", "ridge"):
        fitted = fit_patterns(patterns, -(patterns @ effects), fit, bootstrap=20)
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
    """``--patterns`` takes 2 and more: lasso's cross-validation takes as many folds as it has patterns below 5 (its
    five folds raised a ValueError after the whole sweep had run, from the full fit below 5 patterns and from the
    held-out fit's kept patterns below 7); its alpha is the one scikit-learn's LassoCV chooses in those folds."""
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
    options = AttributeOptions(p=p, patterns=8)
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
    patterns = draw_patterns(n_heads, 8, p, seed=0)
    assert patterns.shape == (8, n_heads) and patterns.any(axis=1).all()
