"""The whole pipeline under benchmark: frames on disk through ``deepis_rt.stream.Stream``.

Frames are synthetic tomograms of the model's tile at its voxel size, written as OME-TIFF to a
folder first; the stream then reads, pre-processes, infers (batched), analyses, tracks and writes
them (masks, tables, summary) exactly as ``deepis-rt stream --once`` does. The per-stage times come
from the stream's own ``frames.csv``.
"""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from deepis_rt.bench.stats import latency_stats

__all__ = ["write_frames", "run_pipeline"]

log = logging.getLogger(__name__)


def write_frames(folder: str | Path, volumes: list[np.ndarray], voxel_size_um: Any, n_frames: int,
                 interval_s: float = 3.0) -> list[Path]:
    """Write ``n_frames`` tomograms (cycling through ``volumes``) as ``frame_NNNNNN.tif``."""
    from deepis_rt.io import write_tomogram

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n_frames):
        paths.append(write_tomogram(folder / f"frame_{k:06d}.tif", volumes[k % len(volumes)], voxel_size_um,
                                    "tiff", time_s=k * interval_s))
    return paths


def _stage_medians(frames_csv: Path) -> dict[str, float]:
    from deepis_rt.stream.results import STAGES

    with open(frames_csv, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("status") == "ok"]
    out: dict[str, float] = {}
    for stage in STAGES:
        values = [float(r[f"{stage}_ms"]) for r in rows if r.get(f"{stage}_ms") not in (None, "")]
        if values:
            out[f"{stage}_ms"] = round(float(np.median(values)), 3)
    return out


def _prime(segmenter: Any, volume: np.ndarray, distance: np.ndarray, voxel_size_um: Any) -> None:
    """Run the post-processing, analysis and tracking once, untimed: their first call imports
    libraries and builds caches (seconds), a one-off cost a long-running stream does not pay per frame."""
    from deepis_rt.analysis import SynapseTracker

    prepared = segmenter.preprocess(volume, voxel_size_um)
    result = segmenter.postprocess(prepared, np.asarray(distance, np.float32))
    segmenter.analyze_result(result, volume)
    SynapseTracker().update(result, 0.0)


def run_pipeline(runner: Any, model: Any, frames_dir: str | Path, out_dir: str | Path, batch: int,
                 prime: tuple[np.ndarray, np.ndarray] | None = None, tta: bool = False) -> dict[str, Any]:
    """Stream every frame of ``frames_dir`` through an active ``runner``; return throughput and stages.

    ``prime`` = (RI volume, its distance map) runs the analysis and tracking once before the clock
    starts (see :func:`_prime`). The runner stays active (the caller owns it). Returns ``frames_ok``, ``frames_failed``,
    ``wall_s``, ``throughput_fps``, ``latency_ms`` (file complete -> results written) and
    ``stages_ms`` (medians per frame of read, preprocess, infer, postprocess, analyze, track, write).
    ``tta``: with test-time augmentation (four flips per frame; the analysis also measures each flip).
    """
    from deepis_rt.runtime.load import load
    from deepis_rt.runtime.source import ModelSource
    from deepis_rt.stream.stream import Stream

    source = ModelSource.from_checkpoint(model.checkpoint, model.checkpoint.path or model.name)
    segmenter = load(source, runner=runner, batch_size=batch, analyze=True, tta=tta)
    if prime is not None:
        try:
            _prime(segmenter, prime[0], prime[1], model.voxel_size_um)
        except Exception as exc:  # the timed run reports real failures
            log.debug("bench | pipeline priming failed: %s", exc)
    n_files = len(list(Path(frames_dir).glob("frame_*.tif")))
    t0 = time.perf_counter()
    stream = Stream(frames_dir, out_dir, segmenter, once=True, settle_s=0.0, poll_s=0.05, use_events=False,
                    max_batch=batch, queue_size=max(4, 2 * batch), refresh_s=3600.0)
    try:
        summary = stream.run()
    finally:
        stream.close()
    wall = time.perf_counter() - t0
    run = summary.get("run", {})
    ok, failed = int(run.get("frames_ok", 0)), int(run.get("frames_failed", 0))
    frames_csv = Path(out_dir) / "frames.csv"
    stages = _stage_medians(frames_csv) if frames_csv.is_file() else {}
    latencies = []
    if frames_csv.is_file():
        with open(frames_csv, newline="") as f:
            latencies = [float(r["latency_ms"]) for r in csv.DictReader(f) if r.get("status") == "ok"]
    if failed:
        errors = (Path(out_dir) / "errors.log")
        log.warning("bench | pipeline: %d of %d frames failed: %s", failed, n_files,
                    errors.read_text()[:500] if errors.is_file() else "see the stream log")
    return {
        "frames": n_files,
        "frames_ok": ok,
        "frames_failed": failed,
        "wall_s": round(wall, 3),
        "throughput_fps": ok / wall if wall > 0 else float("nan"),
        "latency_ms": latency_stats(latencies).to_dict(),
        "samples_ms": [round(v, 3) for v in latencies],
        "stages_ms": stages,
    }
