"""The training loop: edge-weighted L1 on the signed distance map, Adam, resumable state.

As in the paper (Lee et al., eLife 2020): loss = sum(w |pred - d|) / sum(w) with
w = 1 + 10 within 3 voxels of a cell border; Adam with lr 1e-3 and betas (0.5, 0.99);
the learning rate is halved every 50 epochs. Data generated on the fly has no natural
epoch, so an **epoch is ``epoch_steps`` optimiser steps** (default 10, i.e. 20 crops at
batch 2); with a folder of annotated tomograms the default is one pass over the
training crops (number of training volumes / batch, at least 1).

Every ``save_every`` steps (and on Ctrl-C) the full state — model, optimiser, step,
torch and NumPy random states, loss history, elapsed time — is written to
``<out>.state.pt`` with :func:`torch.save` (plain containers only: it loads with
``weights_only=True``). ``resume=True`` continues from it. The final checkpoint is
written with :func:`deepis_rt.checkpoint.save_checkpoint`, its metadata holding the
voxel size, RI normalisation, tile, the training command, seeds, steps, wall time,
the data description and the validation metrics.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepis_rt.analysis.quality import describe_training_inputs
from deepis_rt.core.jsonable import json_safe
from deepis_rt.core.meta import MEDIUM_RI, RI_SCALE, TILE_ZYX, VOXEL_SIZE_UM
from deepis_rt.errors import ConfigError
from deepis_rt.synth import generate_timelapse
from deepis_rt.synth.randomize import randomized_frame
from deepis_rt.train.data import (
    HELDOUT_SEED_BASE,
    TRAIN_SEED_LIMIT,
    VALIDATION_SEED_BASE,
    FolderSource,
    Sample,
    SyntheticSource,
    random_crop_batch,
)
from deepis_rt.train.init import load_init
from deepis_rt.train.metrics import frame_metrics, summarize
from deepis_rt.train.plots import plot_training
from deepis_rt.train.state import load_state, lr_halving_steps, save_state

__all__ = ["TrainConfig", "train", "state_path", "predict_distance", "evaluate_frames", "validation_frames"]

log = logging.getLogger(__name__)

# the input normalisation of a model trained here: the defaults of ModelMeta
RI_OFFSET = MEDIUM_RI


@dataclass
class TrainConfig:
    """Settings of one training run (every field is recorded in the checkpoint)."""

    #: Train on synthetic data generated on the fly.
    synthetic: bool = True
    #: Domain-randomised synthetic data (imaging condition, shapes, acquisition voxel size);
    #: False: the legacy generator the bundled checkpoint was trained on.
    randomize: bool = True
    #: Folder of annotated tomograms (used when ``synthetic`` is False).
    data_dir: str | None = None
    #: Architecture preset.
    preset: str = "deepis-lite"
    #: Architecture overrides (e.g. tiny widths for tests).
    model_overrides: dict = field(default_factory=dict)
    #: Optimiser steps in total.
    steps: int = 1000
    #: Crops per step.
    batch: int = 2
    #: Training crop (Z, Y, X) in voxels (multiples of 16 for the 5-level presets).
    crop_zyx: tuple[int, int, int] = (32, 64, 64)
    #: Seed of initialisation, data order and on-the-fly video seeds.
    seed: int = 0
    #: Initial learning rate (Adam, betas 0.5 / 0.99).
    lr: float = 1e-3
    #: Optimiser steps per epoch (on-the-fly data); None: one pass over a folder's volumes.
    epoch_steps: int | None = 10
    #: The learning rate halves every this many epochs.
    lr_halve_epochs: int = 50
    #: Voxel size (Z, Y, X) um of the training data and of the model (None with ``init``: its voxel size).
    voxel_size_um: tuple[float, float, float] | None = VOXEL_SIZE_UM
    #: Tile (Z, Y, X) of synthetic frames and of inference.
    tile_zyx: tuple[int, int, int] = TILE_ZYX
    #: Validation frames (synthetic: one frame from each of this many validation videos).
    val_frames: int = 4
    #: Validate every this many steps as well as at the end (0: only at the end).
    val_every: int = 0
    #: Write the resumable state every this many steps.
    save_every: int = 50
    #: Synthetic frames kept in memory, and how often (in steps) one is replaced.
    pool_size: int = 16
    refresh_every: int = 2
    #: Fraction of crops centred near the IS or a cell border.
    focus_fraction: float = 0.5
    #: Fraction of crops given correlated noise on the model's grid (``add_grid_noise``): robustness
    #: to tomograms noisier at the model's voxel size than the generator's resampled frames.
    noise_fraction: float = 0.5
    #: Stop (and save) after this many minutes of wall time, even before ``steps``.
    max_minutes: float | None = None
    #: torch intra-op threads (None: leave torch's default).
    threads: int | None = None
    #: Start from this checkpoint ("bundled", a deepis-rt or a published-DeepIS file): its architecture,
    #: input normalisation and tile are kept, and its voxel size unless ``voxel_size_um`` is given
    #: (:mod:`deepis_rt.train.init`).
    init: str | None = None

    def validate(self) -> None:
        if not 0.0 <= self.noise_fraction <= 1.0:
            raise ConfigError(f"train: noise_fraction must be in [0, 1], got {self.noise_fraction}")
        if self.steps < 1 or self.batch < 1:
            raise ConfigError("train: steps and batch must be >= 1")
        if len(self.crop_zyx) != 3 or min(self.crop_zyx) < 1:
            raise ConfigError(f"train: crop must be three sizes (Z, Y, X), got {self.crop_zyx}")
        if not self.synthetic and not self.data_dir:
            raise ConfigError("train: give --data DIR or --synthetic")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"train: lr must be a positive number, got {self.lr}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ConfigError(f"train: max_minutes must be > 0, got {self.max_minutes}")


def state_path(out: str | Path) -> Path:
    """Where the resumable state of a run writing ``out`` lives: ``<out>.state.pt``."""
    out = Path(out)
    return out.with_name(out.name + ".state.pt")


def _normalize(ri: np.ndarray, offset: float = RI_OFFSET, scale: float = RI_SCALE) -> np.ndarray:
    return (ri - np.float32(offset)) / np.float32(scale)


def predict_distance(model: Any, ri: np.ndarray, ri_norm: tuple[float, float] = (RI_OFFSET, RI_SCALE)) -> np.ndarray:
    """Run the network on one whole volume (sizes must suit the model) -> distance map (um).

    ``ri_norm``: the (offset, scale) the network's input is normalised with.
    """
    import torch

    was_training = model.training
    model.eval()
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(_normalize(ri, *ri_norm), dtype=np.float32))[None, None]
        out = model(x)[0, 0].numpy().astype(np.float32)
    if was_training:
        model.train()
    return out


def validation_frames(n: int, shape: Sequence[int], voxel_size_um: Sequence[float],
                      seed_base: int = VALIDATION_SEED_BASE, randomize: bool = False) -> list:
    """One synthetic frame from each of ``n`` videos ``seed_base + i`` (frames cycle through early/late).

    ``randomize``: domain-randomised frames (:func:`deepis_rt.synth.randomize.randomized_frame`,
    with the geometric IS area measured), else the default videos (legacy imaging).
    """
    picks = (40, 12, 55, 25, 5, 33)
    if randomize:
        return [randomized_frame(seed_base + i, picks[i % len(picks)], 60, shape, voxel_size_um, with_truth_area=True)
                for i in range(n)]
    return [generate_timelapse(60, seed_base + i, shape, voxel_size_um, frames=[picks[i % len(picks)]],
                               imaging="legacy")[0]
            for i in range(n)]


def evaluate_frames(model: Any, frames: Sequence[Any], ri_norm: tuple[float, float] = (RI_OFFSET, RI_SCALE),
                    ) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Metrics of ``model`` on synthetic frames: (summary, per-frame rows)."""
    rows = []
    for f in frames:
        pred = predict_distance(model, f.ri, ri_norm)
        m = frame_metrics(pred, f.distance_um, f.voxel_size_um,
                          true_is_area_um2=f.truth["is_area_um2"] if f.truth.get("contact") else None)
        m.update(seed=f.seed, frame=f.truth["frame"], contact=bool(f.truth.get("contact")))
        rows.append(m)
    return summarize(rows), rows


def _lr_at(cfg: TrainConfig, step: int, epoch_steps: int) -> float:
    epoch = step // max(1, epoch_steps)
    return cfg.lr * 0.5 ** (epoch // max(1, cfg.lr_halve_epochs))


def _isatty() -> bool:
    return sys.stderr.isatty()


def train(out: str | Path, config: TrainConfig | None = None, resume: bool = False,
          progress: bool | None = None, command: str | None = None, **overrides: Any) -> dict[str, Any]:
    """Train a DeepIS network and write a checkpoint.

    Parameters
    ----------
    out : path-like
        Final checkpoint (``.pt``); the resumable state goes to ``<out>.state.pt``.
    config : TrainConfig, optional
        Settings; keyword ``overrides`` replace single fields (e.g. ``steps=100``).
    resume : bool
        Continue from ``<out>.state.pt`` when it exists.
    progress : bool, optional
        Show a progress bar (default: when stderr is a terminal).
    command : str, optional
        The command line recorded in the checkpoint's metadata.

    Returns
    -------
    dict
        ``checkpoint`` (path), ``steps``, ``wall_time_s``, ``final_loss``, ``metrics`` (validation) and,
        for a run started from ``init``, ``metrics_before`` (that checkpoint's validation on the same frames).
    """
    import torch
    from tqdm.auto import tqdm

    from deepis_rt.checkpoint import save_checkpoint
    from deepis_rt.model import build_model

    cfg = TrainConfig(**{**asdict(config or TrainConfig()), **overrides})
    cfg.crop_zyx = tuple(int(v) for v in cfg.crop_zyx)  # type: ignore[assignment]
    cfg.tile_zyx = tuple(int(v) for v in cfg.tile_zyx)  # type: ignore[assignment]
    if cfg.voxel_size_um is not None or not cfg.init:  # None with init: the init checkpoint's
        cfg.voxel_size_um = tuple(float(v) for v in cfg.voxel_size_um)  # type: ignore[assignment]
    cfg.validate()
    out = Path(out)
    spath = state_path(out)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng([cfg.seed, 2020])
    init = None
    if cfg.init:
        init = load_init(cfg.init, cfg.voxel_size_um)
        cfg.voxel_size_um, cfg.tile_zyx = init.voxel_size_um, init.tile_zyx
    model = build_model(cfg.preset, **cfg.model_overrides) if init is None else init.model
    # 3-D convolutions in channels-last order: about 0.7x the step time on CPUs (oneDNN's layout),
    # the layout tensor cores prefer on GPUs; the weights saved are the same numbers
    model = model.to(memory_format=torch.channels_last_3d)
    ri_norm = (RI_OFFSET, RI_SCALE) if init is None else (init.ri_offset, init.ri_scale)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.5, 0.99))
    step, history, elapsed_prev = 0, [], 0.0
    val_history: list[dict[str, Any]] = []
    if resume and spath.is_file():
        state = load_state(spath)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        rng.bit_generator.state = json.loads(state["numpy_rng"])
        step, history, elapsed_prev = int(state["step"]), list(state["history"]), float(state["elapsed_s"])
        val_history = json.loads(state.get("val_history", "[]"))
        log.info("train: resuming from %s at step %d", spath, step)
    elif resume:
        log.info("train: no state at %s; starting from step 0", spath)

    # data
    val_frames_list: list = []
    if cfg.synthetic:
        source: SyntheticSource | FolderSource = SyntheticSource(
            rng, cfg.tile_zyx, cfg.voxel_size_um, cfg.pool_size, cfg.refresh_every, randomize=cfg.randomize,
            min_shape=cfg.crop_zyx)
        if cfg.val_frames:
            val_frames_list = validation_frames(cfg.val_frames, cfg.tile_zyx, cfg.voxel_size_um,
                                                randomize=cfg.randomize)
        epoch_steps = cfg.epoch_steps or 10
        data_desc = source.describe()
    else:
        source = FolderSource(cfg.data_dir, cfg.voxel_size_um)  # type: ignore[arg-type]
        items = source.items
        n_val = max(1, int(round(0.2 * len(items)))) if len(items) > 1 and cfg.val_frames else 0
        val_samples, source.items = items[len(items) - n_val:], items[: len(items) - n_val]
        val_frames_list = [_FolderFrame(s, cfg.voxel_size_um) for s in val_samples]
        epoch_steps = cfg.epoch_steps or max(1, math.ceil(len(source.items) / cfg.batch))
        data_desc = f"{source.describe()}; {len(source.items)} for training, {n_val} held out for validation"

    val_before: dict[str, float] = {}
    if init is not None and val_frames_list and step == 0:  # the starting point, to compare with the end
        val_before, _ = evaluate_frames(model, val_frames_list, ri_norm)
        val_history.append({"step": 0, **json_safe(val_before)})
        log.info("train: validation of %s before fine-tuning %s", cfg.init, _fmt(val_before))
    elif init is not None:  # resumed: the starting point's validation is in the saved history
        val_before = {k: v for k, v in next((v for v in val_history if v.get("step") == 0), {}).items() if k != "step"}
    model.train()
    t0 = time.perf_counter()
    pbar = tqdm(total=cfg.steps, initial=step, desc="train", unit="step", dynamic_ncols=True,
                disable=(not _isatty()) if progress is None else not progress)
    ema = history[-1] if history else None
    val_summary: dict[str, float] = {}
    stopped_early = False
    try:
        while step < cfg.steps:
            if cfg.max_minutes is not None and (time.perf_counter() - t0) / 60.0 >= cfg.max_minutes:
                log.warning("train: wall-time budget of %.1f min reached at step %d; stopping", cfg.max_minutes, step)
                stopped_early = True
                break
            lr = _lr_at(cfg, step, epoch_steps)
            for g in opt.param_groups:
                g["lr"] = lr
            ri, d, w = random_crop_batch(source.samples(), cfg.batch, cfg.crop_zyx, rng,
                                         focus_fraction=cfg.focus_fraction, noise_fraction=cfg.noise_fraction)
            x = torch.from_numpy(_normalize(ri, *ri_norm))[:, None].contiguous(memory_format=torch.channels_last_3d)
            y = torch.from_numpy(d)[:, None]
            wt = torch.from_numpy(w)[:, None]
            opt.zero_grad(set_to_none=True)
            pred = model(x)
            loss = (wt * (pred - y).abs()).sum() / wt.sum()
            loss.backward()
            opt.step()
            step += 1
            value = float(loss.detach())
            if not math.isfinite(value):
                raise ConfigError(f"train: loss became {value} at step {step}; lower --lr or check the data")
            history.append(value)
            ema = value if ema is None else 0.9 * ema + 0.1 * value
            pbar.set_postfix(loss=f"{ema:.4f}", lr=f"{lr:.1e}")
            pbar.update(1)
            if step % 10 == 0:
                log.debug("step %d loss %.4f (ema %.4f) lr %.1e", step, value, ema, lr)
            if cfg.save_every and step % cfg.save_every == 0:
                save_state(spath, model, opt, step, rng, history, elapsed_prev + time.perf_counter() - t0, cfg,
                            val_history, epoch_steps)
            if cfg.val_every and step % cfg.val_every == 0 and val_frames_list and step < cfg.steps:
                val_summary, _ = evaluate_frames(model, val_frames_list, ri_norm)
                val_history.append({"step": step, **json_safe(val_summary)})
                log.info("train: step %d validation %s", step, _fmt(val_summary))
    except KeyboardInterrupt:
        save_state(spath, model, opt, step, rng, history, elapsed_prev + time.perf_counter() - t0, cfg,
                    val_history, epoch_steps)
        pbar.close()
        log.warning("train: interrupted at step %d; state saved to %s (continue with --resume)", step, spath)
        raise
    pbar.close()
    wall = elapsed_prev + time.perf_counter() - t0
    save_state(spath, model, opt, step, rng, history, wall, cfg, val_history, epoch_steps)

    rows: list[dict] = []
    if val_frames_list:
        val_summary, rows = evaluate_frames(model, val_frames_list, ri_norm)
        if not val_history or val_history[-1].get("step") != step:
            val_history.append({"step": step, **json_safe(val_summary)})
            save_state(spath, model, opt, step, rng, history, wall, cfg, val_history, epoch_steps)
        log.info("train: validation %s", _fmt(val_summary))
    tail = history[-50:]
    meta = {
        "voxel_size_um": list(cfg.voxel_size_um),
        "ri_normalization": {"offset": ri_norm[0], "scale": ri_norm[1]},
        "medium_ri": RI_OFFSET,
        "tile_zyx": list(cfg.tile_zyx),
        "description": (f"{cfg.preset if init is None else init.preset or 'network'} "
                        f"{'trained' if init is None else 'fine-tuned from ' + Path(init.record['path']).name} by deepis_rt.train on "
                        + ("synthetic data (deepis_rt.synth)" if cfg.synthetic else f"annotated data in {cfg.data_dir}")),
        "training": {
            "command": command or "",
            "config": json.loads(json.dumps(asdict(cfg))),
            "steps": int(step),
            "stopped_early": stopped_early,
            "wall_time_s": round(wall, 1),
            "data": data_desc,
            # what the inputs looked like (RI, medium, voxel size): the runtime's quality flags compare with it
            "input_range": describe_training_inputs([s.ri for s in source.samples()], [cfg.voxel_size_um],
                                                    medium_ri=RI_OFFSET if cfg.synthetic else None),
            "seeds": {
                "run": cfg.seed,
                "train_video_seeds": f"drawn from [0, {TRAIN_SEED_LIMIT}) by the run seed" if cfg.synthetic else None,
                "validation_video_seeds": ([VALIDATION_SEED_BASE + i for i in range(cfg.val_frames)]
                                           if cfg.synthetic else None),
                "heldout_video_seed_base": HELDOUT_SEED_BASE,
            },
            "loss": "edge-weighted L1 on the signed distance map (w = 1 + 10 within 3 voxels of a border)",
            "optimizer": f"Adam lr {cfg.lr} betas (0.5, 0.99), halved every {cfg.lr_halve_epochs} epochs "
                         f"of {epoch_steps} steps",
            "final_loss_mean_last_50": float(np.mean(tail)) if tail else None,
            "synthetic_frames_generated": getattr(source, "generated", None),
            "torch": str(torch.__version__),
            "threads": torch.get_num_threads(),
            "init": None if init is None else {**init.record, "validation_before": json_safe(val_before)},
        },
        "metrics": {"validation": json_safe(val_summary), "validation_history": val_history},
    }
    preset = (None if cfg.model_overrides else cfg.preset) if init is None else init.preset
    save_checkpoint(out, model, meta=meta, preset=preset)
    log.info("train: wrote %s (%d steps, %.0f s)", out, step, wall)
    figure = plot_training(history, val_history, out.with_name(out.name + ".loss.png"),
                           lr_halving_steps(cfg.lr_halve_epochs, epoch_steps, step),
                           title=f"{out.name}: {cfg.preset}, seed {cfg.seed}, {step} steps")
    log.info("train: training curves in %s", figure)
    return {"checkpoint": out, "steps": step, "wall_time_s": wall, "final_loss": meta["training"]["final_loss_mean_last_50"],
            "metrics": val_summary, "metrics_before": val_before, "validation_rows": rows, "history": history,
            "validation_history": val_history, "figure": figure}


class _FolderFrame:
    """A validation volume from a folder, shaped like a SynthFrame for :func:`evaluate_frames`."""

    def __init__(self, s: Sample, voxel_size_um: Sequence[float]) -> None:
        self.ri, self.distance_um, self.voxel_size_um = s.ri, s.distance_um, tuple(voxel_size_um)
        self.truth = {"frame": s.source, "contact": False}
        self.seed = -1


def _fmt(summary: dict[str, float]) -> str:
    keys = ("dice_cart_mean", "dice_target_mean", "is_area_error_median", "is_area_error_geometric_median")
    return ", ".join(f"{k} {summary[k]:.3f}" for k in keys if k in summary)
