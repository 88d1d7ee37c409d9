"""ONNX Runtime GPU providers on a CPU machine: silent fallback refused, auto-selection moves on, I/O binding.

Real ONNX Runtime sessions throughout; what only a GPU wheel can produce on demand (a session that
lost its CUDA provider, with ONNX Runtime's warning on the native log) is made by creating the
real session on the CPU provider, exactly what ``onnxruntime-gpu`` does when its CUDA libraries
cannot be loaded.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest

from deepis_rt.backends import OnnxRuntimeRunner, facts
from deepis_rt.backends.onnxrt.providers import NativeStderr, check_registered
from deepis_rt.errors import BackendError
from deepis_rt.runtime import backends

GPU_PROVIDERS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
#: what onnxruntime-gpu logs when cuDNN is missing (format of its default logger)
ORT_WARNING = (
    "2026-11-30 12:00:00.000 [W:onnxruntime:Default, provider_bridge_ort.cc:2000 TryGetProviderInfo_CUDA] "
    "Failed to load library libonnxruntime_providers_cuda.so with error: libcudnn.so.9: cannot open shared "
    "object file: No such file or directory\n"
)
FAKE_STREAM = SimpleNamespace(cuda_stream=0x7F00DEAD, synchronize=lambda: None)


class SessionFactory:
    """``onnxruntime.InferenceSession`` of a GPU wheel whose GPU libraries do not load.

    Records the arguments, writes ONNX Runtime's warning to the native stderr, and returns a
    real session that registered only ``registered`` (default: the CPU provider).
    """

    real = ort.InferenceSession

    def __init__(self, registered=("CPUExecutionProvider",), warning=ORT_WARNING, error=None):
        self.registered, self.warning, self.error = list(registered), warning, error
        self.calls = []

    def __call__(self, source, sess_options=None, providers=None, **kwargs):
        self.calls.append({"providers": providers, **kwargs})
        if self.warning:
            os.write(2, self.warning.encode())
        if self.error is not None:
            raise self.error
        session = self.real(source, sess_options=sess_options, providers=["CPUExecutionProvider"])
        session.get_providers = lambda: list(self.registered)
        return session


@pytest.fixture
def gpu_wheel(monkeypatch):
    """This ONNX Runtime lists the GPU providers (as a GPU wheel does) and the runner gets a CUDA stream."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(GPU_PROVIDERS))
    monkeypatch.setattr(OnnxRuntimeRunner, "_create_stream", lambda self: FAKE_STREAM)

    def install(**kwargs):
        factory = SessionFactory(**kwargs)
        monkeypatch.setattr(ort, "InferenceSession", factory)
        return factory

    return install


def test_silent_cpu_fallback_is_refused_with_ort_reason(gpu_wheel, tiny_onnx):
    factory = gpu_wheel()
    runner = OnnxRuntimeRunner(tiny_onnx, provider="cuda")
    with pytest.raises(BackendError) as info:
        runner.activate()
    message = str(info.value)
    assert "did not register CUDAExecutionProvider" in message
    assert "libcudnn.so.9: cannot open shared object file" in message  # ONNX Runtime's own reason
    assert "CPUExecutionProvider" in message and not runner.is_active
    # the wrapper's silent retry on the CPU is off, and the CUDA provider got the runner's stream
    call = factory.calls[0]
    assert call["enable_fallback"] == 0
    cuda_name, cuda_options = call["providers"][0]
    assert cuda_name == "CUDAExecutionProvider"
    assert cuda_options["user_compute_stream"] == str(FAKE_STREAM.cuda_stream)
    assert cuda_options["has_user_compute_stream"] == "1" and cuda_options["use_tf32"] == "0"


def test_tensorrt_provider_falling_back_to_cuda_is_refused(gpu_wheel, tiny_onnx, tmp_path):
    gpu_wheel(registered=["CUDAExecutionProvider", "CPUExecutionProvider"], warning="")
    runner = OnnxRuntimeRunner(tiny_onnx, provider="tensorrt", engines_dir=tmp_path,
                               trt_profile=((1, 1, 16, 32, 32), (2, 1, 16, 32, 32), (4, 1, 16, 32, 32)))
    with pytest.raises(BackendError, match="did not register TensorrtExecutionProvider.*no reason"):
        runner.activate()


def test_session_error_is_a_backend_error(gpu_wheel, tiny_onnx):
    gpu_wheel(error=RuntimeError("CUDA failure 100: no CUDA-capable device is detected"), warning="")
    with pytest.raises(BackendError, match="could not create a session.*no CUDA-capable device"):
        OnnxRuntimeRunner(tiny_onnx, provider="cuda").activate()


def test_registered_providers_pass(gpu_wheel, tiny_onnx):
    gpu_wheel(registered=["CUDAExecutionProvider", "CPUExecutionProvider"], warning="")
    with OnnxRuntimeRunner(tiny_onnx, provider="cuda") as runner:
        assert runner.describe()["registered_providers"][0] == "CUDAExecutionProvider"
        assert runner.describe()["math"] == "fp32 (TF32 off)"


def test_auto_selection_moves_on_and_records_why(gpu_wheel, monkeypatch, tiny_checkpoint, onnx_cache):
    from deepis_rt.runtime.source import resolve_source

    gpu_wheel()
    monkeypatch.setattr(facts, "cuda_available", lambda: True)
    runner, report = backends.select_runner(resolve_source(tiny_checkpoint), "auto", cache_dir=onnx_cache,
                                            precision="fp32")
    try:
        by_name = {c.backend: c for c in report}
        assert by_name["onnxruntime-cuda"].status == "failed"
        assert "did not register CUDAExecutionProvider" in by_name["onnxruntime-cuda"].reason
        assert "libcudnn.so.9" in by_name["onnxruntime-cuda"].reason
        assert by_name["torch-cuda"].status == "failed"  # torch has no CUDA here
        from deepis_rt.backends.openvino.runner import openvino_available

        first_cpu = "openvino-cpu" if openvino_available() else "onnxruntime-cpu"
        assert report[-1].backend == first_cpu and report[-1].status == "chosen"
        assert runner.name == first_cpu
    finally:
        runner.deactivate()


def test_native_stderr_is_captured_and_passed_on(capfd):
    with NativeStderr() as native:
        os.write(2, b"[E:onnxruntime] cannot load libcudnn\n")
    assert "cannot load libcudnn" in native.text
    assert "cannot load libcudnn" in capfd.readouterr().err  # nothing hidden from the user


def test_check_registered_accepts_a_complete_session():
    session = SimpleNamespace(get_providers=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    check_registered("onnxruntime-cuda", session, ["CUDAExecutionProvider"])
    with pytest.raises(BackendError, match="TensorrtExecutionProvider"):
        check_registered("onnxruntime-tensorrt", session, ["TensorrtExecutionProvider", "CUDAExecutionProvider"])


def test_io_binding_gives_the_numbers_of_a_plain_run(tiny_onnx):
    """The runner binds caller-owned buffers (as on the GPU, here with CPU memory): same numbers as run()."""
    x = np.random.default_rng(4).standard_normal((3, 1, 16, 32, 32)).astype(np.float32)
    plain = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    reference = plain.run(None, {plain.get_inputs()[0].name: x})[0]
    with OnnxRuntimeRunner(tiny_onnx, intra_op_threads=1) as runner:
        bound = runner.infer(x)
        assert runner.input_dtype == np.float32 and runner.output_dtype == np.float32
    assert np.abs(reference).max() > 1e-3
    np.testing.assert_allclose(bound, reference, rtol=0, atol=1e-6)


def test_tensorrt_provider_needs_a_profile(tiny_onnx):
    from deepis_rt.errors import ConfigError

    with pytest.raises(ConfigError, match="trt_profile"):
        OnnxRuntimeRunner(tiny_onnx, provider="tensorrt")


class _Stream:
    def __init__(self, name, log, handle=0):
        self.name, self.log, self.cuda_stream = name, log, handle

    def wait_stream(self, other):
        self.log.append(("wait", self.name, other.name))

    def synchronize(self):
        self.log.append(("host-sync", self.name))


class _DeviceTensor:
    """A CUDA tensor as far as forward_device touches one."""

    def __init__(self, name, shape, log, ptr):
        self.name, self.shape, self.log, self.ptr = name, tuple(shape), log, ptr

    def to(self, *args, **kwargs):
        return self

    def contiguous(self):
        return self

    def record_stream(self, stream):
        self.log.append(("record_stream", self.name, stream.name))

    def data_ptr(self):
        return self.ptr

    def float(self):
        return self


class _Binding:
    def __init__(self, log):
        self.log = log

    def bind_input(self, *args):
        self.log.append(("bind_input", *args))

    def bind_output(self, *args):
        self.log.append(("bind_output", *args))


@pytest.mark.parametrize("provider", ["cuda", "tensorrt"], ids=["cuda-ep", "trt-ep"])
def test_forward_device_orders_streams_without_blocking_the_host(provider, gpu_wheel, tiny_onnx, tmp_path,
                                                                  monkeypatch):
    """The device path's stream discipline, with stand-ins for torch.cuda (no GPU here).

    CUDA EP: the runner's stream waits for the caller's, ORT runs there unsynchronised with the
    tensors bound by address, the caller's stream waits for the runner's; no host wait. TensorRT
    EP (own stream): host waits for the input, Run keeps its synchronisation.
    """
    import torch

    registered = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    gpu_wheel(registered=registered, warning="")
    log = []
    own = _Stream("runner", log, handle=FAKE_STREAM.cuda_stream)
    monkeypatch.setattr(OnnxRuntimeRunner, "_create_stream", lambda self: own)
    runner = OnnxRuntimeRunner(tiny_onnx, provider=provider, engines_dir=tmp_path,
                               trt_profile=((1, 1, 16, 32, 32),) * 3)
    runner.activate()
    current = _Stream("caller", log)
    allocated = []

    def empty(shape, dtype=None, device=None):
        assert device == torch.device("cuda", 0) and dtype == torch.float32
        t = _DeviceTensor("y", shape, log, ptr=0x2000)
        allocated.append(t)
        return t

    class _StreamCtx:
        def __init__(self, stream):
            self.stream = stream

        def __enter__(self):
            log.append(("enter", self.stream.name))

        def __exit__(self, *exc):
            log.append(("exit", self.stream.name))

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current)
    monkeypatch.setattr(torch.cuda, "stream", _StreamCtx)
    monkeypatch.setattr(torch, "empty", empty)
    runs = []
    runner.session = SimpleNamespace(
        io_binding=lambda: _Binding(log),
        run_with_iobinding=lambda binding, options: (log.append(("run",)), runs.append(options)),
    )
    x = _DeviceTensor("x", (2, 1, 16, 32, 32), log, ptr=0x1000)
    y = runner.forward_device(x)
    assert y is allocated[0]
    shape = [2, 1, 16, 32, 32]
    bind_in = ("bind_input", runner.input_name, "cuda", 0, np.float32, shape, 0x1000)
    bind_out = ("bind_output", runner.output_name, "cuda", 0, np.float32, shape, 0x2000)
    if provider == "cuda":
        assert log == [("wait", "runner", "caller"), ("record_stream", "x", "runner"),
                       ("enter", "runner"), ("exit", "runner"),  # y allocated on the runner's stream
                       bind_in, bind_out, ("run",),
                       ("wait", "caller", "runner"), ("record_stream", "y", "caller")]
        assert runs[0].get_run_config_entry("disable_synchronize_execution_providers") == "1"
    else:
        assert log == [("host-sync", "caller"), bind_in, bind_out, ("run",)]
        with pytest.raises(RuntimeError):  # Run keeps ONNX Runtime's synchronisation
            runs[0].get_run_config_entry("disable_synchronize_execution_providers")
