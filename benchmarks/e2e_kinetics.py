"""End to end: a synthetic time-lapse with the paper's kinetics streamed through the bundled model.

Truth: A(t) = A_max (t - t_on) / ((t - t_on) + tau_half) with A_max = 106 um^2, tau_half = 40 s,
frames every 3 s (deepis_rt.synth with prescribed kinetics). The frames are written to a folder and
streamed with ``deepis_rt.stream.Stream`` and the bundled checkpoint (``deepis_rt.load()``); the
summary's weighted kinetic fit is compared with the truth. The same frames' ground-truth distance
maps go through the same analysis (``analysis.analyze`` + ``SynapseTracker``), which separates the
model's errors from the estimator's; a fit of the generator's geometric contact areas shows what the
shapes themselves do to the law.

    python benchmarks/e2e_kinetics.py [--frames 50] [--seed 1]

writes benchmarks/results/e2e_kinetics.{json,md} (with the machine's CPU flags).
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from deepis_rt.bench.machine import describe_machine

KINETICS = {"a_max_um2": 106.0, "tau_half_s": 40.0, "onset_s": 4.0, "frame_interval_s": 3.0}



def _fit_row(name: str, fit) -> dict:
    return {"path": name, "A_max_um2": fit.a_max, "A_max_err_um2": fit.a_max_err, "tau_half_s": fit.tau_half_s,
            "tau_half_err_s": fit.tau_half_err_s, "weighted": fit.weighted, "chi2_reduced": fit.chi2_reduced,
            "n_points": fit.n_points,
            "A_max_rel_error": fit.a_max / KINETICS["a_max_um2"] - 1,
            "tau_half_rel_error": fit.tau_half_s / KINETICS["tau_half_s"] - 1}


def main() -> None:
    import deepis_rt
    from deepis_rt.analysis import SynapseTracker, analyze, fit_saturation
    from deepis_rt.stream import Stream
    from deepis_rt.synth import iter_timelapse, write_timelapse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()

    t_start = time.time()
    rows = []
    with tempfile.TemporaryDirectory(prefix="deepis-e2e-") as tmp:
        src, out = Path(tmp) / "camera", Path(tmp) / "results"
        write_timelapse(src, args.frames, args.seed, kinetics=KINETICS, progress=False)
        truth = list(csv.DictReader(open(src / "truth.csv")))
        # estimator alone: ground-truth distance maps through analyze + tracker
        tracker = SynapseTracker()
        for f in iter_timelapse(args.frames, args.seed, kinetics=KINETICS):
            tracker.update(analyze(f.distance_um, f.ri, f.voxel_size_um), f.time_s)
        (gt_summary,) = [s for s in tracker.summary() if s.n_frames > 3]
        gt_hist = max(tracker.histories.values(), key=lambda h: len(h.time_s))
        # the model: bundled checkpoint, streamed
        segmenter = deepis_rt.load()
        t0 = time.time()
        stream = Stream(src, out, segmenter, once=True, frame_interval_s=KINETICS["frame_interval_s"],
                        write_masks=False)
        for _ in stream.start():
            pass
        stream.close()
        stream_s = time.time() - t0
        summary = json.loads((out / "summary.json").read_text())
        model_rows = list(csv.DictReader(open(out / "synapses.csv")))
    (syn,) = [s for s in summary["synapses"] if (s.get("n_frames") or 0) > 3]
    onset_true = KINETICS["onset_s"]
    t_geo = np.array([float(r["time_s"]) for r in truth if r["contact"] == "1"])
    a_geo = np.array([float(r["is_area_um2"]) for r in truth if r["contact"] == "1"])
    geo_fit = fit_saturation(t_geo - t_geo[0], a_geo)

    class _F:  # the stream's fit, as read back from summary.json
        a_max, a_max_err = syn["A_max_um2"], syn["A_max_err_um2"]
        tau_half_s, tau_half_err_s = syn["tau_half_s"], syn["tau_half_err_s"]
        weighted = syn["area_fit"].get("weighted")
        chi2_reduced = syn["area_fit"].get("chi2_reduced")
        n_points = syn["n_frames"]

    fits = [_fit_row("bundled model, streamed (summary.json)", _F), _fit_row("ground-truth maps, same analysis",
            gt_summary.area_fit), _fit_row("generator's geometric contact areas (unweighted)", geo_fit)]
    by_time = {round(float(r["time_s"]), 3): r for r in truth}
    for r in model_rows:
        tr = by_time.get(round(float(r["time_s"]), 3))
        rows.append({"time_s": float(r["time_s"]), "model_um2": float(r["is_area_um2"]),
                     "model_err_um2": float(r["is_area_err_um2"] or "nan"),
                     "truth_geometric_um2": float(tr["is_area_um2"]) if tr else None,
                     "truth_law_um2": float(tr["is_area_model_um2"]) if tr else None})
    gt_by_t = dict(zip(np.round(gt_hist.time_s, 3), gt_hist.is_area_um2, strict=True))
    for r in rows:
        r["gt_map_um2"] = gt_by_t.get(round(r["time_s"], 3))
    report = {
        "kinetics_truth": KINETICS, "frames": args.frames, "seed": args.seed, "true_onset_s": onset_true,
        "backend": summary.get("backend"), "stream_wall_s": stream_s, "total_wall_s": time.time() - t_start,
        "summary_truth_block": summary.get("truth"), "fits": fits, "per_frame": rows, "machine": describe_machine(),
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "e2e_kinetics.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    md = ["# End to end: paper kinetics through the bundled model", "",
          f"`python benchmarks/e2e_kinetics.py --frames {args.frames} --seed {args.seed}`; truth A_max "
          f"{KINETICS['a_max_um2']} um^2, tau_half {KINETICS['tau_half_s']} s, onset {onset_true} s, one frame every "
          f"{KINETICS['frame_interval_s']} s; backend {summary.get('backend')}; stream {stream_s:.0f} s.", "",
          "| path | A_max (um^2) | error | tau_half (s) | error | reduced chi^2 |", "|---|---|---|---|---|---|"]
    for f in fits:
        chi = f["chi2_reduced"]
        md.append(f"| {f['path']} | {f['A_max_um2']:.1f} +- {f['A_max_err_um2']:.1f} | {100 * f['A_max_rel_error']:+.1f} % "
                  f"| {f['tau_half_s']:.1f} +- {f['tau_half_err_s']:.1f} | {100 * f['tau_half_rel_error']:+.1f} % | "
                  f"{'-' if chi is None or not np.isfinite(chi) else f'{chi:.1f}'} |")
    machine = report["machine"]
    flags = " ".join(f for f in (machine["cpu_flags"] or []) if f in ("avx2", "avx512f", "avx512_bf16", "amx_tile"))
    md += ["", f"Machine: {machine['cpu']}, {machine['cpu_cores']} CPUs; flags: {flags}", ""]
    (args.results / "e2e_kinetics.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
