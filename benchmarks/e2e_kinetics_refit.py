"""The kinetic fit of today's code on the per-frame IS areas of the last ``e2e_kinetics.py`` run.

``e2e_kinetics.py`` streams 50 frames through the bundled model (minutes of CPU); the areas it
measured are committed in ``results/e2e_kinetics.json`` (``per_frame``). This script fits them again
with :func:`deepis_rt.analysis.fit_saturation` as the tracker does (onset anywhere between the last
frame without contact and the first with it), next to the onset pinned to the first frame, so a
change of the fit is measured without running the network again.

    python benchmarks/e2e_kinetics_refit.py

writes benchmarks/results/e2e_kinetics_refit.{json,md}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from deepis_rt.analysis import fit_saturation
from deepis_rt.bench.machine import describe_machine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    run = json.loads((args.results / "e2e_kinetics.json").read_text())
    truth = run["kinetics_truth"]
    rows = sorted(run["per_frame"], key=lambda r: r["time_s"])
    t = np.array([r["time_s"] for r in rows])
    area = np.array([r["model_um2"] for r in rows])
    sigma = np.array([r["model_err_um2"] for r in rows])
    step = truth["frame_interval_s"]  # the stream saw every frame; the one before the first contact had none
    fits = {"onset in the interval since the last frame apart": fit_saturation(t - t[0], area, sigma, onset_window_s=step),
            "onset pinned to the first frame in contact": fit_saturation(t - t[0], area, sigma)}
    out = {"source": "results/e2e_kinetics.json (per_frame)", "truth": truth, "first_contact_s": float(t[0]),
           "onset_interval_s": [float(t[0] - step), float(t[0])], "fits": {}, "machine": describe_machine()}
    md = ["# Kinetic fit of the end-to-end run's areas, refitted", "",
          f"`python benchmarks/e2e_kinetics_refit.py`: the {len(t)} per-frame IS areas and sigmas of the bundled "
          f"model in `results/e2e_kinetics.json`, fitted with today's `fit_saturation`. Truth A_max "
          f"{truth['a_max_um2']} um^2, tau_half {truth['tau_half_s']} s, onset {truth['onset_s']} s; first frame "
          f"in contact {t[0]:g} s, the one before without.", "",
          "| fit | A_max (um^2) | error | z | tau_half (s) | error | z | onset (s) | reduced chi^2 |",
          "|---|---|---|---|---|---|---|---|---|"]
    for name, f in fits.items():
        za = (f.a_max - truth["a_max_um2"]) / f.a_max_err
        zt = (f.tau_half_s - truth["tau_half_s"]) / f.tau_half_err_s
        out["fits"][name] = {**f.to_dict(), "z_a_max": za, "z_tau_half": zt}
        onset = t[0] + f.onset_offset_s
        md.append(f"| {name} | {f.a_max:.1f} +- {f.a_max_err:.1f} | {100 * (f.a_max / truth['a_max_um2'] - 1):+.1f} % "
                  f"| {za:+.1f} | {f.tau_half_s:.1f} +- {f.tau_half_err_s:.1f} | "
                  f"{100 * (f.tau_half_s / truth['tau_half_s'] - 1):+.1f} % | {zt:+.1f} | {onset:.1f} | "
                  f"{f.chi2_reduced:.2f} |")
    md += ["", f"Machine: {out['machine']['cpu']}, {out['machine']['cpu_cores']} cores; the fit needs no network run.", ""]
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "e2e_kinetics_refit.json").write_text(json.dumps(out, indent=2, default=float) + "\n")
    (args.results / "e2e_kinetics_refit.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
