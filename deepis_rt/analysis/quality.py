"""How far to trust a frame and a synapse: the ``quality`` field and its reasons.

``quality`` is ``"ok"`` or a ``;``-joined list of reason codes, always in the order of
:data:`REASONS` (so equal sets read alike and a spreadsheet filter on one code works):

``ri_out_of_range``
    The input's RI histogram lies outside what the model was trained on: its background (the
    histogram's mode) is not the training medium, or more than 0.1 % of its voxels fall outside the
    training RI range (another medium, another RI scaling, strong artefacts).
``voxel_size_out_of_range``
    The input's voxel size lies more than 25 % outside the training range on some axis; it is
    resampled to the model's grid, but its sharpness and noise are not what the model learnt.
``flips_disagree``
    Test-time augmentation only: the flipped copies give different answers (frame: more than
    :data:`FLIP_VOXEL_TOLERANCE` of the cell voxels change class between flips; synapse: the IS
    area spread across flips exceeds :data:`FLIP_AREA_TOLERANCE` of the area).
``cell_at_edge``
    A cell touches the border of the field of view, so part of it is missing (frame: any cell;
    synapse: one of its two cells).
``near_tile_seam``
    The volume was larger than the model's tile, and the contact lies within a few voxels of the
    middle of an overlap between tiles, where two tiles' predictions are blended.
``faint_cell``
    A segmented cell whose mean RI lies less than :data:`FAINT_CELL_CONTRAST` above the input's
    background (frame: any cell; synapse: one of its two cells). Live lymphocytes and tumour cells
    sit 0.015-0.05 above their medium (cell mean RI about 1.35-1.39 in ODT studies: Yoon J. et al.
    2015, Biomed. Opt. Express 6:3865, white blood cells; Lee M. et al. 2020, eLife 9:e49023, CAR-T
    and target cells); a "cell" barely brighter than the medium is most likely reconstruction noise
    read as a cell, and a synapse with it is not one.
``axial_contact``
    Synapse (and its frame): the contact faces the optical axis, its normal within
    :data:`AXIAL_CONTACT_DEG` of Z (one cell on top of the other). Holotomography resolves least
    along Z (the axial cut-off and the missing cone blur surfaces that face it), so the interface
    between the two cells is poorly defined there: on the independent validation generator the
    bundled network reads such contacts far too large (a CAR-T spread on top of its target: +60 %
    at the median), beyond their stated sigma.

Frame reasons about the input (RI, voxel size) apply to each of its synapses; a frame's quality
also lists every reason of its synapses. An empty string means "not assessed" (a frame that failed,
or :func:`~deepis_rt.analysis.analyze` used on its own).

The training range comes from the checkpoint's ``meta["training"]["input_range"]`` (written by
``deepis-rt train``, see :func:`describe_training_inputs`); checkpoints without it get
:meth:`TrainingRange.default`, the range of :mod:`deepis_rt.synth`'s frames with the training
augmentation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "QUALITY_OK", "REASONS", "RI_OUT_OF_RANGE", "VOXEL_SIZE_OUT_OF_RANGE", "FLIPS_DISAGREE", "CELL_AT_EDGE",
    "NEAR_TILE_SEAM", "FAINT_CELL", "AXIAL_CONTACT", "join_reasons", "split_reasons", "quality_summary", "TrainingRange", "describe_training_inputs",
    "input_reasons", "background_ri", "faint_cells", "assess_frame", "judge_synapses", "cells_at_edge", "flip_voxel_disagreement", "seam_planes", "synapse_box", "box_near_planes",
]

QUALITY_OK = "ok"
RI_OUT_OF_RANGE = "ri_out_of_range"
VOXEL_SIZE_OUT_OF_RANGE = "voxel_size_out_of_range"
FLIPS_DISAGREE = "flips_disagree"
CELL_AT_EDGE = "cell_at_edge"
NEAR_TILE_SEAM = "near_tile_seam"
FAINT_CELL = "faint_cell"
AXIAL_CONTACT = "axial_contact"
#: every reason code, in the order they are written
REASONS: tuple[str, ...] = (RI_OUT_OF_RANGE, VOXEL_SIZE_OUT_OF_RANGE, FLIPS_DISAGREE, CELL_AT_EDGE, NEAR_TILE_SEAM,
                            FAINT_CELL, AXIAL_CONTACT)

#: share of voxels outside the training RI range that an input may have (noise, a speck of dust)
RI_OUTSIDE_FRACTION = 1e-3
#: how far (relative) outside the training voxel sizes an input may be
VOXEL_TOLERANCE = 0.25
#: share of the cell voxels whose class (CAR-T / target / background) may change between flips
FLIP_VOXEL_TOLERANCE = 0.05
#: IS-area spread across flips (sample standard deviation / mean area) above which flips disagree
FLIP_AREA_TOLERANCE = 0.10
#: a contact closer than this many voxels (model grid) to the middle of a tile overlap is near a seam
SEAM_MARGIN_VOXELS = 4
#: a cell whose mean RI is less than this above the background is faint. Measured on synthetic and
#: validation-generator frames through the networks: noise read as cell stays below 0.0045, real
#: cells (the faintest, raw reconstructions of RI-1.350 cells) above 0.0057
FAINT_CELL_CONTRAST = 0.005
#: a contact whose normal lies within this angle of the optical (Z) axis faces it
AXIAL_CONTACT_DEG = 45.0
_HIST_BIN_RI = 5e-4


def join_reasons(reasons: Iterable[str]) -> str:
    """``"ok"`` for no reasons, else the distinct codes in :data:`REASONS` order joined by ``;``."""
    found = set(reasons)
    unknown = found - set(REASONS)
    if unknown:
        raise ValueError(f"quality: unknown reason code(s) {sorted(unknown)}; known: {list(REASONS)}")
    return ";".join(r for r in REASONS if r in found) or QUALITY_OK


def split_reasons(quality: str) -> set[str]:
    """The reason codes of a ``quality`` value (empty for ``"ok"`` and for ``""``)."""
    return {r for r in (quality or "").split(";") if r and r != QUALITY_OK}


def quality_summary(frame_qualities: Iterable[str], tta: bool) -> dict[str, Any]:
    """``summary.json``'s ``quality`` block: how many frames carry each reason.

    ``frame_qualities`` are the ``quality`` values of the frames that were processed (``""``,
    not assessed, is not counted).
    """
    assessed = [q for q in frame_qualities if q]
    counts = {r: sum(r in split_reasons(q) for q in assessed) for r in REASONS}
    return {"tta": bool(tta), "frames_assessed": len(assessed),
            "frames_ok": sum(q == QUALITY_OK for q in assessed),
            "frames_with": {r: n for r, n in counts.items() if n}, "vocabulary": list(REASONS)}


@dataclass(frozen=True)
class TrainingRange:
    """What the model saw in training: RI range, medium RI range, voxel sizes (Z, Y, X) in um."""

    ri_low: float
    ri_high: float
    medium_low: float
    medium_high: float
    voxel_min_um: tuple[float, float, float]
    voxel_max_um: tuple[float, float, float]
    recorded: bool = False  # True: read from the checkpoint; False: the default for checkpoints without it

    @classmethod
    def default(cls, voxel_size_um: Sequence[float] = (0.5, 0.25, 0.25), medium_ri: float = 1.337) -> TrainingRange:
        """For checkpoints that do not record their range: :mod:`deepis_rt.synth` frames as trained.

        Cells reach RI 1.39 and the transfer function rings below the medium; training stretches
        the contrast by up to 15 % and shifts the RI by up to 0.002, and the generator's
        background varies by about 0.0003: RI from 0.017 below to 0.073 above the medium (1.32-1.41
        at 1.337), medium within 0.0025 of the model's. The voxel size is the model's (inputs are
        resampled to it).
        """
        vs = tuple(float(v) for v in voxel_size_um)
        return cls(medium_ri - 0.017, medium_ri + 0.073, medium_ri - 0.0025, medium_ri + 0.0025,
                   vs, vs, False)  # type: ignore[arg-type]

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> TrainingRange:
        """From a checkpoint's metadata (``meta["training"]["input_range"]``), else :meth:`default`."""
        default = cls.default(meta.get("voxel_size_um", (0.5, 0.25, 0.25)), float(meta.get("medium_ri", 1.337)))
        rec = (meta.get("training") or {}).get("input_range") if isinstance(meta.get("training"), Mapping) else None
        if not isinstance(rec, Mapping):
            return default
        try:
            ri, medium, vmin, vmax = rec["ri"], rec["medium_ri"], rec["voxel_size_um_min"], rec["voxel_size_um_max"]
            return cls(float(ri[0]), float(ri[1]), float(medium[0]), float(medium[1]),
                       tuple(float(v) for v in vmin), tuple(float(v) for v in vmax), True)  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError, IndexError):
            return default

    def to_dict(self) -> dict[str, Any]:
        """The form stored in ``meta["training"]["input_range"]``."""
        return {"ri": [self.ri_low, self.ri_high], "medium_ri": [self.medium_low, self.medium_high],
                "voxel_size_um_min": list(self.voxel_min_um), "voxel_size_um_max": list(self.voxel_max_um)}


def background_ri(ri: Any) -> float:
    """The mode of the RI histogram (the medium, which fills most of a field of view).

    ``ri``: an array or anything sliced like one (read at every second voxel per axis)."""
    sub = np.asarray(ri[::2, ::2, ::2], dtype=np.float32).ravel()
    sub = sub[np.isfinite(sub)]
    if sub.size == 0:
        return math.nan
    lo, hi = float(np.percentile(sub, 1)), float(np.percentile(sub, 99))
    bins = max(1, int(math.ceil((hi - lo) / _HIST_BIN_RI)))
    counts, edges = np.histogram(sub, bins=bins, range=(lo, hi + _HIST_BIN_RI))
    k = int(np.argmax(counts))
    return float(0.5 * (edges[k] + edges[k + 1]))


def describe_training_inputs(ri_volumes: Iterable[np.ndarray], voxel_sizes_um: Iterable[Sequence[float]],
                             ri_jitter: tuple[float, float] = (0.15, 0.002),
                             medium_ri: float | None = None) -> dict[str, Any]:
    """The ``input_range`` a training run records in its checkpoint (see :class:`TrainingRange`).

    ``ri_jitter`` = (contrast, offset) of the training augmentation: the RI range and the medium
    range are widened by it, as the network saw them. ``medium_ri``: the medium the training data
    were made with, when known (training crops may be filled with cells, so the histogram's mode
    need not be the medium); otherwise each volume's mode stands for it.
    """
    lows, highs, media = [], [], []
    for ri in ri_volumes:
        sub = np.asarray(ri[::2, ::2, ::2], dtype=np.float32)
        medium = float(medium_ri) if medium_ri is not None else background_ri(ri)
        lo, hi = (float(v) for v in np.percentile(sub, [0.01, 99.99]))
        contrast, offset = ri_jitter
        lows.append(medium + (lo - medium) * (1 + contrast) - offset)
        highs.append(medium + (hi - medium) * (1 + contrast) + offset)
        media.append(medium)
    if not media:
        raise ValueError("quality: no training volumes to describe")
    sizes = np.asarray([list(v) for v in voxel_sizes_um], dtype=float).reshape(-1, 3)
    return TrainingRange(min(lows), max(highs), min(media) - ri_jitter[1], max(media) + ri_jitter[1],
                         tuple(sizes.min(axis=0)), tuple(sizes.max(axis=0)), True).to_dict()  # type: ignore[arg-type]


def input_reasons(ri: Any, voxel_size_um: Sequence[float], trained: TrainingRange,
                  background: float | None = None) -> set[str]:
    """Reasons about the input itself: RI histogram and voxel size against the training range.

    ``background``: the input's :func:`background_ri` when already known."""
    reasons = set()
    vs = np.asarray(voxel_size_um, dtype=float)
    if ((vs < np.asarray(trained.voxel_min_um) * (1 - VOXEL_TOLERANCE)).any()
            or (vs > np.asarray(trained.voxel_max_um) * (1 + VOXEL_TOLERANCE)).any()):
        reasons.add(VOXEL_SIZE_OUT_OF_RANGE)
    if ri is not None and ri.size:
        medium = background_ri(ri) if background is None else float(background)
        sub = np.asarray(ri[::2, ::2, ::2])
        outside = float(np.count_nonzero((sub < trained.ri_low) | (sub > trained.ri_high))) / sub.size
        if not (trained.medium_low <= medium <= trained.medium_high) or outside > RI_OUTSIDE_FRACTION:
            reasons.add(RI_OUT_OF_RANGE)
    return reasons


def cells_at_edge(cell_labels: np.ndarray) -> set[int]:
    """Ids of the cells that touch a face of the volume (cut by the field of view)."""
    lab = np.asarray(cell_labels)
    if lab.ndim != 3 or 0 in lab.shape:
        return set()
    faces = [lab[0], lab[-1], lab[:, 0], lab[:, -1], lab[:, :, 0], lab[:, :, -1]]
    return {int(v) for f in faces for v in np.unique(f) if v}


def faint_cells(cells: Iterable[Any], background: float, min_contrast: float = FAINT_CELL_CONTRAST) -> set[int]:
    """Ids of the cells whose ``mean_ri`` lies less than ``min_contrast`` above ``background``.

    Cells without a mean RI (NaN: no RI given) and a NaN background are never faint."""
    if not math.isfinite(background):
        return set()
    return {int(c.cell_id) for c in cells if math.isfinite(c.mean_ri) and c.mean_ri - background < min_contrast}


def flip_voxel_disagreement(distances: Sequence[np.ndarray], threshold_um: float) -> float:
    """Share of the voxels that are a cell in some flip whose class differs between flips."""
    classes = [np.sign(d) * (np.abs(d) > threshold_um) for d in distances]
    cell = np.zeros(classes[0].shape, bool)
    differ = np.zeros(classes[0].shape, bool)
    for c in classes:
        cell |= c != 0
        differ |= c != classes[0]
    n = int(np.count_nonzero(cell))
    return float(np.count_nonzero(differ & cell)) / n if n else 0.0


def seam_planes(starts: Sequence[Sequence[int]], tile_zyx: Sequence[int], model_shape: Sequence[int],
                input_shape: Sequence[int]) -> list[list[float]]:
    """Per axis, the middles of the tile overlaps (model grid) as positions on the input grid."""
    planes = []
    for axis, st in enumerate(starts):
        scale = input_shape[axis] / model_shape[axis]
        mids = [(st[k + 1] + st[k] + tile_zyx[axis]) / 2.0 for k in range(len(st) - 1)]
        planes.append([m * scale for m in mids])
    return planes


def synapse_box(labels: np.ndarray, cell_labels: np.ndarray, tcell_id: int, target_id: int,
                reach: int = 3) -> tuple[slice, ...] | None:
    """Bounding box of the IS voxels (label 3) between two cells: within ``reach`` of both."""
    near = None
    for cid in (tcell_id, target_id):
        box = ndi.find_objects((cell_labels == cid).astype(np.int8))
        if not box or box[0] is None:
            return None
        grown = tuple(slice(max(s.start - reach, 0), s.stop + reach) for s in box[0])
        near = grown if near is None else tuple(slice(max(a.start, b.start), min(a.stop, b.stop))
                                                 for a, b in zip(near, grown, strict=True))
    if near is None or any(s.start >= s.stop for s in near):
        return None
    is_mask = labels[near] == 3
    found = ndi.find_objects(is_mask.astype(np.int8))
    if not found or found[0] is None:
        return None
    return tuple(slice(s.start + n.start, s.stop + n.start) for s, n in zip(found[0], near, strict=True))


def box_near_planes(box: tuple[slice, ...], planes: Sequence[Sequence[float]], margin: Sequence[float]) -> bool:
    """Whether a bounding box comes within ``margin`` (per axis, input voxels) of a seam plane."""
    for axis, axis_planes in enumerate(planes):
        lo, hi = box[axis].start - margin[axis], box[axis].stop + margin[axis]  # voxel edges
        if any(lo <= p <= hi for p in axis_planes):
            return True
    return False


def assess_frame(analysis: Any, ri: np.ndarray | None, voxel_size_um: Sequence[float], trained: TrainingRange,
                 flip_maps: Sequence[np.ndarray] | None = None, flip_analyses: Sequence[Any] | None = None,
                 seams: Sequence[Sequence[float]] = ((), (), ()), seam_margin: Sequence[float] = (0, 0, 0)) -> str:
    """Set each synapse's ``quality`` (and, with flips, widen its ``is_area_err_um2``); return the frame's.

    Parameters
    ----------
    analysis : FrameAnalysis or None
        The frame's analysis (of the averaged map with test-time augmentation); None: only the
        input and the flips' voxels are judged.
    ri : ndarray or None
        The input RI on its own grid.
    voxel_size_um, trained
        The input's voxel size and the model's :class:`TrainingRange`.
    flip_maps, flip_analyses : optional
        Each flip's distance map (mirrored back) and its analysis (needed only when there are synapses).
    seams, seam_margin
        :func:`seam_planes` of the frame's tile plan and how close (input voxels per axis) is "near".
    """
    from deepis_rt.analysis.flips import flip_areas_um2
    from deepis_rt.analysis.masks import default_threshold_um

    background = background_ri(ri) if ri is not None and np.size(ri) else math.nan
    frame_reasons = input_reasons(ri, voxel_size_um, trained, background)
    if flip_maps and flip_voxel_disagreement(flip_maps, default_threshold_um(voxel_size_um)) > FLIP_VOXEL_TOLERANCE:
        frame_reasons.add(FLIPS_DISAGREE)
    if analysis is None:
        return join_reasons(frame_reasons)
    areas = flip_areas_um2(analysis, flip_analyses) if flip_analyses else None
    edge = cells_at_edge(analysis.cell_labels)
    faint = faint_cells(analysis.cells, background)
    frame_reasons |= judge_synapses(
        analysis.synapses, frame_reasons - {FLIPS_DISAGREE}, edge,
        lambda syn: synapse_box(analysis.labels, analysis.cell_labels, syn.tcell_id, syn.target_id),
        seams, seam_margin, areas, faint, getattr(analysis, "contacts", None))
    if edge:
        frame_reasons.add(CELL_AT_EDGE)
    if faint:
        frame_reasons.add(FAINT_CELL)
    return join_reasons(frame_reasons)


def judge_synapses(synapses: Sequence[Any], input_only: set[str], edge: set[int],
                   box_of: Callable[[Any], tuple[slice, ...] | None], seams: Sequence[Sequence[float]],
                   seam_margin: Sequence[float], flip_areas: Sequence[Sequence[float]] | None = None,
                   faint: set[int] | frozenset[int] = frozenset(),
                   contacts: Mapping[int, Any] | None = None) -> set[str]:
    """Set each synapse's ``quality``: the input's reasons and its own, never a neighbour's.

    Its own: the flips disagree on its area (and its ``is_area_err_um2`` widens by their spread),
    one of its two cells is in ``edge`` (cut by the field of view) or in ``faint`` (barely above the
    background RI, :func:`faint_cells`), its IS box (``box_of(synapse)``) comes within
    ``seam_margin`` of a tile seam, its contact (``contacts[synapse_id]``, a
    :class:`~deepis_rt.analysis.contact.ContactEstimate`) faces the optical axis. Returns every
    reason found (for the frame's quality).
    """
    from deepis_rt.analysis.flips import area_sigma_with_flips_um2

    found: set[str] = set()
    for k, syn in enumerate(synapses):
        reasons = set(input_only)
        areas = flip_areas[k] if flip_areas else ()
        if areas:
            syn.is_area_err_um2 = area_sigma_with_flips_um2(syn.is_area_err_um2, areas)
            if np.std(areas, ddof=1) > FLIP_AREA_TOLERANCE * max(syn.is_area_um2, 1e-9):
                reasons.add(FLIPS_DISAGREE)
        if syn.tcell_id in edge or syn.target_id in edge:
            reasons.add(CELL_AT_EDGE)
        if syn.tcell_id in faint or syn.target_id in faint:
            reasons.add(FAINT_CELL)
        contact = (contacts or {}).get(syn.synapse_id)
        if contact is not None and contact.tilt_from_optical_axis_deg < AXIAL_CONTACT_DEG:
            reasons.add(AXIAL_CONTACT)
        box = box_of(syn)
        if box is not None and box_near_planes(box, seams, seam_margin):
            reasons.add(NEAR_TILE_SEAM)
        syn.quality = join_reasons(reasons)
        found |= reasons
    return found
