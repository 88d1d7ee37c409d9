"""napari layer data (``(data, kwargs, layer_type)`` tuples) for a results folder or a tomogram file.

Every layer of one run shares world coordinates: time in seconds (frame x frame interval) and
Z, Y, X in micrometres, with ``units`` and ``axis_labels`` set, so that layers line up and the
viewer's scale bar and status bar read in physical units. Tracks and Points hold positions in um and
time as the frame number, with the frame interval as the time axis' scale: the time slider then
steps frame by frame whatever the interval (napari steps by the smallest scale of any layer). Plain arrays and dicts: napari itself is
not imported here (the reader's tests run without Qt).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepis_rt.core.labels import LABEL_COLORS as CORE_LABEL_COLORS
from deepis_rt.core.labels import LABEL_NAMES as CORE_LABEL_NAMES
from deepis_rt.napari.results import RunResults, _dask

__all__ = [
    "LABEL_NAMES",
    "LABEL_COLORS",
    "AXES_4D",
    "UNITS_4D",
    "results_layers",
    "tomogram_layers",
    "contact_points",
    "labels_kwargs",
]

log = logging.getLogger(__name__)

LayerData = tuple[Any, dict[str, Any], str]

#: Label values of deepis-rt label volumes and what they are.
LABEL_NAMES = {0: "background", **CORE_LABEL_NAMES}
#: Fixed colours (RGBA 0-1), the same in every view (and in the OME-Zarr store's ``image-label``): CAR-T
#: green, target magenta, IS yellow; values outside 0-3 grey.
LABEL_COLORS = {**{v: tuple(c / 255 for c in rgba) for v, rgba in CORE_LABEL_COLORS.items()}, None: (0.5, 0.5, 0.5, 1.0)}
AXES_4D = ("t", "z", "y", "x")
UNITS_4D = ("second", "micrometer", "micrometer", "micrometer")
#: RI display range: the medium (1.337) to dense cytoplasm
RI_CONTRAST = (1.335, 1.40)


def labels_kwargs(name: str, scale: Sequence[float], ndim: int = 4) -> dict[str, Any]:
    """Labels-layer settings: fixed colours and a name per value (shown in the status bar)."""
    return {
        "name": name,
        "scale": tuple(scale),
        "units": UNITS_4D[-ndim:],
        "axis_labels": AXES_4D[-ndim:],
        "colormap": dict(LABEL_COLORS),
        "features": {"index": list(LABEL_NAMES), "name": list(LABEL_NAMES.values())},
        "opacity": 0.5,
        "blending": "translucent_no_depth",
    }


def _world(ndim: int = 4) -> dict[str, Any]:
    return {"units": UNITS_4D[-ndim:], "axis_labels": AXES_4D[-ndim:]}


def results_layers(run: RunResults) -> list[LayerData]:
    """The layers of a results folder: RI image, labels, cell and synapse tracks, synapse points.

    Volumes are dask arrays read a frame at a time; layers a run has no data for are left out
    (e.g. the RI when the camera folder is gone, with a warning that says so).
    """
    layers: list[LayerData] = []
    dt = run.frame_interval_s
    meta = {"deepis_rt": {"results": str(run.root), "frame_interval_s": dt}}
    ri, ri_vs, why = run.ri()
    if ri is not None:
        vs = ri_vs or (run.label_grid() or (None, (1.0, 1.0, 1.0)))[1]
        layers.append((ri, {"name": f"RI ({run.root.name})", "scale": (dt, *vs), **_world(),
                            "colormap": "gray", "contrast_limits": RI_CONTRAST, "metadata": meta}, "image"))
    else:
        log.warning("napari | %s: RI not shown: %s", run.root, why)
    labels = run.labels()
    if labels is not None:
        _, vs = run.label_grid()  # type: ignore[misc]
        layers.append((labels, {**labels_kwargs(f"labels ({run.root.name})", (dt, *vs)), "metadata": meta}, "labels"))
    tracks = cell_tracks(run)
    if tracks is not None:
        layers.append(tracks)
    points, syn_tracks = synapse_layers(run)
    if syn_tracks is not None:
        layers.append(syn_tracks)
    if points is not None:
        layers.append(points)
    return layers


def cell_tracks(run: RunResults) -> LayerData | None:
    """Tracks layer of the cells: [track_id, frame, z, y, x] (um; scale: the frame interval); IS area and
    mean RI per point."""
    cells = run.cell_table()
    if not len(cells["frame"]):
        return None
    area = _cell_is_area(run, cells)
    data = np.column_stack([cells["track_id"], cells["frame"], cells["z_um"], cells["y_um"], cells["x_um"]])
    order = np.lexsort((data[:, 1], data[:, 0]))
    props = {"is_area_um2": area, "mean_ri": cells["mean_ri"], "volume_um3": cells["volume_um3"],
             "dry_mass_pg": cells["dry_mass_pg"], "kind": cells["kind"].astype(float)}
    props = {k: np.nan_to_num(v[order], nan=0.0) for k, v in props.items()}
    return (data[order], {"name": f"cell tracks ({run.root.name})", "properties": props, "color_by": "kind",
                          "colormap": "PiYG", "tail_length": 30, "tail_width": 3, **_world(),
                          "scale": (run.frame_interval_s, 1.0, 1.0, 1.0)}, "tracks")


def _cell_is_area(run: RunResults, cells: dict[str, np.ndarray]) -> np.ndarray:
    """IS area of each cell row: the area of the synapse its track is part of in that frame (0: none)."""
    syn = run.synapse_table()
    area: dict[tuple[int, int], float] = {}
    for i in range(len(syn.get("frame", ()))):
        for side in ("tcell_track", "target_track"):
            key = (int(syn["frame"][i]), int(syn[side][i]))
            area[key] = area.get(key, 0.0) + float(np.nan_to_num(syn["is_area_um2"][i]))
    return np.array([area.get((int(f), int(t)), 0.0) for f, t in zip(cells["frame"], cells["track_id"], strict=True)])


def contact_points(run: RunResults) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Where each synapse of synapses.csv lies, in um: the point on the line between the two cells'
    centroids that divides it in the ratio of their equivalent-sphere radii (the contact of two
    touching spheres). Returns ([frame, z, y, x] rows, the synapse table's columns for those rows).

    The tables record cell centroids, not synapse centroids; this places a point without reading
    any label volume. Synapses whose cells have no row (no track) are left out.
    """
    cells = run.cell_table()
    syn = run.synapse_table()
    if not syn:
        return np.zeros((0, 4)), {}
    where = {}
    for i in range(len(cells["frame"])):
        c = np.array([cells["z_um"][i], cells["y_um"][i], cells["x_um"][i]])
        r = (3.0 * max(cells["volume_um3"][i], 0.0) / (4.0 * math.pi)) ** (1.0 / 3.0)
        where[(int(cells["frame"][i]), int(cells["track_id"][i]))] = (c, r)
    rows, keep = [], []
    for i in range(len(syn["frame"])):
        f = int(syn["frame"][i])
        if not (np.isfinite(syn["tcell_track"][i]) and np.isfinite(syn["target_track"][i])):
            continue
        a = where.get((f, int(syn["tcell_track"][i])))
        b = where.get((f, int(syn["target_track"][i])))
        if a is None or b is None:
            continue
        (ca, ra), (cb, rb) = a, b
        p = ca + (cb - ca) * (ra / (ra + rb) if ra + rb > 0 else 0.5)
        rows.append([f, *p])
        keep.append(i)
    return np.array(rows, float).reshape(-1, 4), {k: v[keep] for k, v in syn.items()}


def synapse_layers(run: RunResults) -> tuple[LayerData | None, LayerData | None]:
    """(Points of the synapses with their measurements as features, Tracks of the synapses)."""
    pos, feats = contact_points(run)
    if not len(pos):
        return None, None
    scale = (run.frame_interval_s, 1.0, 1.0, 1.0)
    feats = {**feats, "synapse_track": _synapse_track_ids(feats)}
    text = {"string": "{is_area_um2:.0f} µm²", "color": "white", "size": 9, "translation": (0, 0, -1.5, 0)}
    points = (pos, {"name": f"synapses ({run.root.name})", "features": feats, "size": 1.5,  # pos: [frame, z, y, x]
                    "face_color": "#ffd700", "border_color": "black",
                    "text": text if "is_area_um2" in feats else None, **_world(), "scale": scale}, "points")
    props = {k: np.nan_to_num(feats[k], nan=0.0) for k in ("is_area_um2", "is_mean_ri", "is_dry_mass_pg")
             if k in feats}
    data = np.column_stack([feats["synapse_track"], pos])
    order = np.lexsort((data[:, 1], data[:, 0]))
    tracks = (data[order], {"name": f"synapse tracks ({run.root.name})",
                            "properties": {k: v[order] for k, v in props.items()},
                            "color_by": "is_area_um2" if "is_area_um2" in props else "track_id",
                            "colormap": "viridis", "tail_length": 30, "tail_width": 4, **_world(),
                            "scale": scale}, "tracks")
    return points, tracks


def _synapse_track_ids(feats: dict[str, np.ndarray]) -> np.ndarray:
    """One id per (CAR-T track, target track) pair, numbered from 1 in order of first appearance."""
    ids: dict[tuple[int, int], int] = {}
    out = []
    for a, b in zip(feats["tcell_track"], feats["target_track"], strict=True):
        out.append(ids.setdefault((int(a), int(b)), len(ids) + 1))
    return np.array(out, dtype=float)


# ---------------------------------------------------------------------- single tomogram files
def tomogram_layers(path: str | Path, voxel_size_um: Sequence[float] | None = None) -> list[LayerData]:
    """A tomogram file (TCF, OME-TIFF, NPY, MAT; one or several time points) as an RI Image layer.

    The first time point is read now (shape, voxel size, contrast); the others when shown.
    Without a voxel size in the file (NPY without sidecar, MAT), the axes are in voxels.
    """
    dask, da = _dask()

    from deepis_rt.io import time_points

    path = Path(path)
    points = time_points(path, voxel_size_um)
    first = points[0].read()
    vs = first.voxel_size_um
    lo, hi = np.percentile(first.ri, (0.5, 99.8)) if first.ri.size else (1.33, 1.40)
    kwargs: dict[str, Any] = {"name": path.name, "colormap": "gray", "contrast_limits": (float(lo), float(max(hi, lo + 1e-3))),
                              "metadata": {"deepis_rt": {"source": str(path), "voxel_size_um": vs}}}
    spatial_units = ("micrometer",) * 3 if vs is not None else ("pixel",) * 3
    if len(points) == 1:
        return [(first.ri, {**kwargs, "scale": vs or (1.0, 1.0, 1.0), "units": spatial_units,
                            "axis_labels": AXES_4D[1:]}, "image")]
    times = [p.time_s for p in points]
    known = all(t is not None for t in times)
    steps = np.diff(np.asarray(times, float)) if known else np.array([])
    dt = float(np.median(steps)) if len(steps) and np.all(steps > 0) else 1.0
    shape = first.ri.shape

    def _read(point: Any) -> np.ndarray:
        return point.read().ri

    read = dask.delayed(_read, pure=True)
    planes = [da.from_array(first.ri)] + [da.from_delayed(read(p), shape, np.float32) for p in points[1:]]
    time_unit = "second" if known and len(steps) and np.all(steps > 0) else "dimensionless"
    return [(da.stack(planes), {**kwargs, "scale": (dt, *(vs or (1.0, 1.0, 1.0))),
                                "units": (time_unit, *spatial_units), "axis_labels": AXES_4D}, "image")]
