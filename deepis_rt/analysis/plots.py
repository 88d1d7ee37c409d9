"""PNG time courses per synapse (matplotlib, Agg backend; no display needed)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from deepis_rt.analysis.kinetics import KineticFit, fit_saturation, parameter_text
from deepis_rt.analysis.tracking import SynapseHistory, SynapseTracker

log = logging.getLogger(__name__)

__all__ = ["plot_synapse", "plot_synapses", "synapse_plot_name"]


def synapse_plot_name(history: SynapseHistory) -> str:
    """File name of a synapse's plot, e.g. ``synapse_t1_g2.png``."""
    return f"synapse_t{history.tcell_track}_g{history.target_track}.png"


def _fit_label(fit: KineticFit, unit: str) -> str:
    if not fit.success:
        return f"fit: {re.sub(r'[;:].*', '', fit.message)}"
    return (
        f"fit $A_{{max}}$ = {parameter_text(fit.a_max, fit.a_max_err, unit, pm='±')}, "
        f"$\\tau_{{1/2}}$ = {parameter_text(fit.tau_half_s, fit.tau_half_err_s, 's', pm='±')}, $R^2$ = {fit.r_squared:.2f}"
    )


def plot_synapse(
    history: SynapseHistory, path: str | Path, fit: KineticFit | None = None, dpi: int = 150,
    fit_onset_s: float | None = None,
) -> Path:
    """Write a PNG with the synapse's IS area (and fit), IS dry mass and cell volumes.

    Parameters
    ----------
    history : SynapseHistory
        One synapse's time course (``SynapseTracker.histories``).
    path : str or Path
        Output PNG file; parent folders are created.
    fit : KineticFit, optional
        Saturation fit of the IS area from onset; fitted here when omitted (with the onset free
        within the median frame interval before the first frame in contact, as the tracker does).
    dpi : int
        Resolution.
    fit_onset_s : float, optional
        First frame of the contact ``fit`` describes, when not the first contact (a pair that parted
        and met again: ``SynapseSummary.fit_onset_s``); the curve is drawn from there.

    Returns
    -------
    Path
        The written file.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    t = np.asarray(history.time_s, dtype=float)
    t_rel = t - history.onset_s if t.size else t
    area = np.asarray(history.is_area_um2, dtype=float)
    err = np.asarray(history.is_area_err_um2, dtype=float)
    has_err = err.shape == area.shape and area.size > 0 and bool(np.isfinite(err).all())
    if fit is None:  # as SynapseTracker.summary() does: onset free within the frame interval before
        window = float(np.median(np.diff(t))) if t.size > 1 else 0.0
        fit = fit_saturation(t_rel, area, sigma=err if has_err else None, onset_window_s=window)

    fig = Figure(figsize=(7.0, 8.0), layout="constrained")
    ax_a, ax_m, ax_v = fig.subplots(3, 1, sharex=True)
    if has_err:  # the estimator's uncertainty, the weights of the fit
        ax_a.errorbar(t_rel, area, yerr=err, fmt="o", ms=4, capsize=2, color="tab:blue",
                      label="IS area (measured, ± is_area_err_um2)")
    else:
        ax_a.plot(t_rel, area, "o", ms=4, color="tab:blue", label="IS area (measured)")
    if fit.success and t_rel.size:
        shift = 0.0 if fit_onset_s is None or not np.isfinite(fit_onset_s) else float(fit_onset_s) - history.onset_s
        tt = np.linspace(shift, max(float(t_rel.max()), shift + 1e-9), 200)
        ax_a.plot(tt, fit.predict(tt - shift), "-", color="tab:red", label=_fit_label(fit, "µm²"))
    else:
        ax_a.plot([], [], " ", label=_fit_label(fit, "µm²"))
    ax_a.set_ylabel("IS area (µm²)")
    ax_a.legend(loc="lower right", fontsize=8)
    ax_a.set_ylim(bottom=0)

    ax_m.plot(t_rel, history.is_dry_mass_pg, "s-", ms=3, color="tab:green", label="IS dry mass")
    ax_m.set_ylabel("IS dry mass (pg)")
    ax_m.legend(loc="lower right", fontsize=8)

    ax_v.plot(
        t_rel,
        history.tcell_volume_um3,
        "o-",
        ms=3,
        color="tab:orange",
        label=f"CAR-T (track {history.tcell_track})",
    )
    ax_v.plot(
        t_rel,
        history.target_volume_um3,
        "^-",
        ms=3,
        color="tab:purple",
        label=f"target (track {history.target_track})",
    )
    ax_v.set_ylabel("cell volume (µm³)")
    ax_v.set_xlabel(f"time from contact onset (s)  [onset at t = {history.onset_s:.1f} s]")
    ax_v.legend(loc="best", fontsize=8)

    for ax in (ax_a, ax_m, ax_v):
        ax.grid(True, alpha=0.3)
    fig.suptitle(
        f"Immunological synapse: CAR-T track {history.tcell_track} – target track {history.target_track}"
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    log.debug("wrote %s", out)
    return out


def plot_synapses(tracker: SynapseTracker, out_dir: str | Path, dpi: int = 150) -> list[Path]:
    """One PNG per synapse of ``tracker`` into ``out_dir`` (see :func:`synapse_plot_name`)."""
    summaries = {(s.tcell_track, s.target_track): s for s in tracker.summary()}
    paths = []
    for key, history in sorted(tracker.histories.items()):
        s = summaries.get(key)
        paths.append(
            plot_synapse(history, Path(out_dir) / synapse_plot_name(history), s.area_fit if s else None, dpi=dpi,
                         fit_onset_s=s.fit_onset_s if s else None)
        )
    return paths
