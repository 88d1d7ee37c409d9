"""Helpers of the cluster tests: a tiny point-wise ONNX model and what it computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

TILE = (16, 32, 32)
META = {
    "voxel_size_um": [0.5, 0.25, 0.25],
    "ri_normalization": {"offset": 1.337, "scale": 0.02},
    "medium_ri": 1.337,
    "tile_zyx": list(TILE),
}


def pointwise_onnx(path: Path, tile=TILE, dynamic: bool = False, meta=META) -> Path:
    """distance = 2 * tanh(tomogram): the FakeRunner's function, as an ONNX graph (named tensors, meta)."""
    import onnx
    from onnx import TensorProto, helper

    from deepis_rt.export.onnx_export import set_onnx_meta

    spatial = ["z", "y", "x"] if dynamic else list(tile)
    shape = ["N", 1, *spatial]
    x = helper.make_tensor_value_info("tomogram", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("distance", TensorProto.FLOAT, shape)
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph(
        [helper.make_node("Tanh", ["tomogram"], ["t"]), helper.make_node("Mul", ["t", "two"], ["distance"])],
        "pointwise", [x], [y], initializer=[two],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    if meta is not None:
        set_onnx_meta(model, meta)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def reference_distance(x: np.ndarray) -> np.ndarray:
    return (2.0 * np.tanh(x)).astype(np.float32)


def marking_runner(marks_dir: str, delay_s: float = 0.0, tile=TILE, hold_ip: str | None = None):
    """A FakeRunner that leaves ``<node ip>_<pid>_<ns>`` in ``marks_dir`` at every call: where work runs, and when.

    ``hold_ip``: on the node with that address, the second call (and any later one) never returns,
    so an item is certainly in flight there when a test kills that node.
    """
    import os
    import time

    from deepis_rt.backends.fake import FakeRunner

    class MarkingRunner(FakeRunner):
        def infer_impl(self, batch):
            import ray

            ip = ray.util.get_node_ip_address() if ray.is_initialized() else "local"
            Path(marks_dir, f"{ip}_{os.getpid()}_{time.monotonic_ns()}").touch()
            if ip == hold_ip and sum(p.name.startswith(f"{ip}_") for p in Path(marks_dir).iterdir()) >= 2:
                while True:  # until the node is killed
                    time.sleep(1.0)
            return super().infer_impl(batch)

    return MarkingRunner(delay_s=delay_s, fixed_spatial_zyx=tile)


def marking_factory(marks_dir: str, delay_s: float, hold_ip: str | None = None):
    """Picklable Segmenter factory around :func:`marking_runner` (workers import this module)."""
    import functools

    from deepis_rt.cluster.ray_batch import make_segmenter

    runner = functools.partial(marking_runner, str(marks_dir), delay_s, hold_ip=hold_ip)
    return functools.partial(make_segmenter, runner, META)
