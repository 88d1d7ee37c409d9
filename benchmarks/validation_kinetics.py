"""Kinetics end to end on the independent validation generator: a contact that grows by the paper's law.

Each video is one conjugate of ``deepis_rt.validation`` (a scene kind and a seed: the same cells,
orientation and textures in every frame) made again at each frame time t with the contact radius of
A(t) = A_max (t - t_on) / (t - t_on + tau_half), imaged through one imaging condition of
``deepis_rt.validation.optics``, segmented by a checkpoint (``deepis_rt.load()``, OpenVINO on the
CPU) and measured by the product's own chain: ``analysis.analyze`` per frame, ``SynapseTracker``
across frames and its weighted saturation fit (what ``summary.json`` reports). The exact distance
maps of the same frames through the same chain separate the network's errors from the estimator's.

The truth: A_max 40 um^2, tau_half 30 s, onset at 0 s; frames every 6 s from -12 s to 96 s. Before
and at the onset (-12, -6, 0 s) the CAR-T approaches: the scene of the smallest contact with its CAR-T
moved 2.4, 1.6 and 0.8 um away from the target along the line between their centres (no contact, IS
area 0). From 6 s on the contact radius is 1.5-3.1 um (17-76 % of A_max). The fit is told nothing of
the onset: it sees, as in a recording, frames without contact and then frames with it.

    python benchmarks/validation_kinetics.py [--quick] [--cache DIR] [--checkpoint PT] [--tag NAME]

writes benchmarks/results/validation_kinetics[-NAME].{json,md}; ``--cache`` keeps the rendered
frames and each checkpoint's network maps (keyed by its checksum).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from deepis_rt.validation.optics import IMAGING_CONDITIONS, image
from deepis_rt.validation.phantoms import make_scene, render_truth

log = logging.getLogger("validation_kinetics")

KINETICS = {"a_max_um2": 40.0, "tau_half_s": 30.0, "onset_s": 0.0}
FRAME_TIMES_S = tuple(float(t) for t in range(-12, 97, 6))
#: gap (um) between the approaching CAR-T and its target at the frames up to the onset
APPROACH_GAPS_UM = {-12.0: 2.4, -6.0: 1.6, 0.0: 0.8}
#: the contact radius (um) of the scene the approach frames are made from (the smallest validated)
APPROACH_BASE_RADIUS_UM = 1.2
VOXEL_SIZE_UM = (0.45, 0.22, 0.22)
#: (scene kind, seed): one video each, seeds disjoint from benchmarks/is_area_validation.py's
VIDEOS = (("spheres", 3000), ("pressed", 3001), ("flattened", 3002))
CONDITIONS = ("gaussian", "odt-refilled", "odt-raw")


def law(t_s: float) -> float:
    s = t_s - KINETICS["onset_s"]
    return KINETICS["a_max_um2"] * s / (s + KINETICS["tau_half_s"]) if s > 0 else 0.0


def scene_at(kind: str, seed: int, t: float):
    """The video's scene at time ``t``: in contact by the law, or (up to the onset) the CAR-T apart."""
    if t in APPROACH_GAPS_UM:
        scene = make_scene(kind, APPROACH_BASE_RADIUS_UM, VOXEL_SIZE_UM, seed)
        away = scene.tcell.center - scene.target.center
        away = away / np.linalg.norm(away)
        # the base contact's CAR-T reaches a fraction of a um past the interface: moved by that and the gap
        shift = APPROACH_GAPS_UM[t] + 0.5
        return replace(scene, tcell=replace(scene.tcell, center=scene.tcell.center + shift * away))
    return make_scene(kind, math.sqrt(law(t) / math.pi), VOXEL_SIZE_UM, seed)


def render_video(kind: str, seed: int, times: tuple[float, ...], cache: Path, segmenter, model_tag: str) -> list[dict]:
    """Per frame: the cached npz (RI per condition, exact map, labels) and the network maps."""
    frames = []
    for t in times:
        path = cache / f"{kind}-{seed}-t{int(t):+04d}.npz"
        if not path.exists():
            scene = scene_at(kind, seed, t)
            truth = render_truth(scene)
            k = FRAME_TIMES_S.index(t)  # the frame's noise seed
            ri = {c: image(truth.ri_object, scene.voxel_size_um, IMAGING_CONDITIONS[c],
                           np.random.default_rng([seed, k])).astype(np.float32) for c in CONDITIONS}
            np.savez_compressed(path, exact=truth.distance_um, labels=truth.labels, true_um2=truth.is_area_um2,
                                **{f"ri_{c}": v for c, v in ri.items()})
            log.info("%s: t %.0f s, law %.1f um^2, true %.1f um^2", path.name, t, law(t), truth.is_area_um2)
            if t in APPROACH_GAPS_UM and truth.is_area_um2 > 0:
                raise RuntimeError(f"{path.name}: the approaching CAR-T still touches its target")
        z = np.load(path)
        maps = {}
        for c in CONDITIONS:
            out = path.with_name(f"{path.stem}.{c}.{model_tag}.npy")
            if not out.exists():
                np.save(out, segmenter.segment(z[f"ri_{c}"], VOXEL_SIZE_UM, analyze=False).distance.astype(np.float32))
            maps[c] = np.load(out)
        frames.append({"time_s": t, "exact": z["exact"], "labels": z["labels"], "true_um2": float(z["true_um2"]),
                       "network": maps})
    return frames


def _true_pair_tracks(fa, labels: np.ndarray) -> tuple[int, int] | None:
    """Track ids of the frame's cells that overlap the true CAR-T (label 1) and the true target (2) most."""
    best = {}
    for c in fa.cells:
        want = 1 if c.kind == "tcell" else 2
        overlap = int(np.count_nonzero((fa.cell_labels == c.cell_id) & (labels == want)))
        if overlap and overlap > best.get(want, (0, None))[0]:
            best[want] = (overlap, c.track_id)
    if 1 not in best or 2 not in best:
        return None
    return int(best[1][1]), int(best[2][1])


def follow(maps: list[np.ndarray], times: list[float], labels: list[np.ndarray], net_error=None) -> dict:
    """The product's chain over one video: per-frame areas of the synapse of the true pair, and its fit.

    The true pair's synapse is the tracked pair whose cells overlap the true CAR-T and target in most
    frames; a network that also reports a contact between other cells (a target split in two, a
    piece of the medium read as a cell) is not scored on that contact. ``net_error``: the checkpoint's
    network uncertainty (``Segmenter.network_error``), as the product uses it.
    """
    from collections import Counter

    from deepis_rt.analysis import SynapseTracker, analyze

    tracker = SynapseTracker()
    pairs: Counter = Counter()
    for d, t, lab in zip(maps, times, labels, strict=True):
        fa = analyze(d, None, VOXEL_SIZE_UM, network_error=net_error)
        tracker.update(fa, t)
        pair = _true_pair_tracks(fa, lab)
        if pair is not None:
            pairs[pair] += 1
    summaries = {(s.tcell_track, s.target_track): s for s in tracker.summary()}
    key = next((k for k, _ in pairs.most_common() if k in summaries), None)
    if key is None:
        return {"detected_frames": 0, "synapses": len(summaries), "fit": None, "areas": [], "sigmas": []}
    best = summaries[key]
    hist = tracker.histories[key]
    by_t = dict(zip(np.round(hist.time_s, 3), zip(hist.is_area_um2, hist.is_area_err_um2, strict=True), strict=True))
    areas = [by_t.get(round(t, 3), (math.nan, math.nan)) for t in times]
    fit = best.area_fit
    return {"detected_frames": best.n_frames, "synapses": len(summaries),
            "areas": [float(a) for a, _ in areas], "sigmas": [float(s) for _, s in areas],
            "fit": {"A_max_um2": fit.a_max, "A_max_err_um2": fit.a_max_err, "tau_half_s": fit.tau_half_s,
                    "tau_half_err_s": fit.tau_half_err_s, "constrained": bool(fit.constrained),
                    "chi2_reduced": fit.chi2_reduced, "onset_offset_s": fit.onset_offset_s,
                    "first_frame_s": best.fit_onset_s, "onset_observed": bool(best.onset_observed)}}


def _score(fit: dict | None, truth: dict) -> dict:
    if not fit or not fit.get("constrained"):
        return {}
    out = {}
    for key, true in (("A_max", truth["a_max_um2"]), ("tau_half", truth["tau_half_s"])):
        value, err = fit[f"{key}_um2" if key == "A_max" else f"{key}_s"], fit[f"{key}_err_um2" if key == "A_max" else f"{key}_err_s"]
        out[f"{key}_rel_error"] = value / true - 1
        out[f"{key}_z"] = (value - true) / err if err and err > 0 else math.inf
    return out


def _cell(fit: dict | None, unit: str, key: str) -> str:
    if not fit:
        return "no synapse"
    if not fit["constrained"]:
        return "not constrained"
    v, e = fit[f"{key}_{unit}"], fit[f"{key}_err_{unit}"]
    return f"{v:.1f} ± {e:.1f}"


def plot(rows: list[dict], out: Path, checkpoint_name: str) -> None:
    """Per video: the measured areas (± stated σ) of each map against the law and the true areas,
    with each constrained fit drawn through them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deepis_rt.analysis.kinetics import saturation

    kinds = list(dict.fromkeys((r["kind"], r["seed"]) for r in rows))
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.2 * len(kinds), 4.2), squeeze=False, sharey=True)
    colors = {"exact": "black", "network gaussian": "tab:blue", "network odt-refilled": "tab:green",
              "network odt-raw": "tab:red"}
    for ax, (kind, seed) in zip(axes[0], kinds, strict=True):
        video = [r for r in rows if (r["kind"], r["seed"]) == (kind, seed)]
        t = np.array(video[0]["times_s"])
        dense = np.linspace(0, t.max(), 200)
        ax.plot(dense, [law(x) for x in dense], color="0.6", lw=2, label="law (truth)")
        ax.plot(t, video[0]["true_um2"], "k+", ms=8, label="true area (fine grid)")
        for i, r in enumerate(video):
            c = colors.get(r["map"], "tab:gray")
            tt = t + (i - 1.5) * 0.5  # side by side
            ax.errorbar(tt, r["areas"], yerr=r["sigmas"], fmt="o", ms=3, color=c, capsize=2, label=r["map"])
            f = r["fit"]
            if f and f["constrained"]:
                onset = f["first_frame_s"] + f["onset_offset_s"]
                s = np.clip(dense - onset, 0, None)
                ax.plot(dense, saturation(s, f["A_max_um2"], f["tau_half_s"]), color=c, lw=1, alpha=0.8)
        ax.set_title(f"{kind} (seed {seed})")
        ax.set_xlabel("time (s)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("IS area (µm²)")
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Validation generator, kinetics end to end ({checkpoint_name})\nlines: the product's fits",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one video, every third frame (smoke run)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/deepis-validation-kinetics"))
    ap.add_argument("--checkpoint", type=Path, default=None, help="checkpoint to measure (default: the bundled one)")
    ap.add_argument("--tag", default="", help="suffix of the result files (validation_kinetics-TAG.*)")
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import deepis_rt
    from deepis_rt.bench.machine import describe_machine
    from deepis_rt.core.files import file_sha256
    from deepis_rt.runtime.source import bundled_checkpoint

    t_start = time.time()
    checkpoint = args.checkpoint or bundled_checkpoint()
    model_tag = file_sha256(checkpoint)[:12]
    args.cache.mkdir(parents=True, exist_ok=True)
    segmenter = deepis_rt.load(checkpoint, backend="openvino-cpu", analyze=False)
    videos = VIDEOS[:1] if args.quick else VIDEOS
    times = FRAME_TIMES_S[::3] if args.quick else FRAME_TIMES_S
    rows = []
    for kind, seed in videos:
        frames = render_video(kind, seed, times, args.cache, segmenter, model_tag)
        t = [f["time_s"] for f in frames]
        true_areas = [f["true_um2"] for f in frames]
        paths = {"exact": [f["exact"] for f in frames]}
        paths.update({f"network {c}": [f["network"][c] for f in frames] for c in CONDITIONS})
        for name, maps in paths.items():
            res = follow(maps, t, [f["labels"] for f in frames], segmenter.network_error)
            rows.append({"kind": kind, "seed": seed, "map": name, "times_s": t, "true_um2": true_areas,
                         "law_um2": [law(x) for x in t], **res, **_score(res["fit"], KINETICS)})
            log.info("%s %s: %s", kind, name, res["fit"])
    machine = describe_machine()
    stem = "validation_kinetics" + (f"-{args.tag}" if args.tag else "")
    args.results.mkdir(parents=True, exist_ok=True)
    plot(rows, args.results / f"{stem}.png", checkpoint.name)
    report = {"kinetics_truth": KINETICS, "frame_times_s": list(times), "voxel_size_um": VOXEL_SIZE_UM,
              "checkpoint": checkpoint.name, "checkpoint_sha256": file_sha256(checkpoint), "rows": rows,
              "wall_s": time.time() - t_start, "quick": args.quick, "machine": machine}
    (args.results / f"{stem}.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    scored = [r for r in rows if r["map"] != "exact" and "A_max_z" in r]
    md = ["# Kinetics end to end on the independent validation generator", "",
          f"`python benchmarks/validation_kinetics.py{' --quick' if args.quick else ''}` (checkpoint "
          f"`{checkpoint.name}`, sha256 {model_tag}..., OpenVINO on the CPU; {time.time() - t_start:.0f} s). Truth: "
          f"A_max {KINETICS['a_max_um2']:g} µm², τ½ {KINETICS['tau_half_s']:g} s, onset {KINETICS['onset_s']:g} s; "
          f"{len(times)} frames every {times[1] - times[0]:g} s from {times[0]:g} s, voxel {VOXEL_SIZE_UM} µm. "
          "Each row: the product's chain (analyze, SynapseTracker, weighted fit) on one video's maps; "
          "z = (fitted − true) / stated σ.", "",
          "| video | map | frames with the synapse | A_max (µm²) | vs 40 | z | τ½ (s) | vs 30 | z |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f = r["fit"]
        sc = ("| " + " | ".join([f"{100 * r['A_max_rel_error']:+.0f} %", f"{r['A_max_z']:+.1f}"]) + " "
              if "A_max_z" in r else "| – | – ")
        st = ("| " + " | ".join([f"{100 * r['tau_half_rel_error']:+.0f} %", f"{r['tau_half_z']:+.1f}"]) + " |"
              if "tau_half_z" in r else "| – | – |")
        md.append(f"| {r['kind']} {r['seed']} | {r['map']} | {r['detected_frames']}/{len(r['times_s'])} "
                  f"| {_cell(f, 'um2', 'A_max')} {sc}| {_cell(f, 's', 'tau_half')} {st}")
    if scored:
        md += ["", f"Network rows with a constrained fit: {len(scored)} of {sum(r['map'] != 'exact' for r in rows)}; "
               f"A_max within 10 %: {sum(abs(r['A_max_rel_error']) <= 0.1 for r in scored)}, τ½ within 10 %: "
               f"{sum(abs(r['tau_half_rel_error']) <= 0.1 for r in scored)}; the truth within 2 stated σ: "
               f"A_max {sum(abs(r['A_max_z']) <= 2 for r in scored)}, τ½ {sum(abs(r['tau_half_z']) <= 2 for r in scored)}."]
    flags = " ".join(f for f in (machine["cpu_flags"] or []) if f in ("avx2", "avx512f", "avx512_bf16", "amx_tile"))
    md += ["", f"Machine: {machine['cpu']}, {machine['cpu_cores']} CPUs; flags: {flags}", ""]
    (args.results / f"{stem}.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
