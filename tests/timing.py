"""One scale for every wall-clock bound in the tests.

``T(seconds)`` is ``seconds`` times ``RUNBOOK_TESTS_TIMEOUT_FACTOR`` (default 1): a
slow or shared machine sets the factor (e.g. 3) instead of every test growing its
own margin. Use it for bounds a test *waits up to* (deadlines, timeouts, "finished
within"), never for durations a test asserts are short or for the timeouts given to
the code under test when the test is about that timeout firing.
"""

from __future__ import annotations

import os

__all__ = ["FACTOR", "SHORT_WINDOWS", "T"]


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


# The one short-window override set for every end-to-end run (``RunOptions.overrides``
# or ``--param``): a monitoring window of 5 samples x 0.5 s (the minimum a window may
# hold) and a short socket hold. Profiles whose fault must show inside these windows
# get matching knobs from the sandbox fixture (e.g. ``SANDBOX_IDLE_CLOSE_S``).
SHORT_WINDOWS: dict[str, float] = {
    "thresholds.monitor_window_s": 2.5,
    "thresholds.monitor_interval_s": 0.5,
    "thresholds.hold_s": 2.5,
}
