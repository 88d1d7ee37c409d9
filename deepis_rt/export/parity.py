"""Parity of an exported model against PyTorch: distance-map errors and derived-mask agreement.

Each check compares a distance map (um) with a reference on one named input set and reports the
max, median and 99th-percentile absolute error and the agreement of the masks the analysis derives
from it (CAR-T: ``d > pitch / 2``; target: ``d < -pitch / 2``; pitch = the model's finest voxel size).
Tolerances are documented in docs/export.md; :func:`check_parity` raises :class:`ParityError`
when a figure is outside them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from deepis_rt.core.meta import MEDIUM_RI, ModelMeta
from deepis_rt.core.metrics import distance_errors
from deepis_rt.errors import ParityError
from deepis_rt.export.onnx_export import INPUT_NAME

__all__ = [
    "ParityTolerance",
    "ParityResult",
    "FP32_TOLERANCE",
    "FP16_TOLERANCE",
    "compare_distance",
    "check_parity",
    "parity_inputs",
    "two_cell_tomogram",
    "run_onnxruntime",
    "format_parity_table",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParityTolerance:
    """Largest errors an exported model may show against its reference.

    An error bound is ``abs_um + rel * max|reference|`` (untrained and trained models have very
    different output ranges; the relative part keeps one bound meaningful for both).
    """

    #: Bound on the max absolute error: absolute part (um).
    max_abs_um: float
    #: Bound on the 99th-percentile absolute error: absolute part (um).
    p99_abs_um: float
    #: Relative part of both bounds, times the largest |reference| value.
    rel: float
    #: Minimum fraction of voxels on which each derived mask (CAR-T, target) agrees.
    mask_agreement: float


#: FP32 ONNX vs PyTorch FP32: the same arithmetic up to summation order.
FP32_TOLERANCE = ParityTolerance(max_abs_um=1e-3, p99_abs_um=1e-4, rel=1e-4, mask_agreement=0.9999)
#: FP16 ONNX vs PyTorch FP32: half-precision weights and activations.
FP16_TOLERANCE = ParityTolerance(max_abs_um=0.05, p99_abs_um=0.01, rel=5e-3, mask_agreement=0.995)


@dataclass(frozen=True)
class ParityResult:
    """Errors of one exported model on one input set."""

    model: str
    inputs: str
    batch: int
    max_abs_um: float
    median_abs_um: float
    p99_abs_um: float
    ref_max_abs_um: float
    cart_agreement: float
    target_agreement: float
    passed: bool
    failures: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["failures"] = list(self.failures)
        return out


def compare_distance(
    reference: np.ndarray,
    test: np.ndarray,
    half_pitch_um: float,
    tolerance: ParityTolerance,
    model: str = "",
    inputs: str = "",
) -> ParityResult:
    """Compare two distance maps of the same shape (N, 1, Z, Y, X) and judge them by ``tolerance``."""
    reference = np.asarray(reference, dtype=np.float64)
    test = np.asarray(test, dtype=np.float64)
    if reference.shape != test.shape:
        raise ParityError(
            f"parity | {model} on {inputs}: output shape {test.shape} differs from the reference "
            f"{reference.shape}"
        )
    failures: list[str] = []
    if not np.isfinite(test).all():
        failures.append(f"{int((~np.isfinite(test)).sum())} non-finite values")
        test = np.nan_to_num(test, nan=1e9, posinf=1e9, neginf=-1e9)
    errors = distance_errors(reference, test)
    ref_max, max_abs, med, p99 = errors.ref_max_abs_um, errors.max_abs_um, errors.median_abs_um, errors.p99_abs_um
    cart = float(np.mean((reference > half_pitch_um) == (test > half_pitch_um)))
    target = float(np.mean((reference < -half_pitch_um) == (test < -half_pitch_um)))
    max_bound = tolerance.max_abs_um + tolerance.rel * ref_max
    p99_bound = tolerance.p99_abs_um + tolerance.rel * ref_max
    if max_abs > max_bound:
        failures.append(f"max |error| {max_abs:.3g} um > {max_bound:.3g} um")
    if p99 > p99_bound:
        failures.append(f"p99 |error| {p99:.3g} um > {p99_bound:.3g} um")
    for label, value in (("CAR-T", cart), ("target", target)):
        if value < tolerance.mask_agreement:
            failures.append(f"{label} mask agreement {value:.4%} < {tolerance.mask_agreement:.2%}")
    return ParityResult(
        model=model,
        inputs=inputs,
        batch=int(reference.shape[0]) if reference.ndim else 1,
        max_abs_um=max_abs,
        median_abs_um=med,
        p99_abs_um=p99,
        ref_max_abs_um=ref_max,
        cart_agreement=cart,
        target_agreement=target,
        passed=not failures,
        failures=tuple(failures),
    )


def check_parity(results: Sequence[ParityResult]) -> None:
    """Raise :class:`ParityError` listing every failed comparison."""
    bad = [r for r in results if not r.passed]
    if bad:
        lines = "; ".join(f"{r.model} on {r.inputs}: {', '.join(r.failures)}" for r in bad)
        raise ParityError(
            f"export | parity outside the documented tolerance ({lines}). The exported graph does "
            "not compute what the PyTorch model computes; try another --opset, --no-fp16, or report "
            "the versions in the manifest (docs/export.md, 'Tolerances')"
        )


def two_cell_tomogram(
    tile_zyx: Sequence[int],
    voxel_size_um: Sequence[float],
    medium_ri: float = MEDIUM_RI,
    seed: int = 0,
) -> np.ndarray:
    """A synthetic RI tomogram (Z, Y, X) float32: a CAR-T cell touching a larger target cell.

    Two ellipsoids (RI 1.365 and 1.375, each with a denser nucleus) placed relative to the field of
    view so that they touch near its centre, blurred edges, plus Gaussian noise (sigma 0.001).
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in tile_zyx)
    extent = np.array(shape, dtype=np.float64) * np.asarray(voxel_size_um, dtype=np.float64)
    zz, yy, xx = np.meshgrid(
        *[(np.arange(n) + 0.5) * v for n, v in zip(shape, voxel_size_um, strict=True)], indexing="ij"
    )
    pos = np.stack([zz, yy, xx])
    volume = np.full(shape, medium_ri, dtype=np.float64)
    lateral = min(extent[1], extent[2])
    cells = [
        # centre (fraction of the field), radii (fraction of the lateral extent), RI, nucleus RI
        ((0.5, 0.5, 0.32), (0.18, 0.16, 0.16), 1.365, 1.372),  # CAR-T cell
        ((0.5, 0.5, 0.66), (0.22, 0.22, 0.20), 1.375, 1.383),  # target cell
    ]
    edge_um = float(max(voxel_size_um))
    for centre_frac, radii_frac, ri, nucleus_ri in cells:
        centre = np.asarray(centre_frac)[:, None, None, None] * extent[:, None, None, None]
        radii = np.asarray(radii_frac) * lateral
        radii[0] = min(radii[0], 0.45 * extent[0])
        r = np.sqrt((((pos - centre) / radii[:, None, None, None]) ** 2).sum(axis=0))
        # signed distance-like coordinate in um for a soft edge
        inside = 1.0 / (1.0 + np.exp((r - 1.0) * radii.min() / edge_um))
        nucleus = 1.0 / (1.0 + np.exp((r - 0.5) * radii.min() / edge_um))
        volume += inside * (ri - medium_ri) + nucleus * (nucleus_ri - ri)
    volume += rng.normal(0.0, 0.001, size=shape)
    return volume.astype(np.float32)


def parity_inputs(
    tile_zyx: Sequence[int],
    meta: ModelMeta | Mapping[str, Any],
    random_batch: int = 1,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Named input sets (N, 1, Z, Y, X) float32 in the model's normalised units.

    ``random``: standard normal noise (the range normalised tomograms occupy); ``synthetic``: the
    :func:`two_cell_tomogram` normalised with the checkpoint's ``ri_normalization``.
    """
    meta = ModelMeta.from_dict(meta, "parity | model meta", unknown="keep")
    rng = np.random.default_rng(seed)
    shape = (random_batch, 1, *(int(s) for s in tile_zyx))
    norm = meta.ri_normalization
    ri = two_cell_tomogram(tile_zyx, meta.voxel_size_um, meta.medium_ri, seed)
    synthetic = ((ri - norm.offset) / norm.scale).astype(np.float32)
    return {
        "random": rng.standard_normal(shape).astype(np.float32),
        "synthetic": synthetic[None, None],
    }


def run_onnxruntime(path_or_bytes: Any, x: np.ndarray, basic_optimizations: bool = False) -> np.ndarray:
    """Run an ONNX model on the CPU with ONNX Runtime and return its ``distance`` output.

    ``basic_optimizations`` keeps ONNX Runtime's per-node casts around FP16 nodes (it has no FP16
    kernels for them on x86 CPUs), so FP16 activations are rounded at every node boundary as on a GPU.
    """
    import onnxruntime as ort


    options = ort.SessionOptions()
    options.log_severity_level = 3
    if basic_optimizations:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    source = path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return session.run(None, {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})[0]


def format_parity_table(results: Sequence[ParityResult | Mapping[str, Any]]) -> str:
    """A plain-text table of parity results (one row per model and input set)."""
    header = ("model", "inputs", "N", "max|err| um", "median um", "p99 um", "max|ref| um", "CAR-T agr", "target agr", "ok")
    rows = [header]
    for r in results:
        d = r.to_dict() if isinstance(r, ParityResult) else dict(r)
        rows.append((
            d["model"], d["inputs"], str(d["batch"]), f"{d['max_abs_um']:.3g}", f"{d['median_abs_um']:.3g}",
            f"{d['p99_abs_um']:.3g}", f"{d['ref_max_abs_um']:.3g}", f"{d['cart_agreement']:.4%}",
            f"{d['target_agreement']:.4%}", "yes" if d["passed"] else "NO",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
