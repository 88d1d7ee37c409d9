"""Results folders written by the real stream, with a network that is the identity.

A synthetic conjugate's true signed distance map, encoded as RI (``RI0 + RI_PER_UM * d``), is
turned back into that distance map by an identity "network" with the matching input
normalisation, so the stream, analysis, tracker and writers run for real and fast, on a scene
whose truth is known.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path

import numpy as np

from deepis_rt.backends.base import Runner, as_numpy_batch
from deepis_rt.runtime import Segmenter

VOXEL = (1.0, 0.5, 0.5)
SHAPE = (32, 64, 64)
RI0 = 1.5
RI_PER_UM = 1.0 / 64
SEED = 2026


class IdentityRunner(Runner):
    name = "identity"

    def activate_impl(self) -> None:
        pass

    def infer_impl(self, batch):
        return as_numpy_batch(batch).copy()

    def describe(self):
        return {"backend": self.name, "device": "cpu", "precision": "fp32"}


def make_segmenter() -> Segmenter:
    meta = {"voxel_size_um": list(VOXEL), "ri_normalization": {"offset": RI0, "scale": RI_PER_UM},
            "medium_ri": RI0, "tile_zyx": list(SHAPE)}
    return Segmenter(IdentityRunner(), meta)


def synth_frames(n: int):
    from deepis_rt.synth import generate_timelapse

    return generate_timelapse(n, SEED, SHAPE, VOXEL, with_truth_area=False)


def write_camera_frames(camera: Path, frames, start: int = 0) -> None:
    from deepis_rt.io import write_tomogram

    camera.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames, start):
        write_tomogram(camera / f"frame_{i:04d}.tif", (RI0 + RI_PER_UM * f.distance_um).astype(np.float32), VOXEL)


def make_run(root: Path, n: int = 4, zarr: str = "off") -> tuple[Path, Path, list]:
    """(camera folder, results folder, synthetic frames) of a finished ``stream --once`` run; by default
    without the time-lapse store, so that the reader's fallback (masks and camera files) is what runs."""
    from deepis_rt.stream import Stream

    frames = synth_frames(n)
    camera, out = root / "camera", root / "results"
    write_camera_frames(camera, frames)
    Stream(camera, out, make_segmenter(), once=True, settle_s=0.0, use_events=False, zarr=zarr,
           frame_interval_s=float(frames[1].truth["time_s"] - frames[0].truth["time_s"])).run()
    return camera, out, frames


def start_live_stream(camera: Path, out: Path, interval_s: float, max_frames: int):
    """A stream following ``camera`` in a thread (as ``deepis-rt stream`` does); returns (stream, thread)."""
    from deepis_rt.stream import Stream

    stream = Stream(camera, out, make_segmenter(), settle_s=0.1, poll_s=0.05, use_events=False,
                    frame_interval_s=interval_s, max_frames=max_frames, idle_timeout_s=60.0)
    thread = threading.Thread(target=stream.run, daemon=True)
    thread.start()
    return stream, thread


def write_store(out: Path, with_ri: bool = True) -> Path:
    """``OUT/timelapse.ome.zarr`` in the layout of docs/results.md (NGFF 0.4 in zarr format 2, labels group,
    ``deepis_rt`` block), from a finished run's masks and camera tomograms: as ``stream`` writes it."""
    import json

    import numcodecs
    import tifffile
    import zarr

    rows = [line.split(",") for line in (out / "frames.csv").read_text().splitlines()[1:]]
    camera = Path(json.loads((out / "summary.json").read_text())["source_path"])
    labels = np.stack([tifffile.imread(out / f"masks/frame_{int(r[0]):06d}.ome.tif") for r in rows])
    ri = np.stack([tifffile.imread(camera / r[1]) for r in rows])
    times = [float(r[2]) for r in rows]
    dt = float(np.median(np.diff(times)))
    path = out / "timelapse.ome.zarr"
    root = zarr.open_group(path, mode="w", zarr_format=2)
    common = dict(chunks=(1, *labels.shape[1:]), compressors=numcodecs.Zlib(level=1),
                  chunk_key_encoding={"name": "v2", "separator": "/"})
    axes = [{"name": "t", "type": "time", "unit": "second"},
            *({"name": a, "type": "space", "unit": "micrometer"} for a in "zyx")]

    def multiscales(name):
        return [{"version": "0.4", "name": name, "axes": axes, "datasets": [
            {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [dt, *VOXEL]}]}]}]

    top = ri if with_ri else labels
    root.create_array("0", shape=top.shape, dtype=top.dtype, fill_value=float("nan") if with_ri else 0, **common)[:] = top
    root.create_group("labels").attrs.put({"labels": ["segmentation"]})
    seg = root.create_group("labels/segmentation")
    seg.create_array("0", shape=labels.shape, dtype="uint8", fill_value=0, **common)[:] = labels
    seg.attrs.put({"multiscales": multiscales("segmentation"), "image-label": {"version": "0.4"}})
    root.attrs.put({"multiscales": multiscales("RI" if with_ri else "labels"),
                    "deepis_rt": {"layout": 1, "root_image": "ri" if with_ri else "labels",
                                  "labels": "labels/segmentation", "time_s": times}})
    return path


def widget_skip_reason() -> str | None:
    for module, pip in (("napari", "'deepis-rt[napari]'"), ("pytestqt", "pytest-qt")):
        if importlib.util.find_spec(module) is None:
            return f"napari widget tests need {module} (pip install {pip})"
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        return ("napari widget tests need a display with OpenGL: run them under xvfb-run, or install Xvfb and "
                "pytest-xvfb (as CI does)")
    return None
