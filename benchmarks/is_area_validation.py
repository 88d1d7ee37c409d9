"""IS area end to end on the independent validation generator: RI -> network -> analyze.

Scenes come from ``deepis_rt.validation`` (never imported by training): conjugates drawn as
implicit surfaces, truth measured on a 3x finer grid, imaged through an ODT transfer function
(with its missing cone, raw or refilled by non-negativity iterations) or a Gaussian PSF. Each
scene is measured three ways with ``analysis.analyze``:

    exact      the truth signed distance map (fine-grid distance transform)
    voxelised  ``train.distance_from_labels`` of the truth labels (what annotations give)
    network    a checkpoint's output (the bundled one by default; ``deepis_rt.load()``, OpenVINO on the CPU)

and the table reports per condition: Dice per class (network), IS-area error (median, 90th
percentile), the uncertainty's coverage (|error| <= 1 and 2 sigma). Two disjoint scene sets:
``fit`` (the seeds and conditions the uncertainty model's constants were fitted on) and
``test`` (other seeds, other voxel sizes, contact radii, noise levels and blur).

    python benchmarks/is_area_validation.py [--quick] [--cache DIR] [--checkpoint PT] [--tag NAME]

writes benchmarks/results/is_area_validation[-NAME].{json,md}. ``--cache`` keeps the rendered scenes
(npz) and each checkpoint's network maps (npy, keyed by the checkpoint's checksum) so that a rerun,
or the same scenes through another checkpoint, renders nothing twice. ``--checkpoint`` measures a
checkpoint other than the bundled one (a candidate before it is bundled).
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
from deepis_rt.validation.phantoms import SCENE_KINDS, make_scene, render_truth

log = logging.getLogger("is_area_validation")

ISO_FIT, ISO_TEST = (0.25, 0.22, 0.22), (0.3, 0.2, 0.2)
SETS = {
    # name: (seed base, voxel sizes, contact radii (um), imaging conditions (name, overrides))
    "fit": (1000, [(0.4, 0.2, 0.2), ISO_FIT], [1.2, 2.0, 3.0, 4.5],
            [("gaussian", {}), ("odt-refilled", {}), ("odt-raw", {})]),
    "test": (2000, [(0.45, 0.22, 0.22), ISO_TEST], [1.5, 2.5, 3.5],
             [("gaussian", {"blur_sigma_um": (0.45, 0.12, 0.12), "noise_ri": 0.001}),
              ("odt-refilled", {"noise_ri": 0.003}), ("odt-raw", {"noise_ri": 0.001})]),
}


def scene_list(set_name: str, quick: bool) -> list[dict]:
    base, voxels, radii, conditions = SETS[set_name]
    out = []
    i = 0
    # the fit set crosses every voxel size with every radius; the test set alternates them
    crossed = set_name == "fit"
    for j, vs in enumerate(voxels[: 1 if quick else None]):
        for k, a in enumerate(radii[::2] if quick else radii):
            if not crossed and not quick and (j + k) % 2:
                continue
            for kind in SCENE_KINDS:
                # a sphere-like CAR-T (7-9 um) holds contacts up to ~3.4 um; wider ones are spread cells
                radius = a if kind == "flattened" else min(a, 3.4)
                out.append({"set": set_name, "kind": kind, "voxel_size_um": vs, "contact_radius_um": radius,
                            "seed": base + i, "conditions": conditions})
                i += 1
    return out


def network_path(path: Path, model_tag: str) -> Path:
    """Where the network map of a cached scene through one checkpoint is kept."""
    return path.with_name(f"{path.stem}.{model_tag}.npy")


def render(spec: dict, cache: Path, segmenter, model_tag: str) -> list[Path]:
    """Truth and images of one scene (cached as npz, one per imaging condition) and the checkpoint's
    network maps of them (npy beside each)."""
    paths = []
    truth = scene = None
    for name, overrides in spec["conditions"]:
        path = cache / f"{spec['set']}-{spec['seed']}-{name}.npz"
        paths.append(path)
        if not path.exists():
            if truth is None:
                scene = make_scene(spec["kind"], spec["contact_radius_um"], spec["voxel_size_um"], spec["seed"])
                truth = render_truth(scene)
            imaging = replace(IMAGING_CONDITIONS[name], **overrides)
            ri = image(truth.ri_object, scene.voxel_size_um, imaging, np.random.default_rng(spec["seed"]))
            meta = {"set": spec["set"], "kind": spec["kind"], "seed": spec["seed"], "imaging": name,
                    "imaging_overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()},
                    "voxel_size_um": list(scene.voxel_size_um), "contact_radius_um": spec["contact_radius_um"],
                    "true_is_area_um2": truth.is_area_um2}
            np.savez_compressed(path, ri=ri.astype(np.float32), exact=truth.distance_um, labels=truth.labels,
                                meta=json.dumps(meta))
            log.info("%s: true %.2f um^2 (%s)", path.name, truth.is_area_um2, name)
        out = network_path(path, model_tag)
        if not out.exists():
            z = np.load(path)
            vs = tuple(json.loads(str(z["meta"]))["voxel_size_um"])
            result = segmenter.segment(z["ri"], vs, analyze=False)
            np.save(out, result.distance.astype(np.float32))
    return paths


MAPS = ("exact", "voxelised", "network")


def measure(path: Path, truth_maps: bool, model_tag: str, net_error=None) -> list[dict]:
    """One row per map kind: the synapse between the truth's CAR-T and target, its drivers, Dice.

    ``net_error``: the checkpoint's ``NetworkError`` (its own calibration, or the default)."""
    from deepis_rt.analysis import analyze
    from deepis_rt.train.data import distance_from_labels

    z = np.load(path)
    meta = json.loads(str(z["meta"]))
    vs = tuple(meta["voxel_size_um"])
    labels = z["labels"]
    maps = {"network": np.load(network_path(path, model_tag))}
    if truth_maps:  # they do not depend on the imaging: measured once per scene
        maps.update(exact=z["exact"], voxelised=distance_from_labels(labels, vs))
    rows = []
    for name in maps:
        t0 = time.perf_counter()
        fa = analyze(maps[name], None, vs, network_error=net_error)
        analyze_ms = (time.perf_counter() - t0) * 1e3
        row = {k: meta[k] for k in ("set", "kind", "seed", "imaging", "voxel_size_um", "contact_radius_um")}
        row.update(imaging=meta["imaging"] if name == "network" else "-", map=name, true_um2=meta["true_is_area_um2"], area_um2=0.0, err_um2=0.0, rim_slope=math.nan,
                   ambiguity_um2=0.0, noise_um=fa.background_noise_um, analyze_ms=analyze_ms, detected=False)
        # the synapse whose CAR-T overlaps the true CAR-T most
        best = None
        for syn in fa.synapses:
            overlap = int(((fa.cell_labels == syn.tcell_id) & (labels == 1)).sum())
            if overlap and (best is None or overlap > best[0]):
                best = (overlap, syn)
        if best is not None:
            syn = best[1]
            c = fa.contacts[syn.synapse_id]
            row.update(area_um2=syn.is_area_um2, err_um2=syn.is_area_err_um2, rim_slope=c.rim_slope,
                       ambiguity_um2=c.rim_ambiguity_um2, detected=True)
        if name == "network":
            t = fa.threshold_um
            d = maps[name]
            for cls, mask in ((1, d > t), (2, d < -t)):
                truth = labels == cls
                row[f"dice_{'tcell' if cls == 1 else 'target'}"] = float(
                    2 * (mask & truth).sum() / max(mask.sum() + truth.sum(), 1))
        rows.append(row)
    return rows


#: the network's constants as named in the fit, and their fields of ``contact.NetworkError``
NETWORK_FIELDS = {"ERR_NET_REL": "rel", "ERR_NET_RESOLUTION_VOXELS": "resolution_voxels", "ERR_NET_AMBIGUITY": "ambiguity"}


def network_error(consts: dict, fitted_on: str = ""):
    """The ``contact.NetworkError`` of fitted constants (the others at their defaults)."""
    from deepis_rt.analysis.contact import DEFAULT_NETWORK_ERROR

    return replace(DEFAULT_NETWORK_ERROR, fitted_on=fitted_on,
                   **{field: float(consts[k]) for k, field in NETWORK_FIELDS.items() if k in consts})


def sigma(rows: list[dict], consts: dict) -> np.ndarray:
    """``is_area_err_um2`` recomputed with other constants (same drivers), for the fit: the
    estimator's are module constants, the network's a ``NetworkError``."""
    from deepis_rt.analysis import contact

    estimator = {k: v for k, v in consts.items() if k not in NETWORK_FIELDS}
    net = network_error(consts)
    saved = {k: getattr(contact, k) for k in estimator}
    try:
        for k, v in estimator.items():
            setattr(contact, k, v)
        return np.array([contact.area_uncertainty_um2(r["area_um2"], r["voxel_size_um"], r["noise_um"],
                                                      r["rim_slope"], r["ambiguity_um2"], net) if r["detected"] else 0.0
                         for r in rows])
    finally:
        for k, v in saved.items():
            setattr(contact, k, v)


def coverage(rows: list[dict], sig: np.ndarray) -> tuple[float, float]:
    err = np.array([abs(r["area_um2"] - r["true_um2"]) for r in rows])
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sig > 0, err / sig, np.inf)
    return float(np.mean(z <= 1)), float(np.mean(z <= 2))


ESTIMATOR_CONSTANTS = ("ERR_REL", "ERR_RIM_VOXELS")
NETWORK_CONSTANTS = ("ERR_NET_REL", "ERR_NET_RESOLUTION_VOXELS", "ERR_NET_AMBIGUITY")


def _grid_fit(rows: list[dict], grid: dict, fixed: dict) -> dict:
    """The constants (a grid search) that bring 1-sigma coverage to 68 % and 2-sigma to >= 92 %,
    preferring narrow sigmas."""
    import itertools

    best = None
    for values in itertools.product(*grid.values()):
        consts = {**fixed, **dict(zip(grid, values, strict=True))}
        sig = sigma(rows, consts)
        c1, c2 = coverage(rows, sig)
        width = float(np.median(sig / np.maximum([r["true_um2"] for r in rows], 1e-9)))
        cost = abs(c1 - 0.68) + 2 * max(0.0, 0.92 - c2) + 0.2 * width
        if best is None or cost < best[0]:
            best = (cost, consts, c1, c2, width)
    return {"constants": best[1], "cover_1sigma": best[2], "cover_2sigma": best[3], "median_width": best[4],
            "n": len(rows)}


def fit_sigma(rows: list[dict]) -> dict:
    """Both parts of the uncertainty, in turn: the estimator's on the noise-free maps (exact and
    voxelised), then the network's on the network's maps with the estimator's part fixed."""
    out = {}
    truth_maps = [r for r in rows if r["map"] != "network"]
    if truth_maps:
        out["estimator"] = _grid_fit(truth_maps, {"ERR_REL": (0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.12),
                                                  "ERR_RIM_VOXELS": (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75)}, {})
    fixed = out["estimator"]["constants"] if truth_maps else {}
    network = [r for r in rows if r["map"] == "network"]
    if network:
        out["network"] = _grid_fit(network, {"ERR_NET_REL": (0.0, 0.03, 0.05, 0.08, 0.12, 0.16, 0.2, 0.3),
                                             "ERR_NET_RESOLUTION_VOXELS": (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0),
                                             "ERR_NET_AMBIGUITY": (0.0, 0.5, 1.0, 2.0)}, fixed)
    return out


def _pct(x: float) -> str:
    return f"{100 * x:+.1f} %" if math.isfinite(x) else "-"


def summarize(rows: list[dict]) -> dict:
    """Error statistics, coverage and Dice for a group of rows."""
    det = [r for r in rows if r["detected"]]
    rel = np.array([r["area_um2"] / r["true_um2"] - 1 for r in det])
    bound = [abs(r["area_um2"] - r["true_um2"]) <= 0.5 + 0.05 * r["true_um2"] for r in det]
    c1, c2 = coverage(det, np.array([r["err_um2"] for r in det])) if det else (math.nan, math.nan)
    out = {"n": len(rows), "detected": len(det),
           "error_median": float(np.median(rel)) if det else math.nan,
           "abs_error_median": float(np.median(np.abs(rel))) if det else math.nan,
           "abs_error_p90": float(np.percentile(np.abs(rel), 90)) if det else math.nan,
           "within_bound": int(sum(bound)), "cover_1sigma": c1, "cover_2sigma": c2}
    if rows and "dice_tcell" in rows[0]:
        out["dice_tcell"] = float(np.mean([r["dice_tcell"] for r in rows]))
        out["dice_target"] = float(np.mean([r["dice_target"] for r in rows]))
    return out


def report(rows: list[dict], args) -> None:
    from deepis_rt.analysis import contact
    from deepis_rt.bench.machine import describe_machine

    fit_rows = [r for r in rows if r["set"] == "fit" and r["detected"]]
    fitted = fit_sigma(fit_rows) if fit_rows else {}
    net = args.net_error
    product = {**{k: getattr(contact, k) for k in ESTIMATOR_CONSTANTS},
               **{k: getattr(net, field) for k, field in NETWORK_FIELDS.items()},
               "network_part_from": "the checkpoint's own calibration" if args.net_error_own
               else "deepis_rt.analysis.contact's defaults (the checkpoint carries none)"}
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["set"], r["map"], r["imaging"]), []).append(r)
        if r["map"] == "network":
            groups.setdefault((r["set"], r["map"], "all"), []).append(r)
    table = [{"set": k[0], "map": k[1], "imaging": k[2], **summarize(v)} for k, v in sorted(groups.items())]
    machine = describe_machine()
    args.results.mkdir(parents=True, exist_ok=True)
    stem = "is_area_validation" + (f"-{args.tag}" if args.tag else "")
    (args.results / f"{stem}.json").write_text(json.dumps(
        {"rows": rows, "table": table, "sigma_fit": fitted, "sigma_constants_in_product": product,
         "machine": machine, "quick": args.quick, "checkpoint": args.checkpoint_name,
         "checkpoint_sha256": args.checkpoint_sha256}, indent=1, default=float) + "\n")
    md = ["# IS area end to end on the independent validation generator", "",
          f"`python benchmarks/is_area_validation.py{' --quick' if args.quick else ''}` (checkpoint "
          f"`{args.checkpoint_name}`, OpenVINO on the CPU). Maps: exact = truth distance (3x finer grid), voxelised = "
          "`distance_from_labels(truth labels)`, network = RI -> network. Error = measured / true - 1 over the "
          "detected synapses; bound = +-(0.5 um^2 + 5 %); coverage = share of detected synapses with "
          "|error| <= 1 (2) x `is_area_err_um2`. `fit` scenes fitted the uncertainty's constants, `test` scenes "
          "(other seeds, voxel sizes, contact radii, noise, blur) check them.", "",
          "| set | map | imaging | n | detected | Dice CAR-T | Dice target | error median | abs. median | abs. p90 "
          "| in bound | <= 1 sigma | <= 2 sigma |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in table:
        dice = (f"{row['dice_tcell']:.3f} | {row['dice_target']:.3f}" if "dice_tcell" in row else "- | -")
        md.append(f"| {row['set']} | {row['map']} | {row['imaging']} | {row['n']} | {row['detected']} | {dice} "
                  f"| {_pct(row['error_median'])} | {_pct(row['abs_error_median'])} | {_pct(row['abs_error_p90'])} "
                  f"| {row['within_bound']}/{row['detected']} | {100 * row['cover_1sigma']:.0f} % "
                  f"| {100 * row['cover_2sigma']:.0f} % |")
    for part, maps in (("estimator", "exact and voxelised"), ("network", "network")):
        if part in fitted:
            f = fitted[part]
            md += ["", f"Uncertainty, {part}'s part, fitted on the fit set's {maps} rows (n = {f['n']}): "
                   f"{ {k: f['constants'][k] for k in (ESTIMATOR_CONSTANTS if part == 'estimator' else NETWORK_CONSTANTS)} } "
                   f"(coverage there {100 * f['cover_1sigma']:.0f} % / {100 * f['cover_2sigma']:.0f} %, median "
                   f"sigma {100 * f['median_width']:.0f} % of the area)."]
    md += ["", f"Used for the sigmas above (estimator: `deepis_rt/analysis/contact.py`; network: "
           f"{product['network_part_from']}): { {k: v for k, v in product.items() if k != 'network_part_from'} }."]
    md += ["", f"Machine: {machine['cpu']}, {machine['cpu_cores']} CPUs; flags: "
           f"{' '.join(f for f in (machine['cpu_flags'] or []) if f in ('avx2', 'avx512f', 'avx512_bf16', 'amx_tile'))}", ""]
    (args.results / f"{stem}.md").write_text("\n".join(md))
    print("\n".join(md))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few scenes (smoke run)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/deepis-is-area-validation"))
    ap.add_argument("--checkpoint", type=Path, default=None, help="checkpoint to measure (default: the bundled one)")
    ap.add_argument("--tag", default="", help="suffix of the result files (is_area_validation-TAG.*)")
    ap.add_argument("--render-only", action="store_true", help="fill the cache, measure nothing")
    ap.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS), help="scene sets to render")
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import deepis_rt
    from deepis_rt.core.files import file_sha256
    from deepis_rt.runtime.source import bundled_checkpoint

    checkpoint = args.checkpoint or bundled_checkpoint()
    args.checkpoint_name = checkpoint.name
    args.checkpoint_sha256 = file_sha256(checkpoint)
    model_tag = args.checkpoint_sha256[:12]
    args.cache.mkdir(parents=True, exist_ok=True)
    segmenter = deepis_rt.load(checkpoint, backend="openvino-cpu", analyze=False)
    args.net_error, args.net_error_own = segmenter.network_error, segmenter.network_error_from_checkpoint
    files = []
    for set_name in args.sets:
        for spec in scene_list(set_name, args.quick):
            files += render(spec, args.cache, segmenter, model_tag)
    if args.render_only:
        return
    rows = []
    seen = set()
    for path in files:
        meta = json.loads(str(np.load(path)["meta"]))
        key = (meta["set"], meta["seed"])
        first = key not in seen
        seen.add(key)
        rows += measure(path, first, model_tag, args.net_error)
    report(rows, args)


if __name__ == "__main__":
    main()
