"""Options of a :class:`~deepis_rt.stream.Stream`, checked when made (before any model loads)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from deepis_rt.errors import ConfigError
from deepis_rt.io.plausibility import config_voxel_size
from deepis_rt.io.ri import RI_RANGE, RIScale
from deepis_rt.stream.backlog import DEFAULT_BACKLOG_WINDOW_S
from deepis_rt.stream.retry import DEFAULT_RETRY_FOR_S
from deepis_rt.stream.scheduling import POLICIES
from deepis_rt.stream.timelapse_store import ZARR_MODES

__all__ = ["StreamSettings"]


@dataclass
class StreamSettings:
    """Options of a :class:`~deepis_rt.stream.Stream`; every field is documented where it is declared.

    Checked when made, so that a value out of range is said before any model loads; the object is
    what a :class:`~deepis_rt.stream.Stream` runs with (``Stream(..., settings=...)``).
    """

    #: voxel size (Z, Y, X) um for inputs that do not carry one (npy without sidecar, ...)
    voxel_size_um: tuple[float, float, float] | None = None
    #: medium RI for dry mass, when a file does not carry one (default: the model's meta)
    medium_ri: float | None = None
    #: inputs hold RI as value x ri_scale + ri_offset (files other than TCF, and submit()); None: RI as
    #: stored, integers in the RI x 10 000 range decoded, anything else that cannot be RI refused
    ri_scale: float | None = None
    #: see ri_scale; an offset alone means a scale of 1
    ri_offset: float | None = None
    #: seconds between frames, for files without a time stamp (default: file modification times)
    frame_interval_s: float | None = None
    #: process what is in the folder now, then stop
    once: bool = False
    #: stop after this many seconds without a new frame (None: run until stopped)
    idle_timeout_s: float | None = None
    #: stop after this many frames (None: no limit)
    max_frames: int | None = None
    #: a file is complete when unchanged this long (s)
    settle_s: float = 1.0
    #: longest pause between two scans of the folder (s)
    poll_s: float = 0.25
    #: use file-system events to notice new files early (polling still decides)
    use_events: bool = True
    #: most frames inferred together when they queue up (None: as the measured batch curve says,
    #: see stream/batching.py)
    max_batch: int | None = None
    #: tiles per second per batch size (``{1: 2.0, 4: 5.1}``) to size batches by; None: the curve
    #: ``deepis-rt bench`` measured for this model and backend here, else the fallback
    batch_curve: dict[int, float] | None = None
    #: which frame is processed next: "every" frame in order, or the "newest" first (frames passed
    #: over are processed when there is spare capacity, never dropped); see stream/scheduling.py
    policy: str = "every"
    #: frames must pile up this long (s) before the stream says it is behind (stream/backlog.py)
    backlog_window_s: float = DEFAULT_BACKLOG_WINDOW_S
    #: capacity of each queue between stages (frames); bounds memory
    queue_size: int = 4
    #: write masks/ label volumes (OME-TIFF)
    write_masks: bool = True
    #: the OME-Zarr time-lapse ``timelapse.ome.zarr``: "ri+labels", "labels" (no RI) or "off"
    zarr: str = "ri+labels"
    #: write ``report.html`` and ``report/`` at the end of the run (the CLI commands do)
    report: bool = False
    #: seconds between refreshes of summary.json and plots/ during a run
    refresh_s: float = 10.0
    #: IS area (um^2) whose crossing is reported as an event
    area_threshold_um2: float = 20.0
    #: how long frames wait for a backend that fails transiently (server restarting or unreachable,
    #: timed out, overloaded, out of memory) before they are recorded ``retry`` (s); see stream/retry.py
    retry_for_s: float = DEFAULT_RETRY_FOR_S
    #: read symbolic links in the source folder whose target lies outside it (default: skipped, with a warning)
    follow_symlinks: bool = False
    #: refuse a results folder that holds the results of another source folder (its frames would count
    #: as done, and new frames of the same names be skipped); off for the same frames moved elsewhere
    check_source: bool = True

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "stream") -> StreamSettings:
        """Settings from a mapping of field names (keyword arguments, a recorded run); unknown names are
        refused, naming them."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"{where}: unknown setting(s) {unknown}; the settings are {', '.join(known)}")
        return cls(**values)

    def replace(self, **changes: Any) -> StreamSettings:
        """A checked copy with ``changes`` (unknown names refused)."""
        return StreamSettings.from_dict({**vars(self), **changes})

    def __post_init__(self) -> None:
        if (self.max_batch is not None and self.max_batch < 1) or self.queue_size < 1:
            raise ConfigError("stream: max_batch and queue_size must be >= 1")
        if self.policy not in POLICIES:
            raise ConfigError(f"stream: policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if not (np.isfinite(self.backlog_window_s) and self.backlog_window_s >= 0):
            raise ConfigError(f"stream: backlog_window_s must be >= 0 seconds, got {self.backlog_window_s}")
        # written so that NaN fails too
        if not (np.isfinite(self.settle_s) and self.settle_s >= 0) or not self.poll_s > 0:
            raise ConfigError("stream: settle_s must be >= 0 and poll_s > 0")
        if self.max_frames is not None and self.max_frames < 1:
            raise ConfigError("stream: max_frames must be >= 1")
        if self.frame_interval_s is not None and not (np.isfinite(self.frame_interval_s) and self.frame_interval_s > 0):
            raise ConfigError(f"stream: frame_interval_s must be a positive number of seconds, got {self.frame_interval_s}")
        if self.idle_timeout_s is not None and not self.idle_timeout_s >= 0:
            raise ConfigError(f"stream: idle_timeout_s must be >= 0 seconds, got {self.idle_timeout_s}")
        if self.medium_ri is not None and not RI_RANGE[0] <= self.medium_ri <= RI_RANGE[1]:
            raise ConfigError(f"stream: medium_ri must be a refractive index ({RI_RANGE[0]}-{RI_RANGE[1]}), "
                              f"got {self.medium_ri}")
        RIScale.from_args(self.ri_scale, self.ri_offset, "stream")  # validates
        if self.zarr not in ZARR_MODES:
            raise ConfigError(f"stream: zarr must be one of {', '.join(ZARR_MODES)}, got {self.zarr!r}")
        if not self.retry_for_s >= 0:
            raise ConfigError(f"stream: retry_for_s must be >= 0, got {self.retry_for_s}")
        if self.voxel_size_um is not None:
            self.voxel_size_um = config_voxel_size(self.voxel_size_um, "stream")
