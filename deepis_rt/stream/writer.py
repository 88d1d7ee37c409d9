"""The stream's last stage: link each frame into tracks, commit its rows and mask, count it.

One :class:`FrameWriter` per :class:`~deepis_rt.stream.Stream`, driven by the stream's writer
thread (frames arrive in completion order). Frames that arrive after later frames were tracked (a
``retry`` frame processed again) are tracked as they come, and :meth:`FrameWriter.relink` puts
every track back in frame order when the stream ends: from the results folder's tables, or, for a
stream without one, from the cells and synapses of every tracked frame kept in memory.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import numpy as np

from deepis_rt.stream.pipeline import FrameTask, mark_failed
from deepis_rt.stream.results import LABELS_TIFF, STAGES

__all__ = ["FrameWriter", "RetryInput"]

log = logging.getLogger(__name__)


def _about(task: FrameTask) -> str:
    """``stream | <source>: <error>``, without naming the source twice when the error already does."""
    error = task.error or "unknown error"
    return error if f"{task.source}:" in error else f"stream | {task.source}: {error}"


def _iso(t: float) -> str:
    """``2026-12-07T15:20:01.123Z``: when a frame's results were written (UTC, ms)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


class RetryInput:
    """What a frame given with ``submit()`` needs to be processed again after ``retry``.

    Held by its :class:`~deepis_rt.runtime.FrameResult` (``result.retry_input``) until
    :meth:`~deepis_rt.stream.Stream.resubmit` takes it; the volume is already checked and in RI.
    """

    __slots__ = ("volume", "voxel_size_um", "medium_ri")

    def __init__(self, task: FrameTask) -> None:
        self.volume = task.volume
        self.voxel_size_um = task.voxel_size_um
        self.medium_ri = task.medium_ri


class FrameWriter:
    """Track, write and count finished frames (see the module docstring).

    Parameters
    ----------
    results : ResultsFolder or None
        Where rows and masks go; None keeps results in memory only.
    settings : StreamSettings
        ``area_threshold_um2``, ``write_masks``, ``zarr`` and ``report`` are used.
    on_event : callable
        Receives the tracker's synapse events.
    """

    def __init__(self, results: Any, settings: Any, on_event: Any) -> None:
        from deepis_rt.analysis import SynapseTracker

        self.results = results
        self.settings = settings
        if results is not None and settings.zarr != "off":
            from deepis_rt.stream.timelapse_store import STORE_NAME, TimelapseStore

            results.timelapse = TimelapseStore(results.root / STORE_NAME, with_ri=settings.zarr == "ri+labels")
        self.on_event = on_event
        self.tracker = SynapseTracker(area_threshold_um2=settings.area_threshold_um2, on_event=on_event)
        self.n_ok = 0
        self.n_failed = 0
        self.n_retry = 0
        self.latencies_ms: list[float] = []
        self.qualities: list[str] = []  # the quality of every frame written in this run
        self.last_tracked_frame = -1
        self.relink_needed = False
        # without a results folder: (frame, time_s, cells and synapses) of every tracked frame, for relink()
        self._tracked: dict[int, tuple[float | None, Any]] = {}

    def replay(self, committed: list[dict[str, str]]) -> None:
        """Rebuild the tracker from the results folder of an earlier run (same track ids)."""
        from deepis_rt.stream.replay import replay_tracker

        assert self.results is not None
        replayed = replay_tracker(self.tracker, committed, self.results.cell_rows, self.results.synapse_rows)
        self.last_tracked_frame = max(replayed, default=-1)

    def finish(self, task: FrameTask, resubmitted: bool = False) -> Any:
        """Track ``task``, commit its rows (and mask), count it; returns its ``FrameResult``.

        ``resubmitted``: the frame was recorded ``retry`` before in this run (given again with
        ``resubmit()``), so it no longer counts as waiting.
        """
        from deepis_rt.analysis import SynapseTracker
        from deepis_rt.analysis.tables import cell_rows, synapse_rows
        from deepis_rt.runtime import FrameResult

        result = task.result
        if task.ok:
            t0 = time.perf_counter()
            if task.frame < self.last_tracked_frame:  # a frame recorded ``retry`` earlier, or deferred
                self.relink_needed = True
            self.last_tracked_frame = max(self.last_tracked_frame, task.frame)
            # a deferred frame is the past: it must not raise events nor bend the live tracks, so it
            # gets provisional track ids of its own until relink() puts every frame in order
            tracker = SynapseTracker(area_threshold_um2=self.settings.area_threshold_um2) if task.deferred \
                else self.tracker
            try:
                task.tracked = tracker.update(result, task.time_s, frame_number=task.frame)
            except Exception as exc:
                mark_failed(task, "track", exc)
            else:
                if self.results is None:
                    self._keep_for_relink(task.frame, task.time_s, result.analysis)
            task.timings_ms["track"] = (time.perf_counter() - t0) * 1e3
        if result is None:
            result = FrameResult.failed(task.error or "unknown error")
        result.frame = task.frame
        result.source = task.source
        result.time_s = task.time_s
        result.tracked = task.tracked
        t0 = time.perf_counter()
        cells: list[dict] = []
        syns: list[dict] = []
        if task.ok:
            cells = cell_rows(task.frame, task.time_s, task.tracked)
            syns = synapse_rows(task.frame, task.time_s, task.tracked)
            if self.results is not None and self.settings.write_masks:
                try:
                    self.write_mask(task.frame, result)
                except Exception as exc:
                    log.warning("stream | %s: mask not written: %s", task.source, exc)
            if self.results is not None and self.results.timelapse is not None:
                try:
                    self.results.timelapse.write_frame(task.frame, task.time_s, result.labels,
                                                       result.voxel_size_um, ri=task.volume)
                except Exception as exc:
                    log.warning("stream | %s: not written to %s: %s", task.source,
                                self.results.timelapse.path.name, exc)
        elif task.retry:
            if task.path is None:  # given with submit(): the caller gives it again with resubmit()
                result.retry_input = RetryInput(task)
                again = "give it again with stream.resubmit(result)"
            else:
                again = f"the next run on {self.results.root if self.results else 'this folder'} processes it again"
            log.warning("%s; recorded 'retry': %s", _about(task), again)
        else:
            log.warning("%s; skipped", _about(task))
            if self.results is not None:
                self.results.log_error(task.source, task.error or "")
        task.timings_ms["write"] = (time.perf_counter() - t0) * 1e3
        # file complete -> results written (the commit below adds well under a millisecond)
        done_at = time.time()
        latency_ms = (done_at - task.complete_at) * 1e3
        row = {
            "frame": task.frame,
            "source": task.source,
            "time_s": task.time_s,
            "status": task.status,
            "error": task.error or "",
            "quality": getattr(result, "quality", "") if task.ok else "",
            "latency_ms": latency_ms,
            **{f"{st}_ms": task.timings_ms.get(st) for st in STAGES},
            "deferred": int(task.deferred),
            "done_at": _iso(done_at),
        }
        if self.results is not None:
            self.results.commit_frame(row, cells, syns)
        result.status = row["status"]
        result.error = task.error
        result.latency_ms = latency_ms
        result.done_at, result.deferred = done_at, task.deferred
        result.timings_ms.update(task.timings_ms)
        if resubmitted:
            self.n_retry -= 1
        if task.ok:
            self.n_ok += 1
            self.latencies_ms.append(latency_ms)
            self.qualities.append(row["quality"])
        elif task.retry:
            self.n_retry += 1
        else:
            self.n_failed += 1
        return result

    def _keep_for_relink(self, frame: int, time_s: float | None, analysis: Any) -> None:
        light = copy.copy(analysis)  # the cells and synapses, not the label volumes
        empty = np.zeros((0, 0, 0), np.uint8)
        light.labels, light.cell_labels = empty, empty.astype(np.int32)
        self._tracked[frame] = (time_s, light)

    def relink(self) -> None:
        """Track every frame again in frame order (after frames that came late); renews the track ids."""
        from deepis_rt.analysis import SynapseTracker
        from deepis_rt.stream.replay import relink_results

        if self.results is not None:
            self.tracker = relink_results(self.results, self.settings.area_threshold_um2, self.on_event)
            return
        tracker = SynapseTracker(area_threshold_um2=self.settings.area_threshold_um2, on_event=None)
        for frame in sorted(self._tracked):
            time_s, analysis = self._tracked[frame]
            tracker.update(analysis, time_s, frame_number=frame)
        tracker.on_event = self.on_event
        self.tracker = tracker
        log.info("stream: tracks re-linked in frame order after frames that were given again")

    def end_of_run(self) -> None:
        """The whole-run outputs: ``labels_tzyx.ome.tif``, and ``report.html`` when ``settings.report``
        (kept as it is after a run that processed no frame)."""
        if self.results is None:
            return
        try:
            self.results.write_labels_tiff()
        except Exception:
            log.exception("stream: %s not written", self.results.root / LABELS_TIFF)
        done_now = self.n_ok + self.n_failed + self.n_retry
        if self.settings.report and (done_now or not (self.results.root / "report.html").exists()):
            try:
                from deepis_rt.report import write_report

                write_report(self.results.root)
            except Exception:
                log.exception("stream: report.html not written")

    def write_mask(self, frame: int, result: Any) -> None:
        """``masks/frame_NNNNNN.ome.tif``: the label volume, written to a temporary name, then renamed."""
        import tifffile

        assert self.results is not None
        path = self.results.masks / f"frame_{frame:06d}.ome.tif"
        tmp = path.with_name(f".{path.name}.tmp")
        vz, vy, vx = result.voxel_size_um
        tifffile.imwrite(
            tmp, np.ascontiguousarray(result.labels, dtype=np.uint8), ome=True, compression="zlib",
            metadata={"axes": "ZYX", "PhysicalSizeZ": vz, "PhysicalSizeY": vy, "PhysicalSizeX": vx,
                      "PhysicalSizeZUnit": "µm", "PhysicalSizeYUnit": "µm", "PhysicalSizeXUnit": "µm"},
        )
        tmp.replace(path)
