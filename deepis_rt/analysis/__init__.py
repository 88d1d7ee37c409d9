"""Synapse analysis: masks, measurements, tracking, kinetics, plots, tables.

Model-free: everything works on a signed distance map (um; positive inside
the CAR-T cell, negative inside the target cell). See docs/analysis.md.

Main entry points: :func:`analyze` (one frame) and :class:`SynapseTracker`
(across frames). Plots are imported lazily (matplotlib).
"""

from __future__ import annotations

import importlib
from typing import Any

from deepis_rt.analysis.contact import ContactEstimate, contact_surface
from deepis_rt.analysis.frame import Cell, FrameAnalysis, Synapse, analyze
from deepis_rt.analysis.kinetics import KineticFit, fit_saturation, saturation
from deepis_rt.analysis.masks import cell_masks, is_mask, label_volume
from deepis_rt.analysis.measure import contact_area_um2, surface_area_um2
from deepis_rt.analysis.tables import CELL_COLUMNS, SYNAPSE_COLUMNS, cell_rows, synapse_rows
from deepis_rt.analysis.tracking import (
    SynapseEvent,
    SynapseHistory,
    SynapseSummary,
    SynapseTracker,
    TrackedFrame,
)

__all__ = [
    "analyze",
    "Cell",
    "Synapse",
    "FrameAnalysis",
    "cell_masks",
    "is_mask",
    "label_volume",
    "surface_area_um2",
    "contact_area_um2",
    "contact_surface",
    "ContactEstimate",
    "KineticFit",
    "fit_saturation",
    "saturation",
    "SynapseTracker",
    "SynapseEvent",
    "TrackedFrame",
    "SynapseHistory",
    "SynapseSummary",
    "CELL_COLUMNS",
    "SYNAPSE_COLUMNS",
    "cell_rows",
    "synapse_rows",
    "plot_synapse",
    "plot_synapses",
]

_LAZY = {"plot_synapse": "deepis_rt.analysis.plots", "plot_synapses": "deepis_rt.analysis.plots"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'deepis_rt.analysis' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
