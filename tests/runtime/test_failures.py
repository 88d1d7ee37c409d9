"""Failure classification of every backend: transient (try later) or permanent (the input or set-up is bad)."""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest
import torch

from deepis_rt.backends.failures import classify, is_out_of_memory, is_transient
from deepis_rt.errors import (
    BackendError,
    BackendOutOfMemoryError,
    BackendUnavailableError,
    FileFormatError,
    NonFiniteInputError,
    ShapeError,
    TransientBackendError,
)

TILE = (16, 32, 32)


def _x(n: int = 1) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 1, *TILE)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# the rule itself
# ---------------------------------------------------------------------------------------------


def test_typed_errors_carry_their_kind():
    assert is_transient(BackendUnavailableError("down")) and is_transient(BackendOutOfMemoryError("oom"))
    assert is_transient(TransientBackendError("busy"))
    assert isinstance(BackendUnavailableError("x"), (BackendError, ConnectionError))
    assert isinstance(BackendOutOfMemoryError("x"), (BackendError, MemoryError))
    for permanent in (BackendError("bad model"), ShapeError("2-D"), NonFiniteInputError("NaN"),
                      FileFormatError("truncated"), RuntimeError("boom"), ValueError("bad")):
        assert not is_transient(permanent), permanent
    # a permanent error of this package stays permanent even when caused by a transient one
    try:
        try:
            raise MemoryError("host")
        except MemoryError as exc:
            raise ShapeError("wrong shape") from exc
    except ShapeError as exc:
        assert not is_transient(exc)


def test_library_out_of_memory_errors_are_recognised():
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail, RuntimeException

    cases = [
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total)"),
        RuntimeException("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running "
                         "Conv node. Failed to allocate memory for requested buffer of size 1073741824"),
        Fail("[ONNXRuntimeError] : 1 : FAIL : CUDA failure 2: out of memory ; GPU=0"),
        MemoryError("Unable to allocate 8.00 GiB for an array"),
    ]
    for exc in cases:
        assert is_out_of_memory(exc) and is_transient(exc), exc
        typed = classify(exc, "backend")
        assert isinstance(typed, BackendOutOfMemoryError) and "out of memory" in str(typed)
    other = RuntimeException("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input")
    assert not is_transient(other) and classify(other, "ort") is other


# ---------------------------------------------------------------------------------------------
# PyTorch (and TensorRT, whose buffers PyTorch allocates): CUDA OOM simulated
# ---------------------------------------------------------------------------------------------


class _OutOfMemoryNet(torch.nn.Module):
    def forward(self, x):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.50 GiB")


def test_torch_runner_out_of_memory_is_transient():
    from deepis_rt.backends.pytorch.runner import TorchRunner

    with TorchRunner(_OutOfMemoryNet()) as runner:
        with pytest.raises(BackendOutOfMemoryError) as info:
            runner.infer(_x())
    assert is_transient(info.value) and isinstance(info.value.__cause__, torch.cuda.OutOfMemoryError)
    assert info.value.args[0].startswith(runner.name)


def test_corrupt_input_is_permanent_for_every_local_runner(tmp_path):
    from deepis_rt.backends.onnxrt.runner import OnnxRuntimeRunner
    from deepis_rt.backends.pytorch.runner import TorchRunner

    onnx_path = _pointwise_onnx(tmp_path / "m.onnx")
    for runner in (TorchRunner(torch.nn.Identity()), OnnxRuntimeRunner(onnx_path)):
        with runner:
            with pytest.raises(ShapeError) as info:
                runner.infer(np.zeros((1, 1, 16, 32), np.float32))  # a 2-D tile
            assert not is_transient(info.value)


def test_segmenter_refuses_implausible_input_permanently():
    from deepis_rt.backends.pytorch.runner import TorchRunner
    from deepis_rt.runtime import Segmenter

    seg = Segmenter(TorchRunner(torch.nn.Identity()), {"voxel_size_um": [0.5, 0.25, 0.25], "tile_zyx": list(TILE)})
    vol = np.full(TILE, 1.337, np.float32)
    vol[3, 4, 5] = np.nan
    with pytest.raises(NonFiniteInputError) as info:
        seg.check_volume(vol, "frame_0001.npy")
    assert not is_transient(info.value)
    with pytest.raises(ShapeError) as info:
        seg.check_volume(np.zeros((32, 32), np.float32), "frame_0002.npy")
    assert not is_transient(info.value)


# ---------------------------------------------------------------------------------------------
# ONNX Runtime: an allocation failure simulated in the session
# ---------------------------------------------------------------------------------------------


def _pointwise_onnx(path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("tomogram", TensorProto.FLOAT, ["N", 1, *TILE])
    y = helper.make_tensor_value_info("distance", TensorProto.FLOAT, ["N", 1, *TILE])
    model = helper.make_model(helper.make_graph([helper.make_node("Tanh", ["tomogram"], ["distance"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def test_onnxruntime_allocation_failure_is_transient(tmp_path):
    from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

    from deepis_rt.backends.onnxrt.runner import OnnxRuntimeRunner

    with OnnxRuntimeRunner(_pointwise_onnx(tmp_path / "m.onnx")) as runner:
        np.testing.assert_allclose(runner.infer(_x()), np.tanh(_x()), rtol=1e-6)  # the real session works

        class Session:  # the real session's Run failing as ORT does when its arena cannot grow
            def __init__(self, real):
                self.real = real

            def io_binding(self):
                return self.real.io_binding()

            def run_with_iobinding(self, *args, **kwargs):
                raise RuntimeException("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory "
                                       "for requested buffer of size 4294967296")

        runner.session = Session(runner.session)
        with pytest.raises(BackendOutOfMemoryError) as info:
            runner.infer(_x(2))
        assert is_transient(info.value)


# ---------------------------------------------------------------------------------------------
# Triton: an unreachable server, a server that never answers, error answers
# ---------------------------------------------------------------------------------------------


def test_triton_unreachable_server_is_transient():
    pytest.importorskip("tritonclient.http", reason="needs tritonclient[http]")
    from deepis_rt.backends.triton.runner import TritonRunner
    from deepis_rt.cluster.triton_server import free_port

    runner = TritonRunner(f"127.0.0.1:{free_port()}", "deepis", connection_timeout_s=2.0)  # nobody listens
    with pytest.raises(BackendUnavailableError) as info:
        runner.activate()
    assert is_transient(info.value) and "cannot reach the server" in str(info.value)


def test_triton_server_that_never_answers_times_out_transiently():
    pytest.importorskip("tritonclient.http", reason="needs tritonclient[http]")
    from deepis_rt.backends.triton.runner import TritonRunner

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept_and_stay_silent():
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept_and_stay_silent, daemon=True)
    thread.start()
    try:
        port = listener.getsockname()[1]
        runner = TritonRunner(f"127.0.0.1:{port}", "deepis", connection_timeout_s=1.0, network_timeout_s=0.5)
        with pytest.raises(BackendUnavailableError) as info:
            runner.activate()
        assert is_transient(info.value) and "no answer within 0.5 s" in str(info.value)
    finally:
        stop.set()
        thread.join(5)
        for conn in accepted:
            conn.close()
        listener.close()


@pytest.mark.parametrize("status, message, transient", [
    ("503", "Server is not ready", True),
    ("429", "Exceeds maximum queue size", True),
    ("502", "Bad Gateway", True),
    ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", True),
    ("500", "Failed to process the request(s) for model instance 'deepis_0', message: Stub process 'deepis_0' "
            "is not healthy.", True),
    ("500", "deepis model: RuntimeException: Failed to allocate memory for requested buffer", True),
    ("400", "Request for unknown model: 'nope' is not found", False),
    ("400", "unexpected inference input 'volume' for model 'deepis'", False),
    ("400", "unexpected shape for input 'tomogram' for model 'deepis'", False),
])
def test_triton_error_answers_are_classified(status, message, transient):
    utils = pytest.importorskip("tritonclient.utils", reason="needs tritonclient")
    from deepis_rt.backends.triton.runner import server_error

    err = server_error("triton | 127.0.0.1:8000 model 'deepis'", "inference", utils.InferenceServerException(message, status))
    assert is_transient(err) is transient
    assert isinstance(err, BackendError) and message in str(err)
    if "memory" in message:
        assert isinstance(err, BackendOutOfMemoryError)


def test_out_of_memory_frees_the_failed_calls_tensors_without_a_collection():
    """Once the typed error is dropped, what the failed forward pass held is freed at once (no cycle)."""
    import gc
    import weakref

    from deepis_rt.backends.pytorch.runner import TorchRunner

    held = []

    class Greedy(torch.nn.Module):
        def forward(self, x):
            activations = torch.empty(1 << 16)
            held.append(weakref.ref(activations))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    enabled = gc.isenabled()
    gc.disable()
    try:
        with TorchRunner(Greedy(), device="cpu") as runner:
            with pytest.raises(BackendOutOfMemoryError):
                runner.infer(_x())
            assert held and held[0]() is None
    finally:
        if enabled:
            gc.enable()


@pytest.mark.gpu
def test_real_cuda_out_of_memory_is_transient():
    """A real CUDA out-of-memory error (asking for twice the GPU's memory) comes out typed and transient."""
    from deepis_rt.backends.pytorch.runner import TorchRunner

    class Greedy(torch.nn.Module):
        def forward(self, x):
            _, total = torch.cuda.mem_get_info(x.device)
            return x + torch.empty(int(total) // 2, device=x.device).sum()  # float32: 2 x the GPU's memory

    with TorchRunner(Greedy(), device="cuda") as runner:
        with pytest.raises(BackendOutOfMemoryError) as info:
            runner.infer(_x())
    assert is_transient(info.value) and isinstance(info.value.__cause__, torch.cuda.OutOfMemoryError)
