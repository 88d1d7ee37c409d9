"""``report.html``: a results folder at a glance, in one self-contained file.

Reads only the results folder (tables, ``summary.json``, the time-lapse store or ``masks/``), so
``deepis-rt report OUT`` works on any results folder, also of a run that is still going. The PNGs go to
``OUT/report/`` and are embedded in the HTML as data URIs: the file can be mailed or attached to a
notebook alone.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from deepis_rt.analysis.kinetics import parameter_text
from deepis_rt.core.files import atomic_write
from deepis_rt.report import figures
from deepis_rt.report.slices import contact_planes, mip
from deepis_rt.stream.timelapse_store import STORE_NAME

__all__ = ["write_report", "REPORT_NAME", "FIGURES_DIR"]

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
FIGURES_DIR = "report"


def _rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: _value(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _value(text: str | None) -> Any:
    if text is None or text == "":
        return None
    try:
        number = float(text)
    except ValueError:
        return text
    return number


class _Frames:
    """Label volumes (and RI) per frame number, from the time-lapse store or from ``masks/``."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.store: Any = None
        self.voxel_size_um: tuple[float, float, float] | None = None
        path = out / STORE_NAME
        if path.is_dir():
            try:
                import zarr

                root = zarr.open_group(path, mode="r")
                meta = root.attrs["deepis_rt"]
                self.store = root
                self.has_ri = meta.get("root_image") == "ri"
                self.written = {t for t, v in enumerate(meta.get("time_s") or []) if v is not None}
                scale = root.attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
                self.voxel_size_um = tuple(float(v) for v in scale[1:])  # type: ignore[assignment]
            except Exception as exc:
                log.warning("report | %s: not readable (%s); using masks/", path, exc)
                self.store = None
        if self.store is None:
            self.has_ri = False
            self.written = {int(p.name[6:12]) for p in (out / "masks").glob("frame_*.ome.tif")}

    def get(self, frame: int) -> tuple[np.ndarray, np.ndarray | None, tuple[float, float, float]] | None:
        if frame not in self.written:
            return None
        if self.store is not None:
            labels = np.asarray(self.store["labels/segmentation/0"][frame])
            ri = np.asarray(self.store["0"][frame]) if self.has_ri else None
            return labels, ri, self.voxel_size_um  # type: ignore[return-value]
        import tifffile

        from deepis_rt.stream.results import ome_voxel_size_um

        with tifffile.TiffFile(self.out / "masks" / f"frame_{frame:06d}.ome.tif") as tif:
            labels = tif.asarray()
            voxel = ome_voxel_size_um(tif.ome_metadata or "") or (1.0, 1.0, 1.0)
        return labels, None, voxel


def _pick(frames: list[int], most: int) -> list[int]:
    if len(frames) <= most:
        return frames
    idx = np.unique(np.linspace(0, len(frames) - 1, most).round().astype(int))
    return [frames[i] for i in idx]


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt(value: Any, digits: int = 1, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return html.escape(str(value)) + unit


def _synapse_table(synapses: list[Mapping[str, Any]]) -> str:
    head = ("<tr><th>synapse</th><th>CAR-T / target track</th><th>onset (s)</th><th>frames</th>"
            "<th>A<sub>max</sub> (µm²)</th><th>τ<sub>½</sub> (s)</th><th>R²</th></tr>")
    rows = []
    for s in synapses:
        onset = _fmt(s.get("onset_s")) + (" (formed earlier)" if s.get("onset_observed") is False else "")
        a = html.escape(parameter_text(s.get("A_max_um2"), s.get("A_max_err_um2"), pm="±"))
        tau = html.escape(parameter_text(s.get("tau_half_s"), s.get("tau_half_err_s"), pm="±"))
        rows.append(f"<tr><td>{_fmt(s.get('synapse_id'))}</td><td>{_fmt(s.get('tcell_track'))} / "
                    f"{_fmt(s.get('target_track'))}</td><td>{onset}</td><td>{_fmt(s.get('n_frames'))}</td>"
                    f"<td>{a}</td><td>{tau}</td><td>{_fmt(s.get('r_squared'), 2)}</td></tr>")
    return f"<table>{head}{''.join(rows)}</table>" if rows else "<p>No synapse was found.</p>"


def _truth_table(truth: Mapping[str, Any]) -> str:
    rows = []
    for key, name, unit in (("A_max_um2", "A<sub>max</sub>", "µm²"), ("tau_half_s", "τ<sub>½</sub>", "s")):
        e = truth.get(key) or {}
        rel, err = e.get("rel_error"), e.get("fit_err")
        rows.append(f"<tr><td>{name} ({unit})</td><td>{_fmt(e.get('true'))}</td>"
                    f"<td>{html.escape(parameter_text(e.get('fitted'), err, pm='±'))}</td>"
                    f"<td>{'–' if rel is None else f'{100 * rel:+.0f} %'}</td></tr>")
    return ("<table><tr><th></th><th>truth</th><th>fit</th><th>error</th></tr>" + "".join(rows) + "</table>"
            f"<p>Compared: synapse {_fmt(truth.get('synapse_id'))} (the one followed longest).</p>")


def _run_facts(summary: Mapping[str, Any], frames: list[Mapping[str, Any]]) -> str:
    record = summary.get("reproducibility") or {}
    used = record.get("used") or {}
    run = summary.get("run") or {}
    lat = run.get("latency_ms") or {}
    host = record.get("host") or {}
    versions = record.get("versions") or {}
    command = (record.get("command") or {}).get("argv")
    items = [
        ("frames", f"{summary.get('frames_ok', 0)} ok, {summary.get('frames_failed', 0)} failed, "
                   f"{summary.get('frames_retry', 0)} to retry"),
        ("backend", f"{used.get('backend') or summary.get('backend')} ({used.get('precision') or '–'}) on "
                    f"{used.get('device') or summary.get('device')}"),
        ("latency file → results", f"p50 {_fmt(lat.get('p50'), 0)} ms, p95 {_fmt(lat.get('p95'), 0)} ms "
                                   f"(this run)"),
        ("source", summary.get("source_path") or summary.get("source") or "frames given in memory"),
        ("host", f"{host.get('cpu', '–')}; GPU: {host.get('gpu') or 'none'}"),
        ("software", f"deepis-rt {record.get('deepis_rt', '–')}, torch {versions.get('torch', '–')}, "
                     f"onnxruntime {versions.get('onnxruntime', '–')}, openvino {versions.get('openvino', '–')}, "
                     f"TensorRT {versions.get('tensorrt', '–')}"),
    ]
    if command is not None:
        items.append(("command", "deepis-rt " + " ".join(command)))
    return "<table>" + "".join(f"<tr><th>{k}</th><td>{html.escape(str(v))}</td></tr>" for k, v in items) + "</table>"


_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;
font-size:.9em}img{max-width:100%;display:block;margin:.4em 0}.note{color:#666;font-size:.85em}"""


def write_report(out: str | os.PathLike, max_time_points: int = 16) -> Path:
    """Write ``OUT/report.html`` (self-contained) and its PNGs in ``OUT/report/``.

    Parameters
    ----------
    out : path-like
        A results folder of ``deepis-rt stream`` (or ``demo``, or one item of ``batch``).
    max_time_points : int
        Most time points shown in the contact slices (evenly spaced over the run; all when fewer).

    Returns
    -------
    Path
        The written ``report.html``.
    """
    from deepis_rt.errors import InputError

    out = Path(out)
    if not (out / "frames.csv").is_file():
        raise InputError(f"report | {out}: no frames.csv here; give the --out folder of a deepis-rt stream, "
                         "demo or batch item")
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        summary = {}
    frames = _rows(out / "frames.csv")
    syn_rows = _rows(out / "synapses.csv")
    cell_rows = _rows(out / "cells.csv")
    fig_dir = out / FIGURES_DIR
    sections: list[str] = []

    # kinetics per synapse
    truth = summary.get("truth") or None
    parts = []
    for s in summary.get("synapses") or []:
        rows = sorted((r for r in syn_rows if r.get("tcell_track") == s.get("tcell_track")
                       and r.get("target_track") == s.get("target_track") and r.get("time_s") is not None),
                      key=lambda r: r["time_s"])
        if not rows:
            continue
        show_truth = (truth or {}).get("truth") if truth and truth.get("synapse_id") == s.get("synapse_id") else None
        png = figures.kinetics_figure(fig_dir / f"synapse_{s.get('synapse_id')}.png", s, rows, show_truth)
        parts.append(_img(png, f"synapse {s.get('synapse_id')} kinetics"))
    sections.append("<h2>Synapses</h2>" + _synapse_table(summary.get("synapses") or []) + "".join(parts)
                    + ("<p class=note>Points: IS area ± its one-sigma uncertainty (the weights of the fit); "
                       "red: A(t) = A<sub>max</sub>(t − t<sub>0</sub>)/(t − t<sub>0</sub> + τ<sub>½</sub>) with its "
                       "±1σ band from the parameter errors; dotted: the onset; dashed: the synthetic truth.</p>"
                       if parts else ""))
    if truth:
        sections.append("<h2>Synthetic truth next to the fit</h2>" + _truth_table(truth))

    # contact slices and the MIP with tracks
    volumes = _Frames(out)
    ok = [int(f["frame"]) for f in frames if f.get("status") == "ok" and int(f["frame"]) in volumes.written]
    times = {int(f["frame"]): f.get("time_s") or 0.0 for f in frames}
    with_is = sorted({int(r["frame"]) for r in syn_rows if r.get("frame") is not None} & set(ok))
    panels = []
    for frame in _pick(with_is or ok, max_time_points):
        got = volumes.get(frame)
        planes = contact_planes(got[0], got[2], got[1]) if got else None
        if planes is not None:
            panels.append((times[frame], planes))
    if panels:
        png = figures.contact_figure(fig_dir / "contact.png", panels)
        shown = f"{len(panels)} of {len(with_is or ok)} time points" if len(with_is or ok) > len(panels) else \
            "every time point"
        sections.append("<h2>The contact over time</h2>" + _img(png, "contact slices")
                        + f"<p class=note>Top: side view through the IS along the CAR-T → target axis (z up); "
                          f"bottom: en-face view of the contact, perpendicular to that axis. {shown}; "
                          f"{'RI in grey, ' if volumes.has_ri else ''}labels in colour.</p>")
    if ok:
        frame = max(with_is, key=lambda f: sum(r.get("is_area_um2") or 0 for r in syn_rows
                                                if r.get("frame") == f)) if with_is else ok[-1]
        labels, ri, voxel = volumes.get(frame)  # type: ignore[misc]
        tracks: dict[tuple[int, str], list[tuple[float, float]]] = {}
        for r in sorted(cell_rows, key=lambda r: r.get("time_s") or 0.0):
            if r.get("track_id") is not None and r.get("y_um") is not None:
                tracks.setdefault((int(r["track_id"]), str(r.get("kind"))), []).append((r["y_um"], r["x_um"]))
        png = figures.mip_tracks_figure(fig_dir / "mip_tracks.png", mip(ri if ri is not None else labels), voxel,
                                        ri is not None, tracks,
                                        f"{'RI' if ri is not None else 'labels'}: maximum along z, frame {frame} "
                                        f"({times.get(frame, 0.0):.0f} s); cell tracks over the whole run")
        sections.append("<h2>Tracks</h2>" + _img(png, "maximum-intensity projection with tracks"))

    if frames:
        png = figures.frame_status_figure(fig_dir / "frame_status.png", frames)
        sections.append("<h2>Frames</h2>" + _img(png, "frame status and latency") + _run_facts(summary, frames))

    title = f"deepis-rt report: {html.escape(out.resolve().name)}"
    page = (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{title}</title><style>{_CSS}</style>"
            f"</head><body><h1>{title}</h1><p class=note>Results folder {html.escape(str(out.resolve()))}; "
            "outputs described in deepis-rt's docs/results.md.</p>" + "".join(sections) + "</body></html>")
    path = out / REPORT_NAME
    atomic_write(path, page.encode())
    log.info("report | wrote %s", path)
    return path
