"""The chunked store of a large field: distance map, labels and cell labels in one zarr group.

Conventions as the results folder's time-lapse store (:mod:`deepis_rt.stream.timelapse_store`):
zarr format 2, NGFF 0.4 metadata with axes ``z, y, x`` in micrometres, so napari, Fiji and
BigDataViewer open it calibrated. Layout of ``field.ome.zarr``::

    distance/0               float32 signed distance map (um), the root image
    labels/segmentation/0    uint8: 0 background, 1 CAR-T, 2 target, 3 IS (NGFF label image)
    labels/cells/0           int32: cell ids (0 outside cells), as ``FrameAnalysis.cell_labels``
    provisional              int32 scratch of the labelling (per-block component ids; removed at the end)

Every array has the plan's chunks, and blocks are whole chunks, so blocks written concurrently
(threads, processes or machines sharing the folder) never write the same chunk.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import zarr

from deepis_rt.core.labels import LABEL_COLORS, LABEL_NAMES
from deepis_rt.errors import ConfigError

__all__ = ["FieldStore", "STORE_NAME"]

log = logging.getLogger(__name__)

#: The store's folder name under an output folder.
STORE_NAME = "field.ome.zarr"
_DISTANCE, _LABELS, _CELLS, _PROVISIONAL = "distance/0", "labels/segmentation/0", "labels/cells/0", "provisional"
_LAYOUT = 1


def _multiscales(name: str, voxel_size_um: Sequence[float]) -> list[dict[str, Any]]:
    return [{
        "version": "0.4",
        "name": name,
        "axes": [{"name": ax, "type": "space", "unit": "micrometer"} for ax in "zyx"],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [float(v) for v in voxel_size_um]}]}],
    }]


class FieldStore:
    """A field's zarr store: create it once (:meth:`create`), open it anywhere (:meth:`open`).

    Attributes
    ----------
    path : Path
    shape, chunks : tuple of int
    voxel_size_um : tuple of float
    distance, labels, cell_labels, provisional : zarr.Array
    """

    def __init__(self, path: str | Path, group: zarr.Group) -> None:
        self.path = Path(path)
        self.group = group
        self.distance = group[_DISTANCE]
        self.labels = group[_LABELS]
        self.cell_labels = group[_CELLS]
        self.provisional = group[_PROVISIONAL] if _PROVISIONAL in group else None
        self.shape = tuple(self.distance.shape)
        self.chunks = tuple(self.distance.chunks)
        self.voxel_size_um = tuple(group.attrs["deepis_rt"]["voxel_size_um"])

    @classmethod
    def create(cls, path: str | Path, shape: Sequence[int], chunks: Sequence[int],
               voxel_size_um: Sequence[float], attrs: dict[str, Any] | None = None) -> FieldStore:
        """A new, empty store at ``path`` (an existing store there is replaced)."""
        path = Path(path)
        shape, chunks = tuple(int(s) for s in shape), tuple(int(c) for c in chunks)
        root = zarr.open_group(path, mode="w", zarr_format=2)
        root.attrs["multiscales"] = _multiscales("distance", voxel_size_um)
        root.attrs["deepis_rt"] = {"layout": _LAYOUT, "voxel_size_um": [float(v) for v in voxel_size_um],
                                   **(attrs or {})}
        root.create_group("distance").create_array("0", shape=shape, chunks=chunks, dtype="float32", fill_value=0)
        labels = root.create_group("labels")
        labels.attrs["labels"] = ["segmentation", "cells"]
        seg = labels.create_group("segmentation")
        seg.attrs["multiscales"] = _multiscales("segmentation", voxel_size_um)
        seg.attrs["image-label"] = {
            "version": "0.4",
            "colors": [{"label-value": v, "rgba": list(c)} for v, c in LABEL_COLORS.items()],
            "properties": [{"label-value": v, "name": n} for v, n in LABEL_NAMES.items()],
            "source": {"image": "../../"},
        }
        seg.create_array("0", shape=shape, chunks=chunks, dtype="uint8", fill_value=0)
        cells = labels.create_group("cells")
        cells.attrs["multiscales"] = _multiscales("cells", voxel_size_um)
        cells.attrs["image-label"] = {"version": "0.4", "source": {"image": "../../"}}
        cells.create_array("0", shape=shape, chunks=chunks, dtype="int32", fill_value=0)
        root.create_array(_PROVISIONAL, shape=shape, chunks=chunks, dtype="int32", fill_value=0)
        return cls(path, root)

    @classmethod
    def open(cls, path: str | Path, mode: str = "r+") -> FieldStore:
        """An existing store (``mode="r"`` to read only)."""
        path = Path(path)
        try:
            root = zarr.open_group(path, mode=mode, zarr_format=2)
            meta = root.attrs["deepis_rt"]
        except (FileNotFoundError, KeyError, ValueError) as exc:
            raise ConfigError(f"field store | {path}: not a deepis-rt field store ({exc}); "
                              "create it with FieldStore.create or `deepis-rt segment-field`") from exc
        if meta.get("layout") != _LAYOUT:
            raise ConfigError(f"field store | {path}: layout {meta.get('layout')!r}, expected {_LAYOUT}")
        return cls(path, root)

    @property
    def attrs(self) -> dict[str, Any]:
        """The store's ``deepis_rt`` attributes."""
        return dict(self.group.attrs["deepis_rt"])

    def update_attrs(self, **values: Any) -> None:
        meta = dict(self.group.attrs["deepis_rt"])
        meta.update(values)
        self.group.attrs["deepis_rt"] = meta

    def drop_provisional(self) -> None:
        """Remove the labelling's scratch array (its disk space)."""
        if self.provisional is not None:
            del self.group[_PROVISIONAL]
            self.provisional = None

    def __repr__(self) -> str:
        return f"<FieldStore {self.path} shape={self.shape} chunks={self.chunks}>"

