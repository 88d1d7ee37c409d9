"""The resumable state of a training run (``<out>.state.pt``) and its learning-rate schedule.

Written and read by :func:`deepis_rt.train.train`; :mod:`deepis_rt.train.plots` redraws a run's
curves from it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from deepis_rt.errors import CheckpointError

__all__ = ["STATE_FORMAT", "save_state", "load_state", "lr_halving_steps"]

log = logging.getLogger(__name__)

#: ``format`` field of a training state file.
STATE_FORMAT = "deepis-rt-train-state"


def lr_halving_steps(halve_epochs: int, epoch_steps: int, steps: int) -> list[int]:
    """Steps at which the learning rate halves (for the training-curve figure)."""
    every = max(1, int(halve_epochs)) * max(1, int(epoch_steps))
    return list(range(every, int(steps) + 1, every))


def save_state(path: Path, model: Any, opt: Any, step: int, rng: np.random.Generator, history: list,
               elapsed_s: float, cfg: Any, val_history: list | None = None,
               epoch_steps: int | None = None) -> None:
    """Write the resumable state of a run (weights, optimiser, RNGs, loss history; ``cfg``: its TrainConfig)."""
    import torch

    payload = {
        "format": STATE_FORMAT,
        "step": int(step),
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": json.dumps(rng.bit_generator.state),
        "history": [float(v) for v in history],
        "elapsed_s": float(elapsed_s),
        "config": json.dumps(asdict(cfg)),
        "val_history": json.dumps(val_history or []),
        "epoch_steps": int(epoch_steps or 0),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    log.debug("train: saved state at step %d to %s", step, path)


def load_state(path: Path) -> dict:
    """A run's state as :func:`save_state` wrote it (``torch.load(weights_only=True)``)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"train | {path}: cannot load the training state ({type(exc).__name__}: {exc}); "
                              "delete it to start afresh") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"train | {path}: not a deepis-rt training state")
    return state
