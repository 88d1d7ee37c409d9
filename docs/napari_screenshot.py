"""Draw the napari view of a results folder into a PNG (the screenshot in README.md and docs/napari.md).

    deepis-rt synth /tmp/shot/camera --frames 16 --seed 2026
    deepis-rt stream --source /tmp/shot/camera --out /tmp/shot/results --once
    xvfb-run -a python docs/napari_screenshot.py /tmp/shot/results docs/napari_view.png

Opens the folder with the deepis-rt reader, docks the "Follow a stream" widget (its synapse plot),
shows the last frame in the z slice of its synapse point, and saves the whole window.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def main(results: str, png: str) -> None:
    import napari
    from npe2 import PluginManager, PluginManifest

    import deepis_rt.napari
    from deepis_rt.napari.widgets.follow import FollowStreamWidget

    pm = PluginManager.instance()
    pm.discover()  # installed plugins, this one included when installed with its entry point
    if "deepis-rt" not in pm:  # a source checkout that is not installed with its entry point
        pm.register(PluginManifest.from_file(Path(deepis_rt.napari.__file__).with_name("napari.yaml")))
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 820)
    layers = viewer.open(results, plugin="deepis-rt")
    labels = next(la for la in layers if type(la).__name__ == "Labels")
    last = labels.data.shape[0] - 1
    viewer.dims.set_point(0, last * labels.scale[0])
    # the z slice of the last frame's synapse point (it cuts through the IS)
    points = next((la for la in layers if type(la).__name__ == "Points"), None)
    here = points.data[points.data[:, 0] == last] if points is not None else np.zeros((0, 4))
    if len(here):
        viewer.dims.set_point(1, float(here[0, 1]))
    viewer.scale_bar.visible = True
    viewer.scale_bar.unit = "um"
    widget = FollowStreamWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Follow a stream", area="right")
    widget.start(results)
    from qtpy.QtWidgets import QApplication

    while widget.updates == 0:  # the first read of the folder
        QApplication.processEvents()
    widget.stop()
    viewer.reset_view()
    for _ in range(20):
        QApplication.processEvents()
    napari.utils.io.imsave(png, viewer.screenshot(canvas_only=False, flash=False))
    viewer.close()


if __name__ == "__main__":
    main(*sys.argv[1:3])
