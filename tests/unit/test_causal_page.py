"""The causal page's computed sentences (reports/causal.py) on hand-made rows."""

from __future__ import annotations

from attnwh.reports.causal import headline, masking_contrast, strength


def _row(ranking: str, k: int, accuracy: float, run_id: str = "") -> dict:
    return {
        "run_id": run_id or ("run-attention" if "attention" in ranking else "run-attribution"),
        "model": "m",
        "benchmark": "b",
        "stage": "all",
        "mode": "zero",
        "ranking": ranking,
        "k": k,
        "fraction": k / 32,
        "accuracy": accuracy,
        "ci_low": accuracy - 0.05,
        "ci_high": accuracy + 0.05,
    }


def test_masking_contrast_takes_the_largest_k_both_top_rankings_share():
    rows = [_row("top by attribution", 0, 1.0), _row("top by attribution", 3, 0.75), _row("top by attribution", 6, 0.43)]
    rows += [_row("top by attention", 0, 1.0), _row("top by attention", 3, 0.9), _row("random (outside attention's top k)", 6, 0.8)]
    assert masking_contrast(rows) == (
        "Masking the top 3 heads (9%, stage all, zero) of m on b by attribution leaves accuracy 0.750 [0.700, 0.800] (mask run run-attribution), "
        "by attention 0.900 [0.850, 0.950] (mask run run-attention)."
    )
    assert masking_contrast([row for row in rows if row["ranking"] != "top by attention"]) == ""


def test_masking_contrast_sets_each_attribution_run_against_attention():
    """Two mask runs ranked by attribution (two attribution runs): a clause each, never one run's accuracy under the
    other's k (keyed by ranking and k alone, the later run's rows overwrote the earlier's)."""
    rows = [_row("top by attribution", k, accuracy, "run-a") for k, accuracy in ((0, 1.0), (3, 0.5))]
    rows += [_row("top by attribution", k, accuracy, "run-b") for k, accuracy in ((0, 1.0), (3, 0.25), (6, 0.0))]
    rows += [_row("top by attention", k, accuracy) for k, accuracy in ((0, 1.0), (3, 0.9), (6, 0.8))]
    assert masking_contrast(rows) == (
        "Masking the top 3 heads (9%, stage all, zero) of m on b by attribution leaves accuracy 0.500 [0.450, 0.550] (mask run run-a), "
        "by attention 0.900 [0.850, 0.950] (mask run run-attention); "
        "masking the top 6 heads (19%, stage all, zero) of m on b by attribution leaves accuracy 0.000 [-0.050, 0.050] (mask run run-b), "
        "by attention 0.800 [0.750, 0.850] (mask run run-attention)."
    )


def test_headline_words_follow_the_numbers():
    assert [strength(rho) for rho in (0.05, -0.05, 0.2, -0.45, 0.8)] == ["hardly at all", "hardly at all", "weakly", "moderately, in opposite directions", "strongly"]
    rows = [{"model": "m", "spearman": rho, "jaccard_top5": jaccard} for rho, jaccard in ((0.1, 0.0), (0.5, 0.25), (0.7, 1.0))]
    assert headline(rows, "gen1", "image_sum") == (
        "Over 3 attribution run(s) of 1 model(s), where heads look (image_sum on gen1) and what ablating them does agree moderately: "
        "Spearman's rho 0.50 (median) (from 0.10 to 0.70); the top 5 heads of the two rankings overlap with a Jaccard index of 0.25 (median)."
    )
    assert headline([], "gen1", "image_sum").startswith("Attribution runs are stored, but no complete extraction run")


def test_too_few_heads_are_said_to_be_too_few():
    """ranking_agreement gives no rank correlation below 5 heads scored by both rankings (one from 4 heads moves in
    steps of 0.2): the headline says there are too few heads instead of describing a correlation (a run without one
    was dropped from the page, and strength() took a number only), and a run without one is left out of the median."""
    assert strength(None, 4) == "cannot be told: only 4 head(s) are scored by both rankings, too few for a rank correlation (it takes 5)"
    assert strength(None, 12) == "cannot be told: one ranking scores every head alike"
    rows = [{"model": "m", "n_heads": 4, "spearman": None, "jaccard_top5": None}]
    assert headline(rows, "gen1", "image_sum") == (
        "Over 1 attribution run(s) of 1 model(s), whether where heads look (image_sum on gen1) and what ablating them does agree cannot be told: "
        "only 4 head(s) are scored by both rankings, too few for a rank correlation (it takes 5)."
    )
    # two runs without a correlation, for different reasons: each said (the largest n_heads spoke for both)
    tied = [*rows, {"model": "m", "n_heads": 12, "spearman": None, "jaccard_top5": None}]
    assert headline(tied, "gen1", "image_sum") == (
        "Over 2 attribution run(s) of 1 model(s), whether where heads look (image_sum on gen1) and what ablating them does agree cannot be told: "
        "one ranking scores every head alike; only 4 head(s) are scored by both rankings, too few for a rank correlation (it takes 5)."
    )
    rows.append({"model": "m", "n_heads": 32, "spearman": 0.45, "jaccard_top5": 0.25})
    assert headline(rows, "gen1", "image_sum") == (
        "Over 2 attribution run(s) of 1 model(s), where heads look (image_sum on gen1) and what ablating them does agree moderately: Spearman's rho 0.45 "
        "(1 run(s) without a rank correlation, too few heads scored by both rankings or one tie, left out); the top 5 heads of the two rankings overlap "
        "with a Jaccard index of 0.25."
    )
