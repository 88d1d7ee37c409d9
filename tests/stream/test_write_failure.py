"""A results folder that cannot be written (disk full): the stream stops with a clear error, loses nothing committed."""

from __future__ import annotations

import csv
import errno
import threading

import pytest
from stream_support import VOXEL, conjugate_tomogram
from test_retry import FlakyRunner, _segmenter, _settings

from deepis_rt.errors import ResultsWriteError
from deepis_rt.io import write_tomogram
from deepis_rt.stream import Stream
from deepis_rt.stream.results import ResultsFolder

FAIL_AT = 2


@pytest.fixture
def disk_full_at_frame_2(monkeypatch):
    commit = ResultsFolder.commit_frame

    def commit_or_fail(self, row, *args, **kwargs):
        if int(row["frame"]) == FAIL_AT:
            raise OSError(errno.ENOSPC, "No space left on device")
        return commit(self, row, *args, **kwargs)

    monkeypatch.setattr(ResultsFolder, "commit_frame", commit_or_fail)
    return monkeypatch


def _stream_threads():
    """The stream's threads still running a few seconds after close() (none expected)."""
    threads = [t for t in threading.enumerate() if t.name.startswith("deepis-") and t.name != "deepis-warmup"]
    for t in threads:
        t.join(5)
    return [t.name for t in threads if t.is_alive()]


def test_folder_stream_stops_with_the_reason_and_the_next_run_redoes_the_rest(tmp_path, disk_full_at_frame_2):
    cam = tmp_path / "cam"
    cam.mkdir()
    for i in range(8):
        write_tomogram(cam / f"frame_{i:04d}.npy", conjugate_tomogram(2.0 + 0.1 * i), VOXEL, fmt="npy")
    out = tmp_path / "out"
    stream = Stream(cam, out, _segmenter(FlakyRunner()), max_batch=1, **_settings())
    seen = []
    with pytest.raises(ResultsWriteError, match=r"frame 2 \(frame_0002.npy\).*No space left.*next run"):
        for result in stream.start():
            seen.append(result.frame)
    stream.close()
    assert seen == [0, 1] and not _stream_threads()  # nothing after the failure reported as done; no thread left
    with open(out / "frames.csv", newline="") as f:
        assert [int(r["frame"]) for r in csv.DictReader(f)] == [0, 1]

    disk_full_at_frame_2.undo()  # space freed: the next run processes exactly the frames not committed
    stream = Stream(cam, out, _segmenter(FlakyRunner()), max_batch=1, **_settings())
    assert [r.frame for r in stream.start()] == list(range(2, 8))
    stream.close()


def test_submitting_stream_stops_and_refuses_further_frames(tmp_path, disk_full_at_frame_2):
    stream = Stream(None, tmp_path / "out", _segmenter(FlakyRunner()), max_batch=1, write_masks=False,
                    refresh_s=3600.0)
    refused = []

    volume = conjugate_tomogram(2.0)

    def feed():  # a camera that goes on until refused (submit() blocks while the pipeline is full)
        try:
            for i in range(500):
                stream.submit(volume, time_s=float(i), voxel_size_um=VOXEL)
        except ResultsWriteError as exc:
            refused.append(str(exc))

    feeder = threading.Thread(target=feed)
    feeder.start()
    seen = []
    with pytest.raises(ResultsWriteError, match="frame 2 .*submit"):
        for result in stream:
            seen.append(result.frame)
    feeder.join(30)
    stream.close()
    assert seen == [0, 1] and not feeder.is_alive() and not _stream_threads()
    assert refused and "submit() refused" in refused[0]
