"""How many frames a stream infers together: single frames while it keeps up, larger batches
while frames wait, sized from the throughput ``deepis-rt bench`` measured per batch size.

``deepis-rt bench`` records, for each model x backend x precision x device on this host, the
tiles per second it measured at every batch size it ran (its *batch curve*) in
``<cache>/batch_curves.json`` (``$DEEPIS_RT_CACHE``, else ``~/.cache/deepis-rt``). A stream looks
its own model and backend up there. With ``n`` frames waiting it infers, among the measured batch
sizes that ``n`` frames can fill, the one with the highest throughput: one frame when one waits,
never more than the backend's best (a larger batch that measured slower is never chosen).

Without a measured curve: as many frames as wait, up to ``max_batch`` when one is set, else single
frames on a CPU (the CPU backends gain nothing from batching frames; OpenVINO runs a batch as one
request per tile anyway) and up to 4 frames on a GPU or a remote server, where a batch amortises
the per-call cost. ``max_batch`` also caps a measured curve.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deepis_rt.core.records import curve_key

__all__ = ["BatchPlan", "curve_key", "record_curves", "lookup_curve", "curves_path", "FALLBACK_GPU_BATCH"]

log = logging.getLogger(__name__)

#: frames batched while behind on a GPU or a remote server when no curve was measured
FALLBACK_GPU_BATCH = 4

_write_lock = threading.Lock()


def curves_path(cache_dir: str | Path | None = None) -> Path:
    """``<cache>/batch_curves.json``."""
    from deepis_rt.runtime.source import default_cache_dir

    return Path(cache_dir if cache_dir is not None else default_cache_dir()) / "batch_curves.json"


def record_curves(report: Mapping[str, Any], cache_dir: str | Path | None = None) -> Path | None:
    """Store the batch curves of a ``deepis-rt bench`` report (rows with status ok) for streams."""
    path = curves_path(cache_dir)
    new: dict[str, dict[str, Any]] = {}
    for model in report.get("models", []):
        info = model.get("model", {})
        for row in model.get("rows", []):
            if row.get("status") != "ok" or not row.get("throughput_fps"):
                continue
            key = curve_key(info, row["backend"], row.get("precision"), row.get("device"), info.get("tile_zyx"))
            entry = new.setdefault(key, {"tiles_per_s": {}, "date_utc": report.get("date_utc"),
                                         "command": report.get("command")})
            entry["tiles_per_s"][str(int(row["batch"]))] = float(row["throughput_fps"])
    if not new:
        return None
    with _write_lock:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            old = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, ValueError):
            old = {}
        for key, entry in new.items():  # batch sizes measured before and not now are kept
            merged = {**old.get(key, {}).get("tiles_per_s", {}), **entry["tiles_per_s"]}
            old[key] = {**entry, "tiles_per_s": merged}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(old, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    return path


def lookup_curve(segmenter: Any, cache_dir: str | Path | None = None) -> dict[int, float] | None:
    """The measured batch curve of ``segmenter``'s model and backend on this host, if any."""
    path = curves_path(cache_dir)
    try:
        records = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as exc:
        log.warning("stream | %s: unreadable (%s); batch sizes fall back to the defaults", path, exc)
        return None
    describe = getattr(getattr(segmenter, "runner", None), "describe", None)
    precision = (describe() if callable(describe) else {}).get("precision")
    key = curve_key(getattr(segmenter, "model_info", {}) or {}, getattr(segmenter, "backend", "?"), precision,
                    getattr(segmenter, "device", None), getattr(segmenter, "tile_zyx", None))
    entry = records.get(key)
    if not entry:
        return None
    return {int(b): float(v) for b, v in entry.get("tiles_per_s", {}).items()}


class BatchPlan:
    """The batch size for a number of waiting frames (see the module docstring).

    Parameters
    ----------
    curve : mapping of int to float, optional
        Tiles per second measured per batch size; None: the fallback.
    device : str
        ``cpu`` (fallback 1) or anything else (fallback :data:`FALLBACK_GPU_BATCH`).
    max_batch : int, optional
        A cap set by the user.
    """

    def __init__(self, curve: Mapping[int, float] | None, device: str = "cpu", max_batch: int | None = None) -> None:
        self.curve = {int(b): float(v) for b, v in (curve or {}).items() if int(b) >= 1 and float(v) > 0}
        self.source = "measured" if self.curve else "fallback"
        if not self.curve:  # without a measurement: as many frames as wait, up to the cap or the default
            top = max_batch if max_batch is not None else 1 if str(device).startswith("cpu") else FALLBACK_GPU_BATCH
            self.curve = {b: float(b) for b in range(1, top + 1)}
        if max_batch is not None:
            self.curve = {b: v for b, v in self.curve.items() if b <= max_batch} or {1: 1.0}
        self.best = max(sorted(self.curve), key=lambda b: self.curve[b])

    @classmethod
    def for_segmenter(cls, segmenter: Any, curve: Mapping[int, float] | None = None,
                      max_batch: int | None = None) -> BatchPlan:
        """The plan of ``segmenter``: ``curve`` if given, else the measured one, else the fallback."""
        if curve is None:
            curve = lookup_curve(segmenter)
        return cls(curve, str(getattr(segmenter, "device", "cpu")), max_batch)

    def choose(self, waiting: int) -> int:
        """The batch size for ``waiting`` frames: the fastest measured size they can fill."""
        fill = [b for b in self.curve if b <= max(1, waiting)]
        if not fill:
            return 1
        return max(sorted(fill), key=lambda b: self.curve[b])

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "best_batch": self.best,
                "tiles_per_s": {str(b): round(v, 4) for b, v in sorted(self.curve.items())}}
