"""The mergeable latency histogram: merged percentiles equal pooled percentiles within its bound."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from runbook_lib.load.histogram import LatencyHistogram

QUANTILES = (0.0, 0.01, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0)


def _datasets() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        # Skewed: a long right tail, as round trips under load have.
        "lognormal": rng.lognormal(mean=-4.0, sigma=1.2, size=40_000),
        # Bimodal: fast cache hits and slow cold paths, 100x apart.
        "bimodal": np.concatenate(
            [rng.normal(0.002, 0.0003, 30_000).clip(1e-5), rng.normal(0.2, 0.03, 10_000).clip(1e-3)]
        ),
        # Heavy tail: Pareto, a few huge values.
        "pareto": (rng.pareto(1.5, 40_000) + 1.0) * 0.001,
    }


@pytest.mark.parametrize("name", ["lognormal", "bimodal", "pareto"])
@pytest.mark.parametrize("tasks", [1, 4, 7])
def test_merged_quantiles_match_pooled_samples_within_the_bound(name: str, tasks: int) -> None:
    """Shards recorded separately, merged, answer every quantile within 1 % of the pooled one."""
    data = _datasets()[name]
    parts = []
    for shard in np.array_split(data, tasks):
        h = LatencyHistogram()
        h.extend(shard)
        # Through JSON, as a task's result line carries it.
        parts.append(LatencyHistogram.from_dict(json.loads(json.dumps(h.to_dict()))))
    merged = LatencyHistogram.merged(parts)
    assert merged.count == len(data)
    for q in QUANTILES:
        exact = float(np.percentile(data, q * 100, method="inverted_cdf"))
        got = merged.quantile(q)
        assert got is not None
        assert abs(got - exact) <= merged.relative_error * exact * (1 + 1e-9), (q, got, exact)
    assert merged.mean_s == pytest.approx(float(data.mean()), rel=1e-9)
    assert merged.min_s == data.min() and merged.max_s == data.max()


def test_averaging_per_task_percentiles_would_be_wrong() -> None:
    """Why the histogram exists: the mean of per-shard p95s misses the pooled p95 badly."""
    data = _datasets()["bimodal"]
    shards = [data[:30_000], data[30_000:]]  # one fast task, one slow task
    averaged = float(np.mean([np.percentile(s, 95) for s in shards]))
    pooled = float(np.percentile(data, 95, method="inverted_cdf"))
    merged = LatencyHistogram.merged([_hist(s) for s in shards]).quantile(0.95)
    assert merged is not None and abs(merged - pooled) <= 0.01 * pooled
    assert abs(averaged - pooled) > 0.2 * pooled


def _hist(values: np.ndarray) -> LatencyHistogram:
    h = LatencyHistogram()
    h.extend(values)
    return h


def test_values_below_the_floor_count_as_zero_and_empty_is_none() -> None:
    h = LatencyHistogram()
    assert h.quantile(0.5) is None and h.mean_s is None
    h.extend([0.0, 0.0, 5e-7, 0.01])
    assert h.zero_count == 3 and h.quantile(0.5) == 0.0
    assert h.quantile(1.0) == pytest.approx(0.01, rel=0.01)


@pytest.mark.parametrize("bad", [math.inf, math.nan, -0.001])
def test_bad_values_are_refused(bad: float) -> None:
    with pytest.raises(ValueError):
        LatencyHistogram().add(bad)


def test_histograms_with_different_buckets_do_not_merge() -> None:
    with pytest.raises(ValueError, match="different buckets"):
        LatencyHistogram(0.01).merge(LatencyHistogram(0.02))


@pytest.mark.parametrize(
    "record",
    [
        {},
        {
            "relative_error": 0.01,
            "min_value_s": 1e-6,
            "counts": {"3": 2},
            "zero_count": 0,
            "count": 5,
            "total_s": 1.0,
            "min_s": 0.1,
            "max_s": 0.2,
        },
        {
            "relative_error": 0.01,
            "min_value_s": 1e-6,
            "counts": {"3": -1},
            "zero_count": 1,
            "count": 0,
            "total_s": 1.0,
            "min_s": 0.1,
            "max_s": 0.2,
        },
    ],
)
def test_inconsistent_records_are_refused(record: dict) -> None:
    """A task's garbled result line is an error, never silently merged."""
    with pytest.raises(ValueError):
        LatencyHistogram.from_dict(record)


def test_memory_is_bounded_by_the_range_not_the_sample_count() -> None:
    h = _hist(np.random.default_rng(3).uniform(1e-6, 1000.0, 200_000))
    assert len(h.counts) < 1100
