"""What :meth:`Segmenter.segment` returns, and the paper's labels when the analysis is absent."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# defined one layer down (training and export use it too); re-exported as part of the runtime's API
from deepis_rt.core.labels import LABEL_BACKGROUND, LABEL_TARGET, LABEL_TCELL, labels_from_distance
from deepis_rt.core.labels import LABEL_IS as LABEL_SYNAPSE

__all__ = ["FrameResult", "labels_from_distance", "LABEL_BACKGROUND", "LABEL_TCELL", "LABEL_TARGET", "LABEL_SYNAPSE"]


@dataclass
class FrameResult:
    """One segmented tomogram.

    Attributes
    ----------
    distance : numpy.ndarray
        (Z, Y, X) float32 signed distance in um on the input grid: > 0 inside the CAR-T cell,
        < 0 inside the target cell, ~0 in background and at the synapse.
    labels : numpy.ndarray
        (Z, Y, X) uint8: 0 background, 1 CAR-T, 2 target, 3 immunological synapse.
    voxel_size_um : tuple of float
        (Z, Y, X) voxel size of ``distance`` and ``labels``.
    analysis : FrameAnalysis or None
        Cells, synapses and measurements (:func:`deepis_rt.analysis.analyze`), when available.
    timings_ms : dict
        Wall time per stage (``validate``, ``resample``, ``infer``, ``resample_back``, ``analyze``,
        ``total``) in milliseconds.
    backend : str
        The runner that produced ``distance`` (e.g. ``"onnxruntime-cpu"``).
    frame, time_s, source : optional
        Where the frame came from (filled by streams; None for plain calls).
    status : str
        ``"ok"``, ``"failed"`` for a frame a stream could not process (see :meth:`failed`), or
        ``"retry"`` for one a stream could not process while its backend was unavailable.
    error : str or None
        Why the frame failed.
    latency_ms : float or None
        Arrival-to-result latency (filled by streams).
    tracked : object or None
        The tracker's view of this frame (filled by streams).
    retry_input : object or None
        For a ``"retry"`` frame given with ``Stream.submit()``: what
        :meth:`deepis_rt.stream.Stream.resubmit` needs to process it again (its checked volume).
    done_at : float or None
        Wall-clock time (``time.time()``) the stream wrote the results (filled by streams).
    deferred : bool
        The stream passed the frame over for newer ones and processed it later (``newest`` policy).
    quality : str
        ``"ok"`` or the ``;``-joined reasons not to trust the frame (input outside the training
        range, flips disagree, a cell cut by the field's edge, a contact near a tile seam; the
        vocabulary is :data:`deepis_rt.analysis.quality.REASONS`); ``""`` when not assessed (a
        failed frame). Each synapse carries its own ``quality``.
    flip_distances : list of numpy.ndarray or None
        With test-time augmentation, each flip's distance map between inference and analysis (the
        analysis uses and then drops them; None afterwards and without augmentation).
    """

    distance: np.ndarray
    labels: np.ndarray
    voxel_size_um: tuple[float, float, float]
    analysis: Any = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    backend: str = ""
    frame: int | None = None
    time_s: float | None = None
    source: str | None = None
    status: str = "ok"
    error: str | None = None
    latency_ms: float | None = None
    tracked: Any = None
    retry_input: Any = field(default=None, repr=False)
    done_at: float | None = None
    deferred: bool = False
    quality: str = ""
    flip_distances: list[np.ndarray] | None = field(default=None, repr=False)

    @classmethod
    def failed(cls, error: str, **fields: Any) -> FrameResult:
        """A result for a frame that could not be segmented: empty volumes, ``status="failed"``."""
        return cls(distance=np.zeros((0, 0, 0), np.float32), labels=np.zeros((0, 0, 0), np.uint8),
                   voxel_size_um=(float("nan"),) * 3, status="failed", error=str(error), **fields)

    @property
    def ok(self) -> bool:
        """True unless the frame failed."""
        return self.status == "ok"

    @property
    def cells(self) -> tuple:
        """Cells of the analysis (empty when no analysis ran)."""
        return tuple(getattr(self.analysis, "cells", ()) or ()) if self.analysis is not None else ()

    @property
    def synapses(self) -> tuple:
        """Synapses of the analysis (empty when no analysis ran)."""
        return tuple(getattr(self.analysis, "synapses", ()) or ()) if self.analysis is not None else ()

    def __repr__(self) -> str:
        if not self.ok:
            return f"FrameResult(status='failed', frame={self.frame!r}, error={self.error!r})"
        return (
            f"FrameResult(shape={tuple(self.distance.shape)}, voxel_size_um={self.voxel_size_um}, "
            f"backend={self.backend!r}, cells={len(self.cells)}, synapses={len(self.synapses)}, "
            f"total_ms={self.timings_ms.get('total', float('nan')):.1f})"
        )

