"""Continuing a results folder of an earlier run: what it recorded, and whether it is this source's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["read_previous_summary", "check_same_source"]


def read_previous_summary(root: Path) -> dict[str, Any]:
    """The ``summary.json`` of an earlier run in ``root`` ({} when there is none or it is unreadable)."""
    try:
        return json.loads((Path(root) / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def check_same_source(root: Path, source: Path | None, previous: dict[str, Any], check: bool) -> None:
    """Refuse to continue a results folder made from another source folder: its frames count as
    done by file name, so the new folder's frames of the same names would be skipped."""
    from deepis_rt.errors import ConfigError

    recorded = previous.get("source_path")
    if source is None or recorded is None or not check:
        return
    if not any(previous.get(k) for k in ("frames_ok", "frames_failed", "frames_retry")):
        return
    here = str(source.resolve())
    if recorded != here:
        raise ConfigError(
            f"stream | {root}: holds the results of {recorded}, not of {here}; continuing it "
            "would count frames of the same names as done and skip them: give another --out (or, for the "
            "same frames moved to a new folder, --allow-other-source)")
