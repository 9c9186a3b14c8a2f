"""Numbers for reading (terminal tables, the report's tables) against hand-written strings; CSV keeps them exact."""

from __future__ import annotations

from decimal import Decimal

import pyarrow as pa
import pytest

from attnwh.core.output import readable, render


@pytest.mark.parametrize(
    "value, column, shown",
    [
        (0.23349565120308852, "accuracy", "0.233"),
        (7.629394531250002e-06, "mcnemar_p", "7.63e-06"),
        (7.629394531250002e-06, "delta", "7.63e-06"),  # three significant digits, whatever the column
        (0.015625, "mcnemar_p", "0.0156"),  # p-values from 0.001 up read as plain numbers
        (1.0, "mcnemar_p", "1"),
        (256, "n", "256"),
        (1_048_576, "rows", "1,048,576"),
        (12345.678, "seconds", "12,346"),
        (-0.0703125, "delta", "-0.0703"),
        (None, "seed", ""),
        (True, "complete", "True"),
        (float("nan"), "mean", "nan"),
        ("gen1", "query", "gen1"),
        (3328, "n_rows", "3,328"),  # as 10,496 below it in one column (thousands were separated from 10,000 on)
        (999, "n_rows", "999"),
        (Decimal("0.0001234"), "share", "0.000123"),  # DuckDB's DECIMAL as a number: it printed in full
        (Decimal("123456.7"), "total", "123,457"),
        (Decimal("12"), "n", "12"),
        (Decimal("1E+30"), "n", "1,000,000,000,000,000,000,000,000,000,000"),  # whole, not through a float's digits
        (Decimal("NaN"), "mean", "nan"),  # as a float's NaN
    ],
)
def test_readable_numbers(value, column, shown):
    assert readable(value, column) == shown


def test_tables_round_and_csv_keeps_the_exact_values():
    table = pa.table({"accuracy": [0.23349565120308852], "mcnemar_p": [7.629394531250002e-06], "n": [256]})
    assert render(table, "table").splitlines()[2].split() == ["0.233", "7.63e-06", "256"]
    assert render(table, "csv").splitlines()[1] == "0.23349565120308852,7.629394531250002e-06,256"
    assert [float(cell) for cell in render(table, "csv").splitlines()[1].split(",")[:2]] == [0.23349565120308852, 7.629394531250002e-06]


def test_statistics_macros_against_scipy():
    """t_975 against scipy's Student t at the degrees of freedom rounded down (tabulated to 30, Cornish-Fisher past);
    the Wilson bounds against the score interval written out, and within [0, 1] at k = 0 and k = n."""
    import math

    import duckdb
    from scipy.stats import t as student_t

    from attnwh.warehouse.definitions import define_macros

    connection = duckdb.connect()
    define_macros(connection)
    for df in [*range(1, 200), 1.5, 29.9, 30.5, 250.0, 1e5]:
        assert connection.execute("select t_975($df::double)", {"df": df}).fetchone()[0] == pytest.approx(student_t.ppf(0.975, math.floor(df)), abs=1e-5), df
    assert connection.execute("select t_975(0.5), t_975(null)").fetchone() == (None, None)
    for k, n in [(0, 7), (7, 7), (3, 10), (0, 1), (1, 1), (999, 1000)]:
        low, high = connection.execute("select wilson_low($k::double, $n::double), wilson_high($k::double, $n::double)", {"k": k, "n": n}).fetchone()
        z, p = 1.959963984540054, k / n
        centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        assert (low, high) == pytest.approx((max(0.0, centre - half), min(1.0, centre + half)), abs=1e-12)
        assert 0.0 <= low <= p <= high <= 1.0 and (low == 0.0) == (k == 0) and (high == 1.0) == (k == n)
