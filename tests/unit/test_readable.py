"""Numbers for reading (terminal tables, the report's tables) against hand-written strings; CSV keeps them exact."""

from __future__ import annotations

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
    ],
)
def test_readable_numbers(value, column, shown):
    assert readable(value, column) == shown


def test_tables_round_and_csv_keeps_the_exact_values():
    table = pa.table({"accuracy": [0.23349565120308852], "mcnemar_p": [7.629394531250002e-06], "n": [256]})
    assert render(table, "table").splitlines()[2].split() == ["0.233", "7.63e-06", "256"]
    assert render(table, "csv").splitlines()[1] == "0.23349565120308852,7.629394531250002e-06,256"
    assert [float(cell) for cell in render(table, "csv").splitlines()[1].split(",")[:2]] == [0.23349565120308852, 7.629394531250002e-06]
