"""A second, fast model that answers the live question on the newest frame at once.

With ``Stream(..., live_segmenter=fast)`` (``deepis-rt stream --live-model FAST.pt``) every frame
that arrives is offered to the *live lane*: one thread that always segments the newest frame it
has not seen (frames that arrive while it is busy are passed over by it, not by the record), tracks
it with a tracker of its own and writes it to ``<out>/live/``: ``frames.csv``, ``cells.csv`` and
``synapses.csv`` with the columns of the main tables (no masks). The main model still processes
every frame for the record (``<out>/frames.csv`` ...). Synapse events say which model raised them
(``event.model``: ``"live"`` or ``"main"``); ``on_live_frame`` receives the live results.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deepis_rt.stream.pipeline import FrameTask, mark_failed, run_callbacks

__all__ = ["LiveLane", "LIVE_FOLDER"]

log = logging.getLogger(__name__)

#: sub-folder of a stream's results folder that holds the live model's tables
LIVE_FOLDER = "live"


def label_event(event: Any, model: str) -> Any:
    """``event`` with ``model`` set (events of other kinds pass unchanged)."""
    if dataclasses.is_dataclass(event) and "model" in {f.name for f in dataclasses.fields(event)}:
        return dataclasses.replace(event, model=model)
    return event


class LiveLane:
    """Segments the newest arrived frame with ``segmenter``; see the module docstring.

    Parameters
    ----------
    segmenter : Segmenter
        The fast model.
    out : path or None
        The stream's results folder (the lane writes to its ``live/``); None: in memory only.
    settings : StreamSettings
        The stream's; masks are not written for live results.
    on_frame : callable, optional
        ``on_frame(result)`` for every live result.
    on_event : callable
        Receives the live tracker's synapse events (labelled ``model="live"``).
    """

    def __init__(self, segmenter: Any, out: Path | None, settings: Any,
                 on_frame: Callable[[Any], None] | None, on_event: Callable[[Any], None]) -> None:
        from deepis_rt.analysis.tables import CELL_COLUMNS, SYNAPSE_COLUMNS
        from deepis_rt.stream.results import ResultsFolder
        from deepis_rt.stream.writer import FrameWriter

        self.segmenter = segmenter
        self.settings = settings
        self._frame_callbacks = [on_frame] if on_frame else []
        self.results = ResultsFolder(Path(out) / LIVE_FOLDER, CELL_COLUMNS, SYNAPSE_COLUMNS) if out is not None else None
        self.writer = FrameWriter(self.results, dataclasses.replace(settings, write_masks=False),
                                  lambda e: on_event(label_event(e, "live")))
        self._cond = threading.Condition()
        self._newest: FrameTask | None = None
        self._closed = False
        self._done: set[int] = set()
        self.passed_over = 0
        self._thread = threading.Thread(target=self._loop, name="deepis-live", daemon=True)

    def start(self) -> None:
        if self.results is not None:
            committed = self.results.open()
            self._done = {int(r["frame"]) for r in committed}
            if committed:
                self.writer.replay(committed)
        self._thread.start()

    def offer(self, task: FrameTask) -> None:
        """A frame arrived (called before the record's reader takes it)."""
        if task.frame in self._done or (task.load is None and task.volume is None) or task.error:
            return  # done by an earlier run, or unreadable (the record says why)
        copy = FrameTask(frame=task.frame, source=task.source, path=task.path, time_s=task.time_s,
                         complete_at=task.complete_at, volume=task.volume, voxel_size_um=task.voxel_size_um,
                         medium_ri=task.medium_ri, load=task.load)
        with self._cond:
            if self._newest is not None:
                self.passed_over += 1
            self._newest = copy
            self._cond.notify_all()

    def close(self, wait_s: float = 60.0) -> None:
        """No more frames: finish the one in hand, then stop."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=wait_s)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._newest is None and not self._closed:
                    self._cond.wait(timeout=0.1)
                task, self._newest = self._newest, None
            if task is None:
                return
            try:
                self._process(task)
                result = self.writer.finish(task)
                self._done.add(task.frame)
            except Exception:
                log.exception("stream | %s: the live model's result was not written", task.source)
                continue
            run_callbacks(self._frame_callbacks, result)

    def _process(self, task: FrameTask) -> None:
        seg = self.segmenter
        t0 = time.perf_counter()
        try:
            if task.load is not None:
                tomo, task.load = task.load(), None
                task.volume, task.medium_ri = tomo.ri, tomo.medium_ri
                task.voxel_size_um = tomo.voxel_size_um or task.voxel_size_um
            volume = seg.check_volume(task.volume, task.source)
            prepared = seg.preprocess(volume, task.voxel_size_um)
            output = seg.infer_prepared([prepared])[0]
            result = seg.postprocess(prepared, output)
            task.result = seg.analyze_result(result, volume, medium_ri=task.medium_ri or self.settings.medium_ri)
        except Exception as exc:
            mark_failed(task, "live", exc)
        task.timings_ms["infer"] = (time.perf_counter() - t0) * 1e3
        task.volume = None

    def summary(self) -> dict[str, Any]:
        """Facts for summary.json: the live model, its results and how old its decisions were."""
        from deepis_rt.core.stats import latency_stats

        w = self.writer
        lat = latency_stats(w.latencies_ms)
        return {
            "folder": LIVE_FOLDER,
            "backend": getattr(self.segmenter, "backend", None),
            "model": getattr(self.segmenter, "model_info", {}),
            "frames_ok": w.n_ok,
            "frames_failed": w.n_failed,
            "passed_over": self.passed_over,
            "latency_ms": {"p50": lat.p50_ms, "p99": lat.p99_ms, "max": lat.max_ms, "n": lat.n},
            "synapses": [{"synapse_id": i + 1, **s.to_dict()} for i, s in enumerate(w.tracker.summary())],
        }
