"""Training-frame generator speed: the legacy generator against the domain-randomised one, side by side.

    python benchmarks/synth_generator.py --frames 12 --out benchmarks/results/synth_generator-amd-epyc-2cpu

Both generators make the frames ``deepis-rt train --synthetic`` makes (the bundled checkpoint's tile,
64 x 128 x 128 at 0.5 x 0.25 x 0.25 um, the same (seed, frame) draws), alternating one frame each
so that machine load hits both alike. Reports frames/s, per-frame times and, for the randomised
frames, the acquisition voxel size and imaging condition drawn. Writes ``OUT.json`` and ``OUT.md``
with the CPU model, its flags of interest and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np


def _cpu() -> dict:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"model": platform.processor(), "flags": []}
    info = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = info.get("Flags", "").split()
    return {"model": info.get("Model name", "").strip(), "cpus": os.cpu_count(),
            "flags": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]}


def main() -> None:
    from deepis_rt.synth import generate_timelapse
    from deepis_rt.synth.randomize import randomized_frame
    from deepis_rt.train.data import TRAIN_SEED_LIMIT, TRAIN_VIDEO_FRAMES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True, help="output stem (OUT.json, OUT.md)")
    args = ap.parse_args()

    shape, vs = (64, 128, 128), (0.5, 0.25, 0.25)
    rng = np.random.default_rng(args.seed)
    draws = [(int(rng.integers(0, TRAIN_SEED_LIMIT)), int(rng.integers(0, TRAIN_VIDEO_FRAMES))) for _ in range(args.frames)]
    load_before = os.getloadavg()
    legacy_s, random_s, conditions = [], [], []
    for seed, k in draws:
        t = time.perf_counter()
        generate_timelapse(TRAIN_VIDEO_FRAMES, seed, shape, vs, frames=[k], with_truth_area=False)
        legacy_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        f = randomized_frame(seed, k, TRAIN_VIDEO_FRAMES, shape, vs)
        random_s.append(time.perf_counter() - t)
        im = f.imaging
        conditions.append({"seed": seed, "frame": k, "shape": list(f.ri.shape),
                           "acquisition_voxel_um": [round(v, 3) for v in im["acquisition_voxel_um"]],
                           "na_obj": round(im["na_obj"], 3), "na_ill": round(im["na_ill"], 3),
                           "nonneg_iterations": im["nonneg_iterations"], "scan": im["scan"],
                           "noise_ri": round(im["noise_ri"], 5), "seconds": round(random_s[-1], 3)})
    result = {
        "command": f"python benchmarks/synth_generator.py --frames {args.frames} --seed {args.seed} --out {args.out}",
        "cpu": _cpu(), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "tile_zyx": list(shape), "voxel_size_um": list(vs), "frames": args.frames,
        "legacy": {"frames_per_s": len(legacy_s) / sum(legacy_s), "median_s": float(np.median(legacy_s)),
                   "seconds": [round(v, 3) for v in legacy_s]},
        "randomized": {"frames_per_s": len(random_s) / sum(random_s), "median_s": float(np.median(random_s)),
                       "seconds": [round(v, 3) for v in random_s], "draws": conditions},
    }
    result["ratio_randomized_over_legacy_time"] = sum(random_s) / sum(legacy_s)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    cpu = result["cpu"]
    md = [
        "# Training-frame generator: legacy vs domain-randomised",
        "",
        f"`{result['command']}`",
        "",
        f"CPU: {cpu['model']} ({cpu.get('cpus')} CPUs; flags {', '.join(cpu['flags']) or 'none of interest'}); "
        f"load average before {load_before[0]:.1f}, after {result['loadavg_after'][0]:.1f} (shared machine: "
        "absolute times are disturbed, the ratio is measured side by side).",
        "",
        "| generator | frames/s | median s/frame |",
        "| --- | --- | --- |",
        f"| legacy (`--no-randomize`) | {result['legacy']['frames_per_s']:.2f} | {result['legacy']['median_s']:.2f} |",
        f"| randomised (default) | {result['randomized']['frames_per_s']:.2f} | {result['randomized']['median_s']:.2f} |",
        "",
        f"Randomised / legacy time: {result['ratio_randomized_over_legacy_time']:.2f}x.",
        "",
        "| seed | frame | shape | acquisition voxel um | NA obj / ill | scan | iterations | noise RI | s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in conditions:
        md.append(f"| {c['seed']} | {c['frame']} | {c['shape']} | {c['acquisition_voxel_um']} | {c['na_obj']} / "
                  f"{c['na_ill']} | {c['scan']} | {c['nonneg_iterations']} | {c['noise_ri']} | {c['seconds']} |")
    args.out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md[:12]))


if __name__ == "__main__":
    main()
