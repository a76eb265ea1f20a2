"""Checking one numeric config value: the one helper behind every ``field must be ..., got ...`` line.

A config value arrives from YAML or the command line as whatever the user typed: ``true`` is not an
integer here (Python would let ``True`` pass as 1), ``nan`` and ``inf`` are not numbers, and the
error names the field, the range in words and the value.
"""

from __future__ import annotations

import math
from typing import Any

from continual.errors import ContinualError


def _range(kind: str, low: float | None, high: float | None, above: bool, below: bool) -> str:
    """``a positive integer``, ``a non-negative number``, ``a number in (0, 1]``, ``an integer >= 2``, ..."""
    if low is not None and high is not None:
        interval = f"{'(' if above else '['}{low:g}, {high:g}{')' if below else ']'}"
        return f"{'an' if kind == 'integer' else 'a'} {kind} in {interval}"
    if low == 0 and high is None:
        return f"a {'positive' if above else 'non-negative'} {kind}"
    if low == 1 and high is None and kind == "integer" and not above:
        return "a positive integer"
    article = "an" if kind == "integer" else "a"
    if low is not None:
        return f"{article} {kind} {'>' if above else '>='} {low:g}"
    if high is not None:
        return f"{article} {kind} {'<' if below else '<='} {high:g}"
    return f"{article} {kind}" if kind == "integer" else "a finite number"


def check_int(value: Any, field: str, low: int | None = None, high: int | None = None, optional: bool = False) -> None:
    """``value`` is an integer (not a bool) in ``[low, high]``; ``optional`` also accepts None."""
    if optional and value is None:
        return
    ok = isinstance(value, int) and not isinstance(value, bool)
    ok = ok and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        wanted = _range("integer", low, high, False, False) + (" or null" if optional else "")
        raise ContinualError(f"{field} must be {wanted}, got {value!r}")


def check_number(
    value: Any,
    field: str,
    low: float | None = None,
    high: float | None = None,
    above: bool = False,
    below: bool = False,
    optional: bool = False,
    unit: str = "",
) -> float:
    """``value`` is a finite number (not a bool) from ``low`` to ``high`` (``above``/``below``: the bound itself
    is excluded); ``optional`` also accepts None; ``unit`` names what it counts in the error (megabytes)."""
    if optional and value is None:
        return math.nan
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low is None or (value > low if above else value >= low))
    ok = ok and (high is None or (value < high if below else value <= high))
    if not ok:
        wanted = _range("number", low, high, above, below) + (f" of {unit}" if unit else "")
        raise ContinualError(f"{field} must be {wanted}{' or null' if optional else ''}, got {value!r}")
    return float(value)
