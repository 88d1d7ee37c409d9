"""Reading and writing tomograms and label volumes (TIFF/OME-TIFF, NumPy, Tomocube TCF, MATLAB); fields too
large for memory read region by region (:mod:`deepis_rt.io.regions`)."""

from deepis_rt.io.readers import (
    SUFFIXES,
    TimePoint,
    iter_tomograms,
    read_labels,
    read_sidecar,
    read_tomogram,
    time_points,
)
from deepis_rt.io.regions import RegionSource, open_region_source
from deepis_rt.io.tomogram import MAX_VOLUME_BYTES, Tomogram
from deepis_rt.io.writers import FORMATS, suffix_for, write_labels, write_tomogram

__all__ = [
    "Tomogram",
    "MAX_VOLUME_BYTES",
    "SUFFIXES",
    "FORMATS",
    "read_tomogram",
    "iter_tomograms",
    "time_points",
    "TimePoint",
    "read_labels",
    "open_region_source",
    "RegionSource",
    "read_sidecar",
    "write_tomogram",
    "write_labels",
    "suffix_for",
]
