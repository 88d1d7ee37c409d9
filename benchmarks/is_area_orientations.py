"""IS-area estimator on two spheres cut by a plane, axis-aligned and oblique, exact and voxel-mask maps.

Two spheres (CAR-T 4.3-5 um, target 6-7.5 um) cut by their radical plane, contact radius 1.2-4 um
(the disc's area is analytic), at voxel sizes (0.4, 0.2, 0.2), (0.5, 0.25, 0.25) and isotropic
0.2, 0.3, 0.5 um. ``axis``: the contact faces the X axis and its plane lies exactly on a row of voxel
centres (those voxels have d = 0 and lie in neither mask); ``oblique``: a random direction and an
offset. Maps: ``exact`` (distance to the true border at the voxel centres) and ``edt`` (the
distance transform of the voxelised masks, as ``train.distance_from_labels`` makes from annotations).

    python benchmarks/is_area_orientations.py [--seed 0]

writes benchmarks/results/is_area_orientations.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from deepis_rt.analysis import analyze
from deepis_rt.bench.machine import describe_machine

VOXELS = [(0.4, 0.2, 0.2), (0.5, 0.25, 0.25), (0.2, 0.2, 0.2), (0.3, 0.3, 0.3), (0.5, 0.5, 0.5)]
RADII = [1.2, 1.5, 2.0, 3.0, 4.0]


def conjugate(vs, r1, r2, a, u, origin, convention):
    shape = tuple(int(2 * (r1 + r2) * 0.75 / h) + int(2 / h) for h in vs)
    axes = [np.arange(n) * h for n, h in zip(shape, vs, strict=True)]
    p = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    p1, p2 = math.sqrt(r1**2 - a**2), math.sqrt(r2**2 - a**2)
    c1, c2 = origin - u * p1, origin + u * p2
    s = (p - origin) @ u
    rho1, rho2 = np.linalg.norm(p - c1, axis=-1), np.linalg.norm(p - c2, axis=-1)
    in1, in2 = (rho1 < r1) & (s < 0), (rho2 < r2) & (s >= 0)
    if convention == "exact":
        d = np.where(in1, np.minimum(r1 - rho1, -s), 0.0) - np.where(in2, np.minimum(r2 - rho2, s), 0.0)
    else:
        d = ndi.distance_transform_edt(in1, sampling=vs) - ndi.distance_transform_edt(in2, sampling=vs)
    return d.astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    rows = []
    for vs in VOXELS:
        for a in RADII:
            for orientation in ("axis", "oblique"):
                r1, r2 = rng.uniform(4.3, 5.0), rng.uniform(6.0, 7.5)
                u = np.array([0.0, 0.0, 1.0]) if orientation == "axis" else rng.normal(size=3)
                u /= np.linalg.norm(u)
                box = 2 * (r1 + r2) * 0.75 + 2
                origin = np.array([int(box / 2 / h) * h for h in vs])  # on a voxel centre
                if orientation == "oblique":
                    origin = origin + rng.uniform(-0.3, 0.3, 3)
                for convention in ("exact", "edt"):
                    d = conjugate(vs, r1, r2, a, u, origin, convention)
                    fa = analyze(d, None, vs)
                    true = math.pi * a * a
                    area = fa.synapses[0].is_area_um2 if fa.synapses else 0.0
                    rows.append({"voxel_size_um": list(vs), "contact_radius_um": a, "orientation": orientation,
                                 "map": convention, "true_um2": true, "area_um2": area,
                                 "in_bound": abs(area - true) <= 0.5 + 0.05 * true})
    args.results.mkdir(parents=True, exist_ok=True)
    machine = describe_machine()
    (args.results / "is_area_orientations.json").write_text(
        json.dumps({"rows": rows, "seed": args.seed, "machine": machine, "load_average": os.getloadavg()}, indent=1) + "\n")
    md = ["# IS area of two spheres cut by a plane: axis-aligned (plane on a voxel row) and oblique", "",
          f"`python benchmarks/is_area_orientations.py --seed {args.seed}`: `analysis.analyze` on exact and voxel-mask "
          "(EDT) maps; error = measured / true - 1 per contact radius; bound = +-(0.5 um^2 + 5 %).", "",
          "| voxel (um) | map | orientation | " + " | ".join(f"a = {a} um" for a in RADII) + " | in bound |",
          "|---|---|---|" + "---|" * len(RADII) + "---|"]
    for vs in VOXELS:
        for convention in ("exact", "edt"):
            for orientation in ("axis", "oblique"):
                rs = [r for r in rows if r["voxel_size_um"] == list(vs) and r["map"] == convention
                      and r["orientation"] == orientation]
                cells = " | ".join(f"{100 * (r['area_um2'] / r['true_um2'] - 1):+.0f} %" for r in rs)
                md.append(f"| {' x '.join(str(v) for v in vs)} | {convention} | {orientation} | {cells} "
                          f"| {sum(r['in_bound'] for r in rs)}/{len(rs)} |")
    flags = " ".join(f for f in (machine["cpu_flags"] or []) if f in ("avx2", "avx512f", "avx512_bf16", "amx_tile"))
    md += ["", f"In bound: {sum(r['in_bound'] for r in rows)}/{len(rows)}.", "",
           f"Machine: {machine['cpu']}, {machine['cpu_cores']} CPUs; flags: {flags}", ""]
    (args.results / "is_area_orientations.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
