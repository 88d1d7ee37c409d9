"""The report's figures (matplotlib, Agg): each function draws one PNG from plain data."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepis_rt.analysis.kinetics import parameter_text
from deepis_rt.core.labels import LABEL_COLORS

__all__ = ["kinetics_figure", "contact_figure", "mip_tracks_figure", "frame_status_figure", "label_rgba",
           "FIT_COLOR", "STATUS_COLORS"]

#: Colour of the fitted curve (the report's test looks for it in a screenshot).
FIT_COLOR = "#d62728"
#: Colour of each frame status in the status strip.
STATUS_COLORS = {"ok": "#2ca02c", "failed": "#d62728", "retry": "#ff7f0e"}
_KIND_COLORS = {"tcell": tuple(c / 255 for c in LABEL_COLORS[1][:3]), "target": tuple(c / 255 for c in LABEL_COLORS[2][:3])}


def _figure(width: float, height: float) -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig: Any, path: Path, dpi: int = 110) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def label_rgba(labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Labels as an RGBA overlay in the store's colours (background transparent)."""
    lut = np.zeros((256, 4), np.float32)
    for value, rgba in LABEL_COLORS.items():
        lut[value] = [c / 255 for c in rgba[:3]] + [alpha if value else 0.0]
    return lut[np.asarray(labels, np.uint8)]


def _saturation(t: np.ndarray, a_max: float, tau_s: float, t0: float) -> np.ndarray:
    dt = np.clip(t - t0, 0, None)
    return a_max * dt / (dt + tau_s)


def kinetics_figure(path: Path, synapse: Mapping[str, Any], rows: Sequence[Mapping[str, float]],
                    truth: Mapping[str, Any] | None = None, samples: int = 400) -> Path:
    """IS area with the weighted fit, its 1-sigma band and the onset; IS mean RI; IS dry mass.

    ``rows``: this synapse's ``synapses.csv`` rows (floats); ``truth``: the synthetic video's kinetics
    (``a_max_um2``, ``tau_half_s``, ``onset_s``) for the synapse compared with it, else None.
    """
    t = np.array([r["time_s"] for r in rows], float)
    area = np.array([r["is_area_um2"] for r in rows], float)
    err = np.array([r.get("is_area_err_um2", math.nan) for r in rows], float)
    fig = _figure(7.5, 7.0)
    ax_a, ax_ri, ax_m = fig.subplots(3, 1, sharex=True)
    if np.isfinite(err).all() and err.size:
        ax_a.errorbar(t, area, yerr=err, fmt="o", ms=4, capsize=2, color="tab:blue", label="IS area ± 1σ")
    else:
        ax_a.plot(t, area, "o", ms=4, color="tab:blue", label="IS area")
    a_max, tau = synapse.get("A_max_um2"), synapse.get("tau_half_s")
    onset = synapse.get("onset_s")
    fit_onset = synapse.get("fit_onset_s", onset)
    offset = (synapse.get("area_fit") or {}).get("onset_offset_s") or 0.0
    if a_max is not None and tau is not None and fit_onset is not None and t.size:
        t0 = float(fit_onset) + float(offset)
        tt = np.linspace(t0, max(float(t.max()), t0 + 1e-6), 200)
        weighted = (synapse.get("area_fit") or {}).get("weighted")
        a_err, tau_err = synapse.get("A_max_err_um2"), synapse.get("tau_half_err_s")
        a_txt = parameter_text(a_max, a_err, pm="±")
        tau_txt = parameter_text(tau, tau_err, pm="±")
        ax_a.plot(tt, _saturation(tt, a_max, tau, t0), "-", lw=2.2, color=FIT_COLOR,
                  label=f"{'weighted ' if weighted else ''}fit: A_max {a_txt} µm², τ½ {tau_txt} s")
        if a_err is not None and tau_err is not None:
            rng = np.random.default_rng(0)
            a_s = np.abs(rng.normal(a_max, a_err, samples))
            tau_s = np.abs(rng.normal(tau, tau_err, samples)) + 1e-9
            curves = _saturation(tt[None], a_s[:, None], tau_s[:, None], t0)
            lo, hi = np.percentile(curves, [15.87, 84.13], axis=0)
            ax_a.fill_between(tt, lo, hi, color=FIT_COLOR, alpha=0.18, lw=0, label="fit ± 1σ (A_max, τ½)")
    if truth is not None and truth.get("a_max_um2") and truth.get("tau_half_s") and truth.get("onset_s") is not None \
            and t.size:
        tt = np.linspace(min(float(t.min()), truth["onset_s"]), float(t.max()), 200)
        ax_a.plot(tt, _saturation(tt, truth["a_max_um2"], truth["tau_half_s"], truth["onset_s"]), "--", color="k",
                  lw=1.4, label=f"truth: A_max {truth['a_max_um2']:.1f} µm², τ½ {truth['tau_half_s']:.1f} s")
    for ax in (ax_a, ax_ri, ax_m):
        if onset is not None:
            ax.axvline(onset, color="0.4", ls=":", lw=1.2)
        ax.grid(True, alpha=0.3)
    if onset is not None:
        observed = synapse.get("onset_observed")
        ax_a.text(onset, 0.02, " onset" + ("" if observed is not False else " (formed earlier)"),
                  transform=ax_a.get_xaxis_transform(), fontsize=8, color="0.3")
    ax_a.set_ylabel("IS area (µm²)")
    ax_a.set_ylim(bottom=0)
    ax_a.legend(loc="lower right", fontsize=7.5)
    ax_ri.plot(t, [r.get("is_mean_ri", math.nan) for r in rows], "o-", ms=3, color="tab:purple")
    ax_ri.set_ylabel("IS mean RI")
    ax_m.plot(t, [r.get("is_dry_mass_pg", math.nan) for r in rows], "s-", ms=3, color="tab:green")
    ax_m.set_ylabel("IS dry mass (pg)")
    ax_m.set_xlabel("time (s)")
    fig.suptitle(f"Synapse {synapse.get('synapse_id')}: CAR-T track {synapse.get('tcell_track')} – "
                 f"target track {synapse.get('target_track')}", fontsize=11)
    return _save(fig, path)


def contact_figure(path: Path, panels: Sequence[tuple[float, Any]], per_row: int = 6) -> Path:
    """Side view above en-face view of the contact, one column per time point, ``per_row`` a row.

    ``panels``: ``(time_s, ContactPlanes)`` pairs.
    """
    n = len(panels)
    cols = min(n, per_row)
    groups = -(-n // cols)
    fig = _figure(max(4.0, 1.9 * cols + 0.4), 3.9 * groups + 0.3)
    axes = fig.subplots(2 * groups, cols, squeeze=False)
    # one grey scale for every panel, so that RI reads alike across time points
    ri_all = [p.ravel() for _, planes in panels for p in (planes.side_ri, planes.enface_ri) if p is not None]
    vmin, vmax = np.percentile(np.concatenate(ri_all), [1, 99.5]) if ri_all else (0.0, 1.0)
    for ax in axes.ravel():
        ax.set_axis_off()
    for i, (time_s, planes) in enumerate(panels):
        group, col = divmod(i, cols)
        extent = (-planes.half_width_um, planes.half_width_um, -planes.half_width_um, planes.half_width_um)
        for row, (lab, ri) in enumerate(((planes.side_labels, planes.side_ri),
                                         (planes.enface_labels, planes.enface_ri))):
            ax = axes[2 * group + row][col]
            ax.set_axis_on()
            if ri is not None:
                ax.imshow(ri, cmap="gray", extent=extent, vmin=vmin, vmax=vmax)
            else:
                ax.imshow(np.zeros_like(lab), cmap="gray", extent=extent, vmin=0, vmax=1)
            ax.imshow(label_rgba(lab), extent=extent, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"{time_s:.0f} s", fontsize=9)
            if col == 0:
                ax.set_ylabel("side" if row == 0 else "en face", fontsize=9)
    fig.suptitle(f"Contact over time ({2 * panels[0][1].half_width_um:.0f} µm planes)", fontsize=10)
    return _save(fig, path)


def mip_tracks_figure(path: Path, image: np.ndarray, voxel_size_um: Sequence[float], is_ri: bool,
                      tracks: Mapping[tuple[int, str], Sequence[tuple[float, float]]], title: str) -> Path:
    """Maximum-intensity projection (z) with each cell's track (centroid y, x in um) drawn over it."""
    fig = _figure(6.0, 5.6)
    ax = fig.subplots()
    _, vy, vx = voxel_size_um
    extent = (0, image.shape[1] * vx, image.shape[0] * vy, 0)
    if is_ri:
        ax.imshow(image, cmap="gray", extent=extent, vmin=np.percentile(image, 1), vmax=np.percentile(image, 99.8))
    else:
        ax.imshow(label_rgba(image, alpha=0.8), extent=extent, interpolation="nearest")
    for (track, kind), points in sorted(tracks.items()):
        yx = np.asarray(points, float)
        color = _KIND_COLORS.get(kind, (1, 1, 1))
        ax.plot(yx[:, 1], yx[:, 0], "-", color=color, lw=1.6)
        ax.plot(yx[-1, 1], yx[-1, 0], "o", color=color, ms=5)
        ax.annotate(f"{'CAR-T' if kind == 'tcell' else kind} {track}", (yx[-1, 1], yx[-1, 0]), color=color,
                    fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("x (µm)")
    ax.set_ylabel("y (µm)")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def frame_status_figure(path: Path, frames: Sequence[Mapping[str, Any]]) -> Path:
    """One coloured cell per frame (ok / failed / retry) above the latency of each frame."""
    fig = _figure(7.5, 2.8)
    ax_s, ax_l = fig.subplots(2, 1, sharex=True, height_ratios=[1, 2])
    numbers = [int(f["frame"]) for f in frames]
    for number, f in zip(numbers, frames, strict=True):
        ax_s.bar(number, 1, width=1.0, color=STATUS_COLORS.get(f["status"], "0.6"), edgecolor="white", lw=0.3)
    ax_s.set_yticks([])
    ax_s.set_ylim(0, 1)
    from matplotlib.patches import Patch

    handles = [Patch(color=c, label=s) for s, c in STATUS_COLORS.items()]
    ax_s.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.05), fontsize=7, frameon=False)
    ax_s.set_title("frame status", fontsize=9)
    latency = [f.get("latency_ms") for f in frames]
    ax_l.plot(numbers, [math.nan if v is None else v for v in latency], "o-", ms=3, color="tab:blue")
    ax_l.set_ylabel("latency (ms)")
    ax_l.set_xlabel("frame")
    ax_l.grid(True, alpha=0.3)
    return _save(fig, path)
