"""Exact parameter arithmetic: decimals as the user wrote them."""

from __future__ import annotations

from fractions import Fraction

import pytest

from decompbench.exact import decimal, show


def test_decimal_is_the_written_decimal_not_the_binary_double() -> None:
    assert decimal(0.8) == Fraction(4, 5) and decimal(1.2) == Fraction(6, 5)
    assert Fraction(0.8) != Fraction(4, 5)  # why Fraction(str(x)), not Fraction(x)
    assert 2 * decimal(1.2) == 3 * decimal(0.8)
    assert 2 * Fraction(1.2) < 3 * Fraction(0.8)  # the binary values would accept [0.8, 1.2]
    assert decimal(3) == 3 and decimal(1e-20) == Fraction(1, 10**20)
    assert show(Fraction(12, 5)) == "2.4"


@pytest.mark.parametrize("x", [float("inf"), float("nan")])
def test_non_finite_values_are_refused(x: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        decimal(x)
