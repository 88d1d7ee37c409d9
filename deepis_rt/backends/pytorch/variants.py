"""The named ways the PyTorch runner can run a network: the one list of them, and the choice among them.

Each :class:`TorchVariant` is a set of :class:`~deepis_rt.backends.pytorch.runner.TorchRunner`
keyword options (per device where the best setting differs: ``torch.compile`` autotunes on a GPU,
``mode="default"`` on a CPU, where max-autotune adds minutes of compile for little). A variant is
*exact* when it computes in FP32 (eager, channels-last, CUDA graphs, compiled): its labels equal the
baseline's up to summation order. Every other variant (TF32, FP16, BF16, autocast) must show, in a
measured record, label agreement with FP32 of at least :data:`MIN_LABEL_AGREEMENT` before
:func:`select_variant` may pick it.

Records (:func:`record_variant_results`, :func:`load_records`) live in
``<cache>/torch_variants.json`` (``$DEEPIS_RT_CACHE``, else ``~/.cache/deepis-rt``), keyed like the
bench's batch curves (:func:`deepis_rt.core.records.curve_key`: architecture, device kind, tile,
host) plus the GPU's name, so a record measured on an H100 is not used on another card::

    {key: {"date_utc": ..., "gpu": "NVIDIA H100 80GB HBM3",
           "variants": {"fp16-compile": {"tiles_per_s": {"1": 410.0, "4": 520.0},
                                         "label_agreement": 0.9993, "compile_s": 41.2}, ...}}}

:func:`select_variant` returns the fastest variant (best batch of each) whose record says it is
exact enough, or None when nothing was measured for this model, device and host.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepis_rt.backends.files import default_cache_dir
from deepis_rt.core.files import atomic_write
from deepis_rt.core.records import curve_key
from deepis_rt.errors import ConfigError

__all__ = ["TorchVariant", "TORCH_VARIANTS", "MIN_LABEL_AGREEMENT", "variant", "variants_for", "records_path",
           "record_key", "record_variant_results", "load_records", "select_variant"]

log = logging.getLogger(__name__)

#: a non-exact variant is picked automatically only with at least this label agreement with FP32
#: (the rule BF16 on OpenVINO follows: :data:`deepis_rt.bench.precision_parity.BF16_MIN_LABEL_AGREEMENT`)
MIN_LABEL_AGREEMENT = 0.995

_write_lock = threading.Lock()


@dataclass(frozen=True)
class TorchVariant:
    """One way to run the network with PyTorch.

    Attributes
    ----------
    name : str
        Its name (``fp16-compile``), used in records, bench rows and ``--backend`` options.
    options : mapping
        :class:`TorchRunner` keyword options on every device.
    devices : tuple of str
        ``"cpu"`` and/or ``"cuda"``: where it means something.
    exact : bool
        FP32 arithmetic: labels equal FP32 eager's up to summation order (no parity gate).
    device_options : mapping
        Extra options per device kind, over ``options``.
    """

    name: str
    options: Mapping[str, Any]
    devices: tuple[str, ...]
    exact: bool
    description: str
    device_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def options_for(self, device: str) -> dict[str, Any]:
        """The runner's keyword options on ``device`` (``cpu``, ``cuda`` or ``cuda:N``)."""
        kind = str(device).split(":")[0]
        if kind not in self.devices:
            raise ConfigError(f"torch variant {self.name!r} runs on {' and '.join(self.devices)}, not on {device}")
        return {**self.options, **self.device_options.get(kind, {})}

    @property
    def compiled(self) -> bool:
        return any("compile_mode" in o for o in (self.options, *self.device_options.values()))


_GPU, _BOTH = ("cuda",), ("cpu", "cuda")
_COMPILE = {"cuda": {"compile_mode": "max-autotune"}, "cpu": {"compile_mode": "default"}}
#: with our own CUDA graph cache, Inductor must not capture graphs itself
_COMPILE_NO_GRAPHS = {"cuda": {"compile_mode": "max-autotune-no-cudagraphs"}}

#: Every variant, cheapest to set up first within each precision.
TORCH_VARIANTS: tuple[TorchVariant, ...] = (
    TorchVariant("fp32", {}, _BOTH, True, "FP32 eager (the baseline; TF32 off on a GPU)"),
    TorchVariant("fp32-channels-last", {"channels_last": True}, _BOTH, True, "FP32, channels_last_3d memory format"),
    TorchVariant("fp32-cuda-graphs", {"cuda_graphs": True}, _GPU, True, "FP32 replayed as CUDA graphs"),
    TorchVariant("fp32-compile", {}, _BOTH, True, "FP32 through torch.compile (Inductor; max-autotune on a GPU)",
                 _COMPILE),
    TorchVariant("tf32", {"allow_tf32": True}, _GPU, False, "FP32 storage, TF32 tensor-core convolutions"),
    TorchVariant("fp16", {"precision": "fp16"}, _GPU, False, "FP16 weights and activations"),
    TorchVariant("fp16-autocast", {"precision": "fp16", "autocast": True}, _GPU, False,
                 "FP32 weights, autocast to FP16 (reductions in FP32)"),
    TorchVariant("fp16-channels-last", {"precision": "fp16", "channels_last": True}, _GPU, False,
                 "FP16, channels_last_3d"),
    TorchVariant("fp16-cuda-graphs", {"precision": "fp16", "channels_last": True, "cuda_graphs": True}, _GPU, False,
                 "FP16, channels_last_3d, replayed as CUDA graphs"),
    TorchVariant("fp16-compile", {"precision": "fp16", "channels_last": True}, _GPU, False,
                 "FP16, channels_last_3d, torch.compile max-autotune (Triton kernels, CUDA graphs)", _COMPILE),
    TorchVariant("fp16-compile-cuda-graphs", {"precision": "fp16", "channels_last": True, "cuda_graphs": True}, _GPU,
                 False, "FP16, channels_last_3d, torch.compile max-autotune without its graphs, in our CUDA graphs",
                 _COMPILE_NO_GRAPHS),
    TorchVariant("bf16", {"precision": "bf16"}, _BOTH, False, "BF16 weights and activations"),
    TorchVariant("bf16-autocast", {"precision": "bf16", "autocast": True}, _BOTH, False,
                 "FP32 weights, autocast to BF16 (reductions in FP32)"),
    TorchVariant("bf16-channels-last", {"precision": "bf16", "channels_last": True}, _BOTH, False,
                 "BF16, channels_last_3d"),
    TorchVariant("bf16-cuda-graphs", {"precision": "bf16", "channels_last": True, "cuda_graphs": True}, _GPU, False,
                 "BF16, channels_last_3d, replayed as CUDA graphs"),
    TorchVariant("bf16-compile", {"precision": "bf16", "channels_last": True}, _BOTH, False,
                 "BF16, channels_last_3d, torch.compile (max-autotune on a GPU)", _COMPILE),
)
_BY_NAME = {v.name: v for v in TORCH_VARIANTS}


def variant(name: str) -> TorchVariant:
    """The variant called ``name``; a clear error lists the others."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ConfigError(f"unknown torch variant {name!r}; choose from {', '.join(_BY_NAME)}") from None


def variants_for(device: str, names: Iterable[str] | None = None, compiled: bool = True) -> list[TorchVariant]:
    """The variants that mean something on ``device`` (in list order), optionally only ``names``,
    optionally without the compiled ones."""
    kind = str(device).split(":")[0]
    chosen = [variant(n) for n in names] if names is not None else list(TORCH_VARIANTS)
    return [v for v in chosen if kind in v.devices and (compiled or not v.compiled)]


# -- measured records and the choice ---------------------------------------------------------------

def records_path(cache_dir: str | Path | None = None) -> Path:
    """``<cache>/torch_variants.json``."""
    return Path(cache_dir if cache_dir is not None else default_cache_dir()) / "torch_variants.json"


def record_key(model: Mapping[str, Any], device: str, tile_zyx: Any, gpu_name: str | None = None,
               host: str | None = None) -> str:
    """The bench's batch-curve key (architecture, backend ``torch``, device kind, tile, host) plus the GPU."""
    return curve_key(model, "torch", "variants", device, tile_zyx, host) + "|" + (gpu_name or "-")


def record_variant_results(key: str, results: Iterable[Mapping[str, Any]], gpu_name: str | None = None,
                           date_utc: str | None = None, cache_dir: str | Path | None = None) -> Path | None:
    """Store measured variants under ``key`` (merged with what was stored before).

    ``results``: one mapping per variant with ``variant`` (its name), ``status`` (only ``"ok"`` is
    stored), ``tiles_per_s`` ({batch: tiles/s}), ``label_agreement`` (with FP32 on the same tiles)
    and optionally ``compile_s``.
    """
    new: dict[str, Any] = {}
    for r in results:
        if r.get("status") != "ok" or not r.get("tiles_per_s"):
            continue
        variant(str(r["variant"]))  # a record names a known variant
        new[str(r["variant"])] = {"tiles_per_s": {str(int(b)): float(v) for b, v in r["tiles_per_s"].items()},
                                  "label_agreement": (None if r.get("label_agreement") is None
                                                      else float(r["label_agreement"])),
                                  "compile_s": r.get("compile_s")}
    if not new:
        return None
    path = records_path(cache_dir)
    with _write_lock:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            old = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, ValueError):
            old = {}
        entry = old.get(key, {})
        entry["variants"] = {**entry.get("variants", {}), **new}
        entry.update({"gpu": gpu_name, "date_utc": date_utc})
        old[key] = entry
        atomic_write(path, (json.dumps(old, indent=2, sort_keys=True) + "\n").encode())
    return path


def load_records(cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Every stored record ({} when none or unreadable, with a warning)."""
    path = records_path(cache_dir)
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as exc:
        log.warning("torch variants | %s: unreadable (%s); no measured variant is used", path, exc)
        return {}


def select_variant(records: Mapping[str, Any], key: str,
                   min_label_agreement: float = MIN_LABEL_AGREEMENT) -> TorchVariant | None:
    """The fastest measured variant under ``key`` that is exact enough, or None.

    A variant qualifies when its record's label agreement with FP32 is at least
    ``min_label_agreement``, or when it is exact (FP32 arithmetic) and its record has no agreement
    (a measured disagreement excludes even an exact variant: something is wrong); its speed is
    its best batch's tiles/s. Unknown names in a record (written by another version) are ignored.
    """
    entry = records.get(key) or {}
    best: tuple[float, TorchVariant] | None = None
    for name, rec in (entry.get("variants") or {}).items():
        v = _BY_NAME.get(name)
        if v is None:
            continue
        agreement = rec.get("label_agreement")
        measured_ok = agreement is not None and float(agreement) >= min_label_agreement
        if not (measured_ok or (v.exact and agreement is None)):
            log.debug("torch variants | %s: label agreement %s < %s; not picked", name, agreement, min_label_agreement)
            continue
        speeds = [float(t) for t in (rec.get("tiles_per_s") or {}).values() if float(t) > 0]
        if speeds and (best is None or max(speeds) > best[0]):
            best = (max(speeds), v)
    return best[1] if best else None
