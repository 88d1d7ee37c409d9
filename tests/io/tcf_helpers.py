"""Writers of Tomocube TCF test files in the layouts current acquisition software writes.

No public sample file is reachable from the test machines, so these follow the published
description of the format (see :mod:`deepis_rt.io.tcf`): a group of ``TILE_NN`` datasets per
time point, uint8 tiles with ``RIMin`` or uint16 tiles, padded edge tiles, a ``SamplingStep``
2 preview tile, and optional gaps and compression.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

VS = (0.5, 0.25, 0.25)
MEDIUM_RI = 1.337


def random_ri(shape: Sequence[int], seed: int = 0, span: float = 0.06) -> np.ndarray:
    """Smoothly varying RI between the medium and medium + ``span`` (float32)."""
    rng = np.random.default_rng(seed)
    return (MEDIUM_RI + span * rng.random(tuple(shape))).astype(np.float32)


def tile_boxes(shape: Sequence[int], tile: Sequence[int]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(offset, last) per tile of a regular grid over ``shape`` (last inclusive; edge tiles smaller)."""
    starts = [range(0, n, t) for n, t in zip(shape, tile, strict=True)]
    boxes = []
    for origin in itertools.product(*starts):
        last = tuple(min(o + t, n) - 1 for o, t, n in zip(origin, tile, shape, strict=True))
        boxes.append((tuple(origin), last))
    return boxes


def encode(ri: np.ndarray, uint8: bool, ri_min: float) -> np.ndarray:
    """Stored tile values: uint8 (RI - RIMin) x 1000, or uint16 RI x 10 000."""
    if uint8:
        return np.clip(np.round((ri - ri_min) * 1000), 0, 255).astype(np.uint8)
    return np.round(ri * 10000).astype(np.uint16)


def expected(ri: np.ndarray, uint8: bool, ri_min: float) -> np.ndarray:
    """What a correct reader returns for ``ri`` stored with :func:`encode`."""
    enc = encode(ri, uint8, ri_min).astype(np.float64)
    return (enc / 1000 + ri_min if uint8 else enc / 10000).astype(np.float32)


def write_tiled_tcf(
    path: Path,
    volumes: Sequence[np.ndarray],
    *,
    uint8: bool,
    tile: Sequence[int] = (8, 16, 16),
    pad_to: Sequence[int] | None = (8, 16, 16),
    gaps: Sequence[int] = (),
    preview: bool = True,
    medium_ri: float | None = MEDIUM_RI,
    time_interval_s: float = 3.0,
    times_s: Sequence[float] | None = None,
    compression: dict[str, Any] | None = None,
    data_size_attrs: bool = True,
    format_version: str = "1.4.6.1",
    voxel_size_um: Sequence[float] = VS,
    keep_expected: bool = True,
) -> dict[str, Any]:
    """Write ``volumes`` (RI, one per time point) as a tiled TCF.

    Parameters
    ----------
    uint8
        ScalarType true (uint8 tiles, RI = v / 1000 + RIMin) or false (uint16, RI = v / 10 000).
    tile, pad_to
        Tile grid; every tile dataset is padded with garbage to ``pad_to`` (edge tiles padded).
    gaps
        Indices of grid tiles not written at all (their voxels must come back as the medium RI).
    preview
        Add a SamplingStep 2 tile (a decimated copy of the whole volume) that readers must skip.
    keep_expected
        Return the expected reconstructions (False for big files: ``volumes`` may then be a lazy
        sequence, one volume in memory at a time).

    Returns
    -------
    dict
        ``expected``: per time point, what a correct reader returns; ``ri_min``; ``boxes`` (the
        written tiles' (offset, last)).
    """
    shape = volumes[0].shape
    boxes_all = tile_boxes(shape, tile)
    boxes = [b for i, b in enumerate(boxes_all) if i not in set(gaps)]
    out: dict[str, Any] = {"expected": [], "boxes": boxes, "ri_min": []}
    rng = np.random.default_rng(123)
    comp = dict(compression or {})
    with h5py.File(path, "w") as f:
        f.attrs["FormatVersion"] = np.array([format_version.encode()])
        f.attrs["DeviceSerial"] = np.array([b"HT-X1-TEST"])
        f.attrs["SoftwareVersion"] = np.array([b"TomoStudio X 1.0 (test writer)"])
        dev = f.create_group("Info/Device")
        if medium_ri is not None:
            dev.attrs["RI"] = np.array([medium_ri])
        dev.attrs["NA"] = np.array([0.95])
        dev.attrs["Magnification"] = np.array([40.0])
        dev.attrs["Wavelength"] = np.array([0.45])
        grp = f.create_group("Data/3D")
        for ax, n, v in zip("ZYX", shape, voxel_size_um, strict=True):
            grp.attrs[f"Size{ax}"] = np.array([n], np.int64)
            grp.attrs[f"Resolution{ax}"] = np.array([v])
        grp.attrs["TimeInterval"] = np.array([time_interval_s])
        grp.attrs["DataCount"] = np.array([len(volumes)], np.int64)
        for t, ri in enumerate(volumes):
            ri_min = float(np.floor(ri.min() * 1000) / 1000)
            out["ri_min"].append(ri_min)
            g = grp.create_group(f"{t:06d}")
            g.attrs["ScalarType"] = np.array([uint8])
            g.attrs["RIMin"] = np.array([ri_min])
            g.attrs["RIMax"] = np.array([float(ri.max())])
            if data_size_attrs:
                for ax, n in zip("ZYX", shape, strict=True):
                    g.attrs[f"DataSize{ax}"] = np.array([n], np.int64)
            if times_s is not None:
                g.attrs["Time"] = np.array([times_s[t]])
            enc = encode(ri, uint8, ri_min)
            n_tiles = 0
            for offset, last in boxes:
                region = tuple(slice(a, b + 1) for a, b in zip(offset, last, strict=True))
                data = enc[region]
                if pad_to is not None:
                    padded_shape = tuple(max(p, s) for p, s in zip(pad_to, data.shape, strict=True))
                    # padding holds garbage: a reader that uses it returns wrong values
                    padded = rng.integers(1, 200, size=padded_shape).astype(enc.dtype)
                    padded[tuple(slice(0, s) for s in data.shape)] = data
                    data = padded
                ds = g.create_dataset(f"TILE_{n_tiles:02d}", data=data, **comp)
                ds.attrs["SamplingStep"] = np.array([1], np.int64)
                for k, ax in enumerate("ZYX"):
                    ds.attrs[f"DataIndexOffsetPoint{ax}"] = np.array([offset[k]], np.int64)
                    ds.attrs[f"DataIndexLastPoint{ax}"] = np.array([last[k]], np.int64)
                n_tiles += 1
            if preview:
                small = enc[::2, ::2, ::2]
                ds = g.create_dataset(f"TILE_{n_tiles:02d}", data=small, **comp)
                ds.attrs["SamplingStep"] = np.array([2], np.int64)
                for k, ax in enumerate("ZYX"):
                    ds.attrs[f"DataIndexOffsetPoint{ax}"] = np.array([0], np.int64)
                    ds.attrs[f"DataIndexLastPoint{ax}"] = np.array([small.shape[k] - 1], np.int64)
                n_tiles += 1
            g.attrs["NumberOfTiles"] = np.array([n_tiles], np.int64)
            if not keep_expected:
                continue
            exp = expected(ri, uint8, ri_min)
            if gaps:
                covered = np.zeros(shape, bool)
                for offset, last in boxes:
                    covered[tuple(slice(a, b + 1) for a, b in zip(offset, last, strict=True))] = True
                exp[~covered] = np.float32(medium_ri if medium_ri is not None else np.nan)
            out["expected"].append(exp)
    return out


def write_classic_tcf(path: Path, volumes: Sequence[np.ndarray], *, as_uint16: bool,
                      medium_ri: float | None = MEDIUM_RI, time_interval_s: float = 3.0) -> None:
    """The classic layout: one dataset per time point (float RI, or uint16 RI x 10 000 from 1.3 on)."""
    with h5py.File(path, "w") as f:
        f.attrs["FormatVersion"] = np.array([b"1.3.2" if as_uint16 else b"1.2"])
        if medium_ri is not None:
            f.create_group("Info/Device").attrs["RI"] = np.array([medium_ri])
        grp = f.create_group("Data/3D")
        for ax, n, v in zip("ZYX", volumes[0].shape, VS, strict=True):
            grp.attrs[f"Size{ax}"] = np.array([n], np.int64)
            grp.attrs[f"Resolution{ax}"] = np.array([v])
        grp.attrs["TimeInterval"] = np.array([time_interval_s])
        grp.attrs["DataCount"] = np.array([len(volumes)], np.int64)
        for t, ri in enumerate(volumes):
            data = np.round(ri * 10000).astype(np.uint16) if as_uint16 else ri
            grp.create_dataset(f"{t:06d}", data=data)
