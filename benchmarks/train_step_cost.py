"""Where a training step of deepis-lite on the randomised generator spends its time.

One step of ``deepis-rt train --synthetic`` (the recipe of ``benchmarks/training/README.md``: batch 2,
crops 32 x 64 x 64, a pool of randomised frames with one frame replaced every 2 batches) is split into
its parts, each timed in the same run, interleaved:

    generation   one new domain-randomised frame (``SyntheticSource``; the loop makes one per 2 steps)
    crops        one augmented batch of crops from the pool (``random_crop_batch``)
    network      forward + backward + Adam step of deepis-lite on that batch (torch, 2 threads), in
                 torch's default memory format and in ``channels_last_3d``

    python benchmarks/train_step_cost.py [--repeats 3]

writes benchmarks/results/train_step_cost.{json,md} with the machine and its load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from deepis_rt.bench.machine import describe_machine
from deepis_rt.model.network import build_model
from deepis_rt.train.data import SyntheticSource, random_crop_batch

CROP = (32, 64, 64)
FRAME_SHAPE = (64, 128, 128)
VOXEL_UM = (0.5, 0.25, 0.25)


def _network(channels_last: bool):
    torch.manual_seed(0)
    model = build_model("deepis-lite")
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    return model, torch.optim.Adam(model.parameters(), 1e-3)


def _step_s(model, opt, ri: np.ndarray, target: np.ndarray, channels_last: bool) -> float:
    x = torch.from_numpy(ri[:, None])
    y = torch.from_numpy(target[:, None])
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    t0 = time.perf_counter()
    opt.zero_grad()
    loss = ((model(x) - y) ** 2).mean()
    loss.backward()
    opt.step()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    source = SyntheticSource(rng, FRAME_SHAPE, VOXEL_UM, pool_size=2, refresh_every=1)
    nets = {"default": _network(False), "channels_last_3d": _network(True)}
    ri, dist, _ = random_crop_batch(source.pool, 2, CROP, rng)
    for name, (model, opt) in nets.items():  # warm-up (oneDNN primitive creation)
        _step_s(model, opt, ri, dist, name != "default")
    times: dict[str, list[float]] = {"generation": [], "crops": [], **{f"network_{k}": [] for k in nets}}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        pool = source.samples()  # replaces one frame
        times["generation"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ri, dist, _ = random_crop_batch(pool, 2, CROP, rng)
        times["crops"].append(time.perf_counter() - t0)
        for name, (model, opt) in nets.items():
            times[f"network_{name}"].append(_step_s(model, opt, ri, dist, name != "default"))
    med = {k: statistics.median(v) for k, v in times.items()}
    per_step = {"data (generation / 2 + crops)": med["generation"] / 2 + med["crops"],
                "network (default)": med["network_default"]}
    share = per_step["data (generation / 2 + crops)"] / sum(per_step.values())
    machine = describe_machine()
    load = os.getloadavg()
    args.results.mkdir(parents=True, exist_ok=True)
    out = {"times_s": times, "median_s": med, "data_share_of_step": share,
           "channels_last_3d_over_default": med["network_channels_last_3d"] / med["network_default"],
           "load_average": load, "machine": machine, "torch": torch.__version__, "threads": 2}
    (args.results / "train_step_cost.json").write_text(json.dumps(out, indent=1) + "\n")
    flags = " ".join(f for f in (machine["cpu_flags"] or []) if f in ("avx2", "avx512f", "avx512_bf16", "amx_tile"))
    md = ["# Training step of deepis-lite on the randomised generator: where the time goes", "",
          f"`python benchmarks/train_step_cost.py --repeats {args.repeats}` (batch 2 x {CROP}, torch "
          f"{torch.__version__}, 2 threads; medians of {args.repeats} interleaved repeats).", "",
          "| part | median (s) | per training step (s) |", "|---|---|---|",
          f"| one new randomised frame (one per 2 steps) | {med['generation']:.2f} | {med['generation'] / 2:.2f} |",
          f"| crops + augmentation of a batch | {med['crops']:.3f} | {med['crops']:.3f} |",
          f"| network forward + backward + Adam, default format | {med['network_default']:.1f} | {med['network_default']:.1f} |",
          f"| the same, channels_last_3d | {med['network_channels_last_3d']:.1f} | - |", "",
          f"The data pipeline is {100 * share:.1f} % of a step; channels_last_3d / default = "
          f"{out['channels_last_3d_over_default']:.2f} (same run, interleaved).", "",
          f"Machine: {machine['cpu']}, {machine['cpu_cores']} CPUs; flags: {flags}; load average during the run "
          f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (the machine was shared: absolute times are inflated, the "
          "ratios are from one run).", ""]
    (args.results / "train_step_cost.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
