"""Triton Inference Server model repositories for an exported DeepIS model.

Layout written by :func:`write_triton_repository` (Triton's documented repository layout)::

    REPO/<model_name>/config.pbtxt
    REPO/<model_name>/1/model.onnx      always (platform "onnxruntime_onnx")
    REPO/<model_name>/1/model.plan      where a TensorRT engine was built (platform "tensorrt_plan")
    REPO/<model_name>/1/model.py        with platform="python" (backend "python": ONNX Runtime inside
                                        tritonserver's Python backend, e.g. the CPU tritonserver of
                                        the nvidia-pytriton wheel; see triton_python_model.py)

``config.pbtxt`` declares the named tensors (``tomogram`` -> ``distance``, float32,
``[1, Z, Y, X]`` after the batch axis, ``-1`` for a dynamic axis), dynamic batching, an
instance group (``KIND_GPU`` where GPUs exist, else ``KIND_CPU``) and the model's deepis-rt
metadata (voxel size, RI normalisation, tile) as the string parameter ``deepis_rt.meta``, so a
client needs nothing but the server's URL (:mod:`deepis_rt.backends.triton.runner`).

Every generated file is parsed back into Triton's own ``inference.ModelConfig`` protobuf message
(the ``model_config_pb2`` module that tritonclient ships): unknown fields, wrong types or bad
enum values fail here, not when the server loads the model.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepis_rt._optional import import_optional
from deepis_rt.backends.triton.protocol import INPUT_NAME, META_PARAMETER, OUTPUT_NAME
from deepis_rt.errors import ConfigError, ExportError

__all__ = [
    "META_PARAMETER",
    "TritonRepository",
    "write_triton_repository",
    "parse_model_config",
    "load_model_config",
    "model_config_to_dict",
    "model_config_pb2",
]

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_pb2_lock = threading.Lock()
_pb2: Any = None


# --------------------------------------------------------------------------------------------
# Triton's schema
# --------------------------------------------------------------------------------------------


def model_config_pb2() -> Any:
    """Triton's ``model_config_pb2`` module (message ``ModelConfig``) from the tritonclient package.

    ``tritonclient.grpc`` ships it but its package ``__init__`` needs grpcio; when grpcio is absent
    (``tritonclient[http]`` only) the generated module is loaded from its file directly.
    """
    global _pb2
    with _pb2_lock:
        if _pb2 is not None:
            return _pb2
        try:
            _pb2 = importlib.import_module("tritonclient.grpc.model_config_pb2")
            return _pb2
        except Exception as exc:  # RuntimeError "no grpc support" or ImportError
            log.debug("tritonclient.grpc not importable (%s); loading model_config_pb2 by path", exc)
        tc = import_optional("tritonclient", "validating Triton model configurations")
        path = Path(tc.__file__).parent / "grpc" / "model_config_pb2.py"
        if not path.is_file():
            from deepis_rt.errors import MissingDependencyError

            raise MissingDependencyError(
                f"triton | {path}: tritonclient {getattr(tc, '__version__', '?')} ships no model_config_pb2; "
                "install a current one with: pip install 'deepis-rt[cluster]'"
            )
        spec = importlib.util.spec_from_file_location("deepis_rt_triton_model_config_pb2", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _pb2 = module
        return _pb2


def parse_model_config(text: str, where: str = "config.pbtxt") -> Any:
    """Parse config.pbtxt text into Triton's ``inference.ModelConfig`` message.

    Raises
    ------
    ConfigError
        Not valid against Triton's schema (unknown field, wrong type, bad enum value, syntax).
    MissingDependencyError
        tritonclient is not installed.
    """
    from google.protobuf import text_format

    pb2 = model_config_pb2()
    msg = pb2.ModelConfig()
    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as exc:
        raise ConfigError(f"triton | {where}: not a valid Triton model configuration: {exc}") from None
    return msg


def load_model_config(path: str | os.PathLike) -> Any:
    """:func:`parse_model_config` of a ``config.pbtxt`` file (or of a model folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.pbtxt"
    if not path.is_file():
        raise ConfigError(f"triton | {path}: no such file")
    return parse_model_config(path.read_text(), str(path))


def model_config_to_dict(msg: Any) -> dict[str, Any]:
    """The JSON form of a ModelConfig, as Triton's ``GET /v2/models/<m>/config`` returns it."""
    from google.protobuf import json_format

    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


# --------------------------------------------------------------------------------------------
# what to put in the repository
# --------------------------------------------------------------------------------------------


@dataclass
class TritonRepository:
    """What :func:`write_triton_repository` wrote."""

    repo: Path
    model_name: str
    model_dir: Path
    config_path: Path
    onnx_path: Path
    plan_path: Path | None
    platform: str
    instance_kind: str
    max_batch_size: int
    config: Any  # the parsed ModelConfig message, or None when tritonclient is not installed


def _onnx_io(path: Path) -> tuple[list[int], str]:
    """(dims after the batch axis, -1 for dynamic ones) of the graph's input; checks names and dtypes."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    graph = proto.graph
    init = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in init]
    outputs = list(graph.output)
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in outputs] != [OUTPUT_NAME]:
        raise ExportError(
            f"triton | {path}: expected one input {INPUT_NAME!r} and one output {OUTPUT_NAME!r}, got "
            f"{[i.name for i in inputs]} -> {[o.name for o in outputs]}; export the model with `deepis-rt export`"
        )
    dims: list[list[int]] = []
    for value in (inputs[0], outputs[0]):
        ttype = value.type.tensor_type
        if ttype.elem_type != onnx.TensorProto.FLOAT:
            raise ExportError(f"triton | {path}: tensor {value.name!r} is not float32")
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in ttype.shape.dim]
        if len(shape) != 5:
            raise ExportError(f"triton | {path}: tensor {value.name!r} has rank {len(shape)}, expected 5 (N, 1, Z, Y, X)")
        dims.append(shape[1:])
    if dims[0] != dims[1]:
        log.warning("triton | %s: input dims %s differ from output dims %s", path, dims[0], dims[1])
    return dims[0], "TYPE_FP32"


def _resolve_export(export: Any, precision: str) -> tuple[Path, Path | None, str, dict[str, Any]]:
    """(onnx file, engine plan or None, default model name, manifest) of an export result/folder/file."""
    manifest: dict[str, Any] = {}
    plan: Path | None = None
    if hasattr(export, "onnx_fp32"):  # deepis_rt.export.ExportResult
        fp32, fp16 = Path(export.onnx_fp32), getattr(export, "onnx_fp16", None)
        name = str(getattr(export, "name", fp32.stem.split(".")[0]))
        typed = getattr(export, "manifest", None)  # an ExportManifest (a dict from older callers)
        manifest = typed.to_dict() if hasattr(typed, "to_dict") else dict(typed or {})
        engine = getattr(export, "engine", None)
        if engine is not None and getattr(engine, "path", None):
            plan = Path(engine.path)
    else:
        path = Path(export)
        if path.is_dir():
            mpath = path / "manifest.json"
            if mpath.is_file():
                from deepis_rt.export.pipeline import read_manifest

                manifest = read_manifest(path)
                files = {f.get("precision"): path / f["path"] for f in manifest.get("files", [])}
                fp32, fp16 = files.get("fp32"), files.get("fp16")
                name = str(manifest.get("name") or path.name)
                eng = manifest.get("engine") or {}
                if isinstance(eng, dict) and eng.get("path"):
                    plan = Path(eng["path"])
                    if not plan.is_absolute() and not plan.is_file():
                        plan = path / plan
            else:
                onnx_files = sorted(path.glob("*.onnx"))
                fp16s = [p for p in onnx_files if "fp16" in p.name.lower()]
                fp32s = [p for p in onnx_files if p not in fp16s]
                fp32, fp16 = (fp32s[0] if fp32s else None), (fp16s[0] if fp16s else None)
                name = path.name
        elif path.suffix == ".onnx" and path.is_file():
            fp32, fp16, name = path, None, path.name.split(".")[0]
        else:
            raise ExportError(
                f"triton | {path}: not an export folder or ONNX file; export the checkpoint first "
                "(deepis-rt export CKPT --triton REPO)"
            )
    onnx_path = fp16 if precision == "fp16" else fp32
    if onnx_path is None or not Path(onnx_path).is_file():
        raise ExportError(f"triton | {export}: no {precision} ONNX file found; export it first")
    if plan is not None and not plan.is_file():
        log.warning("triton | engine %s listed but missing; writing the ONNX model only", plan)
        plan = None
    return Path(onnx_path), plan, name, manifest


def _gpus_here() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def _quote(text: str) -> str:
    from google.protobuf import text_encoding

    return '"' + text_encoding.CEscape(text.encode("utf-8"), as_utf8=True) + '"'


def _dims(dims: Sequence[int]) -> str:
    return "[ " + ", ".join(str(int(d)) for d in dims) + " ]"


def render_config(
    model_name: str,
    platform: str,
    dims: Sequence[int],
    max_batch_size: int,
    instance_kind: str,
    instance_count: int,
    max_queue_delay_us: int,
    preferred_batch_sizes: Sequence[int] = (),
    meta: Mapping[str, Any] | None = None,
    ort_tensorrt_fp16: bool = False,
    header: str = "",
) -> str:
    """The config.pbtxt text (see the module docstring for what it holds)."""
    lines = [f"# {line}" for line in header.splitlines()] if header else []
    lines += [
        f"name: {_quote(model_name)}",
        f"backend: {_quote(platform)}" if platform == "python" else f"platform: {_quote(platform)}",
        f"max_batch_size: {int(max_batch_size)}",
        "input [",
        "  {",
        f"    name: {_quote(INPUT_NAME)}",
        "    data_type: TYPE_FP32",
        f"    dims: {_dims(dims)}",
        "  }",
        "]",
        "output [",
        "  {",
        f"    name: {_quote(OUTPUT_NAME)}",
        "    data_type: TYPE_FP32",
        f"    dims: {_dims(dims)}",
        "  }",
        "]",
        "dynamic_batching {",
    ]
    if preferred_batch_sizes:
        lines.append(f"  preferred_batch_size: {_dims(preferred_batch_sizes)}")
    lines += [
        f"  max_queue_delay_microseconds: {int(max_queue_delay_us)}",
        "}",
        "instance_group [",
        "  {",
        f"    count: {int(instance_count)}",
        f"    kind: {instance_kind}",
        "  }",
        "]",
    ]
    if ort_tensorrt_fp16 and platform == "onnxruntime_onnx" and instance_kind == "KIND_GPU":
        lines += [
            "optimization {",
            "  execution_accelerators {",
            "    gpu_execution_accelerator [",
            "      {",
            '        name: "tensorrt"',
            '        parameters { key: "precision_mode" value: "FP16" }',
            "      }",
            "    ]",
            "  }",
            "}",
        ]
    if meta:
        lines += [
            "parameters {",
            f"  key: {_quote(META_PARAMETER)}",
            f"  value {{ string_value: {_quote(json.dumps(dict(meta), sort_keys=True))} }}",
            "}",
        ]
    return "\n".join(lines) + "\n"


def write_triton_repository(
    export: Any,
    repo: str | os.PathLike,
    model_name: str | None = None,
    *,
    precision: str = "fp32",
    platform: str = "auto",
    instance_kind: str = "auto",
    instance_count: int = 1,
    max_batch_size: int | None = None,
    preferred_batch_sizes: Sequence[int] = (),
    max_queue_delay_us: int = 1000,
    ort_tensorrt_fp16: bool = False,
    version: int = 1,
    validate: bool | None = None,
) -> TritonRepository:
    """Write (or replace) a Triton model repository entry for an exported DeepIS model.

    Parameters
    ----------
    export : ExportResult, path-like
        What :func:`deepis_rt.export.export_model` returned, an export folder (with
        ``manifest.json``) or an ``.onnx`` file.
    repo : path-like
        The model repository (``tritonserver --model-repository REPO``); created when missing.
    model_name : str, optional
        Folder and model name on the server (default: the export's name).
    precision : {"fp32", "fp16"}
        Which ONNX graph becomes ``model.onnx`` (both take and return float32).
    platform : {"auto", "onnxruntime", "tensorrt", "python"}
        ``auto``: ``tensorrt_plan`` when the export has a TensorRT engine, else ``onnxruntime_onnx``.
        A plan only runs on a server with the GPU model and TensorRT version it was built with.
        ``python``: Triton's Python backend running ``model.onnx`` with ONNX Runtime
        (:mod:`deepis_rt.cluster.triton_python_model`): for a tritonserver without the ONNX Runtime
        backend, such as the one in the ``nvidia-pytriton`` wheel (CPU, no container).
    instance_kind : {"auto", "gpu", "cpu"}
        ``auto``: ``KIND_GPU`` when a CUDA GPU is visible here (write the repository on the server,
        or pass ``"gpu"``), else ``KIND_CPU``.
    instance_count : int
        Model instances per device.
    max_batch_size : int, optional
        Largest batch the server forms (default: the engine profile's maximum, else 8).
    preferred_batch_sizes : sequence of int
        Dynamic batcher's preferred sizes (default: none, i.e. as large as the queue allows).
    max_queue_delay_us : int
        How long the dynamic batcher waits to fill a batch.
    ort_tensorrt_fp16 : bool
        For ONNX on GPUs: let ONNX Runtime's TensorRT execution provider run it in FP16.
    version : int
        Model version folder.
    validate : bool, optional
        Parse the written config.pbtxt into Triton's ModelConfig message (default: when
        tritonclient is installed; ``True`` makes it required).

    Returns
    -------
    TritonRepository

    Raises
    ------
    ExportError
        The export lacks the requested files or has unexpected tensors.
    ConfigError
        Bad options, or a config.pbtxt that Triton's schema rejects.
    """
    from deepis_rt.export import read_onnx_meta

    if precision not in ("fp32", "fp16"):
        raise ConfigError(f"triton | precision must be 'fp32' or 'fp16', got {precision!r}")
    if platform not in ("auto", "onnxruntime", "tensorrt", "python"):
        raise ConfigError(
            f"triton | platform must be 'auto', 'onnxruntime', 'tensorrt' or 'python', got {platform!r}")
    if instance_kind not in ("auto", "gpu", "cpu"):
        raise ConfigError(f"triton | instance_kind must be 'auto', 'gpu' or 'cpu', got {instance_kind!r}")
    if instance_count < 1 or version < 1 or max_queue_delay_us < 0:
        raise ConfigError("triton | instance_count and version must be >= 1, max_queue_delay_us >= 0")
    onnx_path, plan, default_name, manifest = _resolve_export(export, precision)
    name = model_name or default_name
    if not _NAME_RE.match(name):
        raise ConfigError(f"triton | model name {name!r}: use letters, digits, '_', '-' and '.'")
    if platform == "tensorrt" and plan is None:
        raise ExportError(
            f"triton | {export}: no TensorRT engine in this export; build one with `deepis-rt export --trt` "
            "on the server's GPU, or use platform 'onnxruntime'"
        )
    use_plan = plan is not None and platform in ("auto", "tensorrt")
    kind = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}.get(instance_kind) or ("KIND_GPU" if (use_plan or _gpus_here())
                                                                           else "KIND_CPU")
    if use_plan and kind == "KIND_CPU":
        raise ConfigError("triton | a TensorRT plan runs on GPUs only; use instance_kind 'gpu' or platform 'onnxruntime'")
    dims, _ = _onnx_io(onnx_path)
    profile_max = None
    if use_plan:
        prof = manifest.get("batch_profile") or {}
        if prof.get("max"):
            profile_max = int(prof["max"][0])
    if max_batch_size is None:
        max_batch_size = profile_max or 8
    if max_batch_size < 1:
        raise ConfigError(f"triton | max_batch_size must be >= 1, got {max_batch_size}")
    if profile_max is not None and max_batch_size > profile_max:
        raise ConfigError(
            f"triton | max_batch_size {max_batch_size} exceeds the engine profile's maximum batch {profile_max}"
        )
    bad = [b for b in preferred_batch_sizes if not 1 <= int(b) <= max_batch_size]
    if bad:
        raise ConfigError(f"triton | preferred batch sizes {bad} outside 1..{max_batch_size}")
    meta = read_onnx_meta(onnx_path)
    if not meta:
        log.warning("triton | %s carries no deepis-rt metadata; clients need a local copy of the model", onnx_path)
    from deepis_rt._version import __version__

    platform_name = "tensorrt_plan" if use_plan else ("python" if platform == "python" else "onnxruntime_onnx")
    text = render_config(
        name, platform_name, dims, max_batch_size, kind, instance_count,
        max_queue_delay_us, preferred_batch_sizes, meta, ort_tensorrt_fp16,
        header=f"Triton model configuration written by deepis-rt {__version__} from {onnx_path.name}"
               + (f" and {plan.name}" if use_plan and plan else ""),
    )
    config_msg = None
    from deepis_rt._optional import is_available

    if validate or (validate is None and is_available("tritonclient")):
        config_msg = parse_model_config(text, f"{name}/config.pbtxt")
    elif validate is None:
        log.info("triton | tritonclient not installed: config.pbtxt written without schema validation")

    repo = Path(repo)
    repo.mkdir(parents=True, exist_ok=True)
    target = repo / name
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=repo.parent))
    try:
        vdir = staging / str(version)
        vdir.mkdir()
        shutil.copy2(onnx_path, vdir / "model.onnx")
        if use_plan and plan is not None:
            shutil.copy2(plan, vdir / "model.plan")
        if platform_name == "python":
            shutil.copy2(Path(__file__).with_name("triton_python_model.py"), vdir / "model.py")
        (staging / "config.pbtxt").write_text(text)
        # swap in whole so a polling server never sees a half-written model
        old = None
        if target.exists():
            old = repo.parent / f".{name}.old-{os.getpid()}"
            os.replace(target, old)
        os.replace(staging, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("triton | wrote %s (%s, %s, max batch %d)", target, platform_name, kind, max_batch_size)
    return TritonRepository(
        repo=repo, model_name=name, model_dir=target, config_path=target / "config.pbtxt",
        onnx_path=target / str(version) / "model.onnx",
        plan_path=(target / str(version) / "model.plan") if use_plan else None,
        platform=platform_name, instance_kind=kind,
        max_batch_size=max_batch_size, config=config_msg,
    )
