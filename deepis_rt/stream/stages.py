"""The stages of a stream between reading and writing (each run by one thread)."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Sequence
from typing import Any

from deepis_rt.backends.failures import is_out_of_memory
from deepis_rt.stream.pipeline import FrameTask, Stage
from deepis_rt.stream.retry import BackendHealth

__all__ = ["PreprocessStage", "InferStage", "AnalyseStage"]

log = logging.getLogger(__name__)


class PreprocessStage(Stage):
    name = "preprocess"

    def __init__(self, segmenter: Any) -> None:
        self.segmenter = segmenter

    def process(self, task: FrameTask) -> FrameTask:
        task.prepared = self.segmenter.preprocess(task.volume, task.voxel_size_um)
        return task


class InferStage(Stage):
    """Runs the network on a batch of frames.

    Out of memory on a batch: the batch is split in halves (down to single frames, then the
    segmenter's tile batch is halved) before the failure counts. Transient failures (server
    unavailable, timed out, overloaded, memory still short) are retried by ``health``
    (:class:`~deepis_rt.stream.retry.BackendHealth`) while the frames wait.
    """

    name = "infer"

    def __init__(self, segmenter: Any, health: BackendHealth | None = None) -> None:
        self.segmenter = segmenter
        self.health = health

    def process_batch(self, tasks: Sequence[FrameTask]) -> None:
        if self.health is None:
            self._infer(tasks)
        else:
            self.health.call(lambda: self._infer(tasks), n_frames=len(tasks))

    def _infer(self, tasks: Sequence[FrameTask]) -> None:
        todo = [t for t in tasks if t.output is None]  # after a split, halves already done stay done
        if not todo:
            return
        tiles = int(getattr(self.segmenter, "batch_size", 1) or 1)
        out_of_memory = False
        try:
            outputs = self.segmenter.infer_prepared([t.prepared for t in todo])
        except Exception as exc:
            if not is_out_of_memory(exc) or (len(todo) == 1 and tiles == 1):
                raise
            if len(todo) > 1:  # the text only: a handler that keeps records would keep exc's traceback
                log.warning("stream: out of memory on a batch of %d frames; splitting it (%s)", len(todo), str(exc))
            else:
                log.warning("stream | %s: out of memory with %d tiles per call; using %d from now on",
                            todo[0].source, tiles, tiles // 2)
            out_of_memory = True
        if out_of_memory:
            # retried only here, outside the except clause, after a collection: the exception's
            # traceback (through reference cycles, even once out of scope) holds the frames of the
            # failed attempt, and with them its device tensors; retrying while they live runs out again
            gc.collect()
            if len(todo) > 1:
                half = len(todo) // 2
                self._infer(todo[:half])
                self._infer(todo[half:])
            else:
                self.segmenter.batch_size = tiles // 2
                self._infer(todo)
            return
        for task, out in zip(todo, outputs, strict=True):
            task.output = out


class AnalyseStage(Stage):
    name = "analyze"

    def __init__(self, segmenter: Any, medium_ri: float | None) -> None:
        self.segmenter = segmenter
        self.medium_ri = medium_ri

    def process(self, task: FrameTask) -> FrameTask:
        t0 = time.perf_counter()
        result = self.segmenter.postprocess(task.prepared, task.output)
        task.timings_ms["postprocess"] = (time.perf_counter() - t0) * 1e3
        task.prepared = task.output = None  # free memory early
        medium = task.medium_ri or self.medium_ri
        result = self.segmenter.analyze_result(result, task.volume, medium_ri=medium)
        task.result = result
        return task


