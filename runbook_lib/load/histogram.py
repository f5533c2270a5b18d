"""A mergeable latency histogram with a stated relative error (issue 13).

Percentiles cannot be averaged: the p95 of four load tasks is not the mean of their
p95s. Each task therefore reports a histogram and the histograms are merged by adding
counts. The buckets are logarithmic, as in DDSketch (Masson et al., VLDB 2019): bucket
``i`` holds the values in ``(gamma**(i-1), gamma**i]`` with ``gamma = (1+a)/(1-a)``, and
a quantile is answered with the bucket's representative ``2*gamma**i/(gamma+1)``.

**Error bound.** For any quantile ``q``, :meth:`LatencyHistogram.quantile` returns a
value within ``relative_error`` (default 1 %) of the sample at rank
``ceil(q * n)`` (the "inverted CDF" / nearest-rank definition), for every value at or
above ``min_value_s`` (default 1 microsecond); values below it are counted in a zero
bucket and reported as 0. The bound holds for the merged histogram exactly as for one,
since merging adds counts bucket by bucket. Memory is one integer per occupied bucket:
about 1,040 buckets span 1 µs to 1,000 s at 1 %.

Pure: no I/O, standard library only; :meth:`to_dict`/:meth:`from_dict` give the JSON
form a load task prints on its result line.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LatencyHistogram"]


@dataclass
class LatencyHistogram:
    """Log-bucketed counts of latencies in seconds.

    Attributes:
        relative_error: the bound on a quantile's relative error, in (0, 0.5).
        min_value_s: values below this are counted as zero.
        counts: bucket index -> count.
        zero_count: values below ``min_value_s`` (including 0).
        count: all values recorded.
        total_s: their sum (for the mean, which is exact).
        min_s: the smallest value recorded (exact).
        max_s: the largest value recorded (exact).
    """

    relative_error: float = 0.01
    min_value_s: float = 1e-6
    counts: dict[int, int] = field(default_factory=dict)
    zero_count: int = 0
    count: int = 0
    total_s: float = 0.0
    min_s: float = math.inf
    max_s: float = -math.inf

    def __post_init__(self) -> None:
        if not 0.0 < self.relative_error < 0.5 or not math.isfinite(self.relative_error):
            raise ValueError(f"relative_error must be in (0, 0.5), got {self.relative_error}")
        if not 0.0 < self.min_value_s < math.inf:
            raise ValueError(f"min_value_s must be > 0 and finite, got {self.min_value_s}")

    @property
    def gamma(self) -> float:
        """The ratio between consecutive bucket bounds."""
        return (1.0 + self.relative_error) / (1.0 - self.relative_error)

    def _index(self, value: float) -> int:
        return math.ceil(math.log(value) / math.log(self.gamma))

    def _value(self, index: int) -> float:
        g = self.gamma
        return 2.0 * g**index / (g + 1.0)

    def add(self, value_s: float, n: int = 1) -> None:
        """Record ``n`` occurrences of a latency (seconds, finite, >= 0)."""
        if not math.isfinite(value_s) or value_s < 0:
            raise ValueError(f"a latency must be finite and >= 0, got {value_s}")
        if n <= 0:
            return
        if value_s < self.min_value_s:
            self.zero_count += n
        else:
            i = self._index(value_s)
            self.counts[i] = self.counts.get(i, 0) + n
        self.count += n
        self.total_s += value_s * n
        self.min_s = min(self.min_s, value_s)
        self.max_s = max(self.max_s, value_s)

    def extend(self, values_s: Iterable[float]) -> None:
        """Record every latency of an iterable."""
        for v in values_s:
            self.add(float(v))

    def merge(self, other: LatencyHistogram) -> None:
        """Add another histogram's counts (same ``relative_error`` and ``min_value_s``)."""
        if (other.relative_error, other.min_value_s) != (self.relative_error, self.min_value_s):
            raise ValueError(
                "cannot merge histograms with different buckets: "
                f"{(other.relative_error, other.min_value_s)} vs "
                f"{(self.relative_error, self.min_value_s)}"
            )
        for i, c in other.counts.items():
            self.counts[i] = self.counts.get(i, 0) + c
        self.zero_count += other.zero_count
        self.count += other.count
        self.total_s += other.total_s
        self.min_s = min(self.min_s, other.min_s)
        self.max_s = max(self.max_s, other.max_s)

    @classmethod
    def merged(cls, parts: Iterable[LatencyHistogram]) -> LatencyHistogram:
        """One histogram holding every part's counts (an empty one when there is none)."""
        parts = list(parts)
        out = cls(parts[0].relative_error, parts[0].min_value_s) if parts else cls()
        for p in parts:
            out.merge(p)
        return out

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0 <= q <= 1) within ``relative_error``; None when empty."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be in [0, 1], got {q}")
        if self.count == 0:
            return None
        rank = max(1, math.ceil(q * self.count))  # nearest rank, 1-based
        if rank <= self.zero_count:
            return 0.0
        seen = self.zero_count
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen >= rank:
                # Clamp to the exact extremes: never report beyond what was seen.
                return min(max(self._value(i), self.min_s), self.max_s)
        return self.max_s  # unreachable when counts are consistent

    @property
    def mean_s(self) -> float | None:
        """The exact mean, or None when empty."""
        return self.total_s / self.count if self.count else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (bucket indexes as strings, as JSON object keys must be)."""
        return {
            "relative_error": self.relative_error,
            "min_value_s": self.min_value_s,
            "counts": {str(i): c for i, c in sorted(self.counts.items())},
            "zero_count": self.zero_count,
            "count": self.count,
            "total_s": self.total_s,
            "min_s": self.min_s if self.count else None,
            "max_s": self.max_s if self.count else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyHistogram:
        """Inverse of :meth:`to_dict`; raises ``ValueError`` on an inconsistent record."""
        try:
            h = cls(float(data["relative_error"]), float(data["min_value_s"]))
            h.counts = {int(k): int(v) for k, v in dict(data["counts"]).items()}
            h.zero_count = int(data["zero_count"])
            h.count = int(data["count"])
            h.total_s = float(data["total_s"])
            if h.count:
                h.min_s, h.max_s = float(data["min_s"]), float(data["max_s"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a latency histogram record: {exc}") from exc
        if any(c < 0 for c in h.counts.values()) or h.zero_count < 0:
            raise ValueError("a histogram record holds a negative count")
        if sum(h.counts.values()) + h.zero_count != h.count:
            raise ValueError("a histogram record's bucket counts do not add up to its count")
        return h
