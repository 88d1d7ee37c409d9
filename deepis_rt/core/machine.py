"""What a run ran on: CPU, GPU, memory, library versions, load (benchmarks, exports, run records)."""

from __future__ import annotations

import importlib
import os
import platform
from typing import Any

__all__ = ["describe_machine", "describe_host", "library_versions", "package_versions", "gpu_list", "cpu_model",
           "cpu_flags"]


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide the numbers ('-' when absent)."""
    out: dict[str, str] = {}
    for name in ("deepis_rt", "torch", "onnxruntime", "openvino", "onnx", "tensorrt", "numpy", "scipy"):
        try:
            mod = importlib.import_module(name)
            out[name] = str(getattr(mod, "__version__", "?"))
        except Exception:
            out[name] = "-"
    try:
        import torch

        out["cuda"] = str(torch.version.cuda or "-")
        out["torch_threads"] = str(torch.get_num_threads())
    except Exception:
        pass
    try:
        import onnxruntime as ort

        out["onnxruntime_providers"] = ",".join(ort.get_available_providers())
    except Exception:
        pass
    return out


def gpu_list() -> list[dict[str, Any]]:
    """The CUDA GPUs PyTorch sees: ``[{"index", "name", "memory_gib"}]`` (empty without CUDA)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return []
        gpus = []
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpus.append({"index": i, "name": props.name, "memory_gib": round(props.total_memory / 1024**3, 1)})
        return gpus
    except Exception:
        return []


#: distributions that provide each library, first found wins
_DISTRIBUTIONS = {
    "torch": ("torch",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"),
    "openvino": ("openvino",),
    "tensorrt": ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu13-bindings", "tensorrt-cu12-bindings"),
    "onnx": ("onnx",),
    "numpy": ("numpy",),
    "scipy": ("scipy",),
    "zarr": ("zarr",),
}


def package_versions() -> dict[str, str]:
    """Installed versions of the libraries that decide the numbers, from the package metadata
    (nothing is imported, so this is cheap; '-' when absent)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str] = {}
    for name, dists in _DISTRIBUTIONS.items():
        out[name] = "-"
        for dist in dists:
            try:
                out[name] = version(dist)
                break
            except PackageNotFoundError:
                continue
    return out


def describe_machine() -> dict[str, Any]:
    """A plain dict describing this machine, for every benchmark report."""
    info = describe_host()
    info["libraries"] = library_versions()
    return info


def describe_host() -> dict[str, Any]:
    """CPU, cores, flags, memory, OS, Python, GPUs and load (no library imported but PyTorch)."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "gpu": None,
        "gpu_compute_capability": None,
        "gpu_memory_gib": None,
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info["gpu"] = props.name
            info["gpu_compute_capability"] = f"{props.major}.{props.minor}"
            info["gpu_memory_gib"] = round(props.total_memory / 1024**3, 1)
    except Exception:
        pass
    info["gpus"] = gpu_list()
    info["cpu_flags"] = cpu_flags()
    return info


def cpu_flags() -> list[str] | None:
    """The CPU's feature flags (``/proc/cpuinfo``; what ``lscpu`` prints as Flags), None elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return sorted(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None
