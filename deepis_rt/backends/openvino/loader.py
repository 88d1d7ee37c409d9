"""OpenVINO as a registered backend: the FP32 ONNX graph is the lazy loader, :class:`OpenVINORunner` the runner.

BF16 is converted by OpenVINO itself from the FP32 graph, only where the CPU has it, and only when
asked for; the stored parity report (:mod:`.parity`) is consulted then. Compiled models are cached
in ``<cache>/openvino``.
"""

from __future__ import annotations

from pathlib import Path

from deepis_rt.backends import facts
from deepis_rt.backends.files import default_cache_dir
from deepis_rt.backends.onnxrt.loader import onnx_loader
from deepis_rt.backends.openvino import parity
from deepis_rt.backends.openvino.runner import OpenVINORunner
from deepis_rt.backends.spec import BackendSpec, RunnerRequest

__all__ = ["SPEC"]


def probe(request: RunnerRequest) -> str | None:
    if not facts.openvino_available():
        return "OpenVINO is not installed (pip install openvino)"
    if request.precision == "bf16":
        why = facts.bf16_unavailable_reason()
        if why:
            return why
    if request.model is None or not getattr(request.model, "has_onnx", False):
        return facts.onnx_export_unavailable_reason()
    return None


def make_runner(request: RunnerRequest) -> OpenVINORunner:
    options = request.options
    precision = request.precision or "fp32"
    if precision == "bf16" and facts.bf16_unavailable_reason() is None:  # else the runner refuses it
        parity.warn_if_bf16_disagrees(request.model, request.cache_dir)
    cache = (Path(request.cache_dir) if request.cache_dir is not None else default_cache_dir()) / "openvino"
    # the FP32 graph in every precision (OpenVINO converts to BF16 itself)
    return OpenVINORunner(onnx_loader(request, "fp32"), precision=precision, num_threads=options.get("num_threads"),
                          hint=options.get("performance_hint", "latency"), num_requests=options.get("num_requests"),
                          cache_dir=cache)


SPEC = BackendSpec(
    name="openvino-cpu", device="cpu", precisions=("fp32", "bf16"), probe=probe, factory=make_runner,
    family="openvino", auto_rank=40,
    summary="OpenVINO, CPU plugin: FP32, and BF16 where the CPU has it (asked for only)")
