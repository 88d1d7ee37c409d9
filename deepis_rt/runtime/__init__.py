"""Runtime: backends (runners), the GPU data path, tiling, and the embedding API (``load``).

>>> seg = deepis_rt.load("model.pt")                  # doctest: +SKIP
>>> result = seg.segment(ri_volume, voxel_size_um=(0.5, 0.25, 0.25))   # doctest: +SKIP
>>> result.labels, result.distance, result.timings_ms  # doctest: +SKIP
"""

from deepis_rt.backends import FakeRunner, OnnxRuntimeRunner, Runner, TensorRTRunner, TorchRunner
from deepis_rt.runtime.backends import BackendChoice
from deepis_rt.runtime.load import load
from deepis_rt.runtime.result import FrameResult, labels_from_distance
from deepis_rt.runtime.segmenter import Segmenter
from deepis_rt.runtime.tiling import sliding_window_inference

__all__ = [
    "load",
    "Segmenter",
    "FrameResult",
    "labels_from_distance",
    "Runner",
    "FakeRunner",
    "TorchRunner",
    "OnnxRuntimeRunner",
    "TensorRTRunner",
    "BackendChoice",
    "sliding_window_inference",
]
