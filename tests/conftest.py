"""Shared fixtures, markers and the report header (library versions)."""

from __future__ import annotations

import importlib

import pytest


def _version(name: str) -> str:
    try:
        mod = importlib.import_module(name)
    except Exception:
        return "not installed"
    return getattr(mod, "__version__", "?")


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def _tensorrt() -> bool:
    try:
        importlib.import_module("tensorrt")
    except Exception:
        return False
    return True


def pytest_report_header(config):
    import torch

    cuda = torch.version.cuda if torch.cuda.is_available() else "no GPU"
    return (
        f"deepis-rt: torch {torch.__version__} (CUDA: {cuda}), TensorRT {_version('tensorrt')}, "
        f"onnx {_version('onnx')}, onnxruntime {_version('onnxruntime')}, numpy {_version('numpy')}"
    )


#: test folders whose tests share one server, cluster, display or download per test session
SHARED_PER_SESSION = frozenset({"cluster", "trt_api", "napari"})


def pytest_collection_modifyitems(config, items):
    has_cuda = _cuda()
    has_trt = _tensorrt() and has_cuda
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False here)")
    skip_trt = pytest.mark.skip(
        reason="needs TensorRT and a CUDA GPU (pip install 'deepis-rt[tensorrt]' on a GPU machine)"
    )
    for item in items:
        # markers, not keywords: keywords also hold the names of parent folders (a checkout in a folder
        # called "gpu" would skip every test)
        if item.get_closest_marker("tensorrt") and not has_trt:
            item.add_marker(skip_trt)
        elif item.get_closest_marker("gpu") and not has_cuda:
            item.add_marker(skip_gpu)
        # with pytest-xdist (`-n 2 --dist loadgroup`, the CI command): a module's tests run in one worker,
        # so its module fixtures are made once, and so do the folders that share a session's server,
        # cluster or display (one Ray cluster on loopback, one Triton server, one Xvfb)
        folder = item.path.parent.name
        group = folder if folder in SHARED_PER_SESSION else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session")
def tiny_overrides():
    """Config overrides that make either preset's structure tiny (a few thousand parameters)."""
    return {"widths": (4, 8, 8, 8, 8), "skip_width": 4}
