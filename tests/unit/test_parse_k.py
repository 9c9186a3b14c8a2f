"""``--k``: counts or shares of all heads, read as head counts (attnwh mask, the toy zoo)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from attnwh.core.errors import UsageError
from attnwh.extract.masking import parse_k


def test_counts_and_shares_become_head_counts_rounded_half_to_even():
    # 0.25 of 10 heads is 2.5 -> 2, 0.35 of 10 is 3.5 -> 4 (half to even, by hand), 10% of 10 is 1; 10% of 32 is 3.2 -> 3
    assert parse_k(["0", "5", "0.25", "0.35", "10%"], 10) == [0, 1, 2, 4, 5]
    assert parse_k(["10%", "32"], 32) == [3, 32]


@given(st.one_of(st.integers(max_value=-1).map(str), st.floats(max_value=-1e-6, min_value=-1e6).map(lambda x: f"{x:.6f}"), st.integers(1, 100).map(lambda n: f"-{n}%")))
def test_a_negative_k_is_told_as_negative(text):
    with pytest.raises(UsageError, match="is negative: k counts heads"):
        parse_k([text], 32)


@given(st.integers(33, 10**6))
def test_more_heads_than_the_model_has_are_named(count):
    with pytest.raises(UsageError, match=f"is {count} heads; the model has 32"):
        parse_k([str(count)], 32)


@given(st.sampled_from(["inf%", "-inf%", "1e309%", "nan", "inf", "1e999.5"]))
def test_a_k_that_is_no_finite_number_is_one_line(text):
    with pytest.raises(UsageError, match="--k takes counts or fractions of all heads"):
        parse_k([text], 32)


def test_minus_zero_is_zero_heads():
    assert parse_k(["-0", "-0.0"], 32) == [0]
