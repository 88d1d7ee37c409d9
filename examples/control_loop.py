"""Microscope control loop: switch to fast acquisition when a synapse forms.

A stand-in for vendor microscope software: frames come from a "camera SDK" in memory
(here: the synthetic generator), go to deepis-rt with ``Stream.submit()``, and a
synapse event switches the acquisition interval from slow survey mode to fast mode.
Replace ``FakeMicroscope`` with your SDK's calls; the deepis-rt side stays the same.

Run:  python examples/control_loop.py [--frames 16] [--model ckpt.pt]
"""

from __future__ import annotations

import argparse
import logging
import threading

import deepis_rt
from deepis_rt.stream import Stream
from deepis_rt.synth import iter_timelapse


class FakeMicroscope:
    """The two calls a control loop needs from a microscope SDK: acquire, set the interval."""

    SURVEY_INTERVAL_S = 8.0
    FAST_INTERVAL_S = 3.0

    def __init__(self, frames: int, seed: int) -> None:
        self.interval_s = self.SURVEY_INTERVAL_S
        self._frames = iter_timelapse(frames, seed=seed)
        self.time_s = 0.0
        self.lock = threading.Lock()

    def acquire(self):
        """Next tomogram (RI volume, voxel size) and its acquisition time."""
        frame = next(self._frames)
        with self.lock:
            t = self.time_s
            self.time_s += self.interval_s
        return frame.ri, frame.voxel_size_um, t

    def set_interval(self, seconds: float) -> None:
        with self.lock:
            self.interval_s = seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--model", default=None, help="checkpoint / ONNX / export folder (default: bundled)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    scope = FakeMicroscope(args.frames, args.seed)
    segmenter = deepis_rt.load(args.model)

    def on_synapse_event(event) -> None:
        # formed / re-formed: follow the synapse at high time resolution; lost: back to survey
        if event.kind in ("formed", "re-formed"):
            scope.set_interval(FakeMicroscope.FAST_INTERVAL_S)
            print(f"  -> synapse {event.kind} at t={event.time_s:.0f} s: fast acquisition "
                  f"(every {FakeMicroscope.FAST_INTERVAL_S:g} s)")
        elif event.kind == "lost":
            scope.set_interval(FakeMicroscope.SURVEY_INTERVAL_S)
            print(f"  -> synapse lost at t={event.time_s:.0f} s: back to survey mode")

    with Stream(None, None, segmenter, on_synapse_event=on_synapse_event) as stream:
        def acquire_all() -> None:
            for _ in range(args.frames):
                ri, voxel_size_um, t = scope.acquire()
                stream.submit(ri, time_s=t, voxel_size_um=voxel_size_um)  # blocks when the pipeline is full

        threading.Thread(target=acquire_all, daemon=True).start()
        pending = args.frames
        for result in stream:
            if result.status == "retry":  # the backend stayed unavailable past retry_for_s (a remote server)
                stream.resubmit(result)  # the same frame again; tracks are re-linked in frame order
                continue
            areas = ", ".join(f"{s.is_area_um2:.1f} um^2" for s in result.synapses) or "no synapse"
            print(f"t={result.time_s:6.1f} s  frame {result.frame:3d}  {result.status}  {areas}  "
                  f"(next frame in {scope.interval_s:g} s)")
            pending -= 1
            if pending == 0:
                stream.end_input()  # every frame is ok or failed: finish


if __name__ == "__main__":
    main()
