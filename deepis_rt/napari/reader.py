"""napari readers (npe2 ``readers`` contributions): a results folder, or a tomogram file.

Each ``get_*_reader(path)`` answers cheaply (a suffix, two ``stat`` calls) whether it can read
``path`` and returns the function that does, or None; the reading itself returns layer-data tuples
(:mod:`deepis_rt.napari.layers`), the volumes as dask arrays read a frame at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deepis_rt.napari.layers import results_layers, tomogram_layers
from deepis_rt.napari.results import RunResults, is_results_folder

__all__ = ["get_results_reader", "get_tomogram_reader", "read_results", "read_tomogram_file"]

log = logging.getLogger(__name__)

PathLike = str | Path


def _single(path: PathLike | list[PathLike]) -> Path | None:
    if isinstance(path, (list, tuple)):
        return Path(path[0]) if len(path) == 1 else None
    return Path(path)


def get_results_reader(path: PathLike | list[PathLike]) -> Callable[[Any], list] | None:
    """The reader of a ``deepis-rt stream`` / ``demo`` results folder, or None for anything else."""
    p = _single(path)
    return read_results if p is not None and is_results_folder(p) else None


def get_tomogram_reader(path: PathLike | list[PathLike]) -> Callable[[Any], list] | None:
    """The reader of tomogram files deepis-rt reads (TCF, OME-TIFF, NPY/NPZ, MAT), or None."""
    from deepis_rt.io import SUFFIXES

    paths = [Path(p) for p in path] if isinstance(path, (list, tuple)) else [Path(path)]
    if not paths or not all(p.suffix.lower() in SUFFIXES and p.is_file() for p in paths):
        return None
    return read_tomogram_file


def read_results(path: PathLike | list[PathLike]) -> list[tuple]:
    """Layer data of a results folder (see :func:`deepis_rt.napari.layers.results_layers`)."""
    p = _single(path)
    if p is None:
        raise ValueError("deepis-rt opens one results folder at a time")
    return results_layers(RunResults.open(p))


def read_tomogram_file(path: PathLike | list[PathLike]) -> list[tuple]:
    """Layer data of one or several tomogram files (one Image layer each)."""
    paths = path if isinstance(path, (list, tuple)) else [path]
    layers: list[tuple] = []
    for p in paths:
        layers.extend(tomogram_layers(p))
    return layers
