"""napari widgets in a real viewer (napari's ``make_napari_viewer``): the layers are drawn, a live
stream is followed, a layer is segmented, corrected frames are saved for training.

Needs napari, pytest-qt and an X display with OpenGL (CI: Xvfb); skipped otherwise, saying why.
"""

from __future__ import annotations

import numpy as np
import pytest
from napari_support import VOXEL, start_live_stream, synth_frames, widget_skip_reason, write_camera_frames

REASON = widget_skip_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


@pytest.fixture
def viewer(make_napari_viewer):
    """A shown viewer (napari draws only shown canvases) with the deepis-rt manifest registered."""
    from pathlib import Path

    from npe2 import PluginManager, PluginManifest

    import deepis_rt.napari

    pm = PluginManager.instance()
    pm.discover()  # installed plugins, this one included when installed with its entry point
    if "deepis-rt" not in pm:  # not installed with its entry point (a source checkout on the path)
        pm.register(PluginManifest.from_file(Path(deepis_rt.napari.__file__).with_name("napari.yaml")))
    return make_napari_viewer(show=True)


def _colour_counts(img: np.ndarray) -> dict[str, int]:
    r, g, b = (img[..., i].astype(int) for i in range(3))
    return {"green": int(((g - r > 40) & (g - b > 40)).sum()),
            "magenta": int(((r - g > 40) & (b - g > 40)).sum()),
            "yellow": int(((r - b > 60) & (g - b > 60)).sum())}


def test_results_folder_drawn_with_labels_tracks_and_synapse(viewer, finished_run):
    _, out, _ = finished_run
    layers = viewer.open(str(out), plugin="deepis-rt")
    assert [type(la).__name__ for la in layers] == ["Image", "Labels", "Tracks", "Tracks", "Points"]
    ri, labels = layers[0], layers[1]
    assert ri.data.shape == (4, 32, 64, 64) and str(ri.units[1]) == "micrometer"
    # the last frame, in the slice through the synapse
    z_is = np.argwhere(np.asarray(labels.data[3]) == 3)[:, 0].mean() * VOXEL[0]
    viewer.dims.set_point(0, 3 * labels.scale[0])
    viewer.dims.set_point(1, z_is)
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)
    seen = _colour_counts(shot)
    assert seen["green"] > 200 and seen["magenta"] > 200 and seen["yellow"] > 20, seen
    gray = shot[..., :3].astype(int)
    labels.visible = False
    bare = _colour_counts(viewer.screenshot(canvas_only=True, flash=False))
    assert bare["green"] < seen["green"] // 10 and bare["magenta"] < seen["magenta"] // 10  # the colours are the labels
    assert gray.std() > 5  # not a blank canvas


def test_sample_data_opens(viewer):
    viewer.open_sample("deepis-rt", "conjugate")
    ri, labels = viewer.layers
    assert ri.data.ndim == 4 and set(np.unique(labels.data)) == {0, 1, 2, 3}
    assert [str(u) for u in ri.units] == ["second", "micrometer", "micrometer", "micrometer"]


def test_follow_widget_shows_frames_as_a_stream_writes_them(viewer, qtbot, tmp_path):
    from deepis_rt.napari.widgets.follow import FollowStreamWidget

    frames = synth_frames(4)
    camera, out = tmp_path / "camera", tmp_path / "results"
    write_camera_frames(camera, frames[:2])
    dt = float(frames[1].truth["time_s"])
    widget = FollowStreamWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget.start(out) is not None  # before the stream has created its folder: waited for
    assert widget.status.value == f"waiting for the stream to write {out}"
    stream, thread = start_live_stream(camera, out, dt, max_frames=4)
    qtbot.waitUntil(lambda: widget.run is not None and widget.run.n_frames >= 1, timeout=60_000)
    write_camera_frames(camera, frames[2:], start=2)  # the microscope goes on
    qtbot.waitUntil(lambda: widget.run.n_frames == 4 and len(widget.run.synapses) >= 2
                    and len(widget.plotted()[0]) == len(widget.run.synapses), timeout=90_000)
    thread.join(timeout=30)
    labels = next(la for la in viewer.layers if type(la).__name__ == "Labels")
    assert labels.data.shape[0] == 4
    assert viewer.dims.point[0] == pytest.approx(3 * widget.run.frame_interval_s)  # the newest frame shown
    t, area = widget.plotted()
    expected = sorted((float(r["time_s"]), float(r["is_area_um2"])) for r in widget.run.synapses)
    np.testing.assert_allclose(np.c_[t, area], expected, rtol=1e-5)
    assert widget.updates >= 2 and "4 frames (4 ok)" in widget.status.value
    # picking a synapse point chooses its synapse for the plot
    points = next(la for la in viewer.layers if type(la).__name__ == "Points")
    row = points.features.iloc[-1]
    key = (int(row["tcell_track"]), int(row["target_track"]))
    widget.synapse.choices = [("another", (99, 99)), ("this one", key)]
    widget.synapse.value = (99, 99)
    points.selected_data = {len(points.data) - 1}
    assert widget.synapse.value == key
    widget.stop()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert widget.start_button.enabled


def test_segment_widget_labels_the_current_time_point(viewer, qtbot, tmp_path, tiny_overrides):
    import torch

    import deepis_rt
    from deepis_rt.checkpoint import save_checkpoint
    from deepis_rt.model import build_model
    from deepis_rt.napari.widgets.segment import BACKENDS, CURRENT, SegmentWidget

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "tiny.pt", build_model("deepis-lite", **tiny_overrides),
                           meta={"voxel_size_um": [1.0, 0.5, 0.5], "tile_zyx": [16, 32, 32]})
    viewer.open_sample("deepis-rt", "conjugate")
    sample = viewer.layers[0]
    viewer.layers.clear()  # the middle of the sample (small, for a fast test)
    viewer.add_image(sample.data[:, 8:24, 16:48, 16:48], name=sample.name, scale=sample.scale, units=sample.units,
                     axis_labels=sample.axis_labels)
    widget = SegmentWidget(viewer)
    assert "torch-cpu" in BACKENDS and BACKENDS[0] == "auto"
    widget.image.value = viewer.layers[0]
    widget.checkpoint.value = ckpt
    widget.backend.value = "torch-cpu"
    widget.which.value = CURRENT
    viewer.dims.set_current_step(0, 5)
    with qtbot.waitSignal(widget.start().finished, timeout=120_000):
        pass
    seg = viewer.layers["segmentation of RI (synthetic conjugate)"]
    assert seg.data.shape == viewer.layers[0].data.shape and tuple(seg.scale) == tuple(viewer.layers[0].scale)
    expected = deepis_rt.load(ckpt, backend="torch-cpu").segment(viewer.layers[0].data[5], (1.0, 0.5, 0.5))
    np.testing.assert_array_equal(seg.data[5], expected.labels)
    assert not seg.data[4].any()  # only the current time point was segmented
    assert "[torch-cpu]" in widget.status.value


def test_segment_widget_refuses_an_uncalibrated_image(viewer):
    from deepis_rt.napari.widgets.segment import SegmentWidget

    viewer.add_image(np.full((8, 16, 16), 1.337, np.float32), name="raw")
    widget = SegmentWidget(viewer)
    widget.image.value = viewer.layers["raw"]
    assert widget.start() is None
    assert "not a length; set its scale in um" in widget.status.value


def test_annotate_widget_saves_frames_that_train_reads(viewer, tmp_path):
    from deepis_rt.napari.sample import SAMPLE_VOXEL_SIZE_UM
    from deepis_rt.napari.widgets.annotate import AnnotateWidget
    from deepis_rt.train.data import FolderSource

    viewer.open_sample("deepis-rt", "conjugate")
    ri, labels = viewer.layers
    labels.data[7, 10:12, 20:22, 20:22] = 1  # a correction painted by hand
    widget = AnnotateWidget(viewer)
    widget.image.value, widget.label_layer.value = ri, labels
    widget.folder.value = tmp_path / "train"
    for t in (7, 11):
        viewer.dims.set_current_step(0, t)
        assert widget.save() is not None
    source = FolderSource(tmp_path / "train", SAMPLE_VOXEL_SIZE_UM)
    assert [s.source for s in source.items] == ["RI_synthetic_conjugate_t0007.ome.tif",
                                                "RI_synthetic_conjugate_t0011.ome.tif"]
    np.testing.assert_allclose(source.items[0].ri, ri.data[7], atol=1e-6)
    from deepis_rt.io import read_labels

    np.testing.assert_array_equal(read_labels(tmp_path / "train/labels/RI_synthetic_conjugate_t0007.ome.tif"),
                                  labels.data[7])
    labels.data[11, 0, 0, 0] = 7  # not a deepis-rt label
    assert widget.save() is None and "use 0 background, 1 CAR-T, 2 target, 3 IS only" in widget.status.value
