"""Human in the loop: correct a frame's labels in napari, save it for training, fine-tune a checkpoint.

As in Cellpose 2: segment a frame (the Segment widget), paint over the mistakes with napari's label
tools (1 CAR-T, 2 target, 3 IS), save the frame — its RI and its corrected labels — into a training
folder in the layout ``deepis-rt train --data DIR`` reads (``DIR/<name>.ome.tif`` and
``DIR/labels/<name>.ome.tif``, with the voxel size), and after a few frames fine-tune a checkpoint on
them with ``deepis-rt train --data DIR --init CKPT``. Training runs as that command in a child
process, watched by a worker thread: progress from its log, Cancel interrupts it (the command saves
its state; the same settings continue it), and the validation before and after is shown.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, FloatSpinBox, Label, PushButton, SpinBox

from deepis_rt.napari.widgets._layers import physical_voxel_size
from deepis_rt.train.loop import state_path

__all__ = ["AnnotateWidget", "save_training_frame", "finetune", "finetune_command"]

log = logging.getLogger(__name__)

_STEP = re.compile(r"\bstep (\d+) loss\b")


def save_training_frame(folder: str | Path, name: str, ri: np.ndarray, labels: np.ndarray,
                        voxel_size_um: Sequence[float]) -> tuple[Path, Path]:
    """Write ``folder/<name>.ome.tif`` (RI) and ``folder/labels/<name>.ome.tif`` (labels 0-3).

    Raises
    ------
    ValueError
        Shapes differ, or labels hold values other than 0 background, 1 CAR-T, 2 target, 3 IS.
    """
    from deepis_rt.io import write_labels, write_tomogram

    ri, labels = np.asarray(ri), np.asarray(labels)
    if ri.ndim != 3 or ri.shape != labels.shape:
        raise ValueError(f"{name}: RI {ri.shape} and labels {labels.shape} must be the same 3-D grid")
    values = np.unique(labels)
    if values.size and (values.min() < 0 or values.max() > 3):
        raise ValueError(f"{name}: labels hold {values.tolist()}; use 0 background, 1 CAR-T, 2 target, 3 IS only")
    folder = Path(folder)
    safe = re.sub(r"_+", "_", re.sub(r"[^\w.-]+", "_", name)).strip("._") or "frame"
    image = write_tomogram(folder / f"{safe}.ome.tif", ri.astype(np.float32), voxel_size_um)
    label_file = write_labels(folder / "labels" / f"{safe}.ome.tif", labels.astype(np.uint8), voxel_size_um)
    return image, label_file


def finetune_command(data: str | Path, init: str, out: str | Path, steps: int, lr: float,
                     voxel_size_um: Sequence[float]) -> list[str]:
    """The ``deepis-rt train --data DIR --init CKPT`` command line the widget runs."""
    return [sys.executable, "-m", "deepis_rt", "-vv", "train", "--data", str(data), "--init", str(init),
            "--out", str(out), "--steps", str(int(steps)), "--lr", f"{lr:g}", "--batch", "1",
            "--voxel-size", *(f"{v:g}" for v in voxel_size_um), "--no-progress", "--resume"]


def finetune(command: list[str]) -> Iterator[int | str]:
    """Run a training command; yield the step reached (ints) as it logs them, then its output (a str).

    Closing the generator (a worker's quit) interrupts the command as Ctrl-C would: it saves its
    state, and the same command continues it (``--resume``).

    Raises
    ------
    RuntimeError
        The command failed; the message is its error line (else its last lines).
    """
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip())
            m = _STEP.search(line)
            if m:
                yield int(m.group(1))
        proc.wait()
    finally:
        if proc.poll() is None:  # stopped from outside: interrupt, so that the state is saved
            proc.send_signal(signal.SIGINT if os.name != "nt" else signal.CTRL_C_EVENT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    if proc.returncode != 0:
        said = [line for line in lines if line.startswith("deepis-rt: error:")]  # the command's own message
        raise RuntimeError(f"deepis-rt train exited with {proc.returncode}: "
                           + (said[-1] if said else " / ".join(line for line in lines[-4:] if line)))
    yield "\n".join(line for line in lines if not line.startswith(("D ", "I ")))


class AnnotateWidget(Container):
    """Dock widget: save corrected frames in the training layout, then fine-tune on them."""

    def __init__(self, napari_viewer: Any) -> None:
        self.viewer = napari_viewer
        self.image = ComboBox(label="image", choices=lambda _w: self._layers("Image"))
        self.label_layer = ComboBox(label="labels", choices=lambda _w: self._layers("Labels"))
        self.folder = FileEdit(mode="d", label="training folder", value="")
        self.save_button = PushButton(text="Save frame for training")
        self.init = FileEdit(mode="r", label="start from", value="", filter="*.pt *.pth *.tar")
        self.steps = SpinBox(value=200, min=1, max=100_000, label="steps")
        self.lr = FloatSpinBox(value=1e-4, min=1e-6, max=1e-2, step=1e-5, label="learning rate")
        self.out = FileEdit(mode="w", label="new checkpoint", value="", filter="*.pt")
        self.train_button = PushButton(text="Fine-tune")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="start from: empty = the bundled checkpoint")
        self.report = Label(value="")
        super().__init__(widgets=[self.image, self.label_layer, self.folder, self.save_button, self.init, self.steps,
                                  self.lr, self.out,
                                  Container(widgets=[self.train_button, self.cancel_button], layout="horizontal",
                                            labels=False), self.status, self.report])
        self.lr.native.setDecimals(6)
        self.worker: Any = None
        self.saved: list[Path] = []
        self.save_button.changed.connect(lambda: self.save())
        self.train_button.changed.connect(lambda: self.start())
        self.cancel_button.changed.connect(lambda: self.cancel())
        for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            ev.connect(lambda _e: (self.image.reset_choices(), self.label_layer.reset_choices()))

    def _layers(self, kind: str) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in self.viewer.layers
                if type(layer).__name__ == kind and layer.ndim in (3, 4)]

    def _frame(self) -> tuple[int | None, np.ndarray, np.ndarray, tuple[float, float, float]]:
        image, labels = self.image.value, self.label_layer.value
        if image is None or labels is None:
            raise ValueError("choose an image layer and the labels layer that goes with it")
        vs = physical_voxel_size(image)
        t = int(self.viewer.dims.current_step[0]) if image.ndim == 4 else None
        ri = np.asarray(image.data[t] if t is not None else image.data, dtype=np.float32)
        lab = np.asarray(labels.data[t] if labels.ndim == 4 else labels.data)
        return t, ri, lab, vs

    def save(self) -> tuple[Path, Path] | None:
        """Save the current time point of the chosen layers into the training folder."""
        folder = str(self.folder.value)
        if folder in ("", "."):
            self.status.value = "choose a training folder first"
            return None
        try:
            t, ri, lab, vs = self._frame()
            name = self.image.value.name + (f"_t{t:04d}" if t is not None else "")
            saved = save_training_frame(folder, name, ri, lab, vs)
        except (ValueError, OSError) as exc:
            self.status.value = f"not saved: {exc}"
            return None
        self.saved.append(saved[0])
        n = len([p for p in Path(folder).iterdir() if p.name.endswith(".ome.tif")])
        self.status.value = (f"saved {saved[0].name} ({n} frame(s) in {Path(folder).name}/)"
                             + ("; save at least 2 to see the validation before and after" if n < 2 else ""))
        return saved

    def start(self) -> Any:
        """Fine-tune on the training folder in a child process; returns the worker (None when refused)."""
        from napari.qt.threading import create_worker

        folder, out = str(self.folder.value), str(self.out.value)
        if folder in ("", ".") or not Path(folder).is_dir():
            self.status.value = "choose the training folder the frames were saved to"
            return None
        if out in ("", "."):
            self.status.value = "choose where the new checkpoint goes"
            return None
        try:
            vs = physical_voxel_size(self.image.value) if self.image.value is not None else None
        except ValueError as exc:
            self.status.value = str(exc)
            return None
        init = str(self.init.value) if str(self.init.value) not in ("", ".") else "bundled"
        cmd = finetune_command(folder, init, out, self.steps.value, self.lr.value, vs or _saved_voxel_size(folder))
        # the command logs every 10th step: one yield per 10 steps
        self.worker = create_worker(finetune, cmd, _progress={"total": max(1, int(self.steps.value) // 10),
                                                              "desc": f"fine-tuning {Path(init).name}"})
        self.worker.yielded.connect(self._on_output)
        self.worker.errored.connect(lambda exc: setattr(self.status, "value", f"failed: {exc}"))
        self.worker.finished.connect(self._on_finished)
        self.train_button.enabled, self.cancel_button.enabled = False, True
        self.status.value = f"fine-tuning {init} on {folder} ..."
        self.worker.start()
        return self.worker

    def cancel(self) -> None:
        if self.worker is not None:
            self.worker.quit()
            self.status.value = "interrupted: the state is saved; Fine-tune again continues it"

    def _on_output(self, item: int | str) -> None:
        if isinstance(item, int):
            self.status.value = f"step {item} of {self.steps.value}"
            return
        keep = [line for line in item.splitlines() if line.startswith(("validation", "wrote"))]
        self.report.value = "\n".join(keep)
        self.status.value = f"done: {self.out.value}"
        # finished: a next run with the same name starts afresh (an interrupted one continues)
        state_path(self.out.value).unlink(missing_ok=True)

    def _on_finished(self) -> None:
        self.worker = None
        self.train_button.enabled, self.cancel_button.enabled = True, False


def _saved_voxel_size(folder: str | Path) -> tuple[float, float, float]:
    from deepis_rt.io import read_tomogram

    first = next(p for p in sorted(Path(folder).iterdir()) if p.name.endswith(".ome.tif"))
    vs = read_tomogram(first).voxel_size_um
    if vs is None:
        raise ValueError(f"{first}: no voxel size in the file")
    return vs
