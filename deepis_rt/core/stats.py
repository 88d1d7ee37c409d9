"""Statistics of timing samples: latency percentiles (benchmarks, streams, live runs)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["LatencyStats", "latency_stats"]


@dataclass(frozen=True)
class LatencyStats:
    """Latency percentiles in ms (linear interpolation between samples, numpy's default)."""

    n: int
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def latency_stats(samples_ms: Sequence[float]) -> LatencyStats:
    """Summarise latency samples (ms). Empty input gives NaNs and n = 0."""
    a = np.asarray(samples_ms, dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        nan = float("nan")
        return LatencyStats(0, nan, nan, nan, nan, nan, nan)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return LatencyStats(
        n=int(a.size),
        mean_ms=float(a.mean()),
        p50_ms=float(p50),
        p95_ms=float(p95),
        p99_ms=float(p99),
        min_ms=float(a.min()),
        max_ms=float(a.max()),
    )
