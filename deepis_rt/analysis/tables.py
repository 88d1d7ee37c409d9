"""Rows of ``cells.csv`` and ``synapses.csv`` (DESIGN.md section 3; stable column names).

The streaming stage writes these rows with :mod:`csv`'s ``DictWriter`` using
:data:`CELL_COLUMNS` / :data:`SYNAPSE_COLUMNS` as field names. Missing values
(no RI, no track yet) are written as empty cells. ``quality`` is ``ok`` or the
``;``-joined reasons of :mod:`deepis_rt.analysis.quality`.
"""

from __future__ import annotations

import math

from deepis_rt.analysis.frame import FrameAnalysis
from deepis_rt.analysis.tracking import TrackedFrame

__all__ = ["CELL_COLUMNS", "SYNAPSE_COLUMNS", "cell_rows", "synapse_rows"]

CELL_COLUMNS: tuple[str, ...] = (
    "frame",
    "time_s",
    "cell_id",
    "track_id",
    "kind",
    "volume_um3",
    "surface_um2",
    "mean_ri",
    "dry_mass_pg",
    "z_um",
    "y_um",
    "x_um",
)

SYNAPSE_COLUMNS: tuple[str, ...] = (
    "frame",
    "time_s",
    "synapse_id",
    "tcell_track",
    "target_track",
    "is_area_um2",
    "is_mean_ri",
    "is_dry_mass_pg",
    "is_density_fg_um2",
    "is_area_err_um2",
    "quality",
)


def _clean(value):
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    return value


def _analysis(tracked: TrackedFrame | FrameAnalysis) -> FrameAnalysis:
    return tracked.analysis if isinstance(tracked, TrackedFrame) else tracked


def cell_rows(frame: int, time_s: float, tracked: TrackedFrame | FrameAnalysis) -> list[dict]:
    """One dict per cell, keys exactly :data:`CELL_COLUMNS` in order.

    Parameters
    ----------
    frame : int
        Frame number written in the ``frame`` column.
    time_s : float
        Acquisition time in seconds.
    tracked : TrackedFrame or FrameAnalysis
        The frame; track ids are empty when it was not tracked.
    """
    rows = []
    for c in _analysis(tracked).cells:
        values = (
            frame,
            time_s,
            c.cell_id,
            c.track_id,
            c.kind,
            c.volume_um3,
            c.surface_um2,
            c.mean_ri,
            c.dry_mass_pg,
            c.z_um,
            c.y_um,
            c.x_um,
        )
        rows.append({k: _clean(v) for k, v in zip(CELL_COLUMNS, values, strict=True)})
    return rows


def synapse_rows(frame: int, time_s: float, tracked: TrackedFrame | FrameAnalysis) -> list[dict]:
    """One dict per synapse, keys exactly :data:`SYNAPSE_COLUMNS` in order."""
    rows = []
    for s in _analysis(tracked).synapses:
        values = (
            frame,
            time_s,
            s.synapse_id,
            s.tcell_track,
            s.target_track,
            s.is_area_um2,
            s.is_mean_ri,
            s.is_dry_mass_pg,
            s.is_density_fg_um2,
            s.is_area_err_um2,
            getattr(s, "quality", ""),
        )
        rows.append({k: _clean(v) for k, v in zip(SYNAPSE_COLUMNS, values, strict=True)})
    return rows
