"""PyTorch as a registered backend: the network is the lazy loader, :class:`TorchRunner` the runner.

The runner options of a request (``cuda_graphs``, ``num_threads``, ``channels_last``,
``allow_tf32``, ...) pass through to :class:`TorchRunner` unchanged, so a new PyTorch variant needs
only a new option there and, for a named variant, one more spec here.
"""

from __future__ import annotations

import copy
import inspect
import logging
from typing import Any

from deepis_rt.backends.pytorch.runner import TorchRunner
from deepis_rt.backends.pytorch.variants import load_records, record_key, select_variant
from deepis_rt.backends.spec import BackendSpec, RunnerRequest

log = logging.getLogger(__name__)

__all__ = ["CPU_SPEC", "CUDA_SPEC", "CUDA_GRAPHS_SPEC", "CPU_PRECISIONS", "CUDA_PRECISIONS"]

#: what TorchRunner computes in on each device; the first is the default when none is asked for
CPU_PRECISIONS: tuple[str, ...] = ("fp32",)
CUDA_PRECISIONS: tuple[str, ...] = ("fp16", "fp32")


def network_unavailable_reason(request: RunnerRequest) -> str | None:
    """Why the PyTorch backends cannot run this model (it has no network to build), or None."""
    model = request.model
    if model is None or getattr(model, "has_network", True):
        return None
    where = getattr(getattr(model, "path", None), "name", None) or "this model"
    kind = getattr(model, "kind", "model")
    return f"needs a PyTorch checkpoint; {where} is a {kind} without one"


def _fresh_network(request: RunnerRequest) -> Any:
    model = request.model
    assert model is not None
    # a copy: .to(cuda) / .half() work in place, and the CPU network may be shared (e.g. with the exporter)
    return lambda: copy.deepcopy(model.module())


def make_cpu_runner(request: RunnerRequest) -> TorchRunner:
    return TorchRunner(request.model.module, device="cpu", precision=request.precision or CPU_PRECISIONS[0],  # type: ignore[union-attr]
                       **_runner_options(request.options, _CUDA_ONLY))


def measured_variant_options(request: RunnerRequest) -> dict[str, Any]:
    """The options of the fastest exact-enough PyTorch variant measured for this model on this GPU.

    ``python -m deepis_rt.bench.torch_variants`` (and the GPU check) record each variant's speed
    and its label agreement with FP32 per model, tile and GPU; without a record, or when the
    request asks for a precision or options of its own, nothing is chosen ({}).
    """
    if request.precision is not None or request.options:
        return {}
    records = load_records(request.cache_dir)
    if not records:
        return {}
    import torch

    model = request.model
    meta = getattr(model, "meta", None) or {}
    info = {"preset": getattr(getattr(model, "checkpoint", None), "preset", None) or meta.get("preset"),
            "sha256": getattr(model, "sha256", None), "name": getattr(model, "name", None)}
    device = request.cuda_device
    try:
        gpu_name = torch.cuda.get_device_name(device)
    except (AssertionError, RuntimeError) as exc:  # no usable GPU: activation will say so
        log.debug("load | torch-cuda: no GPU name (%s); no measured variant is used", exc)
        return {}
    choice = select_variant(records, record_key(info, device, getattr(model, "tile_zyx", None), gpu_name))
    if choice is None:
        return {}
    log.info("load | torch-cuda: %s, the fastest variant measured exact enough on this GPU", choice.name)
    return choice.options_for(device)


def make_cuda_runner(request: RunnerRequest, **preset: Any) -> TorchRunner:
    measured = {} if preset else measured_variant_options(request)
    if measured:  # a variant is a complete set of options (its CUDA graphs on or off included)
        options = {k: v for k, v in measured.items() if k != "precision"}
    else:
        options = {"cuda_graphs": True, **_runner_options(request.options, _CPU_ONLY), **preset}
    precision = request.precision or measured.get("precision") or CUDA_PRECISIONS[0]
    return TorchRunner(_fresh_network(request), device=request.cuda_device, precision=precision, **options)


def make_cuda_graphs_runner(request: RunnerRequest) -> TorchRunner:
    return make_cuda_runner(request, cuda_graphs=True)


#: options that mean something on one device only (``load()`` gives every candidate the same options)
_CUDA_ONLY = frozenset({"cuda_graphs", "max_graphs", "cudnn_benchmark", "allow_tf32"})
_CPU_ONLY = frozenset({"num_threads"})
_OWN = frozenset({"self", "model", "device", "precision"})


def _runner_options(options: dict[str, Any], other_device: frozenset[str]) -> dict[str, Any]:
    """The request's options that TorchRunner takes (its keyword parameters), minus the other device's."""
    accepted = set(inspect.signature(TorchRunner.__init__).parameters) - _OWN - other_device
    return {k: v for k, v in options.items() if k in accepted}


CPU_SPEC = BackendSpec(
    name="torch-cpu", device="cpu", precisions=CPU_PRECISIONS, probe=network_unavailable_reason,
    factory=make_cpu_runner, family="torch", auto_rank=60,
    summary="PyTorch eager on the CPU, FP32 (the baseline on a machine without a GPU)")
CUDA_SPEC = BackendSpec(
    name="torch-cuda", device="cuda", precisions=CUDA_PRECISIONS, probe=network_unavailable_reason,
    factory=make_cuda_runner, family="torch", auto_rank=30,
    summary="PyTorch on the GPU, FP16 (default) or FP32; CUDA graphs unless cuda_graphs=False")
CUDA_GRAPHS_SPEC = BackendSpec(
    name="torch-cuda-graphs", device="cuda", precisions=CUDA_PRECISIONS, probe=network_unavailable_reason,
    factory=make_cuda_graphs_runner,
    summary="PyTorch on the GPU, replayed as CUDA graphs (compared with eager torch-cuda by the bench)")
