"""Benchmarks: ``deepis-rt bench`` (backends side by side, compute-only and whole pipeline).

``run_benchmark`` measures; ``report`` derives and renders (terminal, Markdown, JSON); ``plot``
draws the PNG; ``machine``, ``stats`` and ``peak`` give the context every report carries.
"""

from deepis_rt.bench.stats import LatencyStats, latency_stats

__all__ = ["LatencyStats", "latency_stats"]
