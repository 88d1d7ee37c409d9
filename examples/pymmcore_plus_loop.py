"""A Micro-Manager acquisition (pymmcore-plus) that segments every z-stack as it is taken and speeds up
once a synapse forms.

The MDA runs z-stacks at a slow interval. Each plane that arrives on ``frameReady`` is put in its
time point's stack; a complete stack goes to :meth:`deepis_rt.stream.Stream.submit`. When the stream
reports a synapse ``formed`` event, the acquisition switches to the fast interval for the time points
that follow (holotomography takes a tomogram every 3-8 s; the contact's first minute is where its
kinetics are decided). The acquisition is a generator of ``useq.MDAEvent`` s that chooses each time
point's start after the previous time point was analysed, which is how pymmcore-plus runs
event-driven acquisitions.

Hardware: none needed to try it. ``--simulate`` loads two devices written with pymmcore-plus's
pure-Python device layer (``pymmcore_plus.experimental.unicore``) into a ``UniMMCore``: a focus
stage (``StageDevice``) and a camera (``SimpleCameraDevice``) whose every snap is the plane of a
synthetic conjugate time-lapse (:mod:`deepis_rt.synth`) at the stage's z position, as uint16
RI x 10 000 (the Tomocube convention). No Micro-Manager device adapter is loaded. On a real rig,
load the rig's configuration into a ``CMMCorePlus`` instead and give its z positions and voxel size.

Run::

    python examples/pymmcore_plus_loop.py --simulate --time-points 12 --out mm-results

Needs ``pip install pymmcore-plus``.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

log = logging.getLogger("pymmcore_plus_loop")


class SynapseTriggeredAcquisition:
    """Z-stacks at ``interval_s`` until a synapse forms, then at ``fast_interval_s``.

    Parameters
    ----------
    core : CMMCorePlus
        The Micro-Manager core (a ``UniMMCore`` with Python devices in ``--simulate``).
    z_positions_um : sequence of float
        Focus positions of one z-stack, bottom to top.
    voxel_size_um : (z, y, x)
        Voxel size of the assembled stacks.
    time_points, interval_s, fast_interval_s
        How many z-stacks, and the seconds between their starts before and after the first synapse.
    result_timeout_s : float
        Longest wait for a time point's analysis before the next one is scheduled anyway.

    Give :meth:`on_frame` and :meth:`on_synapse_event` to the ``Stream`` as its callbacks, then
    :meth:`run` it with that stream.
    """

    def __init__(self, core: Any, z_positions_um: Sequence[float], voxel_size_um: Sequence[float],
                 time_points: int, interval_s: float, fast_interval_s: float, result_timeout_s: float = 60.0) -> None:
        self.core = core
        self.stream: Any = None
        self.z_positions_um = [float(z) for z in z_positions_um]
        self.voxel_size_um = tuple(float(v) for v in voxel_size_um)
        self.time_points = time_points
        self.interval_s = interval_s
        self.fast_interval_s = fast_interval_s
        self.result_timeout_s = result_timeout_s
        self.synapse_formed_at: int | None = None  # the time point where the synapse was first seen
        self.start_times_s: list[float] = []  # each time point's scheduled start, from the MDA's start
        self.results: list[Any] = []
        self._planes: dict[int, dict[int, np.ndarray]] = {}
        self._frame_to_t: dict[int, int] = {}
        self._analysed: dict[int, threading.Event] = {}
        self._lock = threading.Lock()

    # -- the stream's side -------------------------------------------------------------------------
    def on_synapse_event(self, event: Any) -> None:
        if event.kind == "formed" and self.synapse_formed_at is None:
            self.synapse_formed_at = self._frame_to_t.get(event.frame, event.frame)
            log.info("synapse formed at time point %s: every %.3g s from now on", self.synapse_formed_at,
                     self.fast_interval_s)

    def on_frame(self, result: Any) -> None:
        self.results.append(result)
        t = self._frame_to_t.get(result.frame)
        if t is not None:
            self._analysed[t].set()

    # -- the microscope's side ---------------------------------------------------------------------
    def events(self) -> Iterator[Any]:
        """The MDA's events, one time point after the other (run with ``core.run_mda(...)``)."""
        from useq import MDAEvent

        start = 0.0
        for t in range(self.time_points):
            if t > 0:  # decide the interval on the last analysed time point
                self._analysed[t - 1].wait(self.result_timeout_s)
                start += self.interval_s if self.synapse_formed_at is None else self.fast_interval_s
            self._analysed[t] = threading.Event()
            self.start_times_s.append(start)
            for z_index, z in enumerate(self.z_positions_um):
                yield MDAEvent(index={"t": t, "z": z_index}, z_pos=z, min_start_time=start if z_index == 0 else None)

    def on_frame_ready(self, image: np.ndarray, event: Any, meta: Any = None) -> None:
        """``core.mda.events.frameReady``: file the plane; a complete stack goes to the stream."""
        t, z = int(event.index["t"]), int(event.index["z"])
        with self._lock:
            planes = self._planes.setdefault(t, {})
            planes[z] = np.array(image, copy=True)
            if len(planes) < len(self.z_positions_um):
                return
            del self._planes[t]
        volume = np.stack([planes[i] for i in range(len(self.z_positions_um))])
        frame = self.stream.submit(volume, time_s=self.start_times_s[t], voxel_size_um=self.voxel_size_um)
        self._frame_to_t[frame] = t

    def run(self, stream: Any) -> None:
        """Acquire every time point into ``stream``; returns when the last plane is in (frames may
        still be analysed)."""
        self.stream = stream
        self.core.mda.events.frameReady.connect(self.on_frame_ready)
        try:
            self.core.mda.run(self.events())
        finally:
            self.core.mda.events.frameReady.disconnect(self.on_frame_ready)


# ------------------------------------------------------------------------------------------------
# the simulated rig: two devices of pymmcore-plus's pure-Python device layer
# ------------------------------------------------------------------------------------------------


def simulated_core(volumes: Sequence[np.ndarray], voxel_size_um: Sequence[float]) -> tuple[Any, Any]:
    """A ``UniMMCore`` with a Python focus stage and a Python camera that images ``volumes``.

    The specimen moves on when the focus goes back down to start the next z-stack: the camera then
    shows the next of ``volumes`` (``camera.time_point``), always the plane at the stage's z position,
    as uint16 RI x 10 000. Returns ``(core, camera)``.
    """
    from pymmcore_plus.experimental.unicore import SimpleCameraDevice, StageDevice, UniMMCore

    class FocusStage(StageDevice):
        def __init__(self) -> None:
            super().__init__()
            self.z_um = 0.0

        def set_position_um(self, val: float) -> None:
            if val < self.z_um:  # back to the bottom: the next z-stack
                camera.time_point = min(camera.time_point + 1, len(volumes) - 1)
            self.z_um = float(val)

        def get_position_um(self) -> float:
            return self.z_um

        def home(self) -> None:
            self.z_um = 0.0

        def stop(self) -> None:
            pass

        def set_origin(self) -> None:
            self.z_um = 0.0

    class TomogramCamera(SimpleCameraDevice):
        def __init__(self) -> None:
            super().__init__()
            self.time_point = 0
            self.exposure_ms = 10.0

        def sensor_shape(self) -> tuple[int, int]:
            return tuple(volumes[0].shape[1:])  # type: ignore[return-value]

        def dtype(self) -> Any:
            return np.uint16

        def get_exposure(self) -> float:
            return self.exposure_ms

        def set_exposure(self, exposure: float) -> None:
            self.exposure_ms = float(exposure)

        def snap(self, buffer: np.ndarray) -> dict:
            volume = volumes[self.time_point]
            z = int(np.clip(round(stage.z_um / voxel_size_um[0]), 0, volume.shape[0] - 1))
            buffer[:] = np.round(volume[z] * 10_000).astype(np.uint16)
            return {"deepis_time_point": self.time_point, "deepis_z_index": z}

    stage, camera = FocusStage(), TomogramCamera()
    core = UniMMCore()
    for label, device in (("Z", stage), ("Camera", camera)):
        core.loadPyDevice(label, device)
        core.initializeDevice(label)
    core.setFocusDevice("Z")
    core.setCameraDevice("Camera")
    core.setAutoShutter(False)  # the simulated rig has no shutter
    return core, camera


def main(argv: Sequence[str] | None = None) -> int:
    import deepis_rt
    from deepis_rt.stream import Stream
    from deepis_rt.synth import iter_timelapse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--simulate", action="store_true", required=True,
                        help="Use the simulated rig (the only one this example wires up).")
    parser.add_argument("--time-points", type=int, default=12)
    parser.add_argument("--interval", type=float, default=8.0, help="Seconds between z-stacks before a synapse.")
    parser.add_argument("--fast-interval", type=float, default=3.0, help="Seconds between z-stacks after it.")
    parser.add_argument("--out", default="mm-results", help="Results folder.")
    parser.add_argument("--model", default=None, help="Checkpoint (default: the bundled demo checkpoint).")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(message)s")
    log.setLevel(logging.INFO)

    frames = list(iter_timelapse(args.time_points, seed=2026))
    voxel = frames[0].voxel_size_um
    core, _ = simulated_core([f.ri for f in frames], voxel)
    z_positions = [i * voxel[0] for i in range(frames[0].ri.shape[0])]
    t0 = time.time()
    acquisition = SynapseTriggeredAcquisition(core, z_positions, voxel, args.time_points, args.interval,
                                              args.fast_interval)
    with Stream(None, args.out, deepis_rt.load(args.model), on_frame=acquisition.on_frame,
                on_synapse_event=acquisition.on_synapse_event, report=True) as stream:
        acquisition.run(stream)
        stream.end_input()
        for _ in stream:
            pass
    log.info("%d z-stacks in %.0f s; synapse formed at time point %s; starts %s; results in %s/",
             len(acquisition.results), time.time() - t0, acquisition.synapse_formed_at,
             [round(s, 1) for s in acquisition.start_times_s], args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
