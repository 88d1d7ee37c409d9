"""PNG of a benchmark report: throughput per backend (compute-only and whole pipeline) and latency distributions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_report"]


def plot_report(report: dict[str, Any], path: str | Path) -> Path:
    """One row of two panels per model: tiles/s per backend x precision x batch, and per-call latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = report["models"]
    fig, axes = plt.subplots(len(models) or 1, 2, figsize=(13, 4.2 * max(1, len(models))), squeeze=False)
    for ax_tp, ax_lat, mr in zip(axes[:, 0], axes[:, 1], models, strict=False):
        ok = [r for r in mr["rows"] if r["status"] == "ok"]
        labels = [f"{r['backend']}\n{r['precision']} b{r['batch']}" for r in ok]
        xs = list(range(len(ok)))
        colors = ["tab:gray" if r["backend"].startswith("torch") else "tab:blue" for r in ok]
        ax_tp.bar([x - 0.2 for x in xs], [r["throughput_fps"] for r in ok], width=0.4, color=colors,
                  label="compute only (gray: PyTorch)")
        pipes = {(p["backend"], p["precision"], p["batch"]): p for p in mr["pipeline"]
                 if p.get("throughput_fps") is not None}
        px = [i for i, r in enumerate(ok) if (r["backend"], r["precision"], r["batch"]) in pipes]
        if px:
            heights = [pipes[(ok[i]["backend"], ok[i]["precision"], ok[i]["batch"])]["throughput_fps"] for i in px]
            ax_tp.bar([i + 0.2 for i in px], heights, width=0.4, color="tab:orange", label="whole pipeline")
            for i, h in zip(px, heights, strict=True):
                ax_tp.annotate(f"{h:.3g}", (i + 0.2, h), ha="center", va="bottom", fontsize=7)
        for i, r in enumerate(ok):
            ax_tp.annotate(f"{r['throughput_fps']:.3g}", (i - 0.2, r["throughput_fps"]), ha="center", va="bottom",
                           fontsize=7)
        ax_tp.set_xticks(xs, labels, fontsize=7)
        ax_tp.set_ylabel("tiles / s")
        md = mr["model"]
        ax_tp.set_title(f"{md['name']}: throughput ({md['gflops_per_tile']:.1f} GFLOP/tile, tile "
                        f"{'x'.join(map(str, md['tile_zyx']))})", fontsize=9)
        ax_tp.legend(fontsize=7)
        failed = [r for r in mr["rows"] if r["status"] != "ok"]
        if failed:
            names = sorted({f"{r['backend']} {r['precision']}" for r in failed})
            ax_tp.text(0.01, 0.98, "not run: " + ", ".join(names), transform=ax_tp.transAxes, fontsize=6,
                       va="top", wrap=True)
        samples = [r.get("samples_ms") or [float("nan")] for r in ok]
        if ok:
            ax_lat.boxplot(samples, positions=xs, widths=0.5, showfliers=True)
            ax_lat.set_xticks(xs, labels, fontsize=7)
            ax_lat.set_yscale("log")
        ax_lat.set_ylabel("latency per call (ms, log)")
        ax_lat.set_title("latency distribution per batch call (p50 line, whiskers 1.5 IQR)", fontsize=9)
    m = report["machine"]
    fig.suptitle(f"deepis-rt bench | {m['cpu']} x{m['cpu_cores']}" + (f" | {m['gpu']}" if m.get("gpu") else "")
                 + f" | load {report.get('load_average_before')} | {report['date_utc']}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
