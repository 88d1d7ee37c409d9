"""Training data: synthetic frames generated on the fly, or annotated tomograms from a folder.

Both sources hand out :class:`Sample` objects (RI, signed distance, loss weight) at
the model's voxel size; :func:`random_crop_batch` turns them into augmented crops.

Synthetic frames are domain-randomised by default (:mod:`deepis_rt.synth.randomize`):
every imaging parameter, shape family and acquisition voxel size (0.1-0.5 um, resampled
to the model's voxel size as the runtime does) is drawn per frame.

Seeds: on-the-fly training videos use seeds below :data:`VALIDATION_SEED_BASE`;
validation uses ``VALIDATION_SEED_BASE + i`` and held-out evaluation
``HELDOUT_SEED_BASE + i``, so the three never overlap.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from deepis_rt.errors import InputError

__all__ = [
    "Sample",
    "SyntheticSource",
    "FolderSource",
    "edge_weight",
    "distance_from_labels",
    "random_crop_batch",
    "add_grid_noise",
    "VALIDATION_SEED_BASE",
    "HELDOUT_SEED_BASE",
    "TRAIN_SEED_LIMIT",
]

log = logging.getLogger(__name__)

#: Training videos use seeds in [0, TRAIN_SEED_LIMIT).
TRAIN_SEED_LIMIT = 8_000_000
#: Validation videos: VALIDATION_SEED_BASE + i.
VALIDATION_SEED_BASE = 8_000_000
#: Held-out evaluation videos (model card): HELDOUT_SEED_BASE + i.
HELDOUT_SEED_BASE = 9_000_000
#: Nominal length of on-the-fly training videos (frames); a random frame of each is used.
TRAIN_VIDEO_FRAMES = 60

_CROSS = ndi.generate_binary_structure(3, 1)


@dataclass
class Sample:
    """One training volume at the model's voxel size."""

    ri: np.ndarray  # float32 (Z, Y, X)
    distance_um: np.ndarray  # float32 (Z, Y, X)
    weight: np.ndarray  # float32 (Z, Y, X): 1 + edge_gain in the border band
    focus: np.ndarray  # (N, 3) int voxel indices worth centring crops on (IS, borders)
    source: str


def edge_weight(distance_um: np.ndarray, band_voxels: int = 3, gain: float = 10.0) -> np.ndarray:
    """The paper's loss weight: 1, plus ``gain`` within ``band_voxels`` of a cell border.

    Borders are where the class (CAR-T > 0, target < 0, background 0) changes between
    face neighbours, including the IS between two cells.
    """
    cls = np.sign(distance_um).astype(np.int8)
    border = np.zeros(cls.shape, dtype=bool)
    for ax in range(3):
        diff = np.diff(cls, axis=ax) != 0
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[ax] = slice(0, -1)
        hi[ax] = slice(1, None)
        border[tuple(lo)] |= diff
        border[tuple(hi)] |= diff
    if band_voxels > 1 and border.any():
        border = ndi.binary_dilation(border, _CROSS, iterations=band_voxels - 1)
    return (1.0 + gain * border).astype(np.float32)


def distance_from_labels(labels: np.ndarray, voxel_size_um: Sequence[float]) -> np.ndarray:
    """Signed distance map (um) from a label volume (1 CAR-T, 2 target, 3 IS).

    IS voxels belong to a cell too; each is given to the nearer of CAR-T / target.
    """
    cart = labels == 1
    target = labels == 2
    syn = labels == 3
    if syn.any():
        if cart.any() and target.any():
            dc = ndi.distance_transform_edt(~cart, sampling=voxel_size_um)
            dt = ndi.distance_transform_edt(~target, sampling=voxel_size_um)
            cart = cart | (syn & (dc <= dt))
            target = target | (syn & (dc > dt))
        elif cart.any():
            cart = cart | syn
        else:
            target = target | syn
    vs = tuple(float(v) for v in voxel_size_um)
    d = ndi.distance_transform_edt(cart, sampling=vs) - ndi.distance_transform_edt(target, sampling=vs)
    return d.astype(np.float32)


def _sample(ri: np.ndarray, distance_um: np.ndarray, source: str, labels: np.ndarray | None = None) -> Sample:
    w = edge_weight(distance_um)
    if labels is not None and (labels == 3).any():
        focus = np.argwhere(labels == 3)
    else:
        focus = np.argwhere(w > 1.0)
    if len(focus) > 4096:
        focus = focus[:: max(1, len(focus) // 4096)]
    return Sample(ri=ri.astype(np.float32, copy=False), distance_um=distance_um.astype(np.float32, copy=False),
                  weight=w, focus=focus.astype(np.int32), source=source)


class SyntheticSource:
    """A pool of synthetic frames, refreshed as training goes (data generated on the fly).

    Parameters
    ----------
    rng : numpy.random.Generator
        Draws video seeds (in [0, TRAIN_SEED_LIMIT)) and frame indices.
    shape, voxel_size_um :
        Frame geometry.
    pool_size : int
        Frames kept in memory.
    refresh_every : int
        Replace the oldest frame every this many batches.
    randomize : bool
        Domain-randomised frames (imaging condition, shapes, acquisition voxel size);
        False: the default videos with the legacy imaging model.
    min_shape : (Z, Y, X)
        Smallest randomised frame (the training crop): fine acquisition voxels get a
        field this small around the conjugate rather than the whole ``shape``.
    """

    def __init__(self, rng: np.random.Generator, shape: Sequence[int], voxel_size_um: Sequence[float],
                 pool_size: int = 16, refresh_every: int = 2, randomize: bool = True,
                 min_shape: Sequence[int] = (32, 64, 64)) -> None:
        self.rng = rng
        self.randomize = bool(randomize)
        self.min_shape = tuple(int(s) for s in min_shape)
        self.shape = tuple(int(s) for s in shape)
        self.voxel_size_um = tuple(float(v) for v in voxel_size_um)
        self.pool_size = int(pool_size)
        self.refresh_every = max(1, int(refresh_every))
        self.pool: list[Sample] = []
        self.generated = 0
        self._calls = 0
        while len(self.pool) < self.pool_size:
            self.pool.append(self._new())

    def _new(self) -> Sample:
        from deepis_rt.synth import generate_timelapse
        from deepis_rt.synth.randomize import randomized_frame

        seed = int(self.rng.integers(0, TRAIN_SEED_LIMIT))
        k = int(self.rng.integers(0, TRAIN_VIDEO_FRAMES))
        if self.randomize:
            f = randomized_frame(seed, k, TRAIN_VIDEO_FRAMES, self.shape, self.voxel_size_um, min_shape=self.min_shape)
        else:
            f = generate_timelapse(TRAIN_VIDEO_FRAMES, seed, self.shape, self.voxel_size_um, frames=[k],
                                   with_truth_area=False, imaging="legacy")[0]
        self.generated += 1
        return _sample(f.ri, f.distance_um, f"synth seed {seed} frame {k}", f.labels)

    def samples(self) -> list[Sample]:
        """The current pool; every ``refresh_every`` calls the oldest frame is replaced."""
        self._calls += 1
        if self._calls % self.refresh_every == 0:
            self.pool.pop(0)
            self.pool.append(self._new())
        return self.pool

    def describe(self) -> str:
        kind = ("domain-randomised (imaging condition, shapes, acquisition voxel 0.1-0.5 um; "
                "deepis_rt.synth.randomize)" if self.randomize else "legacy imaging model")
        return (f"synthetic conjugates generated on the fly (deepis_rt.synth, {kind}), frames up to {self.shape} at "
                f"{self.voxel_size_um} um, video seeds drawn from [0, {TRAIN_SEED_LIMIT}), pool of "
                f"{self.pool_size} frames, one replaced every {self.refresh_every} batches")


class FolderSource:
    """Annotated tomograms from a folder.

    Layout: tomograms ``DIR/<name>.<ext>`` (any format :mod:`deepis_rt.io` reads) with labels
    ``DIR/labels/<name>.<ext>`` (0 background, 1 CAR-T, 2 target, 3 IS) and, optionally,
    signed distance maps ``DIR/distance/<name>.<ext>`` (um; else computed from the labels).
    :func:`deepis_rt.synth.write_timelapse` writes exactly this layout.
    """

    def __init__(self, root: str | Path, voxel_size_um: Sequence[float], names: Sequence[str] | None = None) -> None:
        from deepis_rt.io import SUFFIXES, read_labels, read_tomogram

        root = Path(root)
        if not root.is_dir():
            raise InputError(f"train | {root}: no such folder")
        files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES
                       and not p.name.startswith("."))
        if names is not None:
            files = [p for p in files if p.stem in set(names)]
        self.voxel_size_um = tuple(float(v) for v in voxel_size_um)
        self.items: list[Sample] = []
        for p in files:
            lab = _find(root / "labels", p.stem)
            if lab is None:
                log.warning("train | %s: no labels/%s.* found; skipped", p.name, p.stem)
                continue
            tomo = read_tomogram(p)
            if tomo.voxel_size_um is not None and not np.allclose(tomo.voxel_size_um, self.voxel_size_um, rtol=0.02):
                raise InputError(
                    f"train | {p.name}: voxel size {tomo.voxel_size_um} um differs from the training voxel size "
                    f"{self.voxel_size_um} um; resample the data or pass --voxel-size"
                )
            labels = read_labels(lab)
            if labels.shape != tomo.ri.shape:
                raise InputError(f"train | {lab.name}: labels {labels.shape} do not match the tomogram {tomo.ri.shape}")
            dist_file = _find(root / "distance", p.stem)
            if dist_file is not None:
                dist = read_tomogram(dist_file, as_ri=False).ri  # um, not RI
            else:
                dist = distance_from_labels(labels, self.voxel_size_um)
            self.items.append(_sample(tomo.ri, dist, p.name, labels))
        if not self.items:
            raise InputError(f"train | {root}: no (tomogram, labels/<same name>) pairs found")
        self.root = root

    def samples(self) -> list[Sample]:
        return self.items

    def describe(self) -> str:
        return f"{len(self.items)} annotated tomograms from {self.root}"


def _find(folder: Path, stem: str) -> Path | None:
    from deepis_rt.io import SUFFIXES

    if not folder.is_dir():
        return None
    for suf in SUFFIXES:
        p = folder / f"{stem}{suf}"
        if p.is_file():
            return p
    return None


#: Noise added on the model's grid by :func:`add_grid_noise`: std range (RI units, log-uniform) and
#: correlation length range (Gaussian sigma in voxels, uniform; axial, lateral).
GRID_NOISE_RI: tuple[float, float] = (0.0003, 0.003)
GRID_NOISE_SIGMA_VOXELS: tuple[tuple[float, float], tuple[float, float]] = ((0.0, 1.5), (0.0, 1.0))


def add_grid_noise(ri: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``ri`` plus zero-mean correlated Gaussian noise drawn on its own grid.

    The generator's noise is made at the acquisition grid and band-limited by the imaging
    model; a tomogram resampled from a fine acquisition then carries much less of it on the
    model's grid than one exported at the model's voxel size. Noise drawn here, on the
    model's grid, covers the latter: its std is log-uniform in :data:`GRID_NOISE_RI` (the
    background fluctuation quoted for ODT reconstructions) and its correlation a Gaussian
    of random width per axis (:data:`GRID_NOISE_SIGMA_VOXELS`, longer along z as the
    missing cone makes it), so that empty medium looks like a noisy reconstruction's.
    """
    lo, hi = (np.log(v) for v in GRID_NOISE_RI)
    std = float(np.exp(rng.uniform(lo, hi)))
    (zl, zh), (ll, lh) = GRID_NOISE_SIGMA_VOXELS
    lateral = rng.uniform(ll, lh)
    sigma = (rng.uniform(zl, zh), lateral, lateral)
    noise = rng.standard_normal(size=ri.shape, dtype=np.float32)
    if max(sigma) > 0:
        noise = ndi.gaussian_filter(noise, sigma, mode="wrap")
    sd = float(noise.std())
    if sd > 0:
        noise *= np.float32(std / sd)
    return (ri + noise).astype(np.float32, copy=False)


def random_crop_batch(
    samples: Sequence[Sample],
    batch: int,
    crop_zyx: Sequence[int],
    rng: np.random.Generator,
    medium_ri: float = 1.337,
    focus_fraction: float = 0.5,
    augment: bool = True,
    noise_fraction: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Augmented random crops: (ri, distance, weight), each (B, Z, Y, X) float32.

    Augmentation: random crop (half of them centred near the IS / a cell border), flips
    along every axis, in-plane 90-degree rotations (Y and X share a voxel size), and RI
    jitter (contrast x0.85-1.15 about the medium, offset +-0.002). ``noise_fraction`` of
    the crops also get correlated noise on the model's grid (:func:`add_grid_noise`).
    Volumes smaller than the crop are padded with the medium (distance 0).
    """
    cz, cy, cx = (int(c) for c in crop_zyx)
    ris, ds, ws = [], [], []
    for _ in range(batch):
        s = samples[int(rng.integers(len(samples)))]
        ri, d, w = s.ri, s.distance_um, s.weight
        if any(a < b for a, b in zip(ri.shape, (cz, cy, cx), strict=False)):
            pad = [(0, max(0, b - a)) for a, b in zip(ri.shape, (cz, cy, cx), strict=False)]
            ri = np.pad(ri, pad, constant_values=medium_ri)
            d = np.pad(d, pad)
            w = np.pad(w, pad, constant_values=1.0)
        Z, Y, X = ri.shape
        if len(s.focus) and rng.random() < focus_fraction:
            c = s.focus[int(rng.integers(len(s.focus)))] + rng.integers(-4, 5, size=3)
            start = [int(np.clip(c[i] - n // 2, 0, dim - n)) for i, (n, dim) in enumerate(zip((cz, cy, cx), (Z, Y, X), strict=False))]
        else:
            start = [int(rng.integers(0, dim - n + 1)) for n, dim in zip((cz, cy, cx), (Z, Y, X), strict=False)]
        sl = tuple(slice(a, a + n) for a, n in zip(start, (cz, cy, cx), strict=False))
        r, dd, ww = ri[sl], d[sl], w[sl]
        if augment:
            for ax in range(3):
                if rng.random() < 0.5:
                    r, dd, ww = np.flip(r, ax), np.flip(dd, ax), np.flip(ww, ax)
            if cy == cx:
                k = int(rng.integers(4))
                if k:
                    r, dd, ww = (np.rot90(a, k, axes=(1, 2)) for a in (r, dd, ww))
            gain = rng.uniform(0.85, 1.15)
            offset = rng.uniform(-0.002, 0.002)
            r = (medium_ri + (r - medium_ri) * gain + offset).astype(np.float32)
            if noise_fraction > 0 and rng.random() < noise_fraction:
                r = add_grid_noise(r, rng)
        ris.append(np.ascontiguousarray(r, dtype=np.float32))
        ds.append(np.ascontiguousarray(dd, dtype=np.float32))
        ws.append(np.ascontiguousarray(ww, dtype=np.float32))
    return np.stack(ris), np.stack(ds), np.stack(ws)
