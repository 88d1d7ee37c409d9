"""Building an engine from ONNX: parse, one optimisation profile, the timing cache, ``build_serialized_network``.

Written against the TensorRT 10/11 Python API and kept thin. Everything runs inside
``torch.cuda.device(index)`` for the device asked for, and a build holds a file lock on its key, so
concurrent processes neither build twice nor overwrite each other (the second finds the first
one's engine). ``"fp32"`` engines are built with ``BuilderFlag.TF32`` cleared (TensorRT sets it by
default), so they compute in true FP32; the flag's state is part of the key and the manifest.
Builder progress is shown through ``IProgressMonitor``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from deepis_rt._optional import import_optional
from deepis_rt.backends.files import atomic_write, file_lock, file_sha256
from deepis_rt.backends.trt.cache import (
    DEFAULT_WORKSPACE_GIB,
    ENGINE_FORMAT,
    ENGINE_FORMAT_VERSION,
    EngineBuild,
    TimingCache,
    cache_key,
    load_engine_bytes,
    read_engine_manifest,
    sha256_bytes,
    timing_cache_path,
)
from deepis_rt.backends.trt.env import (
    EngineEnv,
    cuda_device_index,
    current_engine_env,
    device_scope,
    make_logger,
)
from deepis_rt.backends.trt.profile import EngineProfile, build_mode, version_tuple
from deepis_rt.errors import EngineCacheError, ExportError

__all__ = ["build_engine", "get_engine", "make_progress_monitor"]

log = logging.getLogger(__name__)


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
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    if t.mode == "strongly-typed" and version_tuple(t.env.trt_version)[0] < 11:  # always, from 11 on
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(t.source)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"export | TensorRT could not parse {t.source}: {errors}")
    if network.num_inputs != 1:
        raise ExportError(f"export | {t.source}: a DeepIS graph has one input, this one has {network.num_inputs}")
    input_name = network.get_input(0).name
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, t.workspace_bytes)
    if t.mode == "builder-flag" and t.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    if t.tf32:
        config.set_flag(trt.BuilderFlag.TF32)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)
    trt_profile = builder.create_optimization_profile()
    trt_profile.set_shape(input_name, t.profile.min_shape, t.profile.opt_shape, t.profile.max_shape)
    if config.add_optimization_profile(trt_profile) < 0:
        raise ExportError(f"export | TensorRT rejected the optimisation profile {t.profile.to_dict()} for "
                          f"input {input_name!r} (need min <= opt <= max, rank 5; see the TensorRT log)")

    timing = TimingCache(timing_cache_path(engines_dir, t.env))
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
        "input_name": input_name,
        "build_time_s": round(build_s, 2),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "engine_sha256": sha256_bytes(data),
        "engine_bytes": len(data),
        "timing_cache": timing.path.name,
        "timing_cache_status": timing.status,
    }
    plan_path = engines_dir / f"{t.key}.plan"
    atomic_write(plan_path, data)
    atomic_write(plan_path.with_suffix(".json"), json.dumps(manifest, indent=2).encode())
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
        trt = import_optional("tensorrt", "building TensorRT engines")
        return _build(trt, t, engines_dir, progress)

def make_progress_monitor(trt: Any, show: bool) -> Any:
    """A ``trt.IProgressMonitor`` that shows one tqdm bar per builder phase."""
    from tqdm import tqdm

    class _Progress(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._bars: dict[str, Any] = {}
            self._parents: dict[str, str | None] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            depth = 0
            parent = parent_phase
            while parent is not None and parent in self._bars:
                depth += 1
                parent = self._parents.get(parent)
            self._parents[phase_name] = parent_phase
            self._bars[phase_name] = tqdm(total=num_steps, desc=phase_name, position=depth, leave=False,
                                          disable=not show, file=sys.stderr)

        def step_complete(self, phase_name: str, step: int) -> bool:
            bar = self._bars.get(phase_name)
            if bar is not None:
                bar.update(step + 1 - bar.n)
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            bar = self._bars.pop(phase_name, None)
            self._parents.pop(phase_name, None)
            if bar is not None:
                bar.close()

    return _Progress()
