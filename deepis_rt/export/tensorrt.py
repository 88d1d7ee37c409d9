"""TensorRT engines from the exported ONNX files, with a cache that never runs a stale engine.

Written against the TensorRT 10/11 Python API and kept thin: parse ONNX, one optimisation profile,
a timing cache kept beside the engines, builder progress through ``IProgressMonitor``,
``build_serialized_network``. Engines are stored as ``engines/<key>.plan`` with ``<key>.json`` beside
them; the key (:func:`cache_key`) covers everything an engine is specific to, and
:func:`load_engine_bytes` checks key and checksum before a byte of the engine reaches TensorRT.

Precision: on TensorRT >= 10.12 the network is *strongly typed* and FP16 comes from the FP16 ONNX
graph (TensorRT 11 is always strongly typed and has no FP16 builder flag); on older 10.x the FP32
graph is parsed and ``BuilderFlag.FP16`` lets the builder choose FP16 kernels.

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

__all__ = [
    "TRT_INSTALL_HINT",
    "ENGINE_FORMAT",
    "EngineEnv",
    "EngineProfile",
    "EngineBuild",
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
_KEY_VERSION = "deepis-rt-engine-key-v1"
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


def current_engine_env(device: int = 0) -> EngineEnv:
    """TensorRT version, GPU name and compute capability of this machine (needs both)."""
    from deepis_rt._optional import import_optional

    trt = import_optional("tensorrt", "building and running TensorRT engines")
    import torch

    if not torch.cuda.is_available():
        raise MissingDependencyError(tensorrt_unavailable_reason() or "no CUDA GPU")
    major, minor = torch.cuda.get_device_capability(device)
    return EngineEnv(trt_version=str(trt.__version__), gpu_name=torch.cuda.get_device_name(device),
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
) -> str:
    """The name of an engine: a digest of everything the engine is specific to (pure function).

    Two engines share a key only when built from the same ONNX bytes with the same TensorRT version,
    for the same GPU model and compute capability, at the same precision and profile.
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
            "profile": prof,
        },
        sort_keys=True,
    )
    return f"{precision}-{hashlib.sha256(payload.encode()).hexdigest()[:32]}"


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
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
                               manifest["compute_capability"], manifest["precision"], manifest["profile"])
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


def _make_logger(trt: Any) -> Any:
    class _Logger(trt.ILogger):  # forwards TensorRT messages to Python logging
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            sev = trt.ILogger.Severity
            level = {
                sev.INTERNAL_ERROR: logging.ERROR,
                sev.ERROR: logging.ERROR,
                sev.WARNING: logging.WARNING,
                sev.INFO: logging.DEBUG,
            }.get(severity, logging.DEBUG)
            log.log(level, "TensorRT: %s", msg)

    return _Logger()


def _make_progress_monitor(trt: Any, show: bool) -> Any:
    from tqdm import tqdm

    class _Progress(trt.IProgressMonitor):  # one tqdm bar per builder phase
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._bars: dict[str, Any] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            depth = 0
            parent = parent_phase
            while parent is not None and parent in self._bars:
                depth += 1
                parent = getattr(self._bars[parent], "_deepis_parent", None)
            bar = tqdm(total=num_steps, desc=phase_name, position=depth, leave=False,
                       disable=not show, file=sys.stderr)
            bar._deepis_parent = parent_phase
            self._bars[phase_name] = bar

        def step_complete(self, phase_name: str, step: int) -> bool:
            bar = self._bars.get(phase_name)
            if bar is not None:
                bar.update(step + 1 - bar.n)
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            bar = self._bars.pop(phase_name, None)
            if bar is not None:
                bar.close()

    return _Progress()


def _timing_cache_path(engines_dir: Path, env: EngineEnv) -> Path:
    tag = hashlib.sha256(f"{env.trt_version}|{env.gpu_name}|{env.compute_capability}".encode()).hexdigest()[:12]
    return engines_dir / f"timing-{tag}.cache"


def build_engine(
    onnx_path: str | Path,
    engines_dir: str | Path = "engines",
    precision: str = "fp16",
    profile: EngineProfile | None = None,
    onnx_fp32_path: str | Path | None = None,
    workspace_gib: float = 4.0,
    progress: bool | None = None,
) -> EngineBuild:
    """Build a TensorRT engine and store it under its cache key.

    Parameters
    ----------
    onnx_path : path-like
        The ONNX graph of ``precision`` (the FP16 file for ``"fp16"``).
    engines_dir : path-like
        Where ``<key>.plan``, ``<key>.json`` and the timing cache live.
    precision : {"fp16", "fp32"}
    profile : EngineProfile
        Optimisation profile of the input.
    onnx_fp32_path : path-like, optional
        The FP32 graph, parsed instead on TensorRT < 10.12 for FP16 engines (builder flag).
    workspace_gib : float
        Workspace memory pool limit.
    progress : bool, optional
        Show builder progress bars (default: when stderr is a terminal).
    """
    from deepis_rt._optional import import_optional
    from deepis_rt.checkpoint import file_sha256

    trt = import_optional("tensorrt", "building TensorRT engines")
    env = current_engine_env()
    if profile is None:
        raise ExportError("export | build_engine needs an optimisation profile (profile_from_batch)")
    mode = build_mode(env.trt_version, precision)
    source = Path(onnx_path)
    if mode == "builder-flag" and precision == "fp16":
        if onnx_fp32_path is None:
            raise ExportError(f"export | TensorRT {env.trt_version} < 10.12 builds FP16 from the FP32 "
                              "graph with the FP16 builder flag; pass onnx_fp32_path")
        source = Path(onnx_fp32_path)
    onnx_sha = file_sha256(source)
    key = cache_key(onnx_sha, env.trt_version, env.gpu_name, env.compute_capability, precision, profile)
    engines_dir = Path(engines_dir)
    engines_dir.mkdir(parents=True, exist_ok=True)
    plan_path = engines_dir / f"{key}.plan"

    logger = _make_logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    major = _version_tuple(env.trt_version)[0]
    if mode == "strongly-typed" and major < 11:  # always strongly typed from TensorRT 11 on
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(source)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"export | TensorRT could not parse {source}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if mode == "builder-flag" and precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    trt_profile = builder.create_optimization_profile()
    from deepis_rt.export.onnx_export import INPUT_NAME

    trt_profile.set_shape(INPUT_NAME, profile.min_shape, profile.opt_shape, profile.max_shape)
    config.add_optimization_profile(trt_profile)

    timing_path = _timing_cache_path(engines_dir, env)
    blob = timing_path.read_bytes() if timing_path.is_file() else b""
    try:
        timing_cache = config.create_timing_cache(blob)
    except Exception as exc:  # a damaged timing cache only costs build time
        log.warning("export | %s: unusable timing cache (%s); starting a new one", timing_path, exc)
        timing_cache = config.create_timing_cache(b"")
    config.set_timing_cache(timing_cache, False)
    show = sys.stderr.isatty() if progress is None else progress
    config.progress_monitor = _make_progress_monitor(trt, show)

    log.info("export | building TensorRT %s engine (%s, TensorRT %s, %s sm %s); this takes minutes",
             precision, mode, env.trt_version, env.gpu_name, env.compute_capability)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    build_s = time.perf_counter() - start
    if serialized is None:
        raise ExportError(f"export | TensorRT failed to build an engine from {source} (see the "
                          "TensorRT messages above; run with -vv for all of them)")
    data = bytes(serialized)
    _atomic_write(timing_path, bytes(timing_cache.serialize()))  # updated by the build
    manifest = {
        "format": ENGINE_FORMAT,
        "format_version": ENGINE_FORMAT_VERSION,
        "cache_key": key,
        "onnx_path": str(source),
        "onnx_sha256": onnx_sha,
        **asdict(env),
        "precision": precision,
        "build_mode": mode,
        "profile": profile.to_dict(),
        "input_name": INPUT_NAME,
        "build_time_s": round(build_s, 2),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "engine_sha256": _sha256_bytes(data),
        "engine_bytes": len(data),
        "timing_cache": timing_path.name,
    }
    _atomic_write(plan_path, data)
    _atomic_write(plan_path.with_suffix(".json"), json.dumps(manifest, indent=2).encode())
    log.info("export | wrote %s (%.1f MB, built in %.0f s)", plan_path, len(data) / 1e6, build_s)
    return EngineBuild(plan_path, plan_path.with_suffix(".json"), manifest, cached=False)


def get_engine(
    onnx_path: str | Path,
    engines_dir: str | Path = "engines",
    precision: str = "fp16",
    profile: EngineProfile | None = None,
    onnx_fp32_path: str | Path | None = None,
    rebuild: bool = True,
    **build_kwargs: Any,
) -> EngineBuild:
    """The engine for these inputs from the cache, verified; built when absent, stale or corrupt.

    With ``rebuild=False`` an invalid cached engine raises :class:`EngineCacheError` instead.
    """
    from deepis_rt.checkpoint import file_sha256

    env = current_engine_env()
    if profile is None:
        raise ExportError("export | get_engine needs an optimisation profile (profile_from_batch)")
    mode = build_mode(env.trt_version, precision)
    source = Path(onnx_fp32_path) if (mode == "builder-flag" and precision == "fp16" and onnx_fp32_path) else Path(onnx_path)
    key = cache_key(file_sha256(source), env.trt_version, env.gpu_name, env.compute_capability, precision, profile)
    plan_path = Path(engines_dir) / f"{key}.plan"
    if plan_path.exists() or plan_path.with_suffix(".json").exists():
        try:
            load_engine_bytes(plan_path, expected_key=key, env=env)
            log.info("export | using cached engine %s", plan_path)
            return EngineBuild(plan_path, plan_path.with_suffix(".json"), read_engine_manifest(plan_path), cached=True)
        except EngineCacheError as exc:
            if not rebuild:
                raise
            log.warning("%s; rebuilding it", exc)
    return build_engine(onnx_path, engines_dir, precision, profile, onnx_fp32_path, **build_kwargs)


def deserialize_engine(data: bytes) -> Any:
    """``trt.ICudaEngine`` from verified plan bytes (see :func:`load_engine_bytes`)."""
    from deepis_rt._optional import import_optional

    trt = import_optional("tensorrt", "running TensorRT engines")
    runtime = trt.Runtime(_make_logger(trt))
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise EngineCacheError("engine cache | TensorRT could not deserialize the engine (built by "
                               "another TensorRT version or for another GPU?); rebuild it")
    return engine


def run_engine(engine: Any, x: Any) -> Any:
    """Run ``engine`` once on a CUDA float32 tensor (N, 1, Z, Y, X); returns the distance tensor.

    A minimal synchronous call used by export checks and tests; the streaming runtime has its own.
    """
    import torch

    from deepis_rt.export.onnx_export import INPUT_NAME, OUTPUT_NAME

    x = x.contiguous()
    context = engine.create_execution_context()
    context.set_input_shape(INPUT_NAME, tuple(x.shape))
    y = torch.empty(tuple(context.get_tensor_shape(OUTPUT_NAME)), dtype=torch.float32, device=x.device)
    context.set_tensor_address(INPUT_NAME, x.data_ptr())
    context.set_tensor_address(OUTPUT_NAME, y.data_ptr())
    stream = torch.cuda.current_stream(x.device)
    if not context.execute_async_v3(stream.cuda_stream):
        raise ExportError("export | TensorRT execution failed")
    stream.synchronize()
    return y
