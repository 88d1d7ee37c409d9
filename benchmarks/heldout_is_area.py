"""Held-out IS-area error of the bundled checkpoint, measured with the product's own estimator.

deepis_rt.analysis.analyze (what writes synapses.csv) on the predicted and on the true distance map of
the model card's held-out frames, against the generator's exact contact area.
Run: python benchmarks/heldout_is_area.py  (about 3 minutes on a 2-core CPU)
"""

import json

import numpy as np
import torch

from deepis_rt.analysis import analyze
from deepis_rt.checkpoint import bundled_checkpoint_path, load_checkpoint
from deepis_rt.synth import generate_timelapse
from deepis_rt.train.evaluate import _VIDEO_FRAMES, HELDOUT_FRAMES, HELDOUT_SEED_BASE, predict_distance


def main() -> None:
    torch.set_num_threads(1)
    ck = load_checkpoint(bundled_checkpoint_path())
    model = ck.build()
    vs = ck.voxel_size_um
    rows = []
    for seed in range(HELDOUT_SEED_BASE, HELDOUT_SEED_BASE + 6):
        for f in generate_timelapse(_VIDEO_FRAMES, seed, ck.tile_zyx, vs, frames=list(HELDOUT_FRAMES)):
            pred = predict_distance(model, f.ri)
            area = sum(s.is_area_um2 for s in analyze(pred, f.ri, vs).synapses)
            area_t = sum(s.is_area_um2 for s in analyze(f.distance_um, f.ri, vs).synapses)
            g = f.truth["is_area_um2"] if f.contact else 0.0
            rows.append(dict(seed=seed, frame=int(f.truth["frame"]), geometric=g, pred=area, truthmap=area_t))
            print(rows[-1], flush=True)
    err = [abs(r["pred"] - r["geometric"]) / r["geometric"] for r in rows if r["geometric"] >= 1.0]
    err_t = [abs(r["truthmap"] - r["geometric"]) / r["geometric"] for r in rows if r["geometric"] >= 1.0]
    out = dict(rows=rows, median_error_vs_geometric=float(np.median(err)), p90=float(np.percentile(err, 90)),
               n=len(err), median_error_truthmap_vs_geometric=float(np.median(err_t)))
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}))
    with open("benchmarks/results/heldout_is_area.json", "w") as fh:
        json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
