"""Segment the image layer shown in napari with a checkpoint and a backend of the user's choice.

The model is loaded and every time point segmented in a worker thread (napari's ``thread_worker``):
the viewer stays responsive, a progress bar counts the time points, Cancel stops after the current
one. Labels (0 background, 1 CAR-T, 2 target, 3 IS) go to a Labels layer on the image's grid, with
the image's scale and units, in the plugin's fixed colours.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton

from deepis_rt.napari.layers import labels_kwargs
from deepis_rt.napari.widgets._layers import physical_voxel_size

__all__ = ["SegmentWidget", "BACKENDS", "segment_frames"]

log = logging.getLogger(__name__)


def _backends() -> tuple[str, ...]:
    from deepis_rt.backends import registry

    return ("auto", *registry.auto_order())


#: Backend names offered: "auto" and every backend deepis-rt registers, fastest first.
BACKENDS = _backends()
ALL, CURRENT = "all time points", "current time point"


def segment_frames(volumes: Any, times: list[int], voxel_size_um: tuple[float, float, float],
                   checkpoint: str | None, backend: str) -> Iterator[tuple[int, Any]]:
    """Load the model, then yield (time index, FrameResult) for each of ``times`` of ``volumes`` (T, Z, Y, X)."""
    import deepis_rt

    segmenter = deepis_rt.load(checkpoint or None, backend=backend)
    for t in times:
        yield t, segmenter.segment(np.asarray(volumes[t], dtype=np.float32), voxel_size_um)


class SegmentWidget(Container):
    """Dock widget: segment an Image layer (3-D, or 4-D with time first)."""

    def __init__(self, napari_viewer: Any) -> None:
        self.viewer = napari_viewer
        self.image = ComboBox(label="image", choices=self._image_layers)
        self.checkpoint = FileEdit(mode="r", label="checkpoint", value="",
                                   filter="*.pt *.pth *.tar *.onnx")
        self.backend = ComboBox(label="backend", choices=list(BACKENDS), value="auto")
        self.which = ComboBox(label="frames", choices=[CURRENT, ALL], value=CURRENT)
        self.run_button = PushButton(text="Segment")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="checkpoint empty: the bundled demo checkpoint")
        super().__init__(widgets=[self.image, self.checkpoint, self.backend, self.which,
                                  Container(widgets=[self.run_button, self.cancel_button], layout="horizontal",
                                            labels=False), self.status])
        self.worker: Any = None
        self.labels_layer: Any = None
        self.run_button.changed.connect(lambda: self.start())
        self.cancel_button.changed.connect(lambda: self.cancel())
        self.viewer.layers.events.inserted.connect(lambda _e: self.image.reset_choices())
        self.viewer.layers.events.removed.connect(lambda _e: self.image.reset_choices())

    def _image_layers(self, _widget: Any = None) -> list[tuple[str, Any]]:
        from napari.layers import Image

        return [(layer.name, layer) for layer in self.viewer.layers
                if isinstance(layer, Image) and layer.ndim in (3, 4) and not layer.rgb]

    def start(self) -> Any:
        """Segment the chosen frames in a worker thread; returns the worker (None when refused)."""
        from napari.qt.threading import create_worker

        layer = self.image.value
        if layer is None:
            self.status.value = "open a tomogram first (an Image layer of 3 or 4 dimensions)"
            return None
        try:
            vs = physical_voxel_size(layer)
        except ValueError as exc:
            self.status.value = str(exc)
            return None
        data = layer.data if layer.ndim == 4 else layer.data[None]
        n = data.shape[0]
        current = int(self.viewer.dims.current_step[0]) if layer.ndim == 4 else 0
        times = list(range(n)) if self.which.value == ALL else [min(current, n - 1)]
        ckpt = str(self.checkpoint.value) if str(self.checkpoint.value) not in ("", ".") else None
        self.labels_layer = self._labels_layer(layer, data.shape)
        self.worker = create_worker(segment_frames, data, times, vs, ckpt, self.backend.value,
                                    _progress={"total": len(times), "desc": f"segmenting {layer.name}"})
        self.worker.yielded.connect(self._on_frame)
        self.worker.errored.connect(lambda exc: setattr(self.status, "value", f"error: {exc}"))
        self.worker.finished.connect(self._on_finished)
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.status.value = f"loading {Path(ckpt).name if ckpt else 'the bundled checkpoint'} ({self.backend.value})"
        self.worker.start()
        return self.worker

    def cancel(self) -> None:
        if self.worker is not None:
            self.worker.quit()

    def _labels_layer(self, image: Any, shape: tuple[int, ...]) -> Any:
        name = f"segmentation of {image.name}"
        spatial = tuple(shape[1:])
        ndim = image.ndim
        if name in self.viewer.layers and self.viewer.layers[name].data.shape[-3:] == spatial:
            return self.viewer.layers[name]
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        data = np.zeros(shape if ndim == 4 else spatial, np.uint8)
        kwargs = labels_kwargs(name, image.scale, ndim=ndim)
        kwargs.update(translate=tuple(image.translate), units=tuple(image.units), axis_labels=tuple(image.axis_labels))
        return self.viewer.add_labels(data, **kwargs)

    def _on_frame(self, item: tuple[int, Any]) -> None:
        t, result = item
        layer = self.labels_layer
        if layer.ndim == 4:
            layer.data[t] = result.labels
        else:
            layer.data[...] = result.labels
        layer.refresh()
        areas = [s.is_area_um2 for s in result.synapses]
        self.status.value = (f"time point {t}: {len(result.cells)} cell(s), {len(areas)} synapse(s)"
                             + (f", IS {sum(areas):.0f} µm²" if areas else "") + f" [{result.backend}]")

    def _on_finished(self) -> None:
        self.worker = None
        self.run_button.enabled, self.cancel_button.enabled = True, False
