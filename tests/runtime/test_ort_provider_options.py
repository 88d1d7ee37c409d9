"""The ONNX Runtime GPU provider options the runners pass, against the names ONNX Runtime documents.

No GPU build of ONNX Runtime runs here, so a misspelt option would only surface on the first GPU
run (the CUDA provider rejects unknown keys, the TensorRT provider's Python binding throws
"Invalid TensorRT EP option"). Every key the runner builds must be one of the documented names
below, with a value in that provider's syntax.

Sources (ONNX Runtime 1.18 to 1.23+, the range pyproject.toml allows; the installed wheel is
recorded by the test report header):

* CUDA EP, "Configuration Options":
  https://onnxruntime.ai/docs/execution-providers/CUDA-ExecutionProvider.html
  and the parser of those names, ``onnxruntime/core/providers/cuda/cuda_execution_provider_info.cc``
  (``cuda::provider_option_names``; integers and 0/1 flags parsed with ``ParseStringWithClassicLocale``,
  ``user_compute_stream`` an address, which also sets ``has_user_compute_stream``).
* TensorRT EP, "Configurations" / "Execution Provider Options":
  https://onnxruntime.ai/docs/execution-providers/TensorRT-ExecutionProvider.html
  and the Python binding's parser, ``onnxruntime/python/onnxruntime_pybind_state.cc``
  (booleans must be the strings "True"/"False"; any other key: "Invalid TensorRT EP option";
  profile shapes "input1:dim1xdim2...,input2:...").
"""

from __future__ import annotations

import re
import warnings
from types import SimpleNamespace

import onnxruntime as ort
import pytest

from deepis_rt.backends import OnnxRuntimeRunner
from deepis_rt.backends.onnxrt.providers import (
    cuda_provider_options,
    profile_shapes,
    tensorrt_provider_options,
)

INT, FLAG01, ADDRESS, ENUM, TRUEFALSE, TEXT, PATH, SHAPES = (
    "int", "0|1", "address", "enum", "True|False", "text", "path", "shapes")

#: CUDA execution provider: documented option -> value syntax
CUDA_EP_OPTIONS = {
    "device_id": INT,
    "user_compute_stream": ADDRESS,
    "has_user_compute_stream": FLAG01,
    "do_copy_in_default_stream": FLAG01,
    "use_ep_level_unified_stream": FLAG01,
    "gpu_mem_limit": INT,
    "arena_extend_strategy": ENUM,
    "cudnn_conv_algo_search": ENUM,
    "cudnn_conv_use_max_workspace": FLAG01,
    "cudnn_conv1d_pad_to_nc1d": FLAG01,
    "enable_cuda_graph": FLAG01,
    "enable_skip_layer_norm_strict_mode": FLAG01,
    "use_tf32": FLAG01,
    "prefer_nhwc": FLAG01,
    "gpu_external_alloc": ADDRESS,
    "gpu_external_free": ADDRESS,
    "gpu_external_empty_cache": ADDRESS,
    "tunable_op_enable": FLAG01,
    "tunable_op_tuning_enable": FLAG01,
    "tunable_op_max_tuning_duration_ms": INT,
}
CUDA_ENUMS = {
    "arena_extend_strategy": {"kNextPowerOfTwo", "kSameAsRequested"},
    "cudnn_conv_algo_search": {"EXHAUSTIVE", "HEURISTIC", "DEFAULT"},
}

#: TensorRT execution provider (Python binding): documented option -> value syntax
TENSORRT_EP_OPTIONS = {
    "device_id": INT,
    "trt_max_workspace_size": INT,
    "trt_max_partition_iterations": INT,
    "trt_min_subgraph_size": INT,
    "trt_fp16_enable": TRUEFALSE,
    "trt_bf16_enable": TRUEFALSE,
    "trt_int8_enable": TRUEFALSE,
    "trt_int8_calibration_table_name": TEXT,
    "trt_int8_use_native_calibration_table": TRUEFALSE,
    "trt_dla_enable": TRUEFALSE,
    "trt_dla_core": INT,
    "trt_dump_subgraphs": TRUEFALSE,
    "trt_engine_cache_enable": TRUEFALSE,
    "trt_engine_cache_path": PATH,
    "trt_engine_cache_prefix": TEXT,
    "trt_engine_decryption_enable": TRUEFALSE,
    "trt_engine_decryption_lib_path": PATH,
    "trt_force_sequential_engine_build": TRUEFALSE,
    "trt_context_memory_sharing_enable": TRUEFALSE,
    "trt_layer_norm_fp32_fallback": TRUEFALSE,
    "trt_timing_cache_enable": TRUEFALSE,
    "trt_timing_cache_path": PATH,
    "trt_force_timing_cache": TRUEFALSE,
    "trt_detailed_build_log": TRUEFALSE,
    "trt_build_heuristics_enable": TRUEFALSE,
    "trt_sparsity_enable": TRUEFALSE,
    "trt_builder_optimization_level": INT,
    "trt_auxiliary_streams": INT,
    "trt_tactic_sources": TEXT,
    "trt_extra_plugin_lib_paths": TEXT,
    "trt_profile_min_shapes": SHAPES,
    "trt_profile_max_shapes": SHAPES,
    "trt_profile_opt_shapes": SHAPES,
    "trt_cuda_graph_enable": TRUEFALSE,
    "trt_dump_ep_context_model": TRUEFALSE,
    "trt_ep_context_file_path": PATH,
    "trt_ep_context_embed_mode": INT,
    "trt_weight_stripped_engine_enable": TRUEFALSE,
    "trt_onnx_model_folder_path": PATH,
}

_SHAPES = re.compile(r"^[^:,]+:\d+(x\d+)*(,[^:,]+:\d+(x\d+)*)*$")


def _check(provider, options, documented):
    assert options, f"{provider}: no options built"
    for key, value in options.items():
        assert key in documented, f"{provider}: {key!r} is not a documented option of this provider"
        assert isinstance(value, str), f"{provider}: {key}={value!r} must be a string (ONNX Runtime parses strings)"
        kind = documented[key]
        if kind == INT:
            assert re.fullmatch(r"\d+", value), f"{provider}: {key}={value!r} is not an integer"
        elif kind == FLAG01:
            assert value in ("0", "1"), f"{provider}: {key}={value!r} must be 0 or 1"
        elif kind == ADDRESS:
            assert re.fullmatch(r"[1-9]\d*", value), f"{provider}: {key}={value!r} is not a non-null address"
        elif kind == TRUEFALSE:
            assert value in ("True", "False"), f"{provider}: {key}={value!r} must be 'True' or 'False'"
        elif kind == ENUM:
            assert value in CUDA_ENUMS[key], f"{provider}: {key}={value!r} not in {CUDA_ENUMS[key]}"
        elif kind == SHAPES:
            assert _SHAPES.match(value), f"{provider}: {key}={value!r} is not 'input:dim1xdim2...'"
        else:
            assert value, f"{provider}: {key} is empty"


PROFILE = ((1, 1, 16, 32, 32), (2, 1, 16, 32, 32), (4, 1, 16, 32, 32))


def test_cuda_options_are_documented():
    _check("CUDA", cuda_provider_options(0, 0x7F00DEAD, allow_tf32=False), CUDA_EP_OPTIONS)
    _check("CUDA", cuda_provider_options(3, None, allow_tf32=True), CUDA_EP_OPTIONS)


def test_default_stream_handle_refused():
    from deepis_rt.errors import BackendError

    with pytest.raises(BackendError, match="default stream"):
        cuda_provider_options(0, 0)


def test_tensorrt_options_are_documented(tmp_path):
    options = tensorrt_provider_options(1, "input", PROFILE, tmp_path / "ort-trt", fp16=True)
    _check("TensorRT", options, TENSORRT_EP_OPTIONS)
    assert options["trt_profile_opt_shapes"] == "input:2x1x16x32x32"
    assert options["trt_engine_cache_path"] == options["trt_timing_cache_path"] == str(tmp_path / "ort-trt")
    assert (tmp_path / "ort-trt").is_dir()


def test_tensorrt_profile_is_the_native_backends(tmp_path):
    """The EP's profile comes from the same function as the native TensorRT engine's."""
    from deepis_rt.backends.trt import profile_from_batch

    profile = profile_from_batch((1, 2, 4), (16, 32, 32))
    options = tensorrt_provider_options(0, "input", profile, tmp_path, fp16=False)
    assert options["trt_profile_min_shapes"] == profile_shapes("input", profile.min_shape) == "input:1x1x16x32x32"
    assert options["trt_profile_max_shapes"] == "input:4x1x16x32x32"
    assert options["trt_fp16_enable"] == "False"


@pytest.mark.parametrize("provider", ["cuda", "tensorrt"], ids=["cuda-ep", "trt-ep"])
def test_runner_provider_lists_are_documented_and_accepted_by_onnxruntime(provider, tiny_onnx, tmp_path, monkeypatch):
    """The exact list the runner hands to InferenceSession, through ONNX Runtime's own argument check."""
    from onnxruntime.capi.onnxruntime_inference_collection import check_and_normalize_provider_args

    available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: available)
    runner = OnnxRuntimeRunner(tiny_onnx, provider=provider, engines_dir=tmp_path, trt_profile=PROFILE)
    runner._stream = SimpleNamespace(cuda_stream=140_000_000_001)
    providers = runner._provider_list(ort, "input")
    documented = {"CUDAExecutionProvider": CUDA_EP_OPTIONS, "TensorrtExecutionProvider": TENSORRT_EP_OPTIONS}
    for entry in providers:
        if isinstance(entry, tuple):
            _check(entry[0], entry[1], documented[entry[0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an unknown provider name warns there
        names, options = check_and_normalize_provider_args(providers, None, available)
    assert names[-1] == "CPUExecutionProvider" and names[0] == ("TensorrtExecutionProvider" if provider == "tensorrt"
                                                                  else "CUDAExecutionProvider")
    assert all(isinstance(v, str) for opts in options for v in opts.values())
