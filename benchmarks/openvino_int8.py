"""INT8 experiment: OpenVINO NNCF post-training quantisation of the bundled checkpoint, speed and label agreement.

Calibration: synthetic conjugate frames from training-distribution videos (seeds 7,000,000 + i;
training draws seeds < 8,000,000, so these are frames of the kind the model was trained on, not
the held-out ones). Evaluation: the held-out synthetic frames (seeds 9,000,000 + i, frames 5, 20, 35,
50), segmented by the same :class:`deepis_rt.Segmenter` once with OpenVINO FP32 and once with the
INT8 model; label agreement and distance errors as in the BF16 parity report
(:mod:`deepis_rt.bench.precision_parity`). Speed: one tile per call, FP32 and INT8 alternated
(round-robin, so a change of load on a shared machine hits both alike), median per call.

The rule: INT8 ships only if label agreement >= 99 % on every held-out frame.

NNCF is not a dependency of deepis-rt. Install it by hand first (into a separate folder here, so
that the project's environment stays as CI builds it)::

    pip install --no-deps --target /tmp/nncf nncf==3.4.0 ninja psutil pydot safetensors tabulate pyparsing
    PYTHONPATH=/tmp/nncf:$PWD python benchmarks/openvino_int8.py --out benchmarks/results

Writes ``openvino_int8-<machine>.json`` and ``.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("openvino_int8")

MIN_LABEL_AGREEMENT = 0.99
CALIBRATION_SEED_BASE = 7_000_000


def calibration_tiles(meta: dict, tile: tuple, vs: tuple, videos: int, frames: list[int]) -> list[np.ndarray]:
    from deepis_rt.runtime.preprocess import Normalization
    from deepis_rt.synth import generate_timelapse

    norm = Normalization.from_meta(meta)
    out = []
    for i in range(videos):
        for f in generate_timelapse(60, CALIBRATION_SEED_BASE + i, tile, vs, frames=frames):
            x = np.empty((1, 1, *tile), np.float32)
            norm.apply(np.asarray(f.ri, np.float32), out=x[0, 0])
            out.append(x)
    return out


def round_robin_ms(runners: dict, tile: np.ndarray, repeats: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in runners}
    for r in runners.values():
        r.infer(tile)  # warm-up
    for _ in range(repeats):
        for name, r in runners.items():
            t0 = time.perf_counter()
            r.infer(tile)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=None, help="[default: the bundled one]")
    parser.add_argument("--calibration-videos", type=int, default=4)
    parser.add_argument("--calibration-frames", type=int, nargs="+", default=[10, 30, 45, 55])
    parser.add_argument("--heldout-videos", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--machine", default="amd-epyc-2cpu")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("nncf").setLevel(logging.WARNING)

    import nncf
    import openvino as ov

    from deepis_rt.backends import OpenVINORunner
    from deepis_rt.bench.machine import describe_machine
    from deepis_rt.bench.precision_parity import compare_segmenters, heldout_frames, summarize_parity
    from deepis_rt.runtime.backends import onnx_for_checkpoint
    from deepis_rt.runtime.segmenter import Segmenter
    from deepis_rt.runtime.source import resolve_source

    load_before = list(os.getloadavg())
    source = resolve_source(args.checkpoint)
    onnx = onnx_for_checkpoint(source)
    meta = dict(source.meta)
    tile = tuple(int(v) for v in meta["tile_zyx"])
    vs = tuple(float(v) for v in meta["voxel_size_um"])

    log.info("calibration frames: %d videos x %s", args.calibration_videos, args.calibration_frames)
    calib = calibration_tiles(meta, tile, vs, args.calibration_videos, args.calibration_frames)
    core = ov.Core()
    model = core.read_model(str(onnx))
    model.reshape([1, 1, *tile])
    t0 = time.perf_counter()
    int8 = nncf.quantize(model, nncf.Dataset(calib), subset_size=len(calib))
    quantize_s = time.perf_counter() - t0
    log.info("quantised in %.1f s", quantize_s)

    with tempfile.TemporaryDirectory(prefix="deepis-int8-") as tmp:
        xml = Path(tmp) / "model.int8.xml"
        ov.save_model(int8, str(xml), compress_to_fp16=False)
        fp32_runner = OpenVINORunner(str(onnx), num_threads=args.threads)
        int8_runner = OpenVINORunner(str(xml), num_threads=args.threads)
        with Segmenter(fp32_runner, meta, analyze=False) as fp32_seg, Segmenter(int8_runner, meta, analyze=False) as int8_seg:
            frames = heldout_frames(vs, tile, args.heldout_videos)
            rows = compare_segmenters(fp32_seg, int8_seg, frames, vs)
            times = round_robin_ms({"fp32": fp32_runner, "int8": int8_runner}, calib[0], args.repeats)
            int8_desc = int8_runner.describe()

    summary = summarize_parity(rows)
    med = {k: statistics.median(v) for k, v in times.items()}
    ship = summary["label_agreement_min"] >= MIN_LABEL_AGREEMENT
    report = {
        "experiment": "OpenVINO NNCF INT8 post-training quantisation vs OpenVINO FP32",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "checkpoint": str(source.path), "checkpoint_sha256": source.sha256,
        "nncf": nncf.__version__, "openvino": ov.__version__,
        "calibration": {"seeds": [CALIBRATION_SEED_BASE + i for i in range(args.calibration_videos)],
                        "frames": args.calibration_frames, "tiles": len(calib), "quantize_s": round(quantize_s, 1)},
        "speed": {"median_ms": med, "samples_ms": times, "int8_speedup_vs_fp32": med["fp32"] / med["int8"],
                  "repeats": args.repeats, "round_robin": True, "int8_runner": int8_desc},
        "summary": summary, "rule": f"ship only if label_agreement_min >= {MIN_LABEL_AGREEMENT}", "ship": ship,
        "rows": rows, "machine": describe_machine(), "load_average_before": load_before,
        "load_average_after": list(os.getloadavg()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"openvino_int8-{args.machine}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    lines = [
        "# OpenVINO INT8 (NNCF post-training quantisation) vs OpenVINO FP32",
        "",
        f"- checkpoint: {source.path.name} (sha256 {source.sha256[:16]}); nncf {nncf.__version__}, openvino {ov.__version__}",
        f"- machine: {report['machine']['cpu']}, {report['machine']['cpu_cores']} CPUs (shared); load average before "
        f"{[round(v, 2) for v in load_before]}, after {[round(v, 2) for v in report['load_average_after']]}",
        f"- calibration: {len(calib)} synthetic frames (seeds {CALIBRATION_SEED_BASE}+i); quantised in {quantize_s:.0f} s",
        f"- speed (one tile per call, alternated, median of {args.repeats}): FP32 {med['fp32']:.0f} ms, INT8 "
        f"{med['int8']:.0f} ms -> INT8 {med['fp32'] / med['int8']:.2f}x",
        f"- held-out frames: {summary['frames']}; worst label agreement {summary['label_agreement_min']:.5f} "
        f"(overall {summary['label_agreement']:.5f}); max |error| {summary['max_abs_um']:.3g} um, worst p99 "
        f"{summary['p99_abs_um_max']:.3g} um; Dice min CAR-T {summary['dice_tcell_min']:.4f}, target "
        f"{summary['dice_target_min']:.4f}, IS {summary['dice_synapse_min']:.4f}",
        f"- rule: label agreement >= {MIN_LABEL_AGREEMENT:.0%} on every frame -> {'ship' if ship else 'do NOT ship'}",
        "",
        "| frame | max err um | p99 err um | label agreement | Dice CAR-T | Dice target | Dice IS |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['frame']} | {r['max_abs_um']:.3g} | {r['p99_abs_um']:.3g} | {r['label_agreement']:.5f} | "
              f"{r['dice_tcell']:.4f} | {r['dice_target']:.4f} | {r['dice_synapse']:.4f} |" for r in rows]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    log.info("\n".join(lines))


if __name__ == "__main__":
    main()
