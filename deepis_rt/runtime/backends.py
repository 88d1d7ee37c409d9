"""Choosing a backend for a model: the candidates of :mod:`deepis_rt.backends.registry`, fastest first.

Every backend in ``auto`` is exact (FP32, or FP16 on GPUs where the export's parity allows it);
BF16 on a CPU changes the numbers, so it runs only when asked for (``precision="bf16"``, OpenVINO
on a CPU that has it) and never comes from ``auto`` alone.

Each candidate's probe says whether it can run here and, if not, why; ``auto`` takes the first that
probes well *and* activates, and the report says why every faster one was skipped. The model
reaches the backends as lazy loaders (:class:`SourceFiles`): a checkpoint is exported to ONNX only
when a runner that needs the graph activates.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepis_rt.backends import registry
from deepis_rt.backends.base import Runner
from deepis_rt.backends.files import default_cache_dir
from deepis_rt.backends.spec import RunnerRequest
from deepis_rt.errors import BackendError, ConfigError, MissingDependencyError
from deepis_rt.runtime.source import ModelSource

__all__ = ["BackendChoice", "SourceFiles", "select_runner", "onnx_for_checkpoint", "gpu_onnx_for_checkpoint"]

log = logging.getLogger(__name__)


@dataclass
class BackendChoice:
    """One line of the selection report."""

    backend: str
    status: str  # "chosen", "skipped", "failed", "not needed"
    reason: str

    def __str__(self) -> str:
        return f"{self.backend}: {self.status}" + (f" ({self.reason})" if self.reason else "")


def onnx_for_checkpoint(source: ModelSource, cache_dir: str | Path | None = None) -> Path:
    """The FP32 ONNX of a checkpoint, exported once into a cache folder keyed by its sha256."""
    if source.onnx_fp32 is not None:
        return source.onnx_fp32
    if source.checkpoint is None:
        raise BackendError(f"load | {source.path}: no ONNX file and no checkpoint to export one from")
    from deepis_rt.export import export_onnx  # torch.onnx: heavy, and needed only to export

    key = (source.sha256 or "unknown")[:16]
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "onnx"
    path = folder / key / "model.onnx"
    if not path.is_file():
        ckpt = source.checkpoint
        log.info("load | exporting %s to ONNX (cached at %s)", source.path, path)
        meta = {"meta": dict(source.meta), "config": ckpt.config.to_dict(), "preset": ckpt.preset,
                "checkpoint_sha256": source.sha256}
        export_onnx(ckpt.build(), path, tuple(ckpt.tile_zyx), meta=meta)
    else:
        log.info("load | using the cached ONNX export %s", path)
    source.onnx_fp32 = path
    return path


def gpu_onnx_for_checkpoint(source: ModelSource, cache_dir: str | Path | None = None) -> None:
    """FP32 and FP16 ONNX of a checkpoint for the GPU backends, via the export pipeline (cached).

    ``deepis_rt.export.export_model`` writes both graphs with a parity check into
    ``<cache>/export/<sha256[:16]>/``; when it fails, the FP32 graph alone is used.
    """
    if source.onnx_fp16 is not None or source.checkpoint is None:
        return
    key = (source.sha256 or "unknown")[:16]
    folder = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "export"
    try:
        from deepis_rt.export.pipeline import export_model, read_manifest  # heavy, needed only to export

        if (folder / key / "manifest.json").is_file():
            read_manifest(folder / key)  # verifies the checksums of the cached files
            fp32, fp16 = folder / key / f"{key}.fp32.onnx", folder / key / f"{key}.fp16.onnx"
        else:
            result = export_model(source.checkpoint, out_dir=folder, name=key, trt=False)
            fp32, fp16 = result.onnx_fp32, result.onnx_fp16
        source.onnx_fp32 = fp32 if fp32 and Path(fp32).is_file() else source.onnx_fp32
        source.onnx_fp16 = fp16 if fp16 and Path(fp16).is_file() else None
    except Exception as exc:  # the FP32 graph still works
        log.warning("load | FP16 export failed (%s: %s); using FP32", type(exc).__name__, exc)
        onnx_for_checkpoint(source, cache_dir)


class SourceFiles:
    """A :class:`ModelSource` as the lazy loaders a backend factory takes
    (:class:`~deepis_rt.backends.spec.ModelFiles`); graphs are exported into ``cache_dir`` on first use."""

    def __init__(self, source: ModelSource, cache_dir: str | Path | None = None) -> None:
        self.source = source
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None

    @property
    def path(self) -> Path:
        return self.source.path

    @property
    def kind(self) -> str:
        return self.source.kind

    @property
    def sha256(self) -> str | None:
        return self.source.sha256

    @property
    def engine(self) -> Path | None:
        return self.source.engine

    @property
    def has_network(self) -> bool:
        return self.source.checkpoint is not None

    @property
    def has_onnx(self) -> bool:
        return self.source.has_onnx

    @property
    def tile_zyx(self) -> tuple[int, int, int]:
        return self.source.tile_zyx

    def module(self) -> Any:
        if self.source.checkpoint is None:
            raise BackendError(f"load | {self.source.path}: no PyTorch checkpoint to build the network from")
        return self.source.checkpoint.build()

    def onnx_fp32(self) -> Path:
        return onnx_for_checkpoint(self.source, self.cache_dir)

    def onnx_fp16(self) -> Path | None:
        gpu_onnx_for_checkpoint(self.source, self.cache_dir)
        return self.source.onnx_fp16


def select_runner(
    source: ModelSource,
    backend: str = "auto",
    device: str | None = None,
    cache_dir: str | Path | None = None,
    engines_dir: str | Path = "engines",
    **options: Any,
) -> tuple[Runner, list[BackendChoice]]:
    """The first backend of ``backend``'s candidates that probes well and activates.

    Parameters
    ----------
    backend : str
        ``"auto"``, a family (``"torch"``), a backend or an alias (see
        :func:`deepis_rt.backends.registry.choices`).
    **options
        ``precision`` and ``batch_size`` of the request; the rest go to the runner.

    Returns
    -------
    runner : Runner
        Active.
    report : list of BackendChoice
        Every candidate considered, in order, with why it was skipped or failed.

    Raises
    ------
    ConfigError
        Unknown backend name.
    BackendError
        No candidate works here (the message lists why each was rejected). When only one backend
        was a candidate and it failed to start, the error has the type of its failure (e.g. a
        transient :class:`~deepis_rt.errors.BackendUnavailableError`).
    """
    if backend not in registry.choices():
        raise ConfigError(f"load | unknown backend {backend!r}; choose one of {sorted(registry.choices())}")
    files = SourceFiles(source, cache_dir)
    precision = options.pop("precision", None)
    batch_size = int(options.pop("batch_size", 1))
    report: list[BackendChoice] = []
    last_failure: BaseException | None = None
    names = registry.candidates(backend)
    for name in names:
        request = RunnerRequest(model=files, device=device, precision=precision, batch_size=batch_size,
                                engines_dir=Path(engines_dir), cache_dir=files.cache_dir, options=dict(options))
        why = registry.unavailable_reason(name, request)
        if why:
            report.append(BackendChoice(name, "skipped", why))
            continue
        try:
            runner = registry.make_runner(name, request)
            runner.activate()
        except (BackendError, MissingDependencyError, ConfigError, OSError) as exc:
            report.append(BackendChoice(name, "failed", str(exc)))
            log.warning("load | backend %s could not start: %s", name, exc)
            last_failure = exc
            continue
        chosen = BackendChoice(name, "chosen", "fastest available" if backend == "auto" else f"backend={backend!r}")
        report.append(chosen)
        log.info("load | backend %s chosen; %s", name,
                 "; ".join(str(c) for c in report[:-1]) or "no faster backend was considered")
        return runner, report
    lines = "\n  ".join(str(c) for c in report)
    message = f"load | no backend can run {source.path} here (backend={backend!r}):\n  {lines}"
    if len(names) == 1 and last_failure is not None:
        try:
            raise type(last_failure)(message) from last_failure
        except TypeError:  # an error type with another constructor
            pass
    raise BackendError(message) from last_failure
