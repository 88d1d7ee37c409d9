"""Rebuilding a stream's tracker from the tables of an earlier run (restart)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

__all__ = ["replay_tracker", "relink_tracks", "relink_results"]

log = logging.getLogger(__name__)


def replay_tracker(
    tracker: Any,
    committed: list[dict[str, str]],
    cell_rows: list[dict[str, str]],
    synapse_rows: list[dict[str, str]],
) -> dict[int, Any]:
    """Feed ``tracker`` the committed frames' cells and synapses again, in frame order.

    The tracker is deterministic, so this re-issues the same track ids as the earlier
    run; ``on_event`` is switched off meanwhile, so callbacks do not fire for old frames.
    Returns the replayed ``FrameAnalysis`` per frame (track ids filled in).
    """
    from deepis_rt.analysis import Cell, FrameAnalysis, Synapse

    cells_by_frame: dict[int, list[dict[str, str]]] = {}
    for row in cell_rows:
        cells_by_frame.setdefault(int(row["frame"]), []).append(row)
    syn_by_frame: dict[int, list[dict[str, str]]] = {}
    for row in synapse_rows:
        syn_by_frame.setdefault(int(row["frame"]), []).append(row)

    def num(value: str) -> float:
        return float(value) if value not in ("", None) else float("nan")

    on_event, tracker.on_event = tracker.on_event, None
    replayed: dict[int, Any] = {}
    try:
        for frame_row in sorted(committed, key=lambda r: int(r["frame"])):
            if frame_row["status"] != "ok":
                continue
            frame = int(frame_row["frame"])
            rows = cells_by_frame.get(frame, [])
            cells = [
                Cell(cell_id=int(r["cell_id"]), kind=r["kind"], volume_um3=num(r["volume_um3"]),
                     surface_um2=num(r["surface_um2"]), mean_ri=num(r["mean_ri"]),
                     dry_mass_pg=num(r["dry_mass_pg"]), z_um=num(r["z_um"]), y_um=num(r["y_um"]),
                     x_um=num(r["x_um"]))
                for r in rows
            ]
            cell_of_track = {(r["kind"], r["track_id"]): int(r["cell_id"]) for r in rows}
            synapses = []
            for r in syn_by_frame.get(frame, []):
                tcell = cell_of_track.get(("tcell", r["tcell_track"]))
                target = cell_of_track.get(("target", r["target_track"]))
                if tcell is None or target is None:
                    continue
                synapses.append(Synapse(
                    synapse_id=int(r["synapse_id"]), tcell_id=tcell, target_id=target,
                    is_area_um2=num(r["is_area_um2"]), is_mean_ri=num(r["is_mean_ri"]),
                    is_dry_mass_pg=num(r["is_dry_mass_pg"]), is_density_fg_um2=num(r["is_density_fg_um2"]),
                    is_area_err_um2=num(r.get("is_area_err_um2")), quality=r.get("quality") or ""))
            empty = np.zeros((0, 0, 0), np.uint8)
            analysis = FrameAnalysis(labels=empty, cell_labels=empty.astype(np.int32), cells=cells, synapses=synapses)
            tracker.update(analysis, num(frame_row["time_s"]), frame_number=frame)
            replayed[frame] = analysis
    finally:
        tracker.on_event = on_event
    return replayed


def relink_tracks(
    tracker: Any,
    committed: list[dict[str, str]],
    cell_rows: list[dict[str, str]],
    synapse_rows: list[dict[str, str]],
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Track all committed frames again in frame order; the table rows with their track columns renewed.

    Needed after frames recorded ``retry`` were processed by a later run: they reached the tracker
    after frames acquired later. Only ``track_id``, ``tcell_track`` and ``target_track`` change;
    every row is kept. ``tracker`` must be fresh.
    """
    replayed = replay_tracker(tracker, committed, cell_rows, synapse_rows)
    new_track = {(frame, c.cell_id): c.track_id for frame, a in replayed.items() for c in a.cells}
    renamed: dict[tuple[int, str, str], Any] = {}
    cells = []
    for row in cell_rows:
        key = (int(row["frame"]), int(row["cell_id"]))
        track = new_track.get(key)
        if track is not None:
            renamed[(key[0], row["kind"], row["track_id"])] = track
            row = {**row, "track_id": str(track)}
        cells.append(row)
    synapses = []
    for row in synapse_rows:
        frame = int(row["frame"])
        tcell = renamed.get((frame, "tcell", row["tcell_track"]))
        target = renamed.get((frame, "target", row["target_track"]))
        synapses.append({**row, **({"tcell_track": str(tcell)} if tcell is not None else {}),
                         **({"target_track": str(target)} if target is not None else {})})
    return cells, synapses


def _frame_of(row: dict[str, str]) -> int:
    return int(row["frame"])


def relink_results(results: Any, area_threshold_um2: float, on_event: Any = None) -> Any:
    """Re-link the tracks of a results folder in frame order (:func:`relink_tracks`); returns the new tracker.

    Frames recorded ``retry`` by an earlier run and done now were tracked after later frames: the
    tracker is rebuilt from all committed frames in frame order and the track columns of cells.csv /
    synapses.csv are renewed (atomic rewrites).
    """
    from deepis_rt.analysis import SynapseTracker

    tracker = SynapseTracker(area_threshold_um2=area_threshold_um2, on_event=None)
    with results._lock:
        cells, synapses = relink_tracks(tracker, results.committed, results.cells.read(), results.synapses.read())
        # in frame order (frames done late, retried or deferred, were appended after later ones)
        results.rewrite_tables(sorted(cells, key=_frame_of), sorted(synapses, key=_frame_of))
    tracker.on_event = on_event
    log.info("stream: tracks re-linked in frame order after frames that were retried")
    return tracker
