"""`run_batch` when the backend is unavailable: items with frames to retry are continued by the next run."""

from __future__ import annotations

import csv
import functools
import json
import threading
from pathlib import Path

from cluster_helpers import META, TILE

from deepis_rt.backends.fake import FakeRunner
from deepis_rt.cluster.ray_batch import make_segmenter, run_batch
from deepis_rt.errors import BackendUnavailableError


class SwitchableRunner(FakeRunner):
    """The point-wise FakeRunner behind a server that is down while ``DOWN`` is set."""

    DOWN = threading.Event()
    calls = 0

    def infer_impl(self, batch):
        type(self).calls += 1
        if self.DOWN.is_set():
            raise BackendUnavailableError("switchable: inference failed: cannot reach the server (ConnectionRefusedError)")
        return super().infer_impl(batch)


FACTORY = functools.partial(make_segmenter, functools.partial(SwitchableRunner, fixed_spatial_zyx=TILE), META)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_items_with_frames_to_retry_are_continued_by_the_next_run(tmp_path):
    from deepis_rt.synth import write_timelapse

    archive, out = tmp_path / "archive", tmp_path / "out"
    write_timelapse(archive / "cellA", 3, seed=1, shape=TILE, progress=False)
    write_timelapse(archive / "cellB", 2, seed=2, shape=TILE, progress=False)
    settings = {"retry_for_s": 0.2, "write_masks": False}

    SwitchableRunner.DOWN.set()
    try:
        report = run_batch(archive, out, segmenter_factory=FACTORY, stream_settings=settings, retries=1,
                           progress=False)
    finally:
        SwitchableRunner.DOWN.clear()
    by_item = {it["item"]: it for it in report.items}
    assert [by_item[n]["status"] for n in ("cellA", "cellB")] == ["retry", "retry"]
    assert by_item["cellA"]["frames_retry"] == 3 and by_item["cellA"]["attempts"] == 1  # not failed: not re-run now
    assert "run the batch again" in by_item["cellA"]["error"]
    assert report.counts["retry"] == 2 and not report.failed
    assert [r["status"] for r in _rows(out / "cellA" / "frames.csv")] == ["retry"] * 3
    assert json.loads((out / "batch_report.json").read_text())["counts"]["retry"] == 2

    report = run_batch(archive, out, segmenter_factory=FACTORY, stream_settings=settings, progress=False)
    by_item = {it["item"]: it for it in report.items}
    assert [by_item[n]["status"] for n in ("cellA", "cellB")] == ["ok", "ok"]
    rows = _rows(out / "cellA" / "frames.csv")
    assert [(int(r["frame"]), r["status"]) for r in rows] == [(0, "ok"), (1, "ok"), (2, "ok")]  # each once
    summary = json.loads((out / "cellA" / "summary.json").read_text())
    assert (summary["frames_ok"], summary["frames_retry"]) == (3, 0)
    # a third run skips both
    report = run_batch(archive, out, segmenter_factory=FACTORY, stream_settings=settings, progress=False)
    assert all(it.get("skipped") for it in report.items)
