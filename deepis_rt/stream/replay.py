"""Rebuilding a stream's tracker from the tables of an earlier run (restart)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["replay_tracker"]


def replay_tracker(
    tracker: Any,
    committed: list[dict[str, str]],
    cell_rows: list[dict[str, str]],
    synapse_rows: list[dict[str, str]],
) -> None:
    """Feed ``tracker`` the committed frames' cells and synapses again, in frame order.

    The tracker is deterministic, so this re-issues the same track ids as the earlier
    run; ``on_event`` is switched off meanwhile, so callbacks do not fire for old frames.
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
                    is_area_err_um2=num(r.get("is_area_err_um2"))))
            empty = np.zeros((0, 0, 0), np.uint8)
            analysis = FrameAnalysis(labels=empty, cell_labels=empty.astype(np.int32), cells=cells, synapses=synapses)
            tracker.update(analysis, num(frame_row["time_s"]))
    finally:
        tracker.on_event = on_event
