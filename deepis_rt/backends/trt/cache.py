"""The engine cache: the key that names an engine, its manifest, verified reads, and the timing cache.

Engines are stored as ``engines/<key>.plan`` with ``<key>.json`` beside them; the key
(:func:`cache_key`) covers everything an engine is specific to (ONNX bytes, TensorRT version, GPU
model and compute capability *of the device used*, precision, TF32, workspace, profile), and
:func:`load_engine_bytes` checks key and checksum before a byte of the engine reaches TensorRT.

:class:`TimingCache` loads the builder's timing cache beside the engines, attaches it with
``set_timing_cache`` (whose result is checked: a cache from another device or TensorRT is *not*
used and is replaced, never written back unchanged), and after the build merges the new timings
into the file under its lock (:func:`deepis_rt.backends.files.file_lock`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepis_rt.backends.files import atomic_write, file_lock
from deepis_rt.backends.trt.env import EngineEnv
from deepis_rt.backends.trt.profile import EngineProfile
from deepis_rt.errors import EngineCacheError

__all__ = ["ENGINE_FORMAT", "ENGINE_FORMAT_VERSION", "DEFAULT_WORKSPACE_GIB", "EngineBuild", "cache_key",
           "sha256_bytes", "read_engine_manifest", "load_engine_bytes", "timing_cache_path", "TimingCache"]

log = logging.getLogger(__name__)

ENGINE_FORMAT = "deepis-rt-engine"
ENGINE_FORMAT_VERSION = 1
_KEY_VERSION = "deepis-rt-engine-key-v2"
#: the builder's workspace memory pool limit unless asked otherwise
DEFAULT_WORKSPACE_GIB = 4.0


@dataclass(frozen=True)
class EngineBuild:
    """A built (or verified cached) engine: the plan file and its manifest."""

    path: Path
    manifest_path: Path
    manifest: dict[str, Any]
    cached: bool
    #: the verified plan bytes (read and hashed once; pass them on instead of reading the file again)
    data: bytes | None = None

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

def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

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
    digest = sha256_bytes(data)
    if digest != manifest.get("engine_sha256"):
        raise EngineCacheError(f"{where}: checksum mismatch (corrupt or truncated engine file, "
                               f"{len(data)} bytes); it will not be run — rebuild it")
    return data

def timing_cache_path(engines_dir: Path, env: EngineEnv) -> Path:
    tag = hashlib.sha256(f"{env.trt_version}|{env.gpu_name}|{env.compute_capability}".encode()).hexdigest()[:12]
    return engines_dir / f"timing-{tag}.cache"

class TimingCache:
    """The builder's timing cache, kept in one file per TensorRT version and GPU model.

    Parameters
    ----------
    path : path-like
        The cache file (created on :meth:`save`).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.cache: Any = None
        self._config: Any = None
        self._loaded = b""
        #: "loaded", "new" or "rejected: <why>": what happened to the file on disk
        self.status = "new"

    def attach(self, config: Any) -> Any:
        """Create the cache from the file and attach it to ``config`` (an ``IBuilderConfig``).

        A file TensorRT cannot read, or one ``set_timing_cache`` refuses (another device or
        TensorRT version), is not used: the build starts from an empty cache, and :meth:`save`
        replaces the file afterwards.
        """
        blob = b""
        self._config = config
        with file_lock(self.path, f"timing cache | {self.path}"):
            if self.path.is_file():
                blob = self.path.read_bytes()
        cache = None
        if blob:
            try:
                cache = config.create_timing_cache(blob)
            except Exception as exc:  # noqa: BLE001 - a damaged cache only costs build time
                self.status = f"rejected: unreadable ({type(exc).__name__}: {exc})"
            if cache is None and self.status == "new":
                self.status = "rejected: TensorRT could not read it"
            if cache is not None:
                if config.set_timing_cache(cache, False):
                    self.status = "loaded"
                    self.cache, self._loaded = cache, blob
                    return cache
                self.status = "rejected: made on another device or TensorRT version"
        if self.status != "new":
            log.warning("timing cache | %s %s; building with a new one, which will replace it", self.path,
                        self.status)
        cache = config.create_timing_cache(b"")
        if cache is None or not config.set_timing_cache(cache, False):
            raise EngineCacheError(f"timing cache | {self.path}: TensorRT refused a new, empty timing cache")
        self.cache = cache
        return cache

    def save(self) -> None:
        """Merge this build's timings into the file (under the lock) and write it atomically.

        The cache attached to the config is the one the build filled in. Timings another process
        wrote meanwhile are combined into it when compatible; an incompatible file is replaced.
        """
        if self.cache is None:
            return
        with file_lock(self.path, f"timing cache | {self.path}"):
            on_disk = self.path.read_bytes() if self.path.is_file() else b""
            if on_disk and on_disk != self._loaded and self.status == "loaded":
                # another build wrote timings meanwhile: keep them (an incompatible file is replaced)
                other = None
                try:
                    other = self._config.create_timing_cache(on_disk)
                except Exception as exc:  # noqa: BLE001
                    log.debug("timing cache | %s: unreadable now (%s); replacing it", self.path, exc)
                if other is not None and not self.cache.combine(other, False):
                    log.info("timing cache | %s: the file changed to an incompatible cache; replacing it",
                             self.path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, bytes(self.cache.serialize()))
