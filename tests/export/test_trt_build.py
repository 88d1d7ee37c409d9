"""Device selection, inter-process locks and the CUDA-device facts behind the engine cache."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import types

import pytest

from deepis_rt.backends.files import file_lock
from deepis_rt.backends.trt.env import cuda_device_index, device_scope
from deepis_rt.errors import EngineCacheError


def test_cuda_device_index(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert cuda_device_index("cuda:1") == 1 and cuda_device_index(2) == 2
    assert cuda_device_index("cuda") == 3 and cuda_device_index(None) == 3
    assert cuda_device_index(torch.device("cuda", 5)) == 5
    with pytest.raises(EngineCacheError, match="not a CUDA device"):
        cuda_device_index("cpu")


def test_engine_facts_come_from_the_device_used(monkeypatch):
    """GPU name and compute capability are those of the device asked for, inside its device scope."""
    import torch

    from deepis_rt.backends.trt.env import current_engine_env

    gpus = {0: ("NVIDIA H200", (9, 0)), 1: ("NVIDIA L4", (8, 9))}
    entered = []

    class Recorder:
        def __init__(self, index):
            self.index = index

        def __enter__(self):
            entered.append(self.index)

        def __exit__(self, *exc):
            return False

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.13.3.9"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: gpus[i][0])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: gpus[i][1])
    monkeypatch.setattr(torch.cuda, "device", Recorder)
    env = current_engine_env("cuda:1")
    assert (env.gpu_name, env.compute_capability) == ("NVIDIA L4", "8.9")
    assert current_engine_env().gpu_name == "NVIDIA H200"
    with device_scope(1):
        pass
    assert entered == [1]


def test_file_lock_excludes_another_process(tmp_path):
    """While one process holds the lock, another waits, and gives up with a clear error on timeout."""
    target = tmp_path / "key.plan"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(__import__('pathlib').Path(__file__).resolve().parents[2])!r})
        from deepis_rt.backends.files import file_lock
        with file_lock({str(target)!r}, "test"):
            print("held", flush=True)
            time.sleep(3)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(EngineCacheError, match=r"\.lock still held"):
            with file_lock(target, "engine cache | key", timeout_s=0.5):
                pass
        start = time.perf_counter()
        with file_lock(target, "engine cache | key", timeout_s=30):
            waited = time.perf_counter() - start
        assert waited > 0.5  # it waited for the holder to finish
    finally:
        holder.wait(timeout=30)
