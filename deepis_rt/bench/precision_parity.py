"""Reduced-precision CPU inference (OpenVINO BF16, or an INT8 model) against exact FP32: the parity report.

The same checkpoint segments the same held-out synthetic frames twice, once in the reduced
precision and once in FP32 (both through :func:`deepis_rt.load`, so tiling, normalisation and
labels are exactly what a user gets). Reported per frame and overall: max and 99th-percentile
absolute error of the distance map (um), the fraction of voxels whose label (background, CAR-T,
target, IS; :func:`~deepis_rt.core.labels.labels_from_distance`) is the same, and the agreement
of each class's mask (Dice).

Rule for BF16: it must keep label agreement >= :data:`BF16_MIN_LABEL_AGREEMENT` on the bundled
model. ``auto`` never picks BF16 (it is exact-only); when a user asks for ``precision="bf16"`` and
a measured report for that model says the rule is broken, a warning names the report.

Write the report (needs a CPU whose OpenVINO CPU device reports ``BF16``: AVX512_BF16 or AMX;
elsewhere it stops with a clear error)::

    python -m deepis_rt.bench.precision_parity [CHECKPOINT] --json bf16-parity.json --markdown bf16-parity.md

The JSON is also stored where :func:`find_parity_report` looks (``<cache>/openvino/parity/``),
so later ``precision="bf16"`` loads of the same checkpoint are checked against it.

On a CPU without BF16, ``--emulate`` estimates the report: the same frames through PyTorch with
BF16 rounding emulated in FP32 (:func:`emulate_bf16`). An estimate is labelled as such, is not
stored in the cache and never gates ``precision="bf16"``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import deepis_rt

# the capability query is looked up when called (a CPU without BF16 is simulated by replacing it)
from deepis_rt.backends.openvino import runner as openvino_runner
from deepis_rt.backends.openvino.parity import (
    BF16_MIN_LABEL_AGREEMENT,
    find_parity_report,
    report_paths,
    warn_if_bf16_disagrees,
)
from deepis_rt.core.labels import labels_from_distance
from deepis_rt.core.machine import describe_machine
from deepis_rt.core.metrics import dice, distance_errors
from deepis_rt.errors import BackendError
from deepis_rt.runtime.source import resolve_source
from deepis_rt.synth import generate_timelapse
from deepis_rt.train.data import HELDOUT_SEED_BASE
from deepis_rt.train.evaluate import HELDOUT_FRAMES

__all__ = ["BF16_MIN_LABEL_AGREEMENT", "CLASSES", "label_parity", "summarize_parity", "heldout_frames",
           "bf16_parity_report", "emulate_bf16", "emulated_bf16_parity_report", "find_parity_report",
           "warn_if_bf16_disagrees", "format_markdown", "main"]

log = logging.getLogger(__name__)

#: label value -> class name (the label volume of ``masks/``)
CLASSES = {0: "background", 1: "tcell", 2: "target", 3: "synapse"}


def label_parity(reference_um: np.ndarray, test_um: np.ndarray, voxel_size_um: Sequence[float]) -> dict[str, Any]:
    """Distance error and label agreement of ``test_um`` against ``reference_um`` (same shape).

    Returns
    -------
    dict
        ``max_abs_um``, ``p99_abs_um``, ``label_agreement`` (fraction of voxels with the same
        label), ``dice_<class>`` for each of :data:`CLASSES` (1.0 when both masks are empty) and
        ``reference_voxels_<class>``.
    """
    ref = np.asarray(reference_um, np.float32)
    test = np.asarray(test_um, np.float32)
    if ref.shape != test.shape:
        raise ValueError(f"parity | output shape {test.shape} differs from the reference {ref.shape}")
    if not np.isfinite(test).all():
        raise BackendError(f"parity | {int((~np.isfinite(test)).sum())} non-finite values in the reduced-precision output")
    errors = distance_errors(ref, test)
    ref_labels = labels_from_distance(ref, voxel_size_um)
    test_labels = labels_from_distance(test, voxel_size_um)
    out: dict[str, Any] = {
        "max_abs_um": errors.max_abs_um,
        "p99_abs_um": errors.p99_abs_um,
        "label_agreement": float(np.mean(ref_labels == test_labels)),
    }
    for value, name in CLASSES.items():
        a, b = ref_labels == value, test_labels == value
        out[f"dice_{name}"] = dice(a, b)
        out[f"reference_voxels_{name}"] = int(a.sum())
    return out


def summarize_parity(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Worst case over frames: max of the errors, min of the agreements, and the voxel-weighted label agreement."""
    if not rows:
        raise ValueError("parity | no frames to summarise")
    voxels = np.array([r.get("voxels", 1) for r in rows], float)
    summary: dict[str, Any] = {
        "frames": len(rows),
        "max_abs_um": max(r["max_abs_um"] for r in rows),
        "p99_abs_um_max": max(r["p99_abs_um"] for r in rows),
        "label_agreement": float(np.average([r["label_agreement"] for r in rows], weights=voxels)),
        "label_agreement_min": min(r["label_agreement"] for r in rows),
    }
    for name in CLASSES.values():
        summary[f"dice_{name}_min"] = min(r[f"dice_{name}"] for r in rows)
    return summary


def heldout_frames(voxel_size_um: Sequence[float], tile_zyx: Sequence[int], videos: int = 2,
                   frames: Sequence[int] | None = None) -> list[tuple[str, np.ndarray]]:
    """Held-out synthetic conjugate frames (seeds never used in training), as ``(name, RI volume)``."""
    frames = list(frames or HELDOUT_FRAMES)
    out = []
    for i in range(videos):
        seed = HELDOUT_SEED_BASE + i
        for f in generate_timelapse(60, seed, tuple(tile_zyx), tuple(voxel_size_um), frames=frames):
            out.append((f"seed {seed} frame {int(f.truth['frame'])}", np.asarray(f.ri, np.float32)))
    return out


def compare_segmenters(reference: Any, test: Any, frames: Sequence[tuple[str, np.ndarray]],
                       voxel_size_um: Sequence[float]) -> list[dict[str, Any]]:
    """One :func:`label_parity` row per frame, with both segmenters' inference times (s)."""
    rows = []
    for name, ri in frames:
        t0 = time.perf_counter()
        ref = reference.segment(ri, analyze=False).distance
        t1 = time.perf_counter()
        got = test.segment(ri, analyze=False).distance
        t2 = time.perf_counter()
        row = {"frame": name, "voxels": int(ri.size), **label_parity(ref, got, voxel_size_um),
               "reference_s": round(t1 - t0, 3), "test_s": round(t2 - t1, 3)}
        log.info("parity | %s: label agreement %.5f, max |error| %.3g um", name, row["label_agreement"],
                 row["max_abs_um"])
        rows.append(row)
    return rows


def bf16_parity_report(checkpoint: str | Path | None = None, videos: int = 2, frames: Sequence[int] | None = None,
                       num_threads: int | None = None, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """OpenVINO BF16 against OpenVINO FP32 on held-out frames (see the module docstring).

    Raises
    ------
    BackendError
        OpenVINO is missing or this CPU has no BF16 (checked before any frame is made).
    """
    why = openvino_runner.bf16_unavailable_reason()
    if why is not None:
        raise BackendError(f"bf16 parity | cannot measure BF16 here: {why}; run this on a CPU with "
                           "AVX512_BF16 or AMX")
    source = resolve_source(checkpoint)
    opts = {"analyze": False, "cache_dir": cache_dir, "num_threads": num_threads}
    with deepis_rt.load(checkpoint, backend="openvino", precision="bf16", **opts) as bf16, \
            deepis_rt.load(checkpoint, backend="openvino", precision="fp32", **opts) as fp32:
        vs = fp32.model_voxel_size_um
        held = heldout_frames(vs, fp32.tile_zyx, videos, frames)
        rows = compare_segmenters(fp32, bf16, held, vs)
        describe = bf16.describe()
    summary = summarize_parity(rows)
    summary["rule"] = f"label_agreement >= {BF16_MIN_LABEL_AGREEMENT}"
    summary["rule_met"] = bool(summary["label_agreement_min"] >= BF16_MIN_LABEL_AGREEMENT)

    return {"report": "bf16 vs fp32 parity (OpenVINO CPU)", "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "checkpoint": str(source.path), "checkpoint_sha256": source.sha256, "precision": "bf16",
            "reference": "fp32", "runner": describe, "cpu_capabilities": list(openvino_runner.cpu_capabilities()),
            "machine": describe_machine(), "summary": summary, "rows": rows}


def emulate_bf16(model: Any) -> list[Any]:
    """Make a torch model compute as a BF16 CPU does, in FP32 arithmetic: the estimate for CPUs without BF16.

    BF16 CPUs (AVX512_BF16's ``vdpbf16ps``, AMX) multiply BF16 operands and accumulate in FP32, and
    OpenVINO keeps the activations between layers in BF16. Here, in place: the weights of every
    convolution and linear layer are rounded to BF16 (biases stay FP32, as OpenVINO keeps them), and
    every leaf module rounds its tensor inputs to BF16 before computing in FP32. The product of two
    BF16 numbers is exact in FP32, so a convolution then equals the BF16 hardware's up to the order
    of accumulation. The network's output is not rounded (OpenVINO returns FP32).

    This rounds wherever OpenVINO stores BF16, and a little more often (batch norms are not fused
    into the convolutions first, so their inputs are rounded once more). It is an estimate, no
    substitute for the measured report: :func:`find_parity_report` ignores emulated reports.

    Returns
    -------
    list
        The hook handles (``.remove()`` each to stop rounding activations; the weights stay rounded).
    """
    import torch

    def to_bf16(t: Any) -> Any:
        return t.to(torch.bfloat16).to(t.dtype) if torch.is_tensor(t) and t.is_floating_point() else t

    nn = torch.nn
    weighted = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
                nn.Linear)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, weighted):
                module.weight.copy_(to_bf16(module.weight))

    def round_inputs(_module: Any, args: tuple) -> tuple:
        return tuple(to_bf16(a) for a in args)

    return [m.register_forward_pre_hook(round_inputs) for m in model.modules() if not list(m.children())]


def emulated_bf16_parity_report(checkpoint: str | Path | None = None, videos: int = 2,
                                frames: Sequence[int] | None = None, num_threads: int | None = None,
                                cache_dir: str | Path | None = None) -> dict[str, Any]:
    """BF16 emulated in FP32 (:func:`emulate_bf16`, PyTorch CPU) against FP32, on held-out frames.

    Runs on any CPU, so a machine without BF16 can estimate what the measured report
    (:func:`bf16_parity_report`) will say. The report has ``"emulated": true`` and is never used as
    the gate of ``precision="bf16"``.
    """
    source = resolve_source(checkpoint)
    opts = {"analyze": False, "cache_dir": cache_dir, "num_threads": num_threads}
    with deepis_rt.load(checkpoint, backend="torch", device="cpu", **opts) as fp32, \
            deepis_rt.load(checkpoint, backend="torch", device="cpu", **opts) as bf16:
        if fp32.runner.model is bf16.runner.model:
            raise BackendError("bf16 parity | emulation needs two copies of the network")
        handles = emulate_bf16(bf16.runner.model)
        try:
            vs = fp32.model_voxel_size_um
            held = heldout_frames(vs, fp32.tile_zyx, videos, frames)
            rows = compare_segmenters(fp32, bf16, held, vs)
        finally:
            for h in handles:
                h.remove()
        describe = {**bf16.describe(), "math": "fp32 with bf16 rounding of weights and layer inputs (emulated)"}
    summary = summarize_parity(rows)
    summary["rule"] = f"label_agreement >= {BF16_MIN_LABEL_AGREEMENT}"
    summary["rule_met"] = bool(summary["label_agreement_min"] >= BF16_MIN_LABEL_AGREEMENT)

    return {"report": "bf16 vs fp32 parity, EMULATED (FP32 arithmetic with BF16 rounding, PyTorch CPU)",
            "emulated": True, "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "checkpoint": str(source.path), "checkpoint_sha256": source.sha256, "precision": "bf16 (emulated)",
            "reference": "fp32", "runner": describe, "machine": describe_machine(), "summary": summary, "rows": rows}


def format_markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown section (the table of docs/export.md)."""
    s = report["summary"]
    lines = [
        f"{report['report']}: {report['checkpoint']} (sha256 {str(report.get('checkpoint_sha256'))[:16]}), "
        f"{s['frames']} held-out synthetic frames, {report.get('date_utc', '')}",
        "",
        "| frame | max err um | p99 err um | label agreement | Dice bg / CAR-T / target / IS |",
        "|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(f"| {r['frame']} | {r['max_abs_um']:.3g} | {r['p99_abs_um']:.3g} | {r['label_agreement']:.5f} | "
                     + " / ".join(f"{r[f'dice_{c}']:.4f}" for c in CLASSES.values()) + " |")
    lines += ["", f"Worst frame: max error {s['max_abs_um']:.3g} um, p99 {s['p99_abs_um_max']:.3g} um, "
              f"label agreement {s['label_agreement_min']:.5f} (overall {s['label_agreement']:.5f}); "
              f"rule {s['rule']}: {'met' if s['rule_met'] else 'NOT met'}."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None, out: Callable[[str], None] = print) -> int:  # noqa: D103
    parser = argparse.ArgumentParser(prog="python -m deepis_rt.bench.precision_parity",
                                     description="BF16 vs FP32 parity of OpenVINO CPU inference on held-out frames.")
    parser.add_argument("checkpoint", nargs="?", default=None, help="checkpoint [default: the bundled one]")
    parser.add_argument("--videos", type=int, default=2, help="held-out videos (4 frames each)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--json", dest="json_path", default=None)
    parser.add_argument("--markdown", dest="md_path", default=None)
    parser.add_argument("--emulate", action="store_true",
                        help="estimate on any CPU: BF16 rounding emulated in FP32 with PyTorch (never used as "
                             "the gate of precision='bf16')")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    make = emulated_bf16_parity_report if args.emulate else bf16_parity_report
    try:
        report = make(args.checkpoint, videos=args.videos, num_threads=args.threads, cache_dir=args.cache_dir)
    except BackendError as exc:
        out(f"error: {exc}" + ("" if args.emulate else "\n(an estimate on this CPU: add --emulate)"))
        return 2

    text = json.dumps(report, indent=2)
    cached = None
    if not report.get("emulated"):  # only measurements gate precision='bf16'
        cached = report_paths(resolve_source(args.checkpoint), args.cache_dir)[-1]
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(text)
    if args.json_path:
        Path(args.json_path).write_text(text)
    md = format_markdown(report)
    if args.md_path:
        Path(args.md_path).write_text(md)
    out(md)
    out(f"stored for later precision='bf16' loads: {cached}" if cached is not None else
        "an emulated estimate: not stored for precision='bf16' loads (only a measured report gates BF16)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
