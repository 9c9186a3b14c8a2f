"""The pruning page's panels say when none of their conditions changed an answer, and only then."""

from __future__ import annotations

from attnwh.reports.charts import PRUNING_UNCHANGED, ROWS, pruning_curves


def _row(phase: str, allocation: str, kv_share: float, changed_most: float | None) -> dict:
    return {
        "run_id": "r",
        "model": "m",
        "benchmark": "b",
        "phase": phase,
        "keep": "attention",
        "allocation": allocation,
        "kv_share": kv_share,
        "accuracy": 0.5,
        "ci_low": 0.4,
        "ci_high": 0.6,
        "kv_saving": 1 - kv_share,
        "changed_most": changed_most,
        "n_conditions": 1,
    }


def _titles(rows: list[dict]) -> dict[str, str]:
    """phase -> the title of its panel."""
    return {row["phase"]: row["panel"] for row in pruning_curves(rows)["datasets"][ROWS.name]}


def test_a_panel_is_marked_only_when_every_condition_changed_no_answer():
    titles = _titles(
        [
            _row("cache", "full", 1.0, 0),
            _row("cache", "score", 0.25, 0),
            _row("cache", "uniform", 0.25, 0.0),
            _row("prefill", "full", 1.0, 0),
            _row("prefill", "score", 0.25, 0),
            _row("prefill", "uniform", 0.25, 0.125),  # one condition changed an answer: the panel is not marked
        ]
    )
    assert titles == {"cache": f"m · b · cache · keep attention · {PRUNING_UNCHANGED}", "prefill": "m · b · prefill · keep attention"}


def test_an_unknown_change_is_not_read_as_none():
    # a condition without paired answers (changed null) might have changed any: the panel is not marked
    titles = _titles([_row("cache", "full", 1.0, 0), _row("cache", "score", 0.25, None)])
    assert titles == {"cache": "m · b · cache · keep attention"}
