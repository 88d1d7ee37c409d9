"""Fine-tuning: the checkpoint a training run starts from (``deepis-rt train --init CKPT``).

A run may start from the bundled demo checkpoint (``"bundled"``), a checkpoint of the published
DeepIS code (``.pth.tar``, :mod:`deepis_rt.published`) or any deepis-rt checkpoint. The network keeps
that checkpoint's architecture and input normalisation, so its weights see the RI exactly as they
were trained to. The voxel size is the checkpoint's unless the run gives another (a lab's data at
its own resolution): the network then adapts to it, and the new checkpoint records it. Loading goes through :func:`deepis_rt.checkpoint.load_checkpoint`
(``torch.load(weights_only=True)`` only).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepis_rt.core.meta import DistanceOutput
from deepis_rt.errors import ConfigError

__all__ = ["InitCheckpoint", "load_init"]

log = logging.getLogger(__name__)

#: The ``--init`` value that names the checkpoint shipped with the package.
BUNDLED = "bundled"


@dataclass
class InitCheckpoint:
    """The starting point of a fine-tuning run."""

    model: Any  # DeepIS, in training mode
    preset: str | None
    ri_offset: float
    ri_scale: float
    voxel_size_um: tuple[float, float, float]
    tile_zyx: tuple[int, int, int]
    #: recorded in the new checkpoint's ``meta["training"]["init"]``
    record: dict[str, Any]


def load_init(spec: str | Path, voxel_size_um: Sequence[float] | None = None) -> InitCheckpoint:
    """Load the checkpoint a run starts from.

    Parameters
    ----------
    spec : str or path-like
        ``"bundled"`` or the path of a deepis-rt or published-DeepIS checkpoint.
    voxel_size_um : (z, y, x), optional
        The run's voxel size; None takes the checkpoint's (a published file records none: give it).

    Raises
    ------
    CheckpointError
        The file cannot be loaded (see :func:`~deepis_rt.checkpoint.load_checkpoint`).
    ConfigError
        The network's output is not a distance in um (state it first: ``deepis-rt convert``).
    """
    from deepis_rt.checkpoint import bundled_checkpoint_path, load_checkpoint

    path = bundled_checkpoint_path() if str(spec) == BUNDLED else Path(spec)
    ckpt = load_checkpoint(path)
    where = f"train --init {path}"
    assumed = set(ckpt.meta.assumed or ())
    out = ckpt.meta.distance_output or DistanceOutput()
    if out.unit != "um" or out.scale != 1.0:
        raise ConfigError(f"{where}: the network's output is a distance in {out.unit} x {out.scale}, "
                          "and training fits distances in um; state it with 'deepis-rt convert' first")
    own = ckpt.meta.voxel_size_um
    vs = own if voxel_size_um is None else tuple(float(v) for v in voxel_size_um)
    if "voxel_size_um" not in assumed and not np.allclose(vs, own, rtol=0.02):
        log.warning("%s: the network was trained at %s um voxels and is fine-tuned at %s um; the new checkpoint "
                    "records %s um (inputs are resampled to it)", where, list(own), list(vs), list(vs))
    norm = ckpt.meta.ri_normalization
    if "ri_normalization" in assumed:
        log.warning("%s: the input scaling of this published checkpoint is not recorded; fine-tuning assumes "
                    "x = (RI - %g) / %g (state it with 'deepis-rt convert' if it differs)", where,
                    norm.offset, norm.scale)
    model = ckpt.build().train()
    record = {"path": str(path), "sha256": ckpt.sha256, "preset": ckpt.preset,
              "description": ckpt.meta.description,
              "validation": ckpt.meta.metrics.get("validation") or {}}
    log.info("train: starting from %s (%s)", path, record["description"] or ckpt.preset or "checkpoint")
    return InitCheckpoint(model=model, preset=ckpt.preset, ri_offset=norm.offset,
                          ri_scale=norm.scale, voxel_size_um=vs,  # type: ignore[arg-type]
                          tile_zyx=ckpt.tile_zyx, record=record)
