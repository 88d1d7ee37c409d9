"""Online tracking of cells and synapses across frames.

How it works (online, stable ids)
---------------------------------
Cells are linked by their centroids (um) with laptrack's LAP tracker
(Jaqaman et al. 2008: frame-to-frame linking, then gap closing), CAR-T cells
and target cells separately. At every :meth:`SynapseTracker.update` the LAP
problem is re-solved over a sliding window of the last ``window_frames``
frames; links between detections that already carry a track id are passed to
laptrack as known edges, so history is never rewritten. A new detection takes
the track id of the detection laptrack links it to (possibly across up to
``max_gap_frames`` missing frames), otherwise a fresh id. Ids once issued never
change.

A synapse's identity is the pair (CAR-T track, target track). Events:
``formed`` (first contact of the pair), ``lost`` (the pair was in contact in
the previous frame and is not now), ``re-formed`` (contact again after a loss),
``area_threshold_crossed`` (IS area crossed ``area_threshold_um2``, up or down).
A cell missing for a frame (gap-closed) therefore shows as lost + re-formed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from deepis_rt.analysis.frame import Cell, FrameAnalysis, Synapse
from deepis_rt.analysis.kinetics import MIN_POINTS, KineticFit, fit_saturation
from deepis_rt.analysis.quality import (
    AXIAL_CONTACT,
    CELL_AT_EDGE,
    FAINT_CELL,
    FLIPS_DISAGREE,
    NEAR_TILE_SEAM,
    RI_OUT_OF_RANGE,
    VOXEL_SIZE_OUT_OF_RANGE,
    join_reasons,
    split_reasons,
)
from deepis_rt.errors import ConfigError, InputError

log = logging.getLogger(__name__)

__all__ = ["SynapseEvent", "TrackedFrame", "SynapseHistory", "SynapseSummary", "SynapseTracker"]

EVENT_KINDS = ("formed", "lost", "re-formed", "area_threshold_crossed")
#: a synapse in contact from the tracker's first frame formed before it, at most this many observed
#: durations earlier as far as the kinetics fit looks (its errors then say how well tau_half is known)
UNOBSERVED_ONSET_SPANS = 10.0
#: a first area within this many of its sigmas of zero says the contact has just formed (the area
#: rises from zero at the onset), even when no frame without it came before
JUST_FORMED_SIGMAS = 2.0
#: reasons that take a point out of the kinetic fit (no number says how far off it is); a point whose
#: flips disagree stays in, weighted by its widened ``is_area_err_um2``
EXCLUDING_REASONS = frozenset({RI_OUT_OF_RANGE, VOXEL_SIZE_OUT_OF_RANGE, CELL_AT_EDGE, NEAR_TILE_SEAM, FAINT_CELL,
                               AXIAL_CONTACT})


@dataclass(frozen=True)
class SynapseEvent:
    """Something that happened to a synapse (CAR-T track, target track) at a frame."""

    kind: str  # one of EVENT_KINDS
    frame: int
    time_s: float
    tcell_track: int
    target_track: int
    is_area_um2: float
    direction: str | None = None  # "up" | "down" for area_threshold_crossed
    threshold_um2: float | None = None
    #: which model's results raised it, in a stream: "main", or "live" for a stream's live model
    model: str | None = None


@dataclass
class TrackedFrame:
    """One frame after tracking: the analysis with track ids filled in, and its events."""

    frame: int
    time_s: float
    analysis: FrameAnalysis
    cell_tracks: dict[int, int] = field(default_factory=dict)  # cell_id -> track_id
    events: list[SynapseEvent] = field(default_factory=list)

    @property
    def cells(self) -> list[Cell]:
        return self.analysis.cells

    @property
    def synapses(self) -> list[Synapse]:
        return self.analysis.synapses


@dataclass
class SynapseHistory:
    """Time course of one synapse (only frames where it exists)."""

    tcell_track: int
    target_track: int
    frame: list[int] = field(default_factory=list)
    time_s: list[float] = field(default_factory=list)
    is_area_um2: list[float] = field(default_factory=list)
    is_area_err_um2: list[float] = field(default_factory=list)
    quality: list[str] = field(default_factory=list)  # per observation: "ok", reasons, or "" (not assessed)
    is_dry_mass_pg: list[float] = field(default_factory=list)
    is_density_fg_um2: list[float] = field(default_factory=list)
    tcell_volume_um3: list[float] = field(default_factory=list)
    target_volume_um3: list[float] = field(default_factory=list)
    tcell_centroid_um: list[tuple[float, float, float]] = field(default_factory=list)

    @property
    def onset_s(self) -> float:
        return self.time_s[0] if self.time_s else math.nan


@dataclass
class SynapseSummary:
    """Per-synapse kinetics: onset, duration, saturation fits of IS area and displacement."""

    tcell_track: int
    target_track: int
    onset_s: float
    duration_s: float
    n_frames: int
    max_is_area_um2: float
    area_fit: KineticFit
    displacement_fit: KineticFit
    #: False when the fitted contact was present from the tracker's first frame with an area clearly
    #: above zero: its onset is then not observed, and the area fit looked for it further back
    onset_observed: bool = True
    #: contacts of this pair: a separation of more frames than the tracker's ``max_gap_frames`` starts a
    #: new one (a shorter dropout does not)
    episodes: int = 1
    #: first frame in contact of the contact the fits describe (the longest; ``onset_s`` when one)
    fit_onset_s: float = math.nan
    #: where that contact's onset lies: (last frame without it, ``fit_onset_s``); the first is None
    #: when the tracker saw no frame before it (onset not observed)
    onset_interval_s: tuple[float | None, float] = (None, math.nan)
    #: reasons of the fitted contact's frames (``"ok"`` when none; see :mod:`deepis_rt.analysis.quality`)
    quality: str = "ok"
    #: frames left out of the area fit for their quality, and what the fit did with flagged frames
    fit_excluded_frames: list[int] = field(default_factory=list)
    fit_flagged: str = "none flagged"

    def to_dict(self) -> dict:
        """JSON-safe dict for ``summary.json`` (NaN becomes None)."""

        def clean(v: float) -> float | None:
            return v if math.isfinite(v) else None

        return {
            "tcell_track": self.tcell_track,
            "target_track": self.target_track,
            "onset_s": clean(self.onset_s),
            "onset_observed": self.onset_observed,
            "episodes": self.episodes,
            "fit_onset_s": clean(self.fit_onset_s),
            "onset_interval_s": [None if self.onset_interval_s[0] is None else clean(self.onset_interval_s[0]),
                                 clean(self.onset_interval_s[1])],
            "quality": self.quality,
            "fit_excluded_frames": list(self.fit_excluded_frames),
            "fit_flagged": self.fit_flagged,
            "duration_s": clean(self.duration_s),
            "n_frames": self.n_frames,
            "max_is_area_um2": clean(self.max_is_area_um2),
            "A_max_um2": clean(self.area_fit.a_max),
            "A_max_err_um2": clean(self.area_fit.a_max_err),
            "tau_half_s": clean(self.area_fit.tau_half_s),
            "tau_half_err_s": clean(self.area_fit.tau_half_err_s),
            "r_squared": clean(self.area_fit.r_squared),
            "area_fit": self.area_fit.to_dict(),
            "displacement_fit": self.displacement_fit.to_dict(),
        }


@dataclass
class _WindowFrame:
    coords: dict[str, np.ndarray]  # kind -> (n, 3) centroids in um
    ids: dict[str, np.ndarray]  # kind -> (n,) track ids


def _as_analysis(frame: object) -> FrameAnalysis:
    if isinstance(frame, FrameAnalysis):
        return frame
    analysis = getattr(frame, "analysis", None)
    if isinstance(analysis, FrameAnalysis):
        return analysis
    if hasattr(frame, "analysis") and analysis is None:
        raise InputError(
            f"tracker | {type(frame).__name__}.analysis is None (the analysis failed or was switched "
            "off for this frame); skip the frame or run deepis_rt.analysis.analyze() on its distance map"
        )
    raise InputError(
        f"tracker | got {type(frame).__name__}: expected a FrameAnalysis or an object with an "
        "'.analysis' FrameAnalysis (a FrameResult); run deepis_rt.analysis.analyze() first"
    )


class SynapseTracker:
    """Link cells and synapses across frames; emit events; fit kinetics.

    Parameters
    ----------
    max_link_distance_um : float
        Largest centroid displacement (um) linked between consecutive frames
        (and across a gap).
    max_gap_frames : int
        Missing frames bridged by gap closing (>= 1).
    window_frames : int
        Frames re-solved by the LAP at each update (> max_gap_frames + 1).
    area_threshold_um2 : float, optional
        Emit ``area_threshold_crossed`` when the IS area crosses it.
    on_event : callable, optional
        Called with each :class:`SynapseEvent` as it happens.
    """

    def __init__(
        self,
        max_link_distance_um: float = 8.0,
        max_gap_frames: int = 2,
        window_frames: int = 8,
        area_threshold_um2: float | None = None,
        on_event: Callable[[SynapseEvent], None] | None = None,
    ) -> None:
        if not (max_link_distance_um > 0):
            raise ConfigError(f"tracker | max_link_distance_um={max_link_distance_um!r}: must be > 0")
        if int(max_gap_frames) < 1:
            raise ConfigError(f"tracker | max_gap_frames={max_gap_frames!r}: must be >= 1")
        if int(window_frames) < int(max_gap_frames) + 2:
            raise ConfigError(
                f"tracker | window_frames={window_frames!r}: must be at least max_gap_frames + 2 "
                f"= {int(max_gap_frames) + 2}"
            )
        self.max_link_distance_um = float(max_link_distance_um)
        self.max_gap_frames = int(max_gap_frames)
        self.window_frames = int(window_frames)
        self.area_threshold_um2 = area_threshold_um2
        self.on_event = on_event
        self._window: list[_WindowFrame] = []
        self._next_id = 1
        self._frame = 0
        self._frame_times_s: list[float] = []  # every frame's time: when a synapse may have formed
        self._active: set[tuple[int, int]] = set()
        self._seen: set[tuple[int, int]] = set()
        self._above: dict[tuple[int, int], bool] = {}
        self._histories: dict[tuple[int, int], SynapseHistory] = {}
        self._lap = None

    # -- linking -----------------------------------------------------------------------------
    def _laptrack(self):
        if self._lap is None:
            from laptrack import LapTrack

            cutoff = self.max_link_distance_um**2
            self._lap = LapTrack(
                metric="sqeuclidean",
                cutoff=cutoff,
                gap_closing_metric="sqeuclidean",
                gap_closing_cutoff=cutoff,
                gap_closing_max_frame_count=self.max_gap_frames + 1,
                splitting_cutoff=False,
                merging_cutoff=False,
                # laptrack's default alternative costs (1.05 x the 90th-percentile link cost) make
                # nearly static cells start new tracks after a small extra step; here the
                # cutoff alone gates a link, so any link within it beats ending + starting tracks
                track_start_cost=cutoff,
                track_end_cost=cutoff,
                segment_start_cost=cutoff,
                segment_end_cost=cutoff,
            )
        return self._lap

    def _new_id(self) -> int:
        tid = self._next_id
        self._next_id += 1
        return tid

    def _assign(self, kind: str, coords: np.ndarray) -> np.ndarray:
        """Track ids for the newest frame's detections of one kind."""
        ids = np.full(len(coords), -1, dtype=np.int64)
        if len(coords) == 0:
            return ids
        past = self._window[-(self.window_frames - 1) :] if self.window_frames > 1 else []
        if any(len(w.coords[kind]) for w in past):
            coord_list = [w.coords[kind] for w in past] + [coords]
            known: list[tuple[tuple[int, int], tuple[int, int]]] = []
            last_seen: dict[int, tuple[int, int]] = {}
            for f, w in enumerate(past):
                for k, tid in enumerate(w.ids[kind]):
                    if tid in last_seen:
                        known.append((last_seen[tid], (f, k)))
                    last_seen[int(tid)] = (f, k)
            graph = self._laptrack().predict(coord_list, connected_edges=known or None)
            newest = len(past)
            used: set[int] = set()
            for k in range(len(coords)):
                node = (newest, k)
                if node not in graph:
                    continue
                preds = [p for p in graph.predecessors(node) if p[0] < newest]
                if not preds:
                    continue
                f, idx = max(preds)
                tid = int(past[f].ids[kind][idx])
                if tid not in used:
                    ids[k] = tid
                    used.add(tid)
        for k in range(len(coords)):
            if ids[k] < 0:
                ids[k] = self._new_id()
        return ids

    # -- public API -------------------------------------------------------------------------
    def update(self, frame: object, time_s: float | None = None, frame_number: int | None = None) -> TrackedFrame:
        """Add one frame; fill ``track_id`` / ``tcell_track`` / ``target_track`` in place.

        Parameters
        ----------
        frame : FrameAnalysis or object with ``.analysis``
            The analysed frame (e.g. the runtime's ``FrameResult``).
        time_s : float, optional
            Acquisition time; default ``frame.time_s`` if present, else the frame index.
        frame_number : int, optional
            The frame's number as its source counts it (a stream's ``frame``, which skips frames
            that failed): recorded in the events and histories. Default: the updates counted from 0.

        Returns
        -------
        TrackedFrame
            With the events of this frame (also sent to ``on_event``).
        """
        analysis = _as_analysis(frame)
        if time_s is None:
            time_s = getattr(frame, "time_s", None)
        t = float(self._frame if time_s is None else time_s)
        number = self._frame if frame_number is None else int(frame_number)
        coords: dict[str, np.ndarray] = {}
        ids: dict[str, np.ndarray] = {}
        by_kind: dict[str, list[Cell]] = {"tcell": [], "target": []}
        for c in analysis.cells:
            by_kind.setdefault(c.kind, []).append(c)
        cell_tracks: dict[int, int] = {}
        for kind, cells in by_kind.items():
            xyz = np.array([[c.z_um, c.y_um, c.x_um] for c in cells], dtype=float).reshape(-1, 3)
            kind_ids = self._assign(kind, xyz)
            for c, tid in zip(cells, kind_ids, strict=True):
                c.track_id = int(tid)
                cell_tracks[c.cell_id] = int(tid)
            coords[kind], ids[kind] = xyz, kind_ids
        for kind in ("tcell", "target"):
            coords.setdefault(kind, np.zeros((0, 3)))
            ids.setdefault(kind, np.zeros(0, dtype=np.int64))
        self._window.append(_WindowFrame(coords, ids))
        del self._window[: -self.window_frames]

        events = self._synapse_events(analysis, cell_tracks, t, number)
        self._frame_times_s.append(t)
        tracked = TrackedFrame(number, t, analysis, cell_tracks, events)
        self._frame += 1
        for ev in events:
            if self.on_event is not None:
                self.on_event(ev)
        return tracked

    def _synapse_events(
        self, analysis: FrameAnalysis, cell_tracks: dict[int, int], t: float, number: int
    ) -> list[SynapseEvent]:
        events: list[SynapseEvent] = []
        cells = {c.cell_id: c for c in analysis.cells}
        now: dict[tuple[int, int], Synapse] = {}
        for s in analysis.synapses:
            s.tcell_track = cell_tracks.get(s.tcell_id)
            s.target_track = cell_tracks.get(s.target_id)
            if s.tcell_track is None or s.target_track is None:
                continue
            key = (s.tcell_track, s.target_track)
            now[key] = s
            tc, tg = cells.get(s.tcell_id), cells.get(s.target_id)
            h = self._histories.setdefault(key, SynapseHistory(*key))
            h.frame.append(number)
            h.time_s.append(t)
            h.is_area_um2.append(s.is_area_um2)
            h.is_area_err_um2.append(getattr(s, "is_area_err_um2", math.nan))
            h.quality.append(getattr(s, "quality", "") or "")
            h.is_dry_mass_pg.append(s.is_dry_mass_pg)
            h.is_density_fg_um2.append(s.is_density_fg_um2)
            h.tcell_volume_um3.append(tc.volume_um3 if tc else math.nan)
            h.target_volume_um3.append(tg.volume_um3 if tg else math.nan)
            h.tcell_centroid_um.append((tc.z_um, tc.y_um, tc.x_um) if tc else (math.nan,) * 3)

        def emit(kind: str, key: tuple[int, int], area: float, direction: str | None = None) -> None:
            thr = self.area_threshold_um2 if kind == "area_threshold_crossed" else None
            events.append(SynapseEvent(kind, number, t, key[0], key[1], area, direction, thr))

        for key in sorted(self._active - set(now)):
            emit("lost", key, 0.0)
            self._above[key] = False
        for key, s in sorted(now.items()):
            if key not in self._seen:
                emit("formed", key, s.is_area_um2)
            elif key not in self._active:
                emit("re-formed", key, s.is_area_um2)
            if self.area_threshold_um2 is not None:
                above = s.is_area_um2 >= self.area_threshold_um2
                if above != self._above.get(key, False):
                    emit("area_threshold_crossed", key, s.is_area_um2, "up" if above else "down")
                self._above[key] = above
        self._seen |= set(now)
        self._active = set(now)
        return events

    def _episodes(self, h: SynapseHistory) -> list[slice]:
        """The pair's contacts, as slices of its history: observations separated by more frames
        without contact than ``max_gap_frames`` belong to different contacts (the cells parted and
        met again); a shorter dropout (a missed segmentation) does not split a contact."""
        times = np.sort(np.asarray(self._frame_times_s, dtype=float))
        t = np.asarray(h.time_s, dtype=float)
        # frames the tracker saw strictly between consecutive observations of the pair
        between = np.searchsorted(times, t[1:], "left") - np.searchsorted(times, t[:-1], "right")
        starts = [0] + [int(i) + 1 for i in np.flatnonzero(between > self.max_gap_frames)]
        return [slice(a, b) for a, b in zip(starts, starts[1:] + [t.size], strict=True)]

    def _onset_observed(self, onset_s: float, first_area_um2: float = math.nan,
                        first_sigma_um2: float = math.nan) -> bool:
        """Whether the contact's onset is seen: the tracker saw a frame before its first frame, or its
        first area is indistinguishable from zero (it formed then)."""
        return bool((np.asarray(self._frame_times_s, dtype=float) < onset_s).any()
                    or _just_formed(first_area_um2, first_sigma_um2))

    def _last_frame_before(self, onset_s: float) -> float | None:
        times = np.asarray(self._frame_times_s, dtype=float)
        before = times[times < onset_s]
        return float(before.max()) if before.size else None

    def _onset_window_s(self, onset_s: float, time_s: Sequence[float], first_area_um2: float = math.nan,
                        first_sigma_um2: float = math.nan) -> float:
        """How long before its first frame (``onset_s``) a contact observed at ``time_s`` may have formed."""
        times = np.asarray(self._frame_times_s, dtype=float)
        before = times[times < onset_s]
        if before.size:  # within the interval since the last frame without contact
            return float(onset_s - before.max())
        steps = np.diff(time_s)
        step = float(np.median(steps)) if steps.size else 0.0
        if _just_formed(first_area_um2, first_sigma_um2):
            # in contact from the first frame, but with an area indistinguishable from zero: it formed
            # about then, within one interval as if a frame without it had come before
            return step
        # in contact from the first frame: formed at an unknown time before it. Bounding the onset
        # by one interval there would force a short tau_half with confident errors; the fit looks
        # much further back instead, and its errors grow where the data cannot pin the onset down
        span = float(time_s[-1] - time_s[0]) if len(time_s) > 1 else 0.0
        return max(step, UNOBSERVED_ONSET_SPANS * span)

    @property
    def histories(self) -> dict[tuple[int, int], SynapseHistory]:
        """Time courses per synapse key (CAR-T track, target track)."""
        return dict(self._histories)

    def summary(self) -> list[SynapseSummary]:
        """Per synapse: onset, duration, saturation fits of IS area and CAR-T displacement."""
        out = []
        for key, h in sorted(self._histories.items()):
            episodes = self._episodes(h)
            # the kinetics of one contact: the longest (the first of equally long ones); a pair that
            # parted and met again starts from zero area, which one curve through both cannot follow
            ep = max(episodes, key=lambda s: (s.stop - s.start, -s.start))
            time_s = list(h.time_s[ep])
            fit_onset = time_s[0]
            t_rel = np.asarray(time_s) - fit_onset
            area, sigma = np.asarray(h.is_area_um2[ep], float), np.asarray(h.is_area_err_um2[ep], float)
            keep, excluded, flagged_note, quality = _fit_points(h.frame[ep], h.quality[ep] or [""] * len(time_s))
            centroids = np.asarray(h.tcell_centroid_um[ep], dtype=float).reshape(-1, 3)
            displacement = np.linalg.norm(centroids - centroids[0], axis=1) if len(centroids) else np.zeros(0)
            out.append(
                SynapseSummary(
                    tcell_track=key[0],
                    target_track=key[1],
                    onset_s=h.onset_s,
                    duration_s=float(h.time_s[-1] - h.time_s[0]),
                    n_frames=len(h.time_s),
                    max_is_area_um2=float(np.nanmax(h.is_area_um2)),
                    area_fit=fit_saturation(t_rel[keep], area[keep], sigma=sigma[keep],
                                            onset_window_s=self._onset_window_s(fit_onset, time_s, area[0], sigma[0])),
                    displacement_fit=fit_saturation(t_rel, displacement),
                    onset_observed=self._onset_observed(fit_onset, area[0], sigma[0]),
                    episodes=len(episodes),
                    fit_onset_s=fit_onset,
                    onset_interval_s=(self._last_frame_before(fit_onset), fit_onset),
                    quality=quality,
                    fit_excluded_frames=excluded,
                    fit_flagged=flagged_note,
                )
            )
        return out


def _just_formed(area_um2: float, sigma_um2: float) -> bool:
    """Whether a contact's area is within :data:`JUST_FORMED_SIGMAS` of its sigmas of zero."""
    return bool(math.isfinite(area_um2) and math.isfinite(sigma_um2) and sigma_um2 > 0
                and area_um2 <= JUST_FORMED_SIGMAS * sigma_um2)


def _fit_points(frames: Sequence[int], quality: Sequence[str]) -> tuple[np.ndarray, list[int], str, str]:
    """Which observations of a contact the area fit uses, given their ``quality``.

    Observations with a reason in :data:`EXCLUDING_REASONS` are left out while at least
    ``MIN_POINTS + 1`` others remain (enough for a fit with its onset); otherwise all are fitted and
    the note says so. Returns (mask of points kept, frames left out, note, the contact's quality).
    """
    reasons = [split_reasons(q) for q in quality]
    bad = np.array([bool(r & EXCLUDING_REASONS) for r in reasons], dtype=bool)
    seen = set().union(*reasons) if reasons else set()
    contact_quality = join_reasons(seen)
    weighted = FLIPS_DISAGREE in seen
    n_bad = int(bad.sum())
    if not n_bad:
        note = "flips_disagree points weighted by their widened sigma" if weighted else "none flagged"
        return np.ones(len(frames), bool), [], note, contact_quality
    why = join_reasons(set().union(*(r & EXCLUDING_REASONS for r in reasons)))
    if len(frames) - n_bad >= MIN_POINTS + 1:
        note = f"{n_bad} flagged frame(s) excluded ({why})"
        if weighted:
            note += "; flips_disagree points weighted by their widened sigma"
        return ~bad, [int(f) for f, b in zip(frames, bad, strict=True) if b], note, contact_quality
    return (np.ones(len(frames), bool), [],
            f"{n_bad} of {len(frames)} frame(s) flagged ({why}): too few others, all fitted", contact_quality)
