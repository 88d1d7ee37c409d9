"""A deterministic runner for tests: an analytic, point-wise 'distance map', no network."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from deepis_rt.backends.base import Runner, as_numpy_batch

__all__ = ["FakeRunner"]


class FakeRunner(Runner):
    """Returns ``gain * tanh(x) + bias`` of the normalised input, voxel by voxel.

    Point-wise, so a tiled run must reproduce a whole-volume run exactly: any tile placed,
    padded or blended at the wrong place shows up. ``calls`` records the batch shape of every
    call (for tests of batching); ``delay_s`` simulates a slow backend.
    """

    name = "fake"

    def __init__(
        self,
        gain: float = 2.0,
        bias: float = 0.0,
        delay_s: float = 0.0,
        fixed_spatial_zyx: tuple[int, int, int] | None = None,
        size_multiple: int = 16,
    ) -> None:
        super().__init__()
        self.gain = float(gain)
        self.bias = float(bias)
        self.delay_s = float(delay_s)
        self.fixed_spatial_zyx = tuple(fixed_spatial_zyx) if fixed_spatial_zyx else None
        self.size_multiple = int(size_multiple)
        self.calls: list[tuple[int, ...]] = []

    def activate_impl(self) -> None:
        self.calls = []

    def infer_impl(self, batch: Any) -> np.ndarray:
        x = as_numpy_batch(batch)
        self.calls.append(tuple(x.shape))
        if self.delay_s:
            time.sleep(self.delay_s)
        out = np.tanh(x)
        out *= self.gain
        out += self.bias
        return out

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "device": "cpu", "precision": "fp32"}
