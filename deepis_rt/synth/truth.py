"""Ground truth of a synthetic video next to what was measured on it.

A folder written by :func:`deepis_rt.synth.write_timelapse` (or the demo's camera
folder) carries ``synth.json`` with the video's kinetics (``a_max_um2``,
``tau_half_s``, ``onset_s``, ``frame_interval_s``). :func:`kinetics_truth` reads it;
:func:`compare_kinetics` puts the truth next to a synapse's fitted A_max and
tau_half (``summary.json``'s ``truth`` block, the demo's printout).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["kinetics_truth", "compare_kinetics"]


def kinetics_truth(folder: str | Path) -> dict[str, Any] | None:
    """The kinetics of the synthetic video in ``folder`` (its ``synth.json``), or None.

    None when the folder has no ``synth.json`` or it was not written by
    ``deepis_rt.synth`` (a real acquisition has no truth); a damaged file is
    logged and ignored.
    """
    path = Path(folder) / "synth.json"
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("truth | %s: not readable (%s); no truth reported", path, exc)
        return None
    if not isinstance(meta, Mapping) or meta.get("generator") != "deepis_rt.synth":
        return None
    keys = ("seed", "a_max_um2", "tau_half_s", "onset_s", "frame_interval_s")
    return {k: meta.get(k) for k in keys}


def _pair(true: float | None, fitted: float | None, err: float | None) -> dict[str, Any]:
    out: dict[str, Any] = {"true": true, "fitted": fitted, "fit_err": err, "rel_error": None, "z": None}
    if true is not None and fitted is not None and math.isfinite(fitted) and true:
        out["rel_error"] = (fitted - true) / true
        if err is not None and math.isfinite(err) and err > 0:
            out["z"] = (fitted - true) / err
    return out


def compare_kinetics(truth: Mapping[str, Any], synapses: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Truth next to the fit of the synapse that lasted longest.

    Parameters
    ----------
    truth : mapping
        From :func:`kinetics_truth`.
    synapses : sequence of mapping
        ``summary.json``'s ``synapses`` entries (``A_max_um2``, ``A_max_err_um2``,
        ``tau_half_s``, ``tau_half_err_s``, ``n_frames``, ...).

    Returns
    -------
    dict
        ``truth`` (the video's values), ``synapse_id`` compared (None when no
        synapse was found), and ``A_max_um2`` / ``tau_half_s`` each as
        ``{true, fitted, fit_err, rel_error, z}`` (``z`` = error in fit sigmas).
    """
    best = max(synapses, key=lambda s: s.get("n_frames") or 0, default=None)
    fit = best or {}
    return {
        "truth": dict(truth),
        "synapse_id": None if best is None else best.get("synapse_id"),
        "A_max_um2": _pair(truth.get("a_max_um2"), fit.get("A_max_um2"), fit.get("A_max_err_um2")),
        "tau_half_s": _pair(truth.get("tau_half_s"), fit.get("tau_half_s"), fit.get("tau_half_err_s")),
    }
