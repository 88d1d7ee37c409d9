import os
import time

from deepis_rt.stream.watch import FolderWatcher, frame_number, order_key


def _touch(path, data=b"x" * 10, mtime=None):
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def test_frame_number():
    assert frame_number("frame_0042.tif") == 42
    assert frame_number("cell3_t0007.ome.tif") == 7
    assert frame_number("movie.tcf") is None


def test_order_by_number_then_mtime(tmp_path):
    keys = sorted(
        [order_key(tmp_path / "b.tif", 5.0), order_key(tmp_path / "f_10.tif", 1.0),
         order_key(tmp_path / "f_2.tif", 9.0), order_key(tmp_path / "a.tif", 3.0)]
    )
    assert [k[2] for k in keys] == ["f_2.tif", "f_10.tif", "a.tif", "b.tif"]


def test_complete_only_after_file_stops_changing(tmp_path):
    w = FolderWatcher(tmp_path, settle_s=0.2, use_events=False)
    f = tmp_path / "frame_0001.npy"
    _touch(f, b"a")
    assert w.scan() == []  # first sight: not yet known to be stable
    time.sleep(0.1)
    _touch(f, b"ab")  # still growing
    assert w.scan() == []
    time.sleep(0.25)
    found = w.scan()
    assert [x.path.name for x in found] == ["frame_0001.npy"]
    assert w.scan() == []  # reported once


def test_holds_back_frames_after_one_still_written(tmp_path):
    w = FolderWatcher(tmp_path, settle_s=0.15, use_events=False)
    _touch(tmp_path / "frame_0002.tif")
    _touch(tmp_path / "frame_0001.tif", b"1")
    w.scan()
    time.sleep(0.2)
    _touch(tmp_path / "frame_0001.tif", b"12")  # frame 1 still being written
    assert w.scan() == []  # frame 2 is complete but must wait for frame 1
    time.sleep(0.2)
    assert [f.number for f in w.scan()] == [1, 2]


def test_ignores_temp_hidden_and_other_files_and_skips_done(tmp_path):
    for name in (".frame_0001.tif.tmp", "~lock.tif", "notes.txt", "frame_0001.json", "frame_0003.tif"):
        _touch(tmp_path / name)
    _touch(tmp_path / "frame_0004.tif")
    w = FolderWatcher(tmp_path, settle_s=0.0, use_events=False, skip={"frame_0003.tif"})
    w.scan()
    assert [f.path.name for f in w.scan()] == ["frame_0004.tif"]


def test_events_wake_up_early(tmp_path):
    w = FolderWatcher(tmp_path, settle_s=0.0, poll_s=5.0, use_events=True)
    try:
        t0 = time.monotonic()
        _touch(tmp_path / "frame_0001.tif")
        w.wait()
        # with working file events, wait() returns long before poll_s; either way a scan finds the file
        w.scan()
        assert [f.number for f in w.scan()] == [1]
        assert time.monotonic() - t0 < 5.5
    finally:
        w.close()


def test_a_folder_that_drops_out_is_said_once_and_picked_up_again(tmp_path, caplog):
    """A network share that disappears for a while: one warning when it goes, one when it is back,
    and the files written meanwhile are found."""
    import logging

    share = tmp_path / "share"
    share.mkdir()
    w = FolderWatcher(share, settle_s=0.0, use_events=False)
    moved = tmp_path / "unmounted"
    share.rename(moved)
    with caplog.at_level(logging.WARNING, logger="deepis_rt.stream.watch"):
        assert [w.scan() for _ in range(5)] == [[]] * 5
        _touch(moved / "frame_0001.npy")
        moved.rename(share)
        w.scan()
        found = w.scan()
    assert [x.path.name for x in found] == ["frame_0001.npy"]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "cannot list folder" in messages[0] and "readable again" in messages[1]
