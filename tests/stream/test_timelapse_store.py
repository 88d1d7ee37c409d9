"""The OME-Zarr time-lapse store and the TZYX OME-TIFF a stream leaves in its results folder.

NGFF metadata is checked with ome-zarr-models' 0.4 models (the validator the OME-Zarr community keeps).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr_models.v04.image import Image
from ome_zarr_models.v04.image_label import ImageLabel
from ome_zarr_models.v04.labels import Labels
from stream_support import VOXEL, make_segmenter

from deepis_rt.analysis.tables import CELL_COLUMNS, SYNAPSE_COLUMNS
from deepis_rt.core.labels import LABEL_NAMES
from deepis_rt.errors import ConfigError
from deepis_rt.stream import Stream
from deepis_rt.stream.results import ResultsFolder
from deepis_rt.stream.timelapse_store import STORE_NAME, TimelapseStore


def _run(out, volumes, times, **settings):
    with Stream(None, out, make_segmenter(), voxel_size_um=VOXEL, **settings) as stream:
        for volume, t in zip(volumes, times, strict=True):
            stream.submit(volume, time_s=t)
        stream.end_input()
        results = list(stream)
    return sorted(results, key=lambda r: r.frame)


def _validated(store_path):
    root = zarr.open_group(store_path, mode="r")
    Image.from_zarr(root)
    Labels.from_zarr(root["labels"])
    label_image = ImageLabel.from_zarr(root["labels/segmentation"])
    return root, label_image


def test_stream_writes_a_valid_calibrated_store_frame_by_frame(tmp_path, contact_series):
    radii, volumes = contact_series
    volumes = volumes[:3]
    results = _run(tmp_path, volumes, [0.0, 4.0, 8.0])
    root, label_image = _validated(tmp_path / STORE_NAME)

    meta = root.attrs["deepis_rt"]
    assert meta["root_image"] == "ri" and meta["time_s"] == [0.0, 4.0, 8.0]
    ms = root.attrs["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["t", "z", "y", "x"]
    assert [a.get("unit") for a in ms["axes"]] == ["second", "micrometer", "micrometer", "micrometer"]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [4.0, *VOXEL]
    names = {p.label_value: p.name for p in label_image.attributes.image_label.properties}
    assert names == {0: "background", **LABEL_NAMES}
    ri, labels = root["0"], root["labels/segmentation/0"]
    assert ri.dtype == np.float32 and labels.dtype == np.uint8 and ri.shape == labels.shape == (3, *volumes[0].shape)
    assert ri.chunks[0] == 1
    for r in results:
        np.testing.assert_array_equal(labels[r.frame], r.labels)
        np.testing.assert_allclose(ri[r.frame], volumes[r.frame])
    assert (labels[2] == 3).any()  # the synapse is in it

    with tifffile.TiffFile(tmp_path / "labels_tzyx.ome.tif") as tif:
        series = tif.series[0]
        assert series.axes == "TZYX" and series.shape == labels.shape
        np.testing.assert_array_equal(series.asarray(), labels[:])
        assert 'TimeIncrement="4.0"' in tif.ome_metadata and 'PhysicalSizeZ="0.5"' in tif.ome_metadata


def test_labels_only_store_has_the_labels_as_root_image(tmp_path, contact_series):
    _, volumes = contact_series
    results = _run(tmp_path, volumes[:2], [0.0, 3.0], zarr="labels")
    root, _ = _validated(tmp_path / STORE_NAME)
    assert root.attrs["deepis_rt"]["root_image"] == "labels"
    assert root["0"].dtype == np.uint8
    np.testing.assert_array_equal(root["0"][1], results[1].labels)


def test_failed_frame_is_marked_unwritten(tmp_path, contact_series):
    _, volumes = contact_series
    bad = np.zeros((4, 4), np.float32)  # 2-D: the frame fails
    results = _run(tmp_path, [volumes[1], bad, volumes[2]], [0.0, 3.0, 6.0])
    assert [r.status for r in results] == ["ok", "failed", "ok"]
    root, _ = _validated(tmp_path / STORE_NAME)
    assert root.attrs["deepis_rt"]["time_s"] == [0.0, None, 6.0]
    assert np.isnan(root["0"][1]).all() and not root["labels/segmentation/0"][1].any()
    assert not (tmp_path / STORE_NAME / "0" / "1").exists()
    assert tifffile.imread(tmp_path / "labels_tzyx.ome.tif").shape[0] == 3


def test_frame_of_another_shape_is_left_out(tmp_path, contact_series, caplog):
    _, volumes = contact_series
    small = volumes[1][:, :32, :32]
    with caplog.at_level(logging.WARNING):
        results = _run(tmp_path, [volumes[1], small], [0.0, 3.0])
    assert [r.status for r in results] == ["ok", "ok"]
    root = zarr.open_group(tmp_path / STORE_NAME, mode="r")
    assert root.attrs["deepis_rt"]["time_s"] == [0.0] and root["0"].shape[0] == 1
    assert "left out of the store" in caplog.text
    assert (tmp_path / "masks" / "frame_000001.ome.tif").is_file()


def test_restart_removes_time_points_of_uncommitted_frames(tmp_path, contact_series):
    """A frame killed after its chunks but before its frames.csv row: the next run removes it."""
    _, volumes = contact_series
    results = _run(tmp_path, volumes[1:3], [0.0, 3.0])
    store = TimelapseStore(tmp_path / STORE_NAME)
    store.open({0, 1})
    # frame 2 reaches the store, then the process dies before its row is committed
    store.write_frame(2, 6.0, results[1].labels, VOXEL, ri=volumes[2])
    assert (tmp_path / STORE_NAME / "labels/segmentation/0/2").exists()
    (tmp_path / STORE_NAME / "0" / "1" / "0.0.0.junk.partial").write_bytes(b"torn")

    folder = ResultsFolder(tmp_path, CELL_COLUMNS, SYNAPSE_COLUMNS)
    folder.timelapse = TimelapseStore(tmp_path / STORE_NAME)
    folder.open()
    root, _ = _validated(tmp_path / STORE_NAME)
    assert root.attrs["deepis_rt"]["time_s"] == [0.0, 3.0, None]
    assert not (tmp_path / STORE_NAME / "labels/segmentation/0/2").exists()
    assert not list((tmp_path / STORE_NAME).rglob("*.partial"))
    np.testing.assert_array_equal(root["labels/segmentation/0"][1], results[1].labels)

    # the next run continues the store: its frame gets the next index
    more = _run(tmp_path, [volumes[3]], [9.0])
    root = zarr.open_group(tmp_path / STORE_NAME, mode="r")
    assert more[0].frame == 2 and root.attrs["deepis_rt"]["time_s"] == [0.0, 3.0, 9.0]


def test_zarr_off_writes_no_store_and_the_tiff_from_masks(tmp_path, contact_series):
    _, volumes = contact_series
    results = _run(tmp_path, volumes[1:3], [0.0, 5.0], zarr="off")
    assert not (tmp_path / STORE_NAME).exists()
    with tifffile.TiffFile(tmp_path / "labels_tzyx.ome.tif") as tif:
        assert tif.series[0].shape == (2, *volumes[1].shape)
        assert 'TimeIncrement="5.0"' in tif.ome_metadata and 'PhysicalSizeX="0.25"' in tif.ome_metadata
        np.testing.assert_array_equal(tif.asarray()[1], results[1].labels)


def test_unknown_zarr_mode_refused():
    with pytest.raises(ConfigError, match="zarr must be one of ri\\+labels, labels, off"):
        Stream(None, None, make_segmenter(), zarr="yes")


def test_a_foreign_folder_named_like_the_store_is_refused(tmp_path, contact_series):
    (tmp_path / STORE_NAME).mkdir()
    (tmp_path / STORE_NAME / "data.txt").write_text("not a store")
    from deepis_rt.errors import InputError

    with pytest.raises(InputError, match="not a deepis-rt time-lapse store"):
        _run(tmp_path, [contact_series[1][1]], [0.0])
