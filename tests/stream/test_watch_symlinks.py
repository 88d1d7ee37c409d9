"""Symbolic links in a camera folder: read when they stay inside it, skipped when they point out of it
unless the user allows it (``follow_symlinks`` / ``--follow-symlinks``)."""

import logging
import os

from deepis_rt.cluster.items import find_items
from deepis_rt.stream.watch import FolderWatcher, points_outside


def _folder(tmp_path):
    cam, elsewhere = tmp_path / "cam", tmp_path / "elsewhere"
    (cam / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    (cam / "frame_0000.npy").write_bytes(b"x" * 10)
    (elsewhere / "passwd").write_bytes(b"root:x:0:0")
    os.symlink(elsewhere / "passwd", cam / "frame_0001.npy")  # out of the folder
    os.symlink(cam / "frame_0000.npy", cam / "frame_0002.npy")  # inside it
    os.symlink(cam / "gone.npy", cam / "frame_0003.npy")  # dangling
    os.symlink(cam / "sub" / ".." / ".." / "elsewhere" / "passwd", cam / "frame_0004.npy")  # out, by ..
    return cam


def _names(watcher):
    return [f.path.name for f in watcher.scan()]


def test_links_out_of_the_camera_folder_are_skipped_once_and_said_once(tmp_path, caplog):
    cam = _folder(tmp_path)
    watcher = FolderWatcher(cam, settle_s=0.0, use_events=False)
    with caplog.at_level(logging.WARNING, logger="deepis_rt.stream.watch"):
        assert _names(watcher) == []  # first sight: settling
        assert _names(watcher) == ["frame_0000.npy", "frame_0002.npy"]
        watcher.scan()
    said = [r.getMessage() for r in caplog.records if "symbolic link" in r.getMessage()]
    assert sorted(m.split(":")[0] for m in said) == ["watch | frame_0001.npy", "watch | frame_0004.npy"]
    assert all("root" not in m for m in said)


def test_links_out_of_the_folder_are_read_when_allowed(tmp_path):
    cam = _folder(tmp_path)
    watcher = FolderWatcher(cam, settle_s=0.0, use_events=False, follow_symlinks=True)
    watcher.scan()
    assert _names(watcher) == ["frame_0000.npy", "frame_0001.npy", "frame_0002.npy", "frame_0004.npy"]


def test_what_counts_as_outside(tmp_path):
    cam = _folder(tmp_path)
    assert not points_outside(cam / "frame_0000.npy", cam)  # a file, not a link
    assert points_outside(cam / "frame_0001.npy", cam) and points_outside(cam / "frame_0004.npy", cam)
    assert not points_outside(cam / "frame_0002.npy", cam)
    assert points_outside(cam / "frame_0003.npy", cam)  # dangling: nothing inside to read


def test_batch_skips_files_linked_from_outside_the_archive_unless_allowed(tmp_path, caplog):
    archive, elsewhere = tmp_path / "archive", tmp_path / "elsewhere"
    archive.mkdir()
    elsewhere.mkdir()
    (archive / "lapse.tcf").write_bytes(b"x")
    (elsewhere / "other.tcf").write_bytes(b"x")
    os.symlink(elsewhere / "other.tcf", archive / "linked.tcf")
    with caplog.at_level(logging.WARNING, logger="deepis_rt.cluster.items"):
        assert [it.name for it in find_items(archive)] == ["lapse"]
    assert "linked.tcf: a symbolic link to a file outside" in caplog.text
    assert [it.name for it in find_items(archive, follow_symlinks=True)] == ["lapse", "linked"]
