"""Evaluate a checkpoint on held-out synthetic videos and draw the model-card figure.

Held-out videos use seeds ``HELDOUT_SEED_BASE + i`` (9,000,000 + i), never drawn in
training (training seeds are < 8,000,000) nor used for validation (8,000,000 + i).

Run as a module::

    python -m deepis_rt.train.evaluate deepis_rt/data/deepis-lite-synthetic.pt \\
        --videos 6 --frames 5 20 35 50 --json heldout.json --figure docs/model_card_example.png

``--imaging legacy tomocube raw random`` evaluates the same videos under each imaging
condition of :mod:`deepis_rt.synth` (``random``: the domain-randomised frames of
training, :func:`deepis_rt.synth.randomize.randomized_frame`) and reports one summary
per condition.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from deepis_rt.core.jsonable import json_safe
from deepis_rt.core.labels import labels_from_distance
from deepis_rt.synth import generate_timelapse
from deepis_rt.synth.randomize import randomized_frame
from deepis_rt.synth.scene import DEFAULT_IMAGING
from deepis_rt.train.data import HELDOUT_SEED_BASE
from deepis_rt.train.loop import predict_distance
from deepis_rt.train.metrics import frame_metrics, summarize

__all__ = ["evaluate_checkpoint", "draw_figure", "write_bundle", "network_calibration", "HELDOUT_FRAMES"]

log = logging.getLogger(__name__)

#: Frames of each 60-frame held-out video that are evaluated (early, mid, late).
HELDOUT_FRAMES: tuple[int, ...] = (5, 20, 35, 50)
_VIDEO_FRAMES = 60


def _frames(seed: int, tile: Sequence[int], vs: Sequence[float], frames: Sequence[int], imaging: str) -> list:
    if imaging == "random":
        return [randomized_frame(seed, k, _VIDEO_FRAMES, tile, vs, with_truth_area=True) for k in frames]
    return generate_timelapse(_VIDEO_FRAMES, seed, tile, vs, frames=list(frames), imaging=imaging)


def evaluate_checkpoint(path: str | Path, videos: int = 6, frames: Sequence[int] = HELDOUT_FRAMES,
                        seed_base: int = HELDOUT_SEED_BASE, imaging: str = DEFAULT_IMAGING) -> dict[str, Any]:
    """Metrics of a checkpoint on held-out synthetic frames made with the imaging condition ``imaging``.

    Returns
    -------
    dict
        ``summary`` (see :func:`deepis_rt.train.metrics.summarize`), ``rows`` (one per frame),
        ``seeds``, ``frames``, ``imaging``, ``seconds``.
    """
    from deepis_rt.checkpoint import load_checkpoint

    ck = load_checkpoint(path)
    model = ck.build()
    tile = ck.tile_zyx
    vs = ck.voxel_size_um
    rows = []
    t0 = time.perf_counter()
    seeds = [seed_base + i for i in range(videos)]
    for seed in seeds:
        for f in _frames(seed, tile, vs, frames, imaging):
            pred = predict_distance(model, f.ri)
            m = frame_metrics(pred, f.distance_um, vs,
                              true_is_area_um2=f.truth["is_area_um2"] if f.contact else None)
            m.update(seed=seed, frame=int(f.truth["frame"]), contact=f.contact)
            rows.append(m)
            log.info("held-out %s seed %d frame %d: %s", imaging, seed, f.truth["frame"],
                     {k: round(v, 3) for k, v in m.items() if isinstance(v, float)})
    return {"summary": summarize(rows), "rows": rows, "seeds": seeds, "frames": list(frames), "imaging": imaging,
            "seconds": time.perf_counter() - t0, "checkpoint_sha256": ck.sha256}


def draw_figure(path: str | Path, out_png: str | Path, seed: int = HELDOUT_SEED_BASE, frame: int = 35) -> Path:
    """PNG: an XY slice through the IS and an XZ slice of one held-out frame.

    Columns: tomogram (RI) | truth labels | predicted labels (paper's rule) | truth distance |
    predicted distance.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from deepis_rt.checkpoint import load_checkpoint

    ck = load_checkpoint(path)
    model = ck.build()
    vs = ck.voxel_size_um
    f = generate_timelapse(_VIDEO_FRAMES, seed, ck.tile_zyx, vs, frames=[frame])[0]
    pred = predict_distance(model, f.ri)
    true_lab = labels_from_distance(f.distance_um, vs)
    pred_lab = labels_from_distance(pred, vs)
    syn = np.argwhere(true_lab == 3)
    zc, yc, _ = (syn.mean(axis=0).round().astype(int) if len(syn) else np.array(f.ri.shape) // 2)
    cmap = ListedColormap(["black", "tab:red", "tab:cyan", "yellow"])
    vmax = float(np.abs(f.distance_um).max())
    fig, axes = plt.subplots(2, 5, figsize=(17, 6.2), gridspec_kw={"height_ratios": [1, 0.55]})
    aspect_xz = vs[0] / vs[2]
    for row, (sl, aspect, name) in enumerate((((zc, slice(None), slice(None)), 1.0, f"XY, z={zc}"),
                                              ((slice(None), yc, slice(None)), aspect_xz, f"XZ, y={yc}"))):
        panels = [
            (f.ri[sl], dict(cmap="gray", vmin=1.335, vmax=1.38), "tomogram (RI)"),
            (true_lab[sl], dict(cmap=cmap, vmin=0, vmax=3, interpolation="nearest"), "truth labels"),
            (pred_lab[sl], dict(cmap=cmap, vmin=0, vmax=3, interpolation="nearest"), "predicted labels"),
            (f.distance_um[sl], dict(cmap="RdBu_r", vmin=-vmax, vmax=vmax), "truth distance (um)"),
            (pred[sl], dict(cmap="RdBu_r", vmin=-vmax, vmax=vmax), "predicted distance (um)"),
        ]
        for ax, (img, kw, title) in zip(axes[row], panels, strict=False):
            im = ax.imshow(img, aspect=aspect, **kw)
            ax.set_title(f"{title}\n{name}" if row == 0 else name, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            if "distance" in title and row == 0:
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    fig.suptitle(f"held-out synthetic video seed {seed}, frame {frame} (t = {f.time_s:.0f} s); "
                 "labels: red CAR-T, cyan target, yellow IS", fontsize=10)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return out_png


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--videos", type=int, default=6)
    p.add_argument("--frames", type=int, nargs="+", default=list(HELDOUT_FRAMES))
    p.add_argument("--json", dest="json_out")
    p.add_argument("--figure")
    p.add_argument("--threads", type=int)
    p.add_argument("--imaging", nargs="+", default=[DEFAULT_IMAGING], choices=["tomocube", "raw", "random", "legacy"],
                   help="imaging condition(s) of the held-out frames (one summary each)")
    p.add_argument("--bundle", help="write a copy of the checkpoint here with the held-out metrics in its meta, "
                                    "and <bundle>.json (sha256, metrics) next to it")
    p.add_argument("--calibration", help="with --bundle: benchmarks/is_area_validation.py's JSON of this checkpoint; "
                                         "its fit of the network's IS-area uncertainty goes into the bundle's meta")
    args = p.parse_args(argv)
    if args.bundle and len(args.imaging) > 1:
        p.error("--bundle takes one --imaging condition (the held-out metrics of the checkpoint's card)")
    if args.calibration:
        if not args.bundle:
            p.error("--calibration goes with --bundle")
        from deepis_rt.core.files import file_sha256

        network_calibration(args.calibration, file_sha256(args.checkpoint))  # a wrong file: refused before the work
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.figure:
        draw_figure(args.checkpoint, args.figure)
    results = {name: evaluate_checkpoint(args.checkpoint, args.videos, args.frames, imaging=name)
               for name in args.imaging}
    res = results[args.imaging[0]]
    if len(results) == 1:
        print(json.dumps(res["summary"], indent=2))
    else:
        print(json.dumps({name: r["summary"] for name, r in results.items()}, indent=2))
        res = {"conditions": results, "checkpoint_sha256": res["checkpoint_sha256"]}
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(res, indent=2, default=float))
    if args.bundle:
        write_bundle(args.checkpoint, args.bundle, res, args.calibration)


def network_calibration(calibration: str | Path, checkpoint_sha256: str) -> dict[str, Any]:
    """``meta["uncertainty"]`` from the JSON of ``benchmarks/is_area_validation.py`` run on this checkpoint.

    The JSON's network constants were fitted on the checkpoint's own maps; a JSON of another
    checkpoint (its ``checkpoint_sha256`` differs) or without a network fit is refused."""
    from deepis_rt.analysis.contact import DEFAULT_NETWORK_ERROR
    from deepis_rt.errors import ConfigError

    path = Path(calibration)
    try:
        rep = json.loads(path.read_text())
        fit = rep["sigma_fit"]["network"]
        consts = fit["constants"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"evaluate: {path} is not a benchmarks/is_area_validation.py result with a fit of the "
                          f"network's uncertainty ({type(exc).__name__}: {exc})") from exc
    if rep.get("checkpoint_sha256") != checkpoint_sha256:
        raise ConfigError(f"evaluate: {path} was measured on checkpoint {rep.get('checkpoint')} (sha256 "
                          f"{str(rep.get('checkpoint_sha256'))[:12]}...), not on this one ({checkpoint_sha256[:12]}...)")
    net = replace(DEFAULT_NETWORK_ERROR, rel=float(consts["ERR_NET_REL"]),
                  resolution_voxels=float(consts["ERR_NET_RESOLUTION_VOXELS"]),
                  ambiguity=float(consts["ERR_NET_AMBIGUITY"]),
                  fitted_on=(f"benchmarks/is_area_validation.py on this checkpoint's maps of the independent "
                             f"validation generator's fit scenes: {fit['n']} detected synapses, "
                             f"{100 * fit['cover_1sigma']:.0f} % within 1 sigma and {100 * fit['cover_2sigma']:.0f} % "
                             f"within 2 sigma there"))
    return {"network": net.to_dict()}


def write_bundle(checkpoint: str | Path, out: str | Path, result: dict[str, Any],
                 calibration: str | Path | None = None) -> Path:
    """Copy ``checkpoint`` to ``out`` with ``meta.metrics.heldout`` set, plus ``<out>.json``.

    ``calibration``: an ``is_area_validation.py`` JSON of this checkpoint, whose fit of the network's
    uncertainty goes into ``meta["uncertainty"]`` (:func:`network_calibration`)."""
    from deepis_rt.checkpoint import load_checkpoint, save_checkpoint  # PyTorch: imported when used

    ck = load_checkpoint(checkpoint)
    uncertainty = network_calibration(calibration, str(ck.sha256)) if calibration is not None else ck.meta.uncertainty
    heldout = {**json_safe(result["summary"]), "video_seeds": result["seeds"], "frames_per_video": result["frames"],
               "imaging": result["imaging"],
               "definition": "Dice per class (paper's masks at +-half pitch) and relative IS-area error "
                             "(IS area by deepis_rt.analysis.analyze, as in synapses.csv; deepis_rt.train.metrics) "
                             "on held-out synthetic videos made with this imaging condition (deepis_rt.synth)"}
    meta = ck.meta.replace(metrics={**ck.meta.metrics, "heldout": heldout}, uncertainty=uncertainty)
    out = Path(out)
    save_checkpoint(out, ck.state_dict, config=ck.config, meta=meta, preset=ck.preset)
    final = load_checkpoint(out)
    card = {
        "file": out.name,
        "sha256": final.sha256,
        "preset": final.preset,
        "description": meta.description,
        "for": "demos and tests only, not for real microscope data (docs/model_card.md)",
        "voxel_size_um": list(meta.voxel_size_um),
        "tile_zyx": list(meta.tile_zyx),
        "training": {k: meta.training.get(k) for k in ("command", "steps", "wall_time_s", "data", "seeds")},
        "metrics": meta.metrics,
        "uncertainty": meta.uncertainty,
    }
    out.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
