"""One scale for every wall-clock bound in the tests.

``T(seconds)`` is ``seconds`` times ``RUNBOOK_TESTS_TIMEOUT_FACTOR`` (default 1): a
slow or shared machine sets the factor (e.g. 3) instead of every test growing its
own margin. Use it for bounds a test *waits up to* (deadlines, timeouts, "finished
within"), never for durations a test asserts are short or for the timeouts given to
the code under test when the test is about that timeout firing.
"""

from __future__ import annotations

import os

__all__ = ["FACTOR", "T"]


def _factor() -> float:
    raw = os.environ.get("RUNBOOK_TESTS_TIMEOUT_FACTOR", "").strip()
    if not raw:
        return 1.0
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"RUNBOOK_TESTS_TIMEOUT_FACTOR={raw!r}: expected a number >= 1") from None
    if value < 1:
        raise ValueError(f"RUNBOOK_TESTS_TIMEOUT_FACTOR={raw!r}: expected a number >= 1")
    return value


FACTOR = _factor()


def T(seconds: float) -> float:
    """``seconds`` scaled by ``RUNBOOK_TESTS_TIMEOUT_FACTOR``."""
    return seconds * FACTOR
