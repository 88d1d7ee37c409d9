"""The parts that keep a stream's pace: the backlog monitor, the frame order, the batch plan."""

from __future__ import annotations

import json
import threading

import pytest

from deepis_rt.errors import ConfigError
from deepis_rt.stream.backlog import BacklogMonitor
from deepis_rt.stream.batching import BatchPlan, curve_key, lookup_curve, record_curves
from deepis_rt.stream.pipeline import FrameTask
from deepis_rt.stream.scheduling import FrameScheduler


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_backlog_is_reported_once_when_it_lasts_and_once_when_it_clears():
    clock, events = FakeClock(), []
    mon = BacklogMonitor(window_s=2.0, on_event=events.append, clock=clock)
    # keeping up: one frame every second, processed in 0.5 s
    for _ in range(5):
        mon.arrive()
        mon.take()
        clock.t += 0.5
        mon.written(0.5)
        clock.t += 0.5
    assert events == [] and mon.max_waiting <= 1
    # a frame every 0.25 s, one processed per second: frames pile up
    for step in range(40):
        mon.arrive()
        if step % 4 == 0:
            mon.take()
            mon.written(1.0 + 0.2 * step)
        clock.t += 0.25
    assert [e.kind for e in events] == ["behind"]
    behind = events[0]
    assert behind.waiting_frames >= 2
    assert behind.arrival_fps > behind.processing_fps
    assert behind.latency_trend_s_per_s > 0
    # the microscope stops; the backlog is worked off
    while mon.waiting:
        mon.take()
        clock.t += 1.0
        mon.written(2.0)
    assert [e.kind for e in events] == ["behind", "caught_up"]
    assert events[1].behind_s > 0 and events[1].max_waiting_frames >= behind.waiting_frames
    facts = mon.describe()
    assert facts["episodes"] == 1 and facts["behind_now"] is False and facts["max_waiting_frames"] >= 2


def test_a_short_burst_is_not_called_a_backlog():
    clock, events = FakeClock(), []
    mon = BacklogMonitor(window_s=2.0, on_event=events.append, clock=clock)
    mon.arrive(3)  # three frames at once (a multi-time-point file), worked off within the window
    for _ in range(3):
        mon.take()
        clock.t += 0.5
        mon.written(0.5)
    assert events == []


def _task(frame: int) -> FrameTask:
    return FrameTask(frame=frame, source=f"f{frame}", volume=object())


def test_newest_first_then_the_passed_over_frames_oldest_first_each_once():
    sched = FrameScheduler("newest")
    for f in range(4):
        sched.put(_task(f))
    first = sched.take()
    assert first.frame == 3 and not first.deferred
    # the network is busy with frame 3: nothing else is taken, frames 4 and 5 arrive meanwhile
    got: list[FrameTask] = []
    taker = threading.Thread(target=lambda: got.append(sched.take()))
    taker.start()
    taker.join(0.3)
    assert taker.is_alive(), "a second frame was taken while the first was still ahead of the network"
    sched.put(_task(4))
    sched.put(_task(5))
    sched.through_inference()
    taker.join(5)
    assert got[0].frame == 5  # the newest, not the oldest waiting
    order = [3, 5]
    sched.close()
    while True:
        sched.through_inference()
        task = sched.take()
        if task is None:
            break
        order.append(task.frame)
        assert task.deferred
    assert order == [3, 5, 0, 1, 2, 4]


def test_every_frame_in_order_by_default_and_unknown_policies_refused():
    sched = FrameScheduler()
    for f in range(3):
        sched.put(_task(f))
    sched.close()
    assert [sched.take().frame for _ in range(3)] == [0, 1, 2]
    assert sched.take() is None
    with pytest.raises(ConfigError, match="newest"):
        FrameScheduler("oldest")


def test_a_stop_leaves_frames_on_disk_for_the_next_run_but_processes_those_in_memory():
    sched = FrameScheduler("newest")
    on_disk = _task(0)
    on_disk.load = lambda: None
    sched.put(on_disk)
    sched.put(_task(1))  # submitted: held in memory only
    stop = threading.Event()
    stop.set()
    kept = sched.take(stop, keep=lambda t: t.load is None)
    assert kept.frame == 1
    assert sched.take(stop, keep=lambda t: t.load is None) is None


def test_batch_plan_follows_the_backlog_up_to_the_backends_best():
    plan = BatchPlan({1: 10.0, 2: 16.0, 4: 22.0, 8: 20.0}, "cuda:0")
    assert plan.best == 4
    assert [plan.choose(n) for n in (0, 1, 2, 3, 4, 7, 100)] == [1, 1, 2, 2, 4, 4, 4]
    assert BatchPlan({1: 10.0, 2: 16.0, 4: 22.0}, "cuda", max_batch=2).choose(10) == 2
    # no measured curve: single frames on a CPU, up to four on a GPU
    assert BatchPlan(None, "cpu").choose(10) == 1
    assert BatchPlan(None, "cuda:0").choose(10) == 4 and BatchPlan(None, "cuda:0").source == "fallback"


def test_the_bench_curve_is_recorded_and_found_by_a_stream(tmp_path):
    report = {"date_utc": "2026-12-07T00:00:00Z", "command": "deepis-rt bench", "models": [{
        "model": {"preset": "deepis-lite", "sha256": "abc", "tile_zyx": [64, 128, 128]},
        "rows": [{"backend": "torch-cuda", "precision": "fp32", "device": "cuda", "batch": b, "status": "ok",
                  "throughput_fps": fps} for b, fps in ((1, 10.0), (2, 17.0), (4, 15.0))]
        + [{"backend": "torch-cuda", "precision": "fp32", "device": "cuda", "batch": 8, "status": "failed",
            "throughput_fps": None}]}]}
    path = record_curves(report, tmp_path)
    assert path is not None and json.loads(path.read_text())

    class Runner:
        def describe(self):
            return {"precision": "fp32"}

    class Seg:
        runner, backend, device, tile_zyx = Runner(), "torch-cuda", "cuda:0", (64, 128, 128)
        model_info = {"preset": "deepis-lite", "sha256": "trained-weights"}  # the curve is the architecture's

    curve = lookup_curve(Seg(), tmp_path)
    assert curve == {1: 10.0, 2: 17.0, 4: 15.0}
    plan = BatchPlan(curve, "cuda:0")
    assert plan.best == 2 and plan.choose(10) == 2 and plan.choose(1) == 1
    Seg.backend = "onnxruntime-gpu"
    assert lookup_curve(Seg(), tmp_path) is None
    assert "deepis-lite|torch-cuda|fp32|cuda|64x128x128" in curve_key(
        {"preset": "deepis-lite"}, "torch-cuda", "fp32", "cuda:1", (64, 128, 128))


def test_a_cap_without_a_curve_batches_what_waits_up_to_it():
    plan = BatchPlan(None, "cpu", max_batch=3)
    assert [plan.choose(n) for n in (1, 2, 3, 9)] == [1, 2, 3, 3]
