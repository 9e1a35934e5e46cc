"""Exact arithmetic for parameter validation: derived thresholds compared as fractions.

A parameter such as ``magnitude: [0.8, 1.2]`` means the decimals 0.8 and 1.2, not the
nearest binary doubles. ``decimal(x)`` is therefore ``Fraction(str(x))``: Python's
``str`` of a float is the shortest decimal that rounds back to it, i.e. what the user
wrote (for up to 17 significant digits). ``Fraction(x)`` would instead be the double's
exact binary value, which keeps float's verdict: with k = 3 and [0.8, 1.2],
Fraction(1.2) * 2 = 2.39999999999999991... < Fraction(0.8) * 3 = 2.40000000000000013...,
so an interval that is empty for the decimals the user meant would be accepted.
Thresholds are computed exactly and converted to float once, at the end.
"""

from __future__ import annotations

import math
from fractions import Fraction


def decimal(x: float | int) -> Fraction:
    """The decimal number ``x`` was written as, exactly."""
    if not math.isfinite(x):
        raise ValueError(f"expected a finite number, got {x}")
    return Fraction(str(x))


def show(q: Fraction) -> str:
    """A fraction as a short decimal for messages (exact when it terminates in 12 digits)."""
    return f"{float(q):.12g}"
