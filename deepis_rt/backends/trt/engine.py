"""TensorRT engines from the exported ONNX files, with a cache that never runs a stale engine.

Written against the TensorRT 10/11 Python API and kept thin: parse ONNX, one optimisation profile,
a timing cache kept beside the engines, builder progress through ``IProgressMonitor``,
``build_serialized_network``. Engines are stored as ``engines/<key>.plan`` with ``<key>.json`` beside
them; the key (:func:`cache_key`) covers everything an engine is specific to (ONNX bytes, TensorRT
version, GPU model and compute capability *of the device used*, precision, TF32, workspace,
profile), and :func:`load_engine_bytes` checks key and checksum before a byte of the engine reaches
TensorRT. Everything runs inside ``torch.cuda.device(index)`` for the device asked for, and a build
holds a file lock on its key, so concurrent processes neither build twice nor overwrite each other.

Precision: on TensorRT >= 10.12 the network is *strongly typed* and FP16 comes from the FP16 ONNX
graph (TensorRT 11 is always strongly typed and has no FP16 builder flag); on older 10.x the FP32
graph is parsed and ``BuilderFlag.FP16`` lets the builder choose FP16 kernels (also when no FP16
ONNX exists). ``"fp32"`` engines are built with ``BuilderFlag.TF32`` cleared (TensorRT sets it by
default), so they compute in true FP32; the flag's state is part of the key and the manifest.

``tensorrt`` is imported only through :func:`deepis_rt._optional.import_optional`; GPU facts come
from ``torch.cuda``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from deepis_rt.errors import EngineCacheError, ExportError, MissingDependencyError
from deepis_rt.backends.trt.build import (
    TimingCache,
    cuda_device_index,
    device_scope,
    file_lock,
    make_logger,
    make_progress_monitor,
)

__all__ = [
    "TRT_INSTALL_HINT",
    "ENGINE_FORMAT",
    "EngineEnv",
    "EngineProfile",
    "EngineBuild",
    "DEFAULT_WORKSPACE_GIB",
    "tensorrt_unavailable_reason",
    "current_engine_env",
    "profile_from_batch",
    "build_mode",
    "cache_key",
    "build_engine",
    "get_engine",
    "load_engine_bytes",
    "read_engine_manifest",
    "deserialize_engine",
    "run_engine",
]

log = logging.getLogger(__name__)

TRT_INSTALL_HINT = "pip install 'deepis-rt[tensorrt]'"
ENGINE_FORMAT = "deepis-rt-engine"
ENGINE_FORMAT_VERSION = 1
_KEY_VERSION = "deepis-rt-engine-key-v2"
#: the builder's workspace memory pool limit unless asked otherwise
DEFAULT_WORKSPACE_GIB = 4.0
_STRONGLY_TYPED_SINCE = (10, 12)


@dataclass(frozen=True)
class EngineEnv:
    """What a TensorRT engine is specific to, besides its ONNX graph and build settings."""

    trt_version: str
    gpu_name: str
    compute_capability: str  # "major.minor", e.g. "9.0"


@dataclass(frozen=True)
class EngineProfile:
    """The optimisation profile of the input tensor: min / opt / max shapes (N, 1, Z, Y, X)."""

    min_shape: tuple[int, ...]
    opt_shape: tuple[int, ...]
    max_shape: tuple[int, ...]

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min_shape), "opt": list(self.opt_shape), "max": list(self.max_shape)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Sequence[int]]) -> EngineProfile:
        return cls(tuple(data["min"]), tuple(data["opt"]), tuple(data["max"]))


@dataclass(frozen=True)
class EngineBuild:
    """A built (or verified cached) engine: the plan file and its manifest."""

    path: Path
    manifest_path: Path
    manifest: dict[str, Any]
    cached: bool
    #: the verified plan bytes (read and hashed once; pass them on instead of reading the file again)
    data: bytes | None = None


def tensorrt_unavailable_reason() -> str | None:
    """None when TensorRT engines can be built here, else what exactly is missing and how to fix it."""
    missing: list[str] = []
    try:
        from deepis_rt._optional import import_optional

        import_optional("tensorrt")
    except MissingDependencyError:
        missing.append(f"the TensorRT Python package is not installed ({TRT_INSTALL_HINT} on a machine with an NVIDIA GPU)")
    except Exception as exc:  # installed but broken (missing libnvinfer, CUDA mismatch, ...)
        missing.append(f"TensorRT is installed but cannot be imported ({type(exc).__name__}: {exc}; "
                       f"reinstall it with {TRT_INSTALL_HINT})")
    try:
        import torch

        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
            missing.append(
                f"no CUDA GPU is visible to PyTorch (torch {torch.__version__}, {build}; "
                "torch.cuda.is_available() is False)"
            )
    except ImportError:  # pragma: no cover - torch is a hard dependency
        missing.append("PyTorch is not installed")
    if not missing:
        return None
    return "TensorRT engine build not possible here: " + "; ".join(missing)


def current_engine_env(device: Any = None) -> EngineEnv:
    """TensorRT version, GPU name and compute capability of ``device`` (needs both).

    Parameters
    ----------
    device : int or str, optional
        ``"cuda:N"``, ``N`` or ``"cuda"``; default: the current CUDA device. The facts are those of
        the device the engine will be built or run on, never simply of GPU 0.
    """
    from deepis_rt._optional import import_optional

    trt = import_optional("tensorrt", "building and running TensorRT engines")
    import torch

    if not torch.cuda.is_available():
        raise MissingDependencyError(tensorrt_unavailable_reason() or "no CUDA GPU")
    index = cuda_device_index(device)
    major, minor = torch.cuda.get_device_capability(index)
    return EngineEnv(trt_version=str(trt.__version__), gpu_name=torch.cuda.get_device_name(index),
                     compute_capability=f"{major}.{minor}")


def profile_from_batch(
    batch: Sequence[int],
    tile_zyx: Sequence[int],
    dynamic_shape: bool = False,
    size_multiple: int = 16,
) -> EngineProfile:
    """One optimisation profile from ``(min, opt, max)`` batch sizes.

    With ``dynamic_shape`` the spatial axes range from ``size_multiple`` to twice the tile (opt = tile).
    """
    bmin, bopt, bmax = (int(b) for b in batch)
    if not 1 <= bmin <= bopt <= bmax:
        raise ExportError(f"export | --batch {bmin}:{bopt}:{bmax}: need 1 <= MIN <= OPT <= MAX")
    tile = tuple(int(s) for s in tile_zyx)
    if dynamic_shape:
        lo = (size_multiple,) * 3
        hi = tuple(2 * s for s in tile)
    else:
        lo = hi = tile
    return EngineProfile((bmin, 1, *lo), (bopt, 1, *tile), (bmax, 1, *hi))


def _version_tuple(version: str) -> tuple[int, int]:
    nums = [int(n) for n in re.findall(r"\d+", version)[:2]]
    return (nums + [0, 0])[0], (nums + [0, 0])[1]


def build_mode(trt_version: str, precision: str) -> str:
    """How an engine of ``precision`` is built with TensorRT ``trt_version``.

    Returns ``"strongly-typed"`` (the graph's precision is used: FP16 ONNX for FP16) or
    ``"builder-flag"`` (FP32 ONNX, with ``BuilderFlag.FP16`` for FP16 engines, TensorRT < 10.12).
    """
    if precision not in {"fp16", "fp32"}:
        raise ExportError(f"export | precision {precision!r}: choose 'fp16' or 'fp32'")
    return "strongly-typed" if _version_tuple(trt_version) >= _STRONGLY_TYPED_SINCE else "builder-flag"


def cache_key(
    onnx_sha256: str,
    trt_version: str,
    gpu_name: str,
    compute_capability: str,
    precision: str,
    profile: EngineProfile | Mapping[str, Sequence[int]],
    *,
    tf32: bool = False,
    workspace_bytes: int = int(DEFAULT_WORKSPACE_GIB * (1 << 30)),
) -> str:
    """The name of an engine: a digest of everything the engine is specific to (pure function).

    Two engines share a key only when built from the same ONNX bytes with the same TensorRT version,
    for the same GPU model and compute capability, at the same precision, TF32 setting, workspace
    limit (it bounds the tactics the builder may choose) and profile.
    """
    prof = profile.to_dict() if isinstance(profile, EngineProfile) else {k: list(v) for k, v in profile.items()}
    payload = json.dumps(
        {
            "key": _KEY_VERSION,
            "onnx_sha256": onnx_sha256,
            "trt_version": trt_version,
            "gpu_name": gpu_name,
            "compute_capability": compute_capability,
            "precision": precision,
            "tf32": bool(tf32),
            "workspace_bytes": int(workspace_bytes),
            "profile": prof,
        },
        sort_keys=True,
    )
    return f"{precision}-{hashlib.sha256(payload.encode()).hexdigest()[:32]}"


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def read_engine_manifest(path: str | Path) -> dict[str, Any]:
    """The JSON manifest of an engine (``<key>.json``; a ``.plan`` path is mapped to it)."""
    path = Path(path)
    manifest_path = path.with_suffix(".json")
    where = f"engine cache | {manifest_path}"
    if not manifest_path.is_file():
        raise EngineCacheError(f"{where}: manifest missing; the engine cannot be verified — rebuild it "
                               "with `deepis-rt export CKPT --trt`")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EngineCacheError(f"{where}: corrupt manifest ({exc}); rebuild the engine") from None
    if not isinstance(manifest, dict) or manifest.get("format") != ENGINE_FORMAT:
        raise EngineCacheError(f"{where}: not a deepis-rt engine manifest; rebuild the engine")
    return manifest


def load_engine_bytes(
    path: str | Path,
    expected_key: str | None = None,
    env: EngineEnv | None = None,
) -> bytes:
    """The bytes of a cached engine, only after its key and checksum were verified.

    Parameters
    ----------
    path : path-like
        ``engines/<key>.plan``.
    expected_key : str, optional
        The key the caller computed for what it wants to run (ONNX, TensorRT, GPU, precision,
        profile); a different key means a stale engine.
    env : EngineEnv, optional
        This machine's TensorRT version and GPU; an engine built elsewhere is refused.

    Raises
    ------
    EngineCacheError
        Missing, stale, tampered or corrupt engine or manifest; the message says what differs.
    """
    path = Path(path)
    where = f"engine cache | {path}"
    manifest = read_engine_manifest(path)
    stored_key = manifest.get("cache_key")
    if stored_key != path.stem:
        raise EngineCacheError(f"{where}: manifest is for key {stored_key!r}, the file is named "
                               f"{path.stem!r}; rebuild the engine")
    try:
        recomputed = cache_key(manifest["onnx_sha256"], manifest["trt_version"], manifest["gpu_name"],
                               manifest["compute_capability"], manifest["precision"], manifest["profile"],
                               tf32=manifest["tf32"], workspace_bytes=manifest["workspace_bytes"])
    except (KeyError, TypeError, AttributeError) as exc:
        raise EngineCacheError(f"{where}: manifest lacks {exc}; rebuild the engine") from None
    if recomputed != stored_key:
        raise EngineCacheError(f"{where}: manifest fields do not give its key (edited or corrupt "
                               "manifest); rebuild the engine")
    if expected_key is not None and expected_key != stored_key:
        raise EngineCacheError(f"{where}: stale engine — it is for key {stored_key}, this run needs "
                               f"{expected_key} (a different ONNX, TensorRT, GPU, precision or profile)")
    if env is not None:
        built = (manifest["trt_version"], manifest["gpu_name"], manifest["compute_capability"])
        here = (env.trt_version, env.gpu_name, env.compute_capability)
        if built != here:
            raise EngineCacheError(
                f"{where}: built with TensorRT {built[0]} for {built[1]} (sm {built[2]}); this machine "
                f"has TensorRT {here[0]} and {here[1]} (sm {here[2]}); rebuild it here"
            )
    if not path.is_file():
        raise EngineCacheError(f"{where}: engine file missing beside its manifest; rebuild it")
    data = path.read_bytes()
    digest = _sha256_bytes(data)
    if digest != manifest.get("engine_sha256"):
        raise EngineCacheError(f"{where}: checksum mismatch (corrupt or truncated engine file, "
                               f"{len(data)} bytes); it will not be run — rebuild it")
    return data


def _timing_cache_path(engines_dir: Path, env: EngineEnv) -> Path:
    tag = hashlib.sha256(f"{env.trt_version}|{env.gpu_name}|{env.compute_capability}".encode()).hexdigest()[:12]
    return engines_dir / f"timing-{tag}.cache"


@dataclass(frozen=True)
class _Target:
    """What exactly an engine request resolves to on this machine (the inputs of its key)."""

    source: Path
    onnx_sha256: str
    env: EngineEnv
    device: int
    precision: str
    mode: str
    tf32: bool
    workspace_bytes: int
    profile: EngineProfile
    key: str


def _target(onnx_path: str | Path, precision: str, profile: EngineProfile | None,
            onnx_fp32_path: str | Path | None, device: Any, tf32: bool | None,
            workspace_gib: float) -> _Target:
    from deepis_rt.checkpoint import file_sha256

    if profile is None:
        raise ExportError("export | an engine needs an optimisation profile (profile_from_batch)")
    index = cuda_device_index(device)
    env = current_engine_env(index)
    mode = build_mode(env.trt_version, precision)
    source = Path(onnx_path)
    if mode == "builder-flag" and precision == "fp16" and onnx_fp32_path is not None:
        source = Path(onnx_fp32_path)  # older TensorRT: the FP32 graph with BuilderFlag.FP16
    if not source.is_file():
        raise ExportError(f"export | {source}: no such ONNX file to build a TensorRT engine from")
    # TF32 stays TensorRT's default for FP16 engines; an "fp32" engine computes in true FP32
    tf32 = (precision == "fp16") if tf32 is None else bool(tf32)
    workspace_bytes = int(workspace_gib * (1 << 30))
    sha = file_sha256(source)
    key = cache_key(sha, env.trt_version, env.gpu_name, env.compute_capability, precision, profile,
                    tf32=tf32, workspace_bytes=workspace_bytes)
    return _Target(source, sha, env, index, precision, mode, tf32, workspace_bytes, profile, key)


def _build(trt: Any, t: _Target, engines_dir: Path, progress: bool | None) -> EngineBuild:
    """Build the engine of ``t`` (the caller holds the key's lock and the device scope)."""
    from deepis_rt.export.onnx_export import INPUT_NAME

    logger = make_logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    if t.mode == "strongly-typed" and _version_tuple(t.env.trt_version)[0] < 11:  # always, from 11 on
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(t.source)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"export | TensorRT could not parse {t.source}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, t.workspace_bytes)
    if t.mode == "builder-flag" and t.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    if t.tf32:
        config.set_flag(trt.BuilderFlag.TF32)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)
    trt_profile = builder.create_optimization_profile()
    trt_profile.set_shape(INPUT_NAME, t.profile.min_shape, t.profile.opt_shape, t.profile.max_shape)
    if config.add_optimization_profile(trt_profile) < 0:
        raise ExportError(f"export | TensorRT rejected the optimisation profile {t.profile.to_dict()} for "
                          f"input {INPUT_NAME!r} (need min <= opt <= max, rank 5; see the TensorRT log)")

    timing = TimingCache(_timing_cache_path(engines_dir, t.env))
    timing.attach(config)
    show = sys.stderr.isatty() if progress is None else progress
    config.progress_monitor = make_progress_monitor(trt, show)

    log.info("export | building TensorRT %s engine (%s, TF32 %s, TensorRT %s, %s sm %s, cuda:%d); this "
             "takes minutes", t.precision, t.mode, "on" if t.tf32 else "off", t.env.trt_version,
             t.env.gpu_name, t.env.compute_capability, t.device)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    build_s = time.perf_counter() - start
    if serialized is None:
        raise ExportError(f"export | TensorRT failed to build an engine from {t.source} (see the "
                          "TensorRT messages above; run with -vv for all of them)")
    data = bytes(serialized)
    timing.save()
    manifest = {
        "format": ENGINE_FORMAT,
        "format_version": ENGINE_FORMAT_VERSION,
        "cache_key": t.key,
        "onnx_path": str(t.source),
        "onnx_sha256": t.onnx_sha256,
        **asdict(t.env),
        "precision": t.precision,
        "tf32": t.tf32,
        "workspace_bytes": t.workspace_bytes,
        "build_mode": t.mode,
        "profile": t.profile.to_dict(),
        "input_name": INPUT_NAME,
        "build_time_s": round(build_s, 2),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "engine_sha256": _sha256_bytes(data),
        "engine_bytes": len(data),
        "timing_cache": timing.path.name,
        "timing_cache_status": timing.status,
    }
    plan_path = engines_dir / f"{t.key}.plan"
    _atomic_write(plan_path, data)
    _atomic_write(plan_path.with_suffix(".json"), json.dumps(manifest, indent=2).encode())
    log.info("export | wrote %s (%.1f MB, built in %.0f s)", plan_path, len(data) / 1e6, build_s)
    return EngineBuild(plan_path, plan_path.with_suffix(".json"), manifest, cached=False, data=data)


def build_engine(
    onnx_path: str | Path,
    engines_dir: str | Path = "engines",
    precision: str = "fp16",
    profile: EngineProfile | None = None,
    onnx_fp32_path: str | Path | None = None,
    workspace_gib: float = DEFAULT_WORKSPACE_GIB,
    progress: bool | None = None,
    device: Any = None,
    tf32: bool | None = None,
) -> EngineBuild:
    """Build a TensorRT engine and store it under its cache key (always builds; see :func:`get_engine`).

    Parameters
    ----------
    onnx_path : path-like
        The ONNX graph of ``precision`` (the FP16 file for ``"fp16"`` on TensorRT >= 10.12).
    engines_dir : path-like
        Where ``<key>.plan``, ``<key>.json`` and the timing cache live.
    precision : {"fp16", "fp32"}
    profile : EngineProfile
        Optimisation profile of the input.
    onnx_fp32_path : path-like, optional
        The FP32 graph, parsed instead on TensorRT < 10.12 for FP16 engines (builder flag). Without
        it ``onnx_path`` is parsed with the flag.
    workspace_gib : float
        Workspace memory pool limit (part of the key).
    progress : bool, optional
        Show builder progress bars (default: when stderr is a terminal).
    device : int or str, optional
        The CUDA device to build for (``"cuda:1"``); default: the current one.
    tf32 : bool, optional
        Allow TF32 for FP32 tensors; default: off for ``"fp32"``, on (TensorRT's default) for ``"fp16"``.
    """
    from deepis_rt._optional import import_optional

    trt = import_optional("tensorrt", "building TensorRT engines")
    t = _target(onnx_path, precision, profile, onnx_fp32_path, device, tf32, workspace_gib)
    engines_dir = Path(engines_dir)
    engines_dir.mkdir(parents=True, exist_ok=True)
    with device_scope(t.device), file_lock(engines_dir / f"{t.key}.plan", f"engine cache | {t.key}"):
        return _build(trt, t, engines_dir, progress)


def get_engine(
    onnx_path: str | Path,
    engines_dir: str | Path = "engines",
    precision: str = "fp16",
    profile: EngineProfile | None = None,
    onnx_fp32_path: str | Path | None = None,
    rebuild: bool = True,
    *,
    workspace_gib: float = DEFAULT_WORKSPACE_GIB,
    progress: bool | None = None,
    device: Any = None,
    tf32: bool | None = None,
) -> EngineBuild:
    """The engine for these inputs from the cache, verified; built when absent, stale or corrupt.

    The returned :class:`EngineBuild` carries the verified bytes (``.data``): the plan is read and
    hashed once. The key's file lock is held while checking and building, so a second process asking
    for the same engine waits and then uses the first one's. With ``rebuild=False`` an invalid cached
    engine raises :class:`EngineCacheError` instead. Other parameters: see :func:`build_engine`.
    """
    t = _target(onnx_path, precision, profile, onnx_fp32_path, device, tf32, workspace_gib)
    engines_dir = Path(engines_dir)
    engines_dir.mkdir(parents=True, exist_ok=True)
    plan_path = engines_dir / f"{t.key}.plan"
    with device_scope(t.device), file_lock(plan_path, f"engine cache | {t.key}"):
        if plan_path.exists() or plan_path.with_suffix(".json").exists():
            try:
                data = load_engine_bytes(plan_path, expected_key=t.key, env=t.env)
                log.info("export | using cached engine %s", plan_path)
                return EngineBuild(plan_path, plan_path.with_suffix(".json"), read_engine_manifest(plan_path),
                                   cached=True, data=data)
            except EngineCacheError as exc:
                if not rebuild:
                    raise
                log.warning("%s; rebuilding it", exc)
        from deepis_rt._optional import import_optional

        trt = import_optional("tensorrt", "building TensorRT engines")
        return _build(trt, t, engines_dir, progress)


def deserialize_engine(data: bytes, device: Any = None) -> Any:
    """``trt.ICudaEngine`` from verified plan bytes (see :func:`load_engine_bytes`), on ``device``."""
    from deepis_rt._optional import import_optional

    trt = import_optional("tensorrt", "running TensorRT engines")
    with device_scope(cuda_device_index(device)):
        runtime = trt.Runtime(make_logger(trt))
        engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise EngineCacheError("engine cache | TensorRT could not deserialize the engine (built by "
                               "another TensorRT version or for another GPU?); rebuild it")
    return engine


def run_engine(engine: Any, x: Any, ops: Any = None) -> Any:
    """Run ``engine`` once on a device float32 tensor (N, 1, Z, Y, X); returns the distance tensor.

    A minimal synchronous call used by export checks and tests, through
    :class:`~deepis_rt.backends.TensorRTRunner`: an execution context of its own on a stream of
    its own (never the legacy default stream), on the input's device, checked input shape, output
    dtype from the engine, and a synchronise before the context is released. ``ops``: the CUDA
    operations (default ``torch.cuda``; tests pass a CPU stand-in).
    """
    from deepis_rt.backends.trt.runner import TensorRTRunner

    runner = TensorRTRunner(lambda: engine, device=str(x.device), ops=ops)
    runner.activate()
    try:
        y = runner.forward_device(x)
        runner.synchronize()
        # y's memory belongs to the runner's stream; the caller uses it on its own
        runner.ops.keep_alive(y, runner.ops.current_stream())
    finally:
        runner.deactivate()
    return y
