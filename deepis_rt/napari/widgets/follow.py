"""Follow a running ``deepis-rt stream``: its results folder re-read as frames are committed.

A worker thread (napari's ``thread_worker``) watches ``frames.csv`` / ``summary.json``, re-reads the
tables when they change and builds the layers (volumes stay lazy: one tomogram is read per change);
the viewer updates the layers in place, moves to the newest frame, and redraws the IS area over
time of the chosen synapse. Stop ends the worker (so does the cancel button of napari's activity
panel).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, PushButton

from deepis_rt.napari.layers import results_layers
from deepis_rt.napari.results import RunResults, is_results_folder
from deepis_rt.napari.widgets._layers import show_layers

__all__ = ["FollowStreamWidget", "watch_results"]

log = logging.getLogger(__name__)


def _signature(folder: Path) -> tuple:
    out = []
    for name in ("frames.csv", "summary.json"):
        try:
            st = (folder / name).stat()
            out.append((st.st_size, st.st_mtime_ns))
        except OSError:
            out.append(None)
    return tuple(out)


def watch_results(folder: Path, poll_s: float) -> Iterator[tuple[RunResults, list] | None]:
    """Yield (results, layer data) once the folder is a results folder and whenever its tables change;
    None while waiting (a worker can only be stopped at a ``yield``). A folder the stream has not
    created yet is waited for."""
    last = None
    while True:
        sig = _signature(folder)
        if sig != last and is_results_folder(folder):
            last = sig
            run = RunResults.open(folder)
            yield run, results_layers(run)
        end = time.monotonic() + poll_s
        while time.monotonic() < end:
            time.sleep(min(0.05, poll_s))
            yield None


class FollowStreamWidget(Container):
    """Dock widget: follow a results folder as ``deepis-rt stream`` writes it."""

    def __init__(self, napari_viewer: Any) -> None:
        self.viewer = napari_viewer
        self.folder = FileEdit(mode="d", label="results folder", value=self._guess_folder())
        self.poll_s = FloatSpinBox(value=1.0, min=0.1, max=60.0, step=0.5, label="check every (s)")
        self.newest = CheckBox(value=True, text="go to the newest frame")
        self.start_button = PushButton(text="Follow")
        self.stop_button = PushButton(text="Stop", enabled=False)
        self.status = Label(value="not following")
        self.synapse = ComboBox(label="synapse", choices=[])
        super().__init__(widgets=[self.folder, self.poll_s, self.newest,
                                  Container(widgets=[self.start_button, self.stop_button], layout="horizontal",
                                            labels=False),
                                  self.status, self.synapse], labels=True)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 2.6), tight_layout=True)
        self.axes = self.figure.add_subplot()
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(180)
        self.native.layout().addWidget(self.canvas)
        self.run: RunResults | None = None
        self._points: Any = None
        self.worker: Any = None
        self.updates = 0
        self.start_button.changed.connect(lambda: self.start())
        self.stop_button.changed.connect(lambda: self.stop())
        self.synapse.changed.connect(lambda: self.plot())

    def _guess_folder(self) -> str:
        """The results folder of a layer already open (e.g. by the reader), else empty."""
        for layer in self.viewer.layers:
            results = layer.metadata.get("deepis_rt", {}).get("results")
            if results:
                return results
        return ""

    # ------------------------------------------------------------------ worker
    def start(self, folder: str | Path | None = None) -> Any:
        """Start following ``folder`` (default: the one in the widget); returns the worker."""
        from napari.qt.threading import create_worker

        if folder is not None:
            self.folder.value = folder
        root = Path(self.folder.value)
        if str(self.folder.value) in ("", "."):
            self.status.value = "choose the --out folder of the stream"
            return None
        if root.exists() and not root.is_dir():
            self.status.value = f"{root}: a file; choose the --out folder of the stream"
            return None
        self.stop()
        self.worker = create_worker(watch_results, root, float(self.poll_s.value),
                                    _progress={"desc": f"following {root.name}"})
        self.worker.yielded.connect(self._on_update)
        self.worker.errored.connect(self._on_error)
        self.worker.finished.connect(self._on_finished)
        self.start_button.enabled, self.stop_button.enabled = False, True
        self.status.value = (f"following {root}" if is_results_folder(root)
                             else f"waiting for the stream to write {root}")
        self.worker.start()
        return self.worker

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.quit()

    def _on_finished(self) -> None:
        self.worker = None
        self.start_button.enabled, self.stop_button.enabled = True, False
        self.status.value = f"stopped; {self._counts()}"

    def _on_error(self, exc: BaseException) -> None:
        self.status.value = f"error: {exc}"
        log.warning("napari | following stopped: %s", exc)

    def _on_update(self, item: tuple[RunResults, list] | None) -> None:
        if item is None:
            return
        run, layer_data = item
        self.run = run
        for layer in show_layers(self.viewer, layer_data):
            if type(layer).__name__ == "Points" and layer is not self._points:
                self._points = layer  # picking a synapse point shows that synapse's plot
                layer.selected_data.events.items_changed.connect(self._on_points_selected)
        if self.newest.value and run.n_frames:
            self.viewer.dims.set_point(0, run.frame_time_s(run.n_frames - 1))
        self._update_synapses()
        self.updates += 1
        self.status.value = self._counts()

    def _counts(self) -> str:
        if self.run is None:
            return "no frame yet"
        statuses = [r.get("status") for r in self.run.frames]
        parts = [f"{statuses.count(s)} {s}" for s in ("ok", "failed", "retry") if statuses.count(s)]
        return f"{len(statuses)} frames ({', '.join(parts) or 'none'}), {self.synapse_count()} synapse(s)"

    # ------------------------------------------------------------------ synapse plot
    def _on_points_selected(self, *_args: Any) -> None:
        layer = self._points
        picked = sorted(layer.selected_data) if layer is not None else []
        if not picked or "tcell_track" not in layer.features:
            return
        row = layer.features.iloc[picked[-1]]
        key = (int(row["tcell_track"]), int(row["target_track"]))
        if key in self._synapse_keys():
            self.synapse.value = key

    def synapse_count(self) -> int:
        return len(self.synapse.choices)

    def _synapse_keys(self) -> list[tuple[int, int]]:
        syn = self.run.synapse_table() if self.run is not None else {}
        keys: dict[tuple[int, int], None] = {}
        for a, b in zip(syn.get("tcell_track", ()), syn.get("target_track", ()), strict=True):
            if np.isfinite(a) and np.isfinite(b):
                keys[(int(a), int(b))] = None
        return list(keys)

    def _update_synapses(self) -> None:
        keys = self._synapse_keys()
        choices = [(f"CAR-T {a} / target {b}", (a, b)) for a, b in keys]
        current = self.synapse.value
        self.synapse.choices = choices
        if current in keys:
            self.synapse.value = current
        self.plot()

    def plot(self) -> None:
        """IS area (um2, one-sigma error bars) over time of the chosen synapse."""
        ax = self.axes
        ax.clear()
        key = self.synapse.value
        syn = self.run.synapse_table() if self.run is not None else {}
        if key is not None and syn:
            sel = (syn["tcell_track"] == key[0]) & (syn["target_track"] == key[1])
            t, area = syn["time_s"][sel], syn["is_area_um2"][sel]
            err = syn.get("is_area_err_um2", np.full(len(t), np.nan))[sel]
            order = np.argsort(t)
            ax.errorbar(t[order], area[order], yerr=np.nan_to_num(err[order]), fmt="o-", ms=3, capsize=2,
                        color="#c9a800")
            ax.set_title(f"CAR-T {key[0]} / target {key[1]}", fontsize=9)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("IS area (µm²)")
        self.canvas.draw_idle()

    def plotted(self) -> tuple[np.ndarray, np.ndarray]:
        """(time, area) of the line drawn now (for tests and scripts)."""
        lines = self.axes.get_lines()
        if not lines:
            return np.array([]), np.array([])
        x, y = lines[0].get_data()
        return np.asarray(x, float), np.asarray(y, float)
