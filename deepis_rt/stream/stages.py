"""The stages of a stream between reading and writing (each run by one thread)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from deepis_rt.stream.pipeline import FrameTask, Stage

__all__ = ["PreprocessStage", "InferStage", "AnalyseStage"]


class PreprocessStage(Stage):
    name = "preprocess"

    def __init__(self, segmenter: Any) -> None:
        self.segmenter = segmenter

    def process(self, task: FrameTask) -> FrameTask:
        task.prepared = self.segmenter.preprocess(task.volume, task.voxel_size_um)
        return task


class InferStage(Stage):
    name = "infer"

    def __init__(self, segmenter: Any) -> None:
        self.segmenter = segmenter

    def process_batch(self, tasks: Sequence[FrameTask]) -> None:
        outputs = self.segmenter.infer_prepared([t.prepared for t in tasks])
        for task, out in zip(tasks, outputs, strict=True):
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


