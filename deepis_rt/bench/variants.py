"""What a benchmark compares: backend x precision combinations, whether each can run here, and their runners.

The backends are those of :mod:`deepis_rt.backends.registry` that run here (not remote ones), in
its listing order; ``--backends`` takes their names or the groups ``all``, ``cpu`` and ``gpu``.
The shipped ones:

==========================  =====================================================================
``torch-cpu``               PyTorch eager on the CPU, FP32 (the baseline on a machine without a GPU)
``onnxruntime-cpu``         ONNX Runtime, CPU execution provider
``openvino-cpu``            OpenVINO, CPU plugin: FP32 (what ``deepis_rt.load`` runs on a CPU) and BF16
                            (measured only where the CPU has it; otherwise a skipped row with the reason)
``torch-cuda``              PyTorch eager on the GPU, FP32 (the GPU baseline) and FP16
``torch-cuda-graphs``       the same, replayed as CUDA graphs
``onnxruntime-cuda``        ONNX Runtime, CUDA execution provider (onnxruntime-gpu)
``onnxruntime-tensorrt``    ONNX Runtime, TensorRT execution provider
``tensorrt``                a native TensorRT engine
==========================  =====================================================================

Each backend is measured in every precision its spec lists (or in those of ``--precision`` that
it runs), with the runner its spec makes: the numbers are what ``deepis_rt.load`` runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepis_rt.backends import registry
from deepis_rt.backends.spec import PRECISIONS, RunnerRequest
from deepis_rt.errors import ConfigError

__all__ = ["backends", "groups", "Variant", "expand_backends", "plan_variants", "unavailable_reason", "make_runner",
           "cuda_device"]


def backends() -> tuple[str, ...]:
    """The backends a benchmark can measure: every registered one that runs on this machine's CPU or GPU."""
    return tuple(n for n in registry.names() if registry.get(n).device != "remote")


def groups() -> dict[str, tuple[str, ...]]:
    """``all``, ``cpu`` and ``gpu``: the backends each group name stands for."""
    names = backends()
    return {"all": names, "cpu": tuple(n for n in names if registry.get(n).device == "cpu"),
            "gpu": tuple(n for n in names if registry.get(n).device == "cuda")}


@dataclass(frozen=True)
class Variant:
    """One backend in one precision."""

    backend: str
    precision: str

    @property
    def label(self) -> str:
        return f"{self.backend} {self.precision}"

    @property
    def is_gpu(self) -> bool:
        return registry.get(self.backend).is_gpu

    @property
    def device(self) -> str:
        return cuda_device() if self.is_gpu else "cpu"

    @property
    def is_baseline(self) -> bool:
        """PyTorch eager FP32 (on the GPU when the run has GPU rows)."""
        return self.backend in ("torch-cpu", "torch-cuda") and self.precision == "fp32"


def expand_backends(names: Iterable[str]) -> list[str]:
    """Backend names from a user's list (``all``, ``cpu`` and ``gpu`` are groups); order kept, no duplicates."""
    out: list[str] = []
    known, grouped = backends(), groups()
    for raw in names:
        name = raw.strip().lower()
        if not name:
            continue
        if name in grouped:
            out.extend(b for b in grouped[name] if b not in out)
        elif registry.canonical(name) in known:
            if registry.canonical(name) not in out:
                out.append(registry.canonical(name))
        else:
            raise ConfigError(f"bench: unknown backend {raw!r}; choose from {', '.join(known)} or all, cpu, gpu")
    return out


def plan_variants(backends: Sequence[str], precisions: Sequence[str] | None = None) -> list[Variant]:
    """The variants to measure; a baseline (PyTorch eager FP32) is added first when missing.

    Without ``precisions`` every precision of each backend's spec is measured; with them, those the
    backend runs (FP16 is a GPU precision, BF16 OpenVINO's CPU precision).
    """
    for p in precisions or ():
        if p not in PRECISIONS:
            raise ConfigError(f"bench: unknown precision {p!r}; use fp32, fp16 (GPUs) and/or bf16 (openvino-cpu)")
    variants: list[Variant] = []
    for backend in backends:
        spec = registry.get(backend)
        for precision in (precisions or sorted(spec.precisions, key=PRECISIONS.index)):
            if precision in spec.precisions:
                variants.append(Variant(spec.name, precision))
    gpu_run = any(v.is_gpu for v in variants) and unavailable_reason("torch-cuda") is None
    baseline = Variant("torch-cuda" if gpu_run else "torch-cpu", "fp32")
    if baseline in variants:
        variants.remove(baseline)
    variants.insert(0, baseline)
    return variants


def unavailable_reason(backend: str, precision: str | None = None) -> str | None:
    """None when ``backend`` (in ``precision``) can run on this machine, else why not (and what to install)."""
    return registry.unavailable_reason(backend, RunnerRequest(precision=precision))


def cuda_device() -> str:
    """``"cuda:N"`` of the current CUDA device (``deepis-rt bench --device N`` makes GPU N current)."""
    import torch

    return f"cuda:{torch.cuda.current_device() if torch.cuda.is_available() else 0}"


def make_runner(variant: Variant, model: Any, max_batch: int, threads: int | None = None,
                engines_dir: str | Path = "engines") -> Any:
    """An inactive runner for ``variant``: its registry spec's runner, so the numbers are what
    ``deepis_rt.load`` runs. ONNX files and engines are made lazily, in ``activate()``.

    ``model`` (a :class:`~deepis_rt.bench.models.BenchModel`) gives the network and graphs as lazy
    loaders; engines are built for batches up to ``max_batch``.
    """
    spec = registry.get(variant.backend)
    if variant.precision not in spec.precisions:
        raise ConfigError(f"bench: {spec.name} runs {', '.join(spec.precisions)}, not {variant.precision}")
    # the torch-cuda row is eager PyTorch (torch-cuda-graphs is the row with CUDA graphs)
    options: dict[str, Any] = {"num_threads": threads, "cuda_graphs": False}
    request = RunnerRequest(model=model, device=variant.device, precision=variant.precision,
                            batch_size=max_batch, max_batch_size=max_batch, engines_dir=Path(engines_dir),
                            options=options)
    return spec.factory(request)
