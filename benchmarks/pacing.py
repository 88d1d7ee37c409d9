"""Keeping pace: a synthetic microscope writes frames at 0.5x, 1x, 2x and 4x the rate the stream
sustains, with every frame in order and with the newest first; latency and backlog over time.

The model is the bundled checkpoint (``deepis_rt.load()``, the backend ``auto`` picks here). First
the stream's sustainable rate and its single-frame processing time are measured (frames processed
back to back, and one at a time); then, for each policy and arrival rate, a thread writes
``--frames`` frames of a synthetic time-lapse (``deepis_rt.synth``) into a camera folder at that
pace while a :class:`~deepis_rt.stream.Stream` processes them; the frames waiting are sampled every
0.1 s. Reported per run: decision latency p50/p99 (file complete -> results written, frames
processed on arrival; with ``newest``, frames passed over and done later are the record, not
decisions), latency of all frames, largest backlog, time behind, and whether every frame was
processed exactly once.

    nice -n 10 python benchmarks/pacing.py [--frames 12] [--out benchmarks/results]

writes ``pacing-<host>.{json,md,png}`` (machine, CPU flags and load average in the JSON and Markdown);
``--plot-only pacing-<host>.json`` redraws the PNG and Markdown of a run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from deepis_rt.bench.machine import describe_machine

RATES = (0.5, 1.0, 2.0, 4.0)
POLICIES = ("every", "newest")


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write(path: Path, frame: Any) -> None:
    from deepis_rt.io import write_tomogram

    tmp = path.with_name(f".{path.name}")  # hidden while written, then renamed: complete at once
    write_tomogram(tmp, frame.ri, frame.voxel_size_um)
    os.replace(tmp, path)


def run_once(segmenter: Any, frames: list[Any], interval_s: float | None, policy: str, work: Path) -> dict[str, Any]:
    """Stream ``frames`` written every ``interval_s`` (None: all there at the start); the run's facts."""
    from deepis_rt.stream import Stream

    cam, out = work / f"cam-{policy}-{interval_s}", work / f"out-{policy}-{interval_s}"
    cam.mkdir(parents=True)
    if interval_s is None:
        for i, f in enumerate(frames):
            _write(cam / f"frame_{i:04d}.tif", f)
    stream = Stream(cam, out, segmenter, policy=policy, settle_s=0.0, poll_s=0.02, use_events=False,
                    frame_interval_s=3.0, max_frames=len(frames), write_masks=False, refresh_s=3600.0,
                    backlog_window_s=2.0)
    backlog: list[tuple[float, int]] = []
    done = threading.Event()
    t0 = time.time()

    def sample() -> None:
        while not done.is_set():
            backlog.append((time.time() - t0, stream.backlog.waiting))
            done.wait(0.1)

    def microscope() -> None:
        for i, f in enumerate(frames):
            start = time.time()
            _write(cam / f"frame_{i:04d}.tif", f)
            time.sleep(max(0.0, interval_s - (time.time() - start)))

    stream.start()
    threads = [threading.Thread(target=sample, daemon=True)]
    if interval_s is not None:
        threads.append(threading.Thread(target=microscope, daemon=True))
    for t in threads:
        t.start()
    order = [r.frame for r in stream]
    stream.close()
    done.set()
    for t in threads:
        t.join()
    summary = json.loads((out / "summary.json").read_text())
    rows = _rows(out / "frames.csv")
    shutil.rmtree(cam, ignore_errors=True)
    ok = [r for r in rows if r["status"] == "ok"]
    lat = np.array([float(r["latency_ms"]) for r in ok]) / 1e3
    decisions = np.array([float(r["latency_ms"]) for r in ok if r["deferred"] == "0"]) / 1e3
    facts = summary["run"]["backlog"]
    return {
        "policy": policy,
        "interval_s": interval_s,
        "frames": len(frames),
        "processed_once": sorted(order) == list(range(len(frames))) and len(rows) == len(frames)
        and len({r["frame"] for r in rows}) == len(frames) and all(r["status"] == "ok" for r in rows),
        "processing_order": order,
        "deferred_frames": sum(r["deferred"] == "1" for r in ok),
        "decision_latency_s": {"p50": float(np.percentile(decisions, 50)), "p99": float(np.percentile(decisions, 99)),
                               "n": int(decisions.size)},
        "latency_s": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
                      "max": float(lat.max())},
        "latency_per_frame_s": [round(float(v), 3) for v in lat],
        "max_waiting_frames": facts["max_waiting_frames"],
        "behind_s": facts["behind_s"],
        "backlog_events": [e["kind"] for e in facts["events"]],
        "latency_trend_s_per_s": facts["latency_trend_s_per_s"],
        "wall_s": time.time() - t0,
        "backlog_over_time": [(round(t, 2), n) for t, n in backlog],
    }


def calibrate(segmenter: Any, frames: list[Any], work: Path) -> dict[str, float]:
    """Sustainable rate (frames back to back) and single-frame processing time (frames one at a time)."""
    run_once(segmenter, frames[:2], None, "every", work / "warm")  # first-call costs, untimed
    run_once(segmenter, frames[:6], None, "every", work / "burst")
    out = work / "burst" / "out-every-None"
    done = sorted(datetime.fromisoformat(r["done_at"].replace("Z", "+00:00")).timestamp()
                  for r in _rows(out / "frames.csv"))
    fps = (len(done) - 1) / (done[-1] - done[0])
    single = run_once(segmenter, frames[:4], 2.5 / fps, "every", work / "single")
    return {"sustainable_fps": fps, "single_frame_s": single["latency_s"]["p50"]}


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    single = report["calibration"]["single_frame_s"]
    for policy, marker in (("every", "o"), ("newest", "s")):
        mine = [r for r in runs if r["policy"] == policy]
        rates = [r["arrival_x"] for r in mine]
        axes[0].plot(rates, [r["decision_latency_s"]["p50"] for r in mine], marker=marker, label=f"{policy} p50")
        axes[0].plot(rates, [r["decision_latency_s"]["p99"] for r in mine], marker=marker, ls="--",
                     label=f"{policy} p99")
    axes[0].axhline(2 * single, color="grey", lw=0.8, label="2x single-frame time")
    axes[0].set(xscale="log", ylim=(0, None), xlabel="arrival rate / sustainable rate",
                ylabel="decision latency (s)", title="latency of decisions")
    axes[0].set_xticks(RATES, [str(r) for r in RATES])
    axes[0].minorticks_off()
    axes[0].legend(fontsize=7)
    for ax, policy in zip(axes[1:], POLICIES, strict=True):
        for r in (r for r in runs if r["policy"] == policy):
            t = [p[0] for p in r["backlog_over_time"]]
            n = [p[1] for p in r["backlog_over_time"]]
            ax.plot(t, n, label=f"{r['arrival_x']}x")
        ax.set(xlabel="time (s)", ylabel="frames waiting", title=f"backlog over time ({policy})")
        ax.legend(fontsize=7)
    fig.suptitle(report["title"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(report: dict[str, Any]) -> str:
    m, cal = report["machine"], report["calibration"]
    flags = set(m.get("cpu_flags") or [])
    lines = [
        f"# {report['title']}",
        "",
        f"- machine: {m['cpu']}, {m['cpu_cores']} CPUs (shared), GPU: {m.get('gpu') or 'none'}; flags: "
        + ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")),
        f"- load average (1/5/15 min) before {report['load_before']}, after {report['load_after']}",
        f"- model: {report['model'].get('name')} ({report['model'].get('preset')}) on {report['backend']}; "
        f"{report['frames']} frames per run, {report['shape_zyx']} voxels each",
        f"- command: `{report['command']}`; date {report['date_utc']}; elapsed {report['elapsed_s']:.0f} s",
        f"- calibration: sustainable {cal['sustainable_fps']:.2f} frames/s (frames back to back); "
        f"single-frame processing time {cal['single_frame_s']:.2f} s (p50 latency, one frame at a time)",
        "",
        "| policy | arrival | every frame once | decision latency p50 / p99 (s) | p99 / single frame | "
        "all frames p50 / max (s) | deferred | most waiting | behind (s) | backlog events |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        d, a = r["decision_latency_s"], r["latency_s"]
        lines.append(
            f"| {r['policy']} | {r['arrival_x']}x | {'yes' if r['processed_once'] else 'NO'} | "
            f"{d['p50']:.2f} / {d['p99']:.2f} | {d['p99'] / cal['single_frame_s']:.2f} | {a['p50']:.2f} / "
            f"{a['max']:.2f} | {r['deferred_frames']} | {r['max_waiting_frames']} | {r['behind_s']:.1f} | "
            f"{', '.join(r['backlog_events']) or '-'} |")
    lines += ["", "Targets (measured, not pass/fail tests):", ""]
    for t in report["targets"]:
        lines.append(f"- {t['name']}: {t['measured']} -> {'met' if t['met'] else 'NOT met'}")
    lines += ["", f"![latency and backlog]({report['plot']})", ""]
    return "\n".join(lines)


def main() -> None:
    import deepis_rt
    from deepis_rt.synth.timelapse import iter_timelapse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--name", default="amd-epyc-2cpu", help="host part of the file names")
    ap.add_argument("--plot-only", type=Path, default=None, metavar="JSON",
                    help="redraw the PNG and Markdown of an earlier run's JSON, without measuring")
    args = ap.parse_args()
    if args.plot_only is not None:
        report = json.loads(args.plot_only.read_text())
        plot(report, args.plot_only.with_suffix(".png"))
        args.plot_only.with_suffix(".md").write_text(markdown(report))
        return
    started = time.time()
    load_before = [round(v, 2) for v in os.getloadavg()]
    segmenter = deepis_rt.load(backend=args.backend)
    frames = list(iter_timelapse(args.frames, seed=args.seed))
    runs = []
    with tempfile.TemporaryDirectory(prefix="deepis-pacing-") as tmp:
        work = Path(tmp)
        cal = calibrate(segmenter, frames, work)
        print(f"sustainable {cal['sustainable_fps']:.2f} frames/s, single frame {cal['single_frame_s']:.2f} s",
              flush=True)
        for policy in POLICIES:
            for x in RATES:
                r = run_once(segmenter, frames, 1.0 / (x * cal["sustainable_fps"]), policy, work / f"{policy}-{x}")
                r["arrival_x"] = x
                runs.append(r)
                print(f"{policy} {x}x: decision p50 {r['decision_latency_s']['p50']:.2f} s p99 "
                      f"{r['decision_latency_s']['p99']:.2f} s, most waiting {r['max_waiting_frames']}, "
                      f"once: {r['processed_once']}", flush=True)
    newest = [r for r in runs if r["policy"] == "newest"]
    worst = max(r["decision_latency_s"]["p99"] for r in newest) / cal["single_frame_s"]
    stem = f"pacing-{args.name}"
    report = {
        "benchmark": "benchmarks/pacing.py",
        "title": f"Keeping pace: every frame in order vs newest first ({args.name})",
        "command": f"nice -n 10 python benchmarks/pacing.py --frames {args.frames} --name {args.name}",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "machine": describe_machine(),
        "load_before": load_before,
        "model": segmenter.model_info,
        "backend": segmenter.backend,
        "frames": args.frames,
        "shape_zyx": list(frames[0].ri.shape),
        "calibration": cal,
        "runs": runs,
        "targets": [
            {"name": "newest: p99 decision latency within 2x the single-frame processing time at every arrival rate",
             "measured": f"worst {worst:.2f}x", "met": bool(worst <= 2.0)},
            {"name": "every frame processed exactly once, both policies, every rate",
             "measured": f"{sum(r['processed_once'] for r in runs)} of {len(runs)} runs",
             "met": all(r["processed_once"] for r in runs)},
        ],
        "plot": f"{stem}.png",
    }
    report["load_after"] = [round(v, 2) for v in os.getloadavg()]
    report["elapsed_s"] = time.time() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    plot(report, args.out / f"{stem}.png")
    (args.out / f"{stem}.md").write_text(markdown(report))
    print(f"wrote {args.out / stem}.{{json,md,png}}")


if __name__ == "__main__":
    main()
