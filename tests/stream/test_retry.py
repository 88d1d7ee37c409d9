"""Transient failures in a stream: frames wait and are retried, or are recorded ``retry`` for the next run."""

from __future__ import annotations

import csv
import json
import threading
import time

import numpy as np
import pytest
from stream_support import (
    RI0,
    RI_PER_UM,
    SHAPE,
    VOXEL,
    IdentityRunner,
    conjugate_distance,
    conjugate_tomogram,
)

from deepis_rt.errors import BackendUnavailableError, InputError
from deepis_rt.io import write_tomogram
from deepis_rt.runtime import Segmenter
from deepis_rt.stream import Stream
from deepis_rt.stream.retry import BackendHealth, RetryPolicy


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class FlakyRunner(IdentityRunner):
    """The identity network behind a switch: while ``down`` is set, every call fails like a
    server that refuses connections; ``oom_above`` makes batches larger than that run out of memory."""

    name = "flaky"

    def __init__(self) -> None:
        super().__init__()
        self.down = threading.Event()
        self.oom_above: int | None = None
        self.calls: list[int] = []
        self.on_call = None

    def infer_impl(self, batch):
        self.calls.append(batch.shape[0])
        if self.on_call is not None:
            self.on_call(len(self.calls))
        if self.down.is_set():
            raise BackendUnavailableError("flaky: inference failed: cannot reach the server (ConnectionRefusedError)")
        if self.oom_above is not None and batch.shape[0] > self.oom_above:
            import torch

            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().infer_impl(batch)


def _segmenter(runner, batch_size: int = 1) -> Segmenter:
    meta = {"voxel_size_um": list(VOXEL), "ri_normalization": {"offset": RI0, "scale": RI_PER_UM},
            "medium_ri": RI0, "tile_zyx": list(SHAPE)}
    return Segmenter(runner, meta, batch_size=batch_size)


@pytest.fixture
def camera(tmp_path):
    cam = tmp_path / "cam"
    cam.mkdir()
    for i in range(5):
        write_tomogram(cam / f"frame_{i:04d}.npy", conjugate_tomogram(2.0 + 0.2 * i), VOXEL, fmt="npy")
    return cam


def _settings(**kw):
    return {"once": True, "settle_s": 0.0, "poll_s": 0.02, "use_events": False, "frame_interval_s": 5.0,
            "write_masks": False, "refresh_s": 3600.0, **kw}


# ---------------------------------------------------------------------------------------------
# the retry schedule (injected clock and sleep: deterministic, no waiting)
# ---------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def test_schedule_is_capped_exponential_and_bounded():
    assert list(zip(range(7), RetryPolicy(initial_s=0.5, factor=2, max_delay_s=4).delays(), strict=False)) == [
        (0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 4.0), (5, 4.0), (6, 4.0)]
    clock, events = FakeClock(), []
    health = BackendHealth(RetryPolicy(retry_for_s=10, initial_s=0.5, max_delay_s=4), on_event=events.append,
                           clock=clock, sleep=clock.sleep)

    def always_down():
        raise BackendUnavailableError("down")

    with pytest.raises(BackendUnavailableError):
        health.call(always_down)
    # 0.5 + 1 + 2 + 4 = 7.5, then the last delay is cut to the 10 s deadline
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0, 2.5]
    assert [e.kind for e in events] == ["unavailable"] and health.unavailable
    # past the deadline, a further frame gets one attempt, no wait, no second report
    with pytest.raises(BackendUnavailableError):
        health.call(always_down)
    assert len(clock.sleeps) == 5 and len(events) == 1
    # the backend returns: reported once, with the outage's length
    assert health.call(lambda: 42) == 42
    assert [e.kind for e in events] == ["unavailable", "available"] and events[1].outage_s == pytest.approx(10.0)
    assert not health.unavailable and health.outages == 1


def test_transient_then_recovered_and_permanent_not_retried():
    clock, events = FakeClock(), []
    health = BackendHealth(RetryPolicy(retry_for_s=60), on_event=events.append, clock=clock, sleep=clock.sleep)
    attempts = {"n": 0}

    def restarting():
        attempts["n"] += 1
        if attempts["n"] < 4:
            raise BackendUnavailableError("refused")
        return "ok"

    assert health.call(restarting) == "ok" and clock.sleeps == [0.5, 1.0, 2.0]
    assert [e.kind for e in events] == ["unavailable", "available"]

    def bad_input():
        attempts["n"] += 1
        raise InputError("bad volume")

    attempts["n"] = 0
    with pytest.raises(InputError):
        health.call(bad_input)
    assert attempts["n"] == 1 and len(clock.sleeps) == 3  # permanent: no retry


def test_stop_ends_the_wait():
    clock = FakeClock()
    stop = threading.Event()
    health = BackendHealth(RetryPolicy(retry_for_s=60), stop=stop, clock=clock, sleep=clock.sleep)

    def down():
        stop.set()  # Ctrl-C while the backend is down
        raise BackendUnavailableError("down")

    with pytest.raises(BackendUnavailableError):
        health.call(down)
    assert clock.sleeps == []


# ---------------------------------------------------------------------------------------------
# streams
# ---------------------------------------------------------------------------------------------


def test_outage_ridden_out_frames_in_order_each_once(camera, tmp_path):
    runner = FlakyRunner()
    out = tmp_path / "out"

    def on_call(n):  # the backend goes down at the 2nd call and is back at the 6th
        if n == 2:
            runner.down.set()
        elif n == 6:
            runner.down.clear()

    runner.on_call = on_call
    events = []
    stream = Stream(camera, out, _segmenter(runner), on_backend=events.append, max_batch=1,
                    **_settings(retry_for_s=30.0))
    results = list(stream.start())
    stream.close()
    assert [r.frame for r in results] == list(range(5))
    assert [r.status for r in results] == ["ok"] * 5, [r.error for r in results]
    assert [e.kind for e in events] == ["unavailable", "available"]  # once each, not per frame
    assert events[0].waiting_frames >= 1 and "cannot reach the server" in events[0].error
    rows = _rows(out / "frames.csv")
    assert [r["source"] for r in rows] == [f"frame_{i:04d}.npy" for i in range(5)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames_ok"] == 5 and summary["frames_retry"] == 0 and summary["frames_failed"] == 0
    assert summary["run"]["backend"]["outages"] == 1
    assert not (out / "errors.log").exists()


def test_outage_past_deadline_recorded_retry_and_redone_by_next_run(camera, tmp_path):
    runner = FlakyRunner()
    out = tmp_path / "out"
    runner.on_call = lambda n: runner.down.set() if n == 2 else None  # down from the 2nd frame on
    seen = []
    stream = Stream(camera, out, _segmenter(runner), on_frame=seen.append, max_batch=1,
                    **_settings(retry_for_s=0.3))
    stream.run()
    stream.close()
    assert [r.status for r in seen] == ["ok", "retry", "retry", "retry", "retry"]
    rows = _rows(out / "frames.csv")
    assert [r["status"] for r in rows] == ["ok", "retry", "retry", "retry", "retry"]
    assert "cannot reach the server" in rows[1]["error"]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["frames_ok"], summary["frames_failed"], summary["frames_retry"]) == (1, 0, 4)
    assert not (out / "errors.log").exists()  # not rejected inputs

    # the server is back: the next run on the same folder processes exactly the frames to retry
    runner2 = FlakyRunner()
    stream = Stream(camera, out, _segmenter(runner2), max_batch=1, **_settings())
    redone = list(stream.start())
    stream.close()
    assert sorted(r.source for r in redone) == [f"frame_{i:04d}.npy" for i in range(1, 5)]
    assert [r.frame for r in redone] == [1, 2, 3, 4]  # same frame numbers as before
    rows = _rows(out / "frames.csv")
    assert [(int(r["frame"]), r["source"], r["status"]) for r in rows] == [
        (i, f"frame_{i:04d}.npy", "ok") for i in range(5)]  # one row per frame, in order
    assert sorted({int(r["frame"]) for r in _rows(out / "cells.csv")}) == list(range(5))
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["frames_ok"], summary["frames_failed"], summary["frames_retry"]) == (5, 0, 0)
    # a third run has nothing to do
    stream = Stream(camera, out, _segmenter(FlakyRunner()), **_settings())
    assert list(stream.start()) == []
    stream.close()


def test_permanent_failures_not_retried(tmp_path, camera):
    (camera / "frame_0002.npy").write_bytes(b"not a numpy file")
    runner = FlakyRunner()
    out = tmp_path / "out"
    stream = Stream(camera, out, _segmenter(runner), max_batch=1, **_settings())
    statuses = [r.status for r in stream.start()]
    stream.close()
    assert statuses == ["ok", "ok", "failed", "ok", "ok"]
    assert len(runner.calls) == 4
    assert "frame_0002.npy" in (out / "errors.log").read_text()


def test_out_of_memory_splits_the_batch(tmp_path):
    runner = FlakyRunner()
    runner.oom_above = 1  # only single tiles fit
    seg = _segmenter(runner, batch_size=4)
    truths = [conjugate_distance(2.0 + 0.1 * i) for i in range(5)]
    vols = [conjugate_tomogram(2.0 + 0.1 * i) for i in range(5)]
    queued = threading.Event()

    def hold_first_call(n):  # the first call waits until the other frames queue up behind it
        if n == 1:
            queued.wait(10)
            time.sleep(0.5)

    runner.on_call = hold_first_call
    stream = Stream(None, tmp_path / "out", seg, max_batch=4, write_masks=False, refresh_s=3600.0)
    for i, v in enumerate(vols):
        stream.submit(v, time_s=float(i), voxel_size_um=VOXEL)
    queued.set()
    stream.end_input()
    results = list(stream)
    stream.close()
    assert [r.status for r in results] == ["ok"] * 5, [r.error for r in results]
    assert [r.frame for r in results] == list(range(5))
    assert all(np.allclose(r.distance, d, atol=1e-5) for r, d in zip(results, truths, strict=True))
    # every batch of several frames ran out of memory and was split in halves, down to single frames
    big = [i for i, n in enumerate(runner.calls) if n > 1]
    assert big, f"no batch of several frames formed: {runner.calls}"
    assert all(runner.calls[i + 1] == runner.calls[i] // 2 for i in big), runner.calls
    assert sum(n for n in runner.calls if n == 1) == 5  # each frame inferred once, alone


def test_out_of_memory_on_one_large_frame_halves_the_tile_batch(tmp_path):
    runner = FlakyRunner()
    runner.oom_above = 1
    meta = {"voxel_size_um": list(VOXEL), "ri_normalization": {"offset": RI0, "scale": RI_PER_UM},
            "medium_ri": RI0, "tile_zyx": [16, 32, 32]}  # a (32, 64, 64) frame takes several tiles
    seg = Segmenter(runner, meta, batch_size=4)
    vol = conjugate_tomogram(2.0)
    stream = Stream(None, None, seg, write_masks=False)
    stream.submit(vol, time_s=0.0, voxel_size_um=VOXEL)
    stream.end_input()
    (result,) = list(stream)
    stream.close()
    assert result.status == "ok", result.error
    assert np.allclose(result.distance, conjugate_distance(2.0), atol=1e-5)
    assert seg.batch_size == 1 and runner.calls[:3] == [4, 2, 1]


def test_out_of_memory_retry_runs_after_the_failed_attempt_is_freed():
    """The failed attempt's tensors (held by the exception's traceback, through a reference cycle in
    Runner.infer) are freed before the split batch runs: on a GPU they are the memory it needs."""
    import gc
    import weakref

    import torch

    from deepis_rt.stream.pipeline import FrameTask
    from deepis_rt.stream.stages import InferStage, PreprocessStage

    held, alive_at_call = [], []

    class GreedyRunner(FlakyRunner):
        def infer_impl(self, batch):
            alive_at_call.append(sum(ref() is not None for ref in held))
            activations = torch.empty(1 << 16)  # what a forward pass holds when it runs out of memory
            held.append(weakref.ref(activations))
            return super().infer_impl(batch)

    runner = GreedyRunner()
    runner.oom_above = 1
    seg = _segmenter(runner.activate(), batch_size=4)
    tasks = [FrameTask(frame=i, source=f"memory:{i:04d}", volume=conjugate_tomogram(2.0 + 0.1 * i),
                       voxel_size_um=VOXEL) for i in range(4)]
    for task in tasks:
        PreprocessStage(seg).process(task)
    enabled = gc.isenabled()
    gc.disable()  # no collection by chance: only the stage's own
    try:
        InferStage(seg).process_batch(tasks)
    finally:
        if enabled:
            gc.enable()
    assert runner.calls == [4, 2, 1, 1, 2, 1, 1]
    assert alive_at_call == [0] * 7, alive_at_call
    assert all(np.allclose(t.output, seg.infer_prepared([t.prepared])[0]) for t in tasks)


def test_frames_redone_after_later_ones_are_tracked_in_frame_order(contact_series, tmp_path):
    """An outage shorter than the run: frames 1-2 (where the synapse forms) recorded ``retry``, 3-5 ok;
    the next run redoes 1-2 and re-links all tracks in frame order, so tables and synapse kinetics
    equal those of a run without an outage."""
    cam = tmp_path / "cam"
    cam.mkdir()
    for i, vol in enumerate(contact_series[1]):  # apart, forming, growing, growing, broken, re-formed
        write_tomogram(cam / f"frame_{i:04d}.npy", vol, VOXEL, fmt="npy")
    ref = tmp_path / "ref"
    stream = Stream(cam, ref, _segmenter(FlakyRunner()), max_batch=1, **_settings())
    stream.run()
    stream.close()

    runner = FlakyRunner()
    runner.on_call = lambda n: runner.down.set() if n == 2 else (runner.down.clear() if n == 6 else None)
    out = tmp_path / "out"
    stream = Stream(cam, out, _segmenter(runner), max_batch=1, **_settings(retry_for_s=0.0))
    assert [r.status for r in stream.start()] == ["ok", "retry", "retry", "ok", "ok", "ok"]
    stream.close()
    events = []
    stream = Stream(cam, out, _segmenter(FlakyRunner()), max_batch=1, on_synapse_event=events.append, **_settings())
    assert [r.frame for r in stream.start()] == [1, 2]
    stream.close()

    def table(path, columns):
        return sorted(tuple(r[c] for c in columns) for r in _rows(path))

    cell_cols = ["frame", "cell_id", "track_id", "kind", "volume_um3"]
    syn_cols = ["frame", "synapse_id", "tcell_track", "target_track", "is_area_um2"]
    assert table(out / "cells.csv", cell_cols) == table(ref / "cells.csv", cell_cols)
    assert table(out / "synapses.csv", syn_cols) == table(ref / "synapses.csv", syn_cols)
    a, b = (json.loads((d / "summary.json").read_text())["synapses"] for d in (out, ref))
    keys = ("tcell_track", "target_track", "n_frames", "onset_s")
    assert [tuple(s[k] for k in keys) for s in a] == [tuple(s[k] for k in keys) for s in b]
    assert a[0]["onset_s"] == pytest.approx(5.0)  # frame 1, not frame 3 where the first run saw it


def _submit_all(stream, volumes):
    """Submit from another thread (submit() blocks while the pipeline is full)."""
    def feed():
        for i, vol in enumerate(volumes):
            stream.submit(vol, time_s=5.0 * i, voxel_size_um=VOXEL)

    t = threading.Thread(target=feed)
    t.start()
    return t


@pytest.mark.parametrize("folder", [True, False], ids=["results-folder", "in-memory"])
def test_submitted_retry_frames_given_again_keep_their_number_and_order(contact_series, tmp_path, folder):
    """Frames given with submit() that end ``retry`` come back with what resubmit() needs; given
    again they keep their frame numbers, replace their rows, and tracks are re-linked in frame order
    (also without a results folder), so the result equals that of a run without an outage."""
    from deepis_rt.errors import ConfigError

    volumes = contact_series[1]
    ref_out = tmp_path / "ref" if folder else None
    ref = Stream(None, ref_out, _segmenter(FlakyRunner()), max_batch=1, write_masks=False, refresh_s=3600.0)
    feeder = _submit_all(ref, volumes)
    feeder.join()
    ref.end_input()
    assert [r.status for r in ref] == ["ok"] * 6
    ref.close()

    runner = FlakyRunner()
    runner.on_call = lambda n: runner.down.set() if n == 2 else (runner.down.clear() if n == 6 else None)
    out = tmp_path / "out" if folder else None
    stream = Stream(None, out, _segmenter(runner), max_batch=1, write_masks=False, refresh_s=3600.0,
                    retry_for_s=0.0)
    feeder = _submit_all(stream, volumes)
    it = iter(stream)
    first = [next(it) for _ in volumes]
    feeder.join()
    assert [r.status for r in first] == ["ok", "retry", "retry", "ok", "ok", "ok"]
    with pytest.raises(ConfigError, match="status 'ok'"):
        stream.resubmit(first[0])
    retried = [r for r in first if r.status == "retry"]
    assert all(r.retry_input is not None and r.retry_input.volume.shape == volumes[0].shape for r in retried)
    if folder:
        assert [row["status"] for row in _rows(out / "frames.csv")].count("retry") == 2
    assert [stream.resubmit(r) for r in retried] == [1, 2]
    with pytest.raises(ConfigError, match="already given again"):
        stream.resubmit(retried[0])
    stream.end_input()
    redone = list(it)
    stream.close()
    assert [(r.frame, r.status, r.time_s) for r in redone] == [(1, "ok", 5.0), (2, "ok", 10.0)]
    with pytest.raises(ConfigError, match="after end_input"):
        stream.submit(volumes[0], time_s=99.0, voxel_size_um=VOXEL)

    summary, ref_summary = stream.summary(), ref.summary()
    assert (summary["frames_ok"], summary["frames_failed"], summary["frames_retry"]) == (6, 0, 0)
    keys = ("tcell_track", "target_track", "n_frames", "onset_s")
    assert [tuple(s[k] for k in keys) for s in summary["synapses"]] == \
        [tuple(s[k] for k in keys) for s in ref_summary["synapses"]]
    assert summary["synapses"][0]["onset_s"] == pytest.approx(5.0)  # frame 1, given again after frame 5
    if folder:
        rows = _rows(out / "frames.csv")
        assert [(int(r["frame"]), r["status"]) for r in rows] == [(i, "ok") for i in range(6)]

        def table(path, columns):
            return sorted(tuple(r[c] for c in columns) for r in _rows(path))

        syn_cols = ["frame", "synapse_id", "tcell_track", "target_track", "is_area_um2"]
        assert table(out / "synapses.csv", syn_cols) == table(ref_out / "synapses.csv", syn_cols)


def test_cli_says_once_that_the_backend_is_unavailable_and_once_that_it_is_back(capsys):
    from deepis_rt.cli.stream import BackendReporter
    from deepis_rt.stream.retry import BackendEvent

    down = BackendEvent("unavailable", 0.0, error="cannot reach the server", waiting_frames=3, retry_for_s=120.0)
    back = BackendEvent("available", 1.0, outage_s=12.5, retry_for_s=120.0)
    BackendReporter()(down)
    BackendReporter()(back)
    err = capsys.readouterr().err
    assert "backend unavailable: cannot reach the server" in err and "3 frame(s) waiting" in err
    assert "available again after 12.5 s" in err
    BackendReporter(jsonl=True)(down)
    BackendReporter(jsonl=True)(back)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [x["event"] for x in lines] == ["backend_unavailable", "backend_available"]
    assert lines[0]["waiting_frames"] == 3 and lines[1]["outage_s"] == 12.5


def test_cli_waits_for_a_server_that_is_down_at_start(capsys):
    from deepis_rt.cli.stream import load_when_available

    attempts = {"n": 0}

    def load():
        attempts["n"] += 1
        if attempts["n"] < 3:
            raise BackendUnavailableError("triton | 127.0.0.1:8000: readiness check failed: cannot reach the server")
        return "segmenter"

    assert load_when_available(load, retry_for_s=30.0) == "segmenter" and attempts["n"] == 3
    assert "waiting up to 30 s" in capsys.readouterr().err
    with pytest.raises(InputError):  # a permanent error is not waited for
        load_when_available(lambda: (_ for _ in ()).throw(InputError("no such model")), retry_for_s=30.0)
