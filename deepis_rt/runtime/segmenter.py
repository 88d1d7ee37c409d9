"""The embedding API: ``Segmenter.segment()`` tomograms (a Segmenter comes from :func:`deepis_rt.load`).

Thread-safety: a :class:`Segmenter` may be shared between threads (e.g. a microscope control loop
calling :meth:`Segmenter.segment` while another thread streams frames). Inference is serialised
by the runner's lock; validation, resampling, blending and analysis run concurrently. Results do
not depend on how calls interleave. For parallel inference on several GPU streams, load one
Segmenter per thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepis_rt.backends import Runner
from deepis_rt.core.meta import MEDIUM_RI, TILE_ZYX, VOXEL_SIZE_UM
from deepis_rt.errors import InputError
from deepis_rt.io.ri import RIDecoder, RIScale
from deepis_rt.runtime import preprocess
from deepis_rt.runtime.backends import BackendChoice
from deepis_rt.runtime.result import FrameResult, labels_from_distance
from deepis_rt.runtime.tiling import choose_tile, make_output, plan_tiles, sliding_window_inference
from deepis_rt.runtime.tta import FLIP_AXES, flip, mean_of_flips

__all__ = ["Segmenter", "PreparedFrame"]

log = logging.getLogger(__name__)

@dataclass
class PreparedFrame:
    """A validated frame on the model's grid (between :meth:`Segmenter.preprocess` and inference)."""

    volume: np.ndarray  # the input, on its own grid
    voxel_size_um: tuple[float, float, float]
    model_volume: np.ndarray  # resampled to the model's voxel size (the input itself when equal)
    timings_ms: dict[str, float] = field(default_factory=dict)
    started: float = 0.0  # perf_counter() when preprocessing began
    #: with test-time augmentation: each flip's distance map on the model grid (mirrored back)
    flip_outputs: list[np.ndarray] | None = None


_ANALYZE_MISSING = object()
_analyze_fn: Any = None
_analyze_lock = threading.Lock()


def _get_analyze() -> Any:
    """``deepis_rt.analysis.analyze`` if that part is installed, else None (looked up once)."""
    global _analyze_fn
    with _analyze_lock:
        if _analyze_fn is None:
            try:
                from deepis_rt.analysis import analyze as fn
            except ImportError as exc:
                log.info("segment | deepis_rt.analysis not available (%s); labels come from the paper's "
                         "thresholds and FrameResult.analysis is None", exc)
                fn = _ANALYZE_MISSING
            _analyze_fn = fn
        return None if _analyze_fn is _ANALYZE_MISSING else _analyze_fn


class Segmenter:
    """A model behind a runner, with the pre- and post-processing that turn RI volumes into results.

    Made by :func:`deepis_rt.load` (the one place the package assembles one; pass ``runner=`` there for
    a runner of your own). Parameters mirror its keyword arguments.

    Every backend gets the same tile plan: tiles of the model's size (``meta["tile_zyx"]``), the
    same overlap and blending, and volumes smaller than a tile padded to it with the medium's RI
    (see :func:`~deepis_rt.runtime.tiling.choose_tile`). FP32 results therefore do not depend on
    which backend ran them.

    Parameters
    ----------
    runner : Runner
        An (active or inactive) runner; activated here.
    meta : dict
        Model metadata: ``voxel_size_um``, ``ri_normalization``, ``medium_ri``, ``tile_zyx``.
    backend_report : list of BackendChoice, optional
        How the backend was chosen.
    overlap : float
        Tile overlap fraction for volumes larger than a tile.
    batch_size : int
        Tiles per runner call.
    blend : str
        Tile blending window (``"cosine"``, ``"gaussian"``, ``"constant"``).
    analyze : bool
        Run :func:`deepis_rt.analysis.analyze` on every frame (when installed).
    stitch_on_disk : bool or path
        Blend tiles into a ``numpy.memmap`` on disk instead of memory (huge fields of view).
    max_voxels : int
        Larger inputs are refused with :class:`~deepis_rt.errors.VolumeTooLargeError`.
    max_frame_bytes : int, optional
        Host memory one frame may take once resampled to the model's voxel size; larger frames
        are refused before anything is allocated (default:
        :func:`~deepis_rt.runtime.preprocess.default_frame_budget_bytes`).
    tta : bool
        Test-time augmentation by default (see :meth:`segment`).
    """

    def __init__(
        self,
        runner: Runner,
        meta: dict[str, Any],
        backend_report: Sequence[BackendChoice] = (),
        overlap: float = 0.25,
        batch_size: int = 1,
        blend: str = "cosine",
        analyze: bool = True,
        stitch_on_disk: bool | str | Path = False,
        max_voxels: int = preprocess.MAX_VOXELS,
        size_multiple: int | None = None,
        model_info: dict[str, Any] | None = None,
        max_frame_bytes: int | None = None,
        tta: bool = False,
    ) -> None:
        self.runner = runner.activate()
        self.meta = dict(meta)
        self.backend_report: list[BackendChoice] = list(backend_report)
        self.model_info: dict[str, Any] = dict(model_info or {})
        # the defaults of ModelMeta, for metas that lack a key
        self.model_voxel_size_um = preprocess.validate_voxel_size(
            self.meta.get("voxel_size_um", VOXEL_SIZE_UM), "model meta")
        self.size_multiple = int(size_multiple or runner.size_multiple)
        # one tile plan for every backend: the model's tile (padded when the volume is smaller), so
        # that FP32 results do not depend on which backend ran them
        self.tile_zyx = choose_tile(self.meta.get("tile_zyx", TILE_ZYX), self.size_multiple,
                                    runner.fixed_spatial_zyx, getattr(runner, "spatial_range_zyx", None),
                                    where="segment")
        self.normalization = preprocess.Normalization.from_meta(self.meta)
        self.medium_ri = float(self.meta.get("medium_ri", MEDIUM_RI))
        self.overlap = float(overlap)
        self.batch_size = int(batch_size)
        self.blend = blend
        self.analyze = bool(analyze)
        self.stitch_on_disk = stitch_on_disk
        self.max_voxels = int(max_voxels)
        self.max_frame_bytes = max_frame_bytes
        self.tta = bool(tta)
        # every volume passes here before the network: integers decoded (RI x 10 000 or an explicit
        # ri_scale/ri_offset), values that cannot be RI refused (deepis_rt.io.ri)
        self._ri_decoder = RIDecoder("segment")
        # what the model saw in training, for the quality flags of its inputs
        from deepis_rt.analysis.quality import TrainingRange

        self.training_range = TrainingRange.from_meta(self.meta)
        # the network's part of is_area_err_um2: the checkpoint's own when it carries one
        from deepis_rt.analysis.contact import DEFAULT_NETWORK_ERROR, NetworkError

        try:
            own = NetworkError.from_meta(self.meta)
        except ValueError as exc:
            raise InputError(f"model meta: {exc}") from exc
        self.network_error = own or DEFAULT_NETWORK_ERROR
        self.network_error_from_checkpoint = own is not None
        if own is None and self.analyze:
            log.warning("segment | this checkpoint carries no calibration of the network's part of is_area_err_um2 "
                        "(meta['uncertainty']['network']); the bundled checkpoint's is used, so the stated sigmas "
                        "may be too narrow or too wide for it (benchmarks/is_area_validation.py --checkpoint fits one)")
        plan_tiles(self.tile_zyx, self.tile_zyx, self.overlap, self.size_multiple)  # validates the settings

    # -- properties --------------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        """Name of the runner in use, e.g. ``"onnxruntime-cpu"``."""
        return self.runner.name

    @property
    def device(self) -> str:
        """Where inference runs: ``"cpu"`` or ``"cuda:N"``."""
        info = self.runner.describe()
        return str(info.get("device") or ("cpu" if "cpu" in self.backend or self.backend == "fake" else "cuda"))

    def describe(self) -> dict[str, Any]:
        """Backend facts, model voxel size and tile, and the selection report."""
        return {
            **self.runner.describe(),
            "device": self.device,
            "model": dict(self.model_info),
            "model_voxel_size_um": list(self.model_voxel_size_um),
            "tile_zyx": list(self.tile_zyx),
            "tta_flips": [list(a) for a in FLIP_AXES] if self.tta else None,
            "backend_report": [str(c) for c in self.backend_report],
            "is_area_uncertainty": self.uncertainty_record(),
        }

    def uncertainty_record(self) -> dict[str, Any]:
        """Where the network's part of ``is_area_err_um2`` comes from (``summary.json``)."""
        return {"network": self.network_error.to_dict(), "from_checkpoint": self.network_error_from_checkpoint}

    # -- stages (used by deepis_rt.stream; segment() chains them) -----------------------------------
    def _as_ri(self, volume: np.ndarray, where: str, ri_scale: float | None, ri_offset: float | None) -> np.ndarray:
        return self._ri_decoder(volume, where, RIScale.from_args(ri_scale, ri_offset, where))

    def check_volume(self, volume: Any, source: Any = None, *, ri_scale: float | None = None,
                     ri_offset: float | None = None) -> np.ndarray:
        """Validate a tomogram before any heavy work; return it as RI.

        See :func:`~deepis_rt.runtime.preprocess.validate_volume` and :meth:`segment` for
        ``ri_scale`` / ``ri_offset``.
        """
        where = f"segment | {source}" if source else "segment"
        volume = preprocess.validate_volume(volume, where, self.max_voxels)
        return self._as_ri(volume, where, ri_scale, ri_offset)

    def preprocess(self, volume: Any, voxel_size_um: Any = None, where: str = "segment", *,
                   ri_scale: float | None = None, ri_offset: float | None = None) -> PreparedFrame:
        """Stage 1: validate, decode to RI, and resample to the model's voxel size when needed."""
        t0 = time.perf_counter()
        volume = preprocess.validate_volume(volume, where, self.max_voxels)
        volume = self._as_ri(volume, where, ri_scale, ri_offset)
        vs = self.model_voxel_size_um if voxel_size_um is None else preprocess.validate_voxel_size(voxel_size_um, where)
        t1 = time.perf_counter()
        if preprocess.needs_resampling(vs, self.model_voxel_size_um):
            shape = preprocess.model_grid_shape(volume.shape, vs, self.model_voxel_size_um)
            preprocess.check_frame_memory(volume.shape, shape, vs, self.model_voxel_size_um, where,
                                          self.max_frame_bytes, bool(self.stitch_on_disk))
            model_volume = preprocess.resample(volume, shape)
        else:
            model_volume = volume
        t2 = time.perf_counter()
        return PreparedFrame(volume, tuple(vs), model_volume,  # type: ignore[arg-type]
                             {"validate": (t1 - t0) * 1e3, "resample": (t2 - t1) * 1e3}, t0)

    def _pad_value(self) -> float:
        norm = self.normalization
        return float(np.float32((self.medium_ri - norm.offset) / norm.scale))

    def _plan(self, shape: tuple[int, ...]) -> Any:
        return plan_tiles(shape, self.tile_zyx, self.overlap, self.size_multiple, True, self.blend)

    def _tile(self, model_volume: np.ndarray) -> np.ndarray:
        norm = self.normalization
        out = make_output(model_volume.shape, self.stitch_on_disk) if self.stitch_on_disk else None
        return sliding_window_inference(
            model_volume, self.runner, self.tile_zyx, overlap=self.overlap, batch_size=self.batch_size,
            transform=lambda src, dst: norm.apply(src, out=dst), pad_value=self._pad_value(), blend=self.blend,
            multiple=self.size_multiple, fixed_tile=True, out=out,
        )

    def infer_prepared(self, prepared: Sequence[PreparedFrame], tta: bool | None = None) -> list[np.ndarray]:
        """Stage 2: the distance map on the model grid for each prepared frame.

        Frames that fit one tile and share a shape go through the runner together, ``batch_size``
        tiles per call, in one stream (on a GPU, copies overlap compute); larger frames are tiled.
        With test-time augmentation (``tta``, default the Segmenter's) every flip of
        :data:`~deepis_rt.runtime.tta.FLIP_AXES` is one more tile (batched like frames) or one more
        pass over the same tile plan; the maps are mirrored back and averaged, and each flip's map
        is kept in ``PreparedFrame.flip_outputs`` for the analysis.
        """
        prepared = list(prepared)
        if not prepared:
            return []
        flips = FLIP_AXES if (self.tta if tta is None else tta) else ((),)
        t0 = time.perf_counter()
        shapes = {p.model_volume.shape for p in prepared}
        plan = self._plan(next(iter(shapes))) if len(shapes) == 1 else None
        if plan is None or plan.n_tiles != 1:
            outputs = []
            for p in prepared:
                t1 = time.perf_counter()
                if len(flips) == 1:  # the distance map may live on disk (stitch_on_disk): no copy
                    outputs.append(self._keep_flips(p, [self._tile(p.model_volume)]))
                else:
                    outputs.append(self._keep_flips(p, [np.ascontiguousarray(flip(self._tile(flip(p.model_volume, a)), a))
                                                        for a in flips]))
                p.timings_ms["infer"] = (time.perf_counter() - t1) * 1e3
            return outputs
        norm, tile, shape, pad = self.normalization, plan.tile_zyx, plan.shape, self._pad_value()
        items = [(p, axes) for p in prepared for axes in flips]

        def batches():
            for first in range(0, len(items), self.batch_size):
                group = items[first : first + self.batch_size]
                batch = np.full((len(group), 1, *tile), pad, np.float32)
                for i, (p, axes) in enumerate(group):
                    norm.apply(flip(p.model_volume, axes), out=batch[i, 0, : shape[0], : shape[1], : shape[2]])
                yield batch

        maps = []
        for out in self.runner.infer_stream(batches()):
            maps.extend(np.array(o[0, : shape[0], : shape[1], : shape[2]]) for o in out)  # runners may reuse `out`
        outputs = []
        for k, p in enumerate(prepared):
            per_flip = [np.ascontiguousarray(flip(maps[k * len(flips) + f], axes)) for f, axes in enumerate(flips)]
            outputs.append(self._keep_flips(p, per_flip))
        per_frame_ms = (time.perf_counter() - t0) * 1e3 / len(prepared)
        for p in prepared:
            p.timings_ms["infer"] = per_frame_ms
        return outputs

    @staticmethod
    def _keep_flips(prepared: PreparedFrame, per_flip: list[np.ndarray]) -> np.ndarray:
        if len(per_flip) == 1:
            prepared.flip_outputs = None
            return per_flip[0]
        prepared.flip_outputs = per_flip
        return mean_of_flips(per_flip)

    def postprocess(self, prepared: PreparedFrame, output: np.ndarray) -> FrameResult:
        """Stage 3: the distance back on the input grid, as a :class:`FrameResult`.

        Labels come from :meth:`analyze_result` (the analysis, or the paper's thresholds); they
        are filled here already when no analysis will run.
        """
        t0 = time.perf_counter()
        volume = prepared.volume
        distance = preprocess.resample(output, volume.shape) if output.shape != volume.shape else output
        flips = None
        if prepared.flip_outputs:
            flips = [preprocess.resample(f, volume.shape) if f.shape != volume.shape else f
                     for f in prepared.flip_outputs]
            prepared.flip_outputs = None
        timings = dict(prepared.timings_ms)
        timings["resample_back"] = (time.perf_counter() - t0) * 1e3
        result = FrameResult(distance=distance, labels=None, voxel_size_um=prepared.voxel_size_um,  # type: ignore[arg-type]
                             analysis=None, timings_ms=timings, backend=self.backend, flip_distances=flips)
        if not self.analyze or _get_analyze() is None:
            t1 = time.perf_counter()
            result.labels = labels_from_distance(distance, prepared.voxel_size_um)
            timings["analyze"] = (time.perf_counter() - t1) * 1e3
        return result

    def analyze_result(self, result: FrameResult, volume: Any = None, medium_ri: float | None = None,
                       analyze: bool | None = None) -> FrameResult:
        """Stage 4: cells, synapses and measurements (:func:`deepis_rt.analysis.analyze`), and the labels.

        ``volume`` is the RI on the input grid (for mean RI and dry mass); ``medium_ri`` overrides
        the model's. Without the analysis part (or with ``analyze=False``) labels come from the
        paper's thresholds and ``result.analysis`` stays None.
        """
        t0 = time.perf_counter()
        do_analyze = self.analyze if analyze is None else analyze
        analyze_fn = _get_analyze() if do_analyze else None
        if analyze_fn is not None:
            ri = None if volume is None else np.asarray(volume)
            try:
                result.analysis = analyze_fn(result.distance, ri, result.voxel_size_um,
                                             medium_ri=float(medium_ri or self.medium_ri),
                                             network_error=self.network_error)
                result.labels = np.asarray(result.analysis.labels, dtype=np.uint8)
            except InputError:
                raise
            except Exception as exc:  # a failed analysis must not cost the control loop its distance map
                log.warning("segment | analysis failed (%s: %s); labels from thresholds only",
                            type(exc).__name__, exc, exc_info=log.isEnabledFor(logging.DEBUG))
        if result.labels is None:
            result.labels = labels_from_distance(result.distance, result.voxel_size_um)
        self._assess(result, None if volume is None else np.asarray(volume), analyze_fn, medium_ri)
        if analyze_fn is not None or "analyze" not in result.timings_ms:
            result.timings_ms["analyze"] = (time.perf_counter() - t0) * 1e3
        return result

    def _seams(self, shape: tuple[int, ...], voxel_size_um: Sequence[float]) -> list[list[float]]:
        """The middles of the tile overlaps of this volume's plan, on its own grid."""
        from deepis_rt.analysis.quality import seam_planes

        model_shape = (preprocess.model_grid_shape(shape, voxel_size_um, self.model_voxel_size_um)
                       if preprocess.needs_resampling(voxel_size_um, self.model_voxel_size_um) else tuple(shape))
        plan = self._plan(tuple(model_shape))
        return seam_planes(plan.starts, plan.tile_zyx, model_shape, shape)

    def _assess(self, result: FrameResult, ri: np.ndarray | None, analyze_fn: Any, medium_ri: float | None) -> None:
        """``quality`` of the frame and its synapses; with flips, their spread widens ``is_area_err_um2``."""
        from deepis_rt.analysis.quality import SEAM_MARGIN_VOXELS, assess_frame

        flip_maps, result.flip_distances = result.flip_distances, None
        vs = result.voxel_size_um
        flip_analyses = None
        if flip_maps and result.analysis is not None and result.analysis.synapses:
            medium = float(medium_ri or self.medium_ri)
            flip_analyses = [analyze_fn(m, None, vs, medium_ri=medium, network_error=self.network_error)
                             for m in flip_maps]
        margin = [SEAM_MARGIN_VOXELS * m / v for m, v in zip(self.model_voxel_size_um, vs, strict=True)]
        result.quality = assess_frame(result.analysis, ri, vs, self.training_range, flip_maps, flip_analyses,
                                      self._seams(result.distance.shape, vs), margin)

    # -- segmentation ------------------------------------------------------------------------------
    def segment(self, volume: Any, voxel_size_um: Any = None, *, analyze: bool | None = None,
                ri_scale: float | None = None, ri_offset: float | None = None,
                tta: bool | None = None, max_memory_gb: float | None = None,
                store: str | Path | None = None) -> FrameResult:
        """Segment one tomogram.

        Parameters
        ----------
        volume : (Z, Y, X) array
            Refractive index (float32 preferred; any real dtype is accepted). Integers in the
            RI x 10 000 range (10 000-20 000) are decoded as such; values that cannot be RI
            (outside about 1.0-2.0 after decoding) are refused.
        voxel_size_um : (Z, Y, X) or float, optional
            Voxel size of ``volume``; default: the model's (no resampling).
        analyze : bool, optional
            Override the Segmenter's ``analyze`` setting for this call.
        ri_scale, ri_offset : float, optional
            ``volume`` holds RI as ``value x ri_scale + ri_offset`` (e.g. integers of another
            convention); an offset alone means a scale of 1.
        tta : bool, optional
            Test-time augmentation (default: the Segmenter's ``tta``): the network also runs on
            the volume mirrored along Y, along X and along both (:mod:`deepis_rt.runtime.tta`;
            4x the inference), the distance maps are averaged, and the spread of each synapse's
            IS area across the flips widens its ``is_area_err_um2`` (and sets ``flips_disagree``
            in its ``quality`` when large).
        max_memory_gb : float, optional
            Memory budget. A field whose in-memory segmentation would exceed it (default budget
            2 GB) goes through the bounded-memory path (:func:`deepis_rt.field.segment.segment_field`,
            docs/large_fields.md): block by block into a chunked zarr store, with the same
            results. ``volume`` may then be any region source (memmap, zarr array, h5py dataset).
        store : path, optional
            Where that path writes its zarr store (default: a new temporary folder, logged).

        Returns
        -------
        FrameResult
            Distance (um) and labels on the input grid, analysis, per-stage timings, and
            ``quality`` (``"ok"`` or its reasons, :mod:`deepis_rt.analysis.quality`). From the
            bounded-memory path, ``distance`` and ``labels`` are the store's zarr arrays.

        Raises
        ------
        InputError
            (and its subclasses) for unusable input, before any heavy work;
            :class:`~deepis_rt.errors.ImplausibleRIError` for values that cannot be RI.
        """
        if max_memory_gb is not None or not self.stitch_on_disk:  # stitch_on_disk: the older opt-in path
            from deepis_rt.field.segment import routes_to_field, segment_field  # field imports runtime

            if routes_to_field(self, tuple(getattr(volume, "shape", ())), voxel_size_um, tta, max_memory_gb):
                return segment_field(self, volume, voxel_size_um, out=store, max_memory_gb=max_memory_gb,
                                     analyze=analyze, ri_scale=ri_scale, ri_offset=ri_offset)
        return self._run([volume], [voxel_size_um], analyze, (ri_scale, ri_offset), tta)[0]

    def segment_batch(self, volumes: Sequence[Any], voxel_size_um: Any = None, *,
                      analyze: bool | None = None, ri_scale: float | None = None,
                      ri_offset: float | None = None, tta: bool | None = None) -> list[FrameResult]:
        """Segment several tomograms; frames that fit one tile share runner calls (throughput).

        ``voxel_size_um`` is one voxel size for all volumes, or a list with one per volume;
        ``ri_scale`` / ``ri_offset`` and ``tta`` (see :meth:`segment`) apply to all.
        Every volume is validated before any inference runs.
        """
        volumes = list(volumes)
        per_volume = (
            isinstance(voxel_size_um, (list, tuple)) and len(voxel_size_um) > 0
            and (voxel_size_um[0] is None or not np.isscalar(voxel_size_um[0]))
        )
        if per_volume and len(voxel_size_um) != len(volumes):
            raise InputError(
                f"segment_batch: {len(voxel_size_um)} voxel sizes for {len(volumes)} volumes; give one for all or one each"
            )
        sizes = list(voxel_size_um) if per_volume else [voxel_size_um] * len(volumes)
        return self._run(volumes, sizes, analyze, (ri_scale, ri_offset), tta)

    def _run(self, volumes: list[Any], sizes: list[Any], analyze: bool | None,
             ri: tuple[float | None, float | None] = (None, None), tta: bool | None = None) -> list[FrameResult]:
        where = "segment" if len(volumes) == 1 else "segment_batch[{}]"
        prepared = [self.preprocess(v, s, where.format(i), ri_scale=ri[0], ri_offset=ri[1])
                    for i, (v, s) in enumerate(zip(volumes, sizes, strict=True))]
        outputs = self.infer_prepared(prepared, tta)
        results = []
        for p, out in zip(prepared, outputs, strict=True):
            result = self.postprocess(p, out)
            self.analyze_result(result, p.volume, analyze=analyze)
            result.timings_ms["total"] = (time.perf_counter() - p.started) * 1e3
            results.append(result)
        return results

    # -- lifecycle ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the backend (sessions, engines, GPU memory)."""
        self.runner.deactivate()

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Segmenter backend={self.backend!r} model_voxel_size_um={self.model_voxel_size_um} tile={self.tile_zyx}>"
