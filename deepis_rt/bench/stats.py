"""Latency statistics of benchmark samples; defined in :mod:`deepis_rt.core.stats` (streams use them too)."""

from deepis_rt.core.stats import LatencyStats, latency_stats

__all__ = ["LatencyStats", "latency_stats"]
