"""The stored BF16 parity report of a model: where it lives, and what it says about asking for BF16.

The report is measured by ``python -m deepis_rt.bench.precision_parity`` (real BF16 inference
against FP32 on held-out frames) and stored beside the model (``<model file>.bf16-parity.json``)
or in the cache (``<cache>/openvino/parity/<sha256[:16]>.json``). Loading a model in BF16 only
reads it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from deepis_rt.backends.files import default_cache_dir

__all__ = ["BF16_MIN_LABEL_AGREEMENT", "report_paths", "find_parity_report", "warn_if_bf16_disagrees"]

log = logging.getLogger(__name__)

#: BF16 is offered only where its labels agree with FP32's on at least this fraction of voxels.
BF16_MIN_LABEL_AGREEMENT = 0.995


def report_paths(source: Any, cache_dir: str | Path | None) -> list[Path]:
    """Where the report of ``source`` (anything with ``path`` and ``sha256``) may be, in the order looked at."""
    paths = []
    if getattr(source, "path", None) is not None:
        p = Path(source.path)
        paths.append(p.with_name(p.name + ".bf16-parity.json"))  # a sidecar shipped with the model
    if getattr(source, "sha256", None):
        base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        paths.append(base / "openvino" / "parity" / f"{source.sha256[:16]}.json")
    return paths


def find_parity_report(source: Any, cache_dir: str | Path | None = None) -> tuple[Path, dict[str, Any]] | None:
    """The measured BF16 parity report of ``source`` (a model with ``path`` and ``sha256``), if any.

    Looked for beside the model (``<model file>.bf16-parity.json``) and in the cache
    (``<cache>/openvino/parity/<sha256[:16]>.json``); a report of another checkpoint is ignored.
    """
    for path in report_paths(source, cache_dir):
        if not path.is_file():
            continue
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("load | %s: unreadable BF16 parity report (%s); ignored", path, exc)
            continue
        if report.get("emulated"):
            log.warning("load | %s: an emulated BF16 estimate, not a measurement; ignored", path)
            continue
        if report.get("checkpoint_sha256") not in (None, getattr(source, "sha256", None)):
            log.warning("load | %s: BF16 parity report of another checkpoint; ignored", path)
            continue
        return path, report
    return None


def warn_if_bf16_disagrees(source: Any, cache_dir: str | Path | None = None) -> bool:
    """Log a warning when the measured report says BF16 breaks the label-agreement rule.

    Returns True when a report exists and the rule holds, False otherwise (no report, or broken).
    """
    found = find_parity_report(source, cache_dir)
    if found is None:
        log.warning("load | precision 'bf16' asked for %s: no measured BF16 parity report for this model; "
                    "labels may differ from FP32 (python -m deepis_rt.bench.precision_parity measures it)",
                    getattr(source, "path", "this model"))
        return False
    path, report = found
    agreement = float(report.get("summary", {}).get("label_agreement_min", 0.0))
    if agreement < BF16_MIN_LABEL_AGREEMENT:
        log.warning("load | precision 'bf16': label agreement with FP32 measured at %.3f %% (< %.1f %%, %s); "
                    "results differ from FP32 beyond the rule; use precision='fp32' for measurements",
                    100 * agreement, 100 * BF16_MIN_LABEL_AGREEMENT, path)
        return False
    log.info("load | precision 'bf16': label agreement with FP32 measured at %.3f %% (%s)", 100 * agreement, path)
    return True
