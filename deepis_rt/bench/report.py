"""The benchmark report: derived figures (speed-up, TFLOP/s, fraction of peak, targets) and its renderings.

Structure (JSON)::

    {benchmark, format_version, deepis_rt, date_utc, command, machine{...libraries},
     load_average_before, load_average_after, settings{...}, elapsed_s,
     peaks: [{device, precision, tflops, size, ...}],
     models: [{model{name, preset, parameters, flops_per_tile, tile_zyx, ...}, baseline,
               rows: [{backend, precision, device, batch, status, reason, throughput_fps,
                       latency_ms{n, mean_ms, p50_ms, p95_ms, p99_ms, min_ms, max_ms}, samples_ms,
                       host_peak_rss_mib, device_peak_mib, speedup_vs_baseline, achieved_tflops,
                       fraction_of_peak, accuracy{max_abs_um, p99_abs_um, dice_tcell, dice_target},
                       breakdown_ms{h2d_ms, compute_ms, d2h_ms} | null, setup_s,
                       GPU rows: device_time{clock, iterations, latency_ms{...}, samples_ms, tiles_per_s},
                       device_throughput_fps, device_achieved_tflops, device_fraction_of_peak}],
               pipeline: [{backend, precision, batch, status, throughput_fps, compute_throughput_fps,
                           ratio_vs_compute, latency_ms, stages_ms{read_ms, ...}}],
               targets: [{name, target, measured, met, note}]}]}
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deepis_rt.core.jsonable import json_safe

__all__ = ["finish_model", "format_table", "to_markdown", "write_json", "merge_reports", "TARGETS"]

#: The figures the runtime is judged by (reported, not asserted).
TARGETS = {
    "ort_cpu_vs_torch": 1.8,      # ONNX Runtime CPU vs PyTorch eager FP32 (CPU)
    "pipeline_vs_compute": 0.9,   # whole pipeline vs compute-only throughput
    "torch_fp16_vs_fp32": 3.0,    # PyTorch FP16 vs FP32 on a GPU
    "gpu_fraction_of_peak": 0.35,  # best GPU backend (device time) vs the measured FP16 matrix-product peak
    "gpu_vs_torch_fp32": 4.0,     # best GPU backend vs PyTorch FP32 (TF32 off), device time, same run
    "gpu_stream_p99_ms": 10.0,    # one tile's end-to-end latency, p99, fastest GPU backend at batch 1 (at most)
    "openvino_fp32_vs_ort": 1.3,  # OpenVINO FP32 vs ONNX Runtime FP32 (CPU; stated for the paper preset)
    "openvino_bf16_vs_ort": 2.0,  # OpenVINO BF16 vs ONNX Runtime FP32 (CPU with BF16)
}


def _peak(peaks: Sequence[dict[str, Any]], device: str, precision: str) -> dict[str, Any] | None:
    dev = "cuda" if device.startswith("cuda") else "cpu"
    prec = precision if dev == "cuda" or precision == "bf16" else "fp32"
    for p in peaks:
        if p["device"] == dev and p["precision"] == prec and p.get("tflops"):
            return p
    return None


def _ok(rows: Sequence[dict[str, Any]], backend: str | None = None, precision: str | None = None,
        device_prefix: str | None = None) -> list[dict[str, Any]]:
    return [r for r in rows if r["status"] == "ok" and (backend is None or r["backend"] == backend)
            and (precision is None or r["precision"] == precision)
            and (device_prefix is None or r["device"].startswith(device_prefix))]


def _best(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    return max(rows, key=lambda r: r["throughput_fps"]) if rows else None


def _target(name: str, target: float, measured: float | None, note: str, at_most: bool = False) -> dict[str, Any]:
    if measured is None or not math.isfinite(measured):
        met = None
    else:
        met = bool(measured <= target) if at_most else bool(measured >= target)
    return {"name": name, "target": target, "measured": measured,
            "met": met, "note": note, **({"at_most": True} if at_most else {})}


def _device_fps(r: dict[str, Any]) -> float | None:
    return (r.get("device_time") or {}).get("tiles_per_s")


def finish_model(model: dict[str, Any], rows: list[dict[str, Any]], pipeline: list[dict[str, Any]],
                 peaks: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Add speed-ups, achieved TFLOP/s, fractions of peak, pipeline ratios and targets to a model's rows."""
    gpu_rows = _ok(rows, device_prefix="cuda")
    base_backend = "torch-cuda" if _ok(rows, "torch-cuda", "fp32") else "torch-cpu"
    base = {r["batch"]: r for r in _ok(rows, base_backend, "fp32")}
    base_best = _best(list(base.values()))
    flops = float(model["flops_per_tile"])
    for r in rows:
        if r["status"] != "ok":
            continue
        ref = base.get(r["batch"], base_best)
        r["speedup_vs_baseline"] = r["throughput_fps"] / ref["throughput_fps"] if ref else None
        r["achieved_tflops"] = flops * r["throughput_fps"] / 1e12
        peak = _peak(peaks, r["device"], r["precision"])
        r["peak_tflops"] = peak["tflops"] if peak else None
        r["fraction_of_peak"] = r["achieved_tflops"] / peak["tflops"] if peak else None
        device_fps = _device_fps(r)
        if device_fps:  # a GPU row: the same figures from device time (CUDA events, input resident)
            r["device_throughput_fps"] = device_fps
            r["device_achieved_tflops"] = flops * device_fps / 1e12
            r["device_fraction_of_peak"] = r["device_achieved_tflops"] / peak["tflops"] if peak else None
    for p in pipeline:
        same = [r for r in _ok(rows, p["backend"], p["precision"]) if r["batch"] == p["batch"]]
        compute = same[0]["throughput_fps"] if same else None
        p["compute_throughput_fps"] = compute
        ok = p.get("status") in ("ok", "partial") and compute
        p["ratio_vs_compute"] = p["throughput_fps"] / compute if ok else None
        # the same ratio against the inference rate *inside* the pipeline run (1000 / infer ms per
        # frame): not moved by a change of machine load between the two measurements
        infer_ms = (p.get("stages_ms") or {}).get("infer_ms")
        ok_stage = p.get("status") in ("ok", "partial") and infer_ms
        p["ratio_vs_infer_stage"] = p["throughput_fps"] * infer_ms / 1000.0 if ok_stage else None

    targets = []
    torch_cpu, ort_cpu = _best(_ok(rows, "torch-cpu", "fp32")), _best(_ok(rows, "onnxruntime-cpu", "fp32"))
    if torch_cpu and ort_cpu:
        targets.append(_target(
            "ONNX Runtime CPU vs PyTorch eager FP32 (CPU)", TARGETS["ort_cpu_vs_torch"],
            ort_cpu["throughput_fps"] / torch_cpu["throughput_fps"],
            f"best batch of each: onnxruntime-cpu b{ort_cpu['batch']} vs torch-cpu b{torch_cpu['batch']}"))
    targets += _openvino_targets(rows, model, ort_cpu)
    ran = [p for p in pipeline if p.get("ratio_vs_compute") is not None]
    if ran:
        fastest = max(ran, key=lambda p: p["throughput_fps"])
        stage = fastest.get("ratio_vs_infer_stage")
        targets.append(_target(
            "whole pipeline vs compute-only throughput", TARGETS["pipeline_vs_compute"],
            fastest["ratio_vs_compute"],
            f"{fastest['backend']} {fastest['precision']} b{fastest['batch']} (the fastest pipeline); vs the "
            f"inference rate inside the same run: {_f(stage, 3)}x"))
    t32, t16 = _best(_ok(rows, "torch-cuda", "fp32")), _best(_ok(rows, "torch-cuda", "fp16"))
    if t32 and t16:
        targets.append(_target("PyTorch FP16 vs FP32 (GPU)", TARGETS["torch_fp16_vs_fp32"],
                               t16["throughput_fps"] / t32["throughput_fps"], "best batch of each"))
    targets += _gpu_targets(gpu_rows, peaks, model)
    return {"model": model, "baseline": f"{base_backend} fp32", "rows": rows, "pipeline": pipeline,
            "targets": targets}


def _gpu_targets(gpu_rows: Sequence[dict[str, Any]], peaks: Sequence[dict[str, Any]],
                 model: dict[str, Any]) -> list[dict[str, Any]]:
    """Device-time targets of the fastest GPU row: fraction of the FP16 peak, speed-up over PyTorch
    FP32 (TF32 off), and one tile's end-to-end p99 latency at batch 1."""
    timed = [r for r in gpu_rows if _device_fps(r)]
    if not timed:
        return []
    which = model.get("preset") or model["name"]
    best = max(timed, key=_device_fps)
    label = f"{best['backend']} {best['precision']} b{best['batch']}"
    out = []
    fp16_peak = _peak(peaks, "cuda", "fp16")
    if fp16_peak:
        out.append(_target(
            "best GPU backend vs FP16 matrix-product peak (device time)", TARGETS["gpu_fraction_of_peak"],
            best["device_achieved_tflops"] / fp16_peak["tflops"],
            f"{label}; the target is stated for the paper preset (this model: {which})"))
    fp32 = [r for r in timed if r["backend"] == "torch-cuda" and r["precision"] == "fp32"]
    if fp32:
        ref = max(fp32, key=_device_fps)
        out.append(_target("best GPU backend vs PyTorch FP32, TF32 off (device time)", TARGETS["gpu_vs_torch_fp32"],
                           _device_fps(best) / _device_fps(ref),
                           f"{label} vs torch-cuda fp32 b{ref['batch']}; stated for the paper preset (this model: {which})"))
    single = [r for r in timed if r["batch"] == 1]
    if single:
        one = max(single, key=_device_fps)
        out.append(_target("one tile's end-to-end latency, p99 (ms)", TARGETS["gpu_stream_p99_ms"],
                           one["latency_ms"]["p99_ms"],
                           f"{one['backend']} {one['precision']} b1, host copies included (device time p99 "
                           f"{_f(one['device_time']['latency_ms']['p99_ms'], 3)} ms); stated for a 64x128x128 tile "
                           f"of the paper preset (this model: {which})", at_most=True))
    return out


def _openvino_targets(rows: Sequence[dict[str, Any]], model: dict[str, Any],
                      ort_cpu: dict[str, Any] | None) -> list[dict[str, Any]]:
    """OpenVINO FP32 and BF16 vs ONNX Runtime FP32 (best batch of each); a skipped BF16 row says why."""
    out: list[dict[str, Any]] = []
    if ort_cpu is None:
        return out
    which = model.get("preset") or model["name"]
    for precision, key in (("fp32", "openvino_fp32_vs_ort"), ("bf16", "openvino_bf16_vs_ort")):
        best = _best(_ok(rows, "openvino-cpu", precision))
        if best is not None:
            out.append(_target(f"OpenVINO {precision.upper()} vs ONNX Runtime FP32 (CPU)", TARGETS[key],
                               best["throughput_fps"] / ort_cpu["throughput_fps"],
                               f"best batch of each: openvino-cpu {precision} b{best['batch']} vs onnxruntime-cpu "
                               f"b{ort_cpu['batch']}; stated for the paper preset (this model: {which})"))
            continue
        skipped = [r for r in rows if r["backend"] == "openvino-cpu" and r["precision"] == precision]
        if skipped:
            out.append(_target(f"OpenVINO {precision.upper()} vs ONNX Runtime FP32 (CPU)", TARGETS[key], None,
                               f"not measured: {skipped[0]['status']}: {skipped[0]['reason']}"))
    return out


# -- renderings ---------------------------------------------------------------------------------

def _f(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) < 10 ** -digits or abs(value) >= 1e5):
            return f"{value:.2e}"
        if abs(value) < 1:
            return f"{value:.{digits}g}"
        text = f"{value:.{digits}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    return str(value)


_COLUMNS = ("backend", "precision", "batch", "tiles/s", "p50 ms", "p95 ms", "p99 ms", "speed-up",
            "TFLOP/s", "of peak", "host MiB", "dev MiB", "max err um", "p99 err um", "Dice T/tgt", "status")


def _cells(r: dict[str, Any]) -> list[str]:
    if r["status"] != "ok":
        return [r["backend"], r["precision"], str(r["batch"])] + ["-"] * (len(_COLUMNS) - 4) + \
               [f"{r['status']}: {r['reason']}"]
    lat, acc = r["latency_ms"], r.get("accuracy") or {}

    def _dice(kind: str) -> str:  # a Dice of two empty masks says nothing
        return "empty" if acc.get(f"reference_{kind}_voxels") == 0 else _f(acc.get(f"dice_{kind}"), 4)

    dice = f"{_dice('tcell')}/{_dice('target')}" if acc else "-"
    frac = r.get("fraction_of_peak")
    # PyTorch's allocator sees only its own tensors: TensorRT and ONNX Runtime rows show the device's use
    dev = r.get("device_peak_mib") if str(r["backend"]).startswith("torch") else r.get("device_used_mib")
    return [r["backend"], r["precision"], str(r["batch"]), _f(r["throughput_fps"], 4), _f(lat["p50_ms"], 1),
            _f(lat["p95_ms"], 1), _f(lat["p99_ms"], 1), _f(r.get("speedup_vs_baseline"), 2),
            _f(r.get("achieved_tflops"), 3), "-" if frac is None else f"{100 * frac:.1f}%",
            _f(r.get("host_peak_rss_mib"), 0), _f(dev, 0), _f(acc.get("max_abs_um"), 2),
            _f(acc.get("p99_abs_um"), 2), dice, "ok"]


def _context_lines(report: dict[str, Any]) -> list[str]:
    m = report["machine"]
    libs = m.get("libraries", {})
    gpu = f"{m['gpu']} (cc {m['gpu_compute_capability']}, {m['gpu_memory_gib']} GiB)" if m.get("gpu") else "none"
    peaks = ", ".join(f"{p['device']} {p['precision']} {_f(p['tflops'], 3)} TFLOP/s"
                      + (f" ({p['size']}^2)" if p.get("size") else "")
                      + (f" [{p['math']}]" if p.get("math") and p["math"] != p["precision"] else "")
                      + (f" (spec {p['spec']['card']}: {_f(p['spec']['tflops'], 4)})" if p.get("spec") else "")
                      + (f" [run {p['run']}: {', '.join(p.get('models') or [])}]" if p.get("run") else "")
                      + (f" [{p.get('status')}: {p.get('reason')}]" if p.get("status") not in (None, "ok") else "")
                      for p in report["peaks"]) or "-"
    s = report["settings"]
    return [
        f"machine: {m['cpu']}, {m['cpu_cores']} CPUs, {m['memory_gib']} GiB; GPU: {gpu}; {m['os']}, Python {m['python']}",
        "libraries: " + ", ".join(f"{k} {v}" for k, v in libs.items() if k != "onnxruntime_providers")
        + (f"; ORT providers: {libs['onnxruntime_providers']}" if libs.get("onnxruntime_providers") else ""),
        ("matrix-product peak (measured in each merged run, under that run's load; each model's "
         f"'of peak' uses its own run's): {peaks}" if report.get("merged_from")
         else f"matrix-product peak (measured in this run): {peaks}"),
        *([f"CPU flags: {' '.join(m['cpu_flags'])}"] if m.get("cpu_flags") else []),
        ("settings of the first merged run (each model's own are in its Run line): " if report.get("merged_from")
         else "settings: ")
        + f"batches {s['batches']}, {s['frames']} tiles timed per row after {s['warmup_calls']} warm-up "
        f"call(s), CPU threads {s['cpu_threads']}, pipeline "
        + (f"on ({s.get('pipeline_frames') or s['frames']} frames)" if s["pipeline"] else "off"),
        f"load average (1/5/15 min) before {report.get('load_average_before')}, after "
        f"{report.get('load_average_after')}; date {report['date_utc']}; elapsed {report.get('elapsed_s')} s",
    ]


def _model_line(mr: dict[str, Any]) -> str:
    md = mr["model"]
    return (f"{md['name']} ({md['source']}): {md['parameters']:,} parameters, tile {tuple(md['tile_zyx'])}, "
            f"{md['gflops_per_tile']} GFLOP per tile; baseline {mr['baseline']}")


def _pipeline_cells(p: dict[str, Any]) -> list[str]:
    st = p.get("stages_ms", {})
    stages = ", ".join(f"{k[:-3]} {_f(v, 1)}" for k, v in st.items()) or "-"
    return [p["backend"], p["precision"], str(p["batch"]), "yes" if p.get("tta") else "no", _f(p.get("throughput_fps"), 4),
            _f(p.get("compute_throughput_fps"), 4), _f(p.get("ratio_vs_compute"), 3),
            _f(p.get("ratio_vs_infer_stage"), 3),
            _f((p.get("latency_ms") or {}).get("p50_ms"), 1), stages,
            p.get("status", "?") + (f": {p['reason']}" if p.get("reason") else "")]


_PIPE_COLUMNS = ("backend", "precision", "batch", "tta", "pipeline frames/s", "compute tiles/s", "ratio",
                 "ratio vs infer stage",
                 "latency p50 ms", "median per-frame stage ms", "status")


def _gpu_split_rows(mr: dict[str, Any]) -> list[list[str]]:
    out = []
    for r in mr["rows"]:
        b = r.get("breakdown_ms")
        if r["status"] == "ok" and b:
            out.append([r["backend"], r["precision"], str(r["batch"]), _f(b["h2d_ms"], 2), _f(b["compute_ms"], 2),
                        _f(b["d2h_ms"], 2)])
    return out


_DEVICE_COLUMNS = ("backend", "precision", "batch", "device p50 ms", "device p95 ms", "device p99 ms", "calls",
                   "device tiles/s", "end-to-end tiles/s", "device TFLOP/s", "of peak (device)")


def _device_rows(mr: dict[str, Any]) -> list[list[str]]:
    out = []
    for r in mr["rows"]:
        d = r.get("device_time")
        if r["status"] != "ok" or not d:
            continue
        lat, frac = d["latency_ms"], r.get("device_fraction_of_peak")
        out.append([r["backend"], r["precision"], str(r["batch"]), _f(lat["p50_ms"], 3), _f(lat["p95_ms"], 3),
                    _f(lat["p99_ms"], 3), str(d["iterations"]), _f(d.get("tiles_per_s"), 4), _f(r["throughput_fps"], 4),
                    _f(r.get("device_achieved_tflops"), 3), "-" if frac is None else f"{100 * frac:.1f}%"])
    return out


def _targets_lines(mr: dict[str, Any]) -> list[str]:
    lines = []
    for t in mr["targets"]:
        verdict = {True: "met", False: "NOT met", None: "n/a"}[t["met"]]
        if "peak" in t["name"]:
            measured = "-" if t["measured"] is None else f"{100 * t['measured']:.1f}%"
            wanted = f"{100 * t['target']:.0f}%"
        elif t.get("at_most"):
            measured = "-" if t["measured"] is None else _f(t["measured"], 3)
            lines.append(f"{t['name']}: measured {measured} vs target <= {t['target']} -> {verdict} ({t['note']})")
            continue
        else:
            measured = "-" if t["measured"] is None else f"{_f(t['measured'], 3)}x"
            wanted = f"{t['target']}x"
        lines.append(f"{t['name']}: measured {measured} vs target >= {wanted} -> {verdict} ({t['note']})")
    return lines


def _text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*header), fmt.format(*("-" * w for w in widths)), *(fmt.format(*r) for r in rows)]


def format_table(report: dict[str, Any]) -> str:
    """The report as plain text for a terminal."""
    lines = _context_lines(report)
    for mr in report["models"]:
        lines += ["", "== " + _model_line(mr)]
        lines += _text_table(_COLUMNS, [_cells(r) for r in mr["rows"]])
        device = _device_rows(mr)
        if device:
            lines += ["", "GPU device time (CUDA events around forward_device, input resident):"]
            lines += _text_table(_DEVICE_COLUMNS, device)
        split = _gpu_split_rows(mr)
        if split:
            lines += ["", "GPU split (median ms per batch, CUDA events):"]
            lines += _text_table(("backend", "precision", "batch", "H2D", "compute", "D2H"), split)
        if mr["pipeline"]:
            lines += ["", "whole pipeline (files -> read -> preprocess -> infer -> analyze -> track -> write):"]
            lines += _text_table(_PIPE_COLUMNS, [_pipeline_cells(p) for p in mr["pipeline"]])
        if mr["targets"]:
            lines += ["", "targets:"] + ["  " + t for t in _targets_lines(mr)]
    return "\n".join(lines)


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(esc(c) for c in r) + " |" for r in rows)]


def to_markdown(report: dict[str, Any], title: str = "deepis-rt bench") -> str:
    """The report as Markdown (context, one table per model, GPU split, pipeline, targets)."""
    lines = [f"# {title}", ""] + [f"- {line}" for line in _context_lines(report)]
    for command in report.get("commands") or [report.get("command")]:
        if command:
            lines.append(f"- command: `{command}`")
    lines += ["", "Columns: tiles/s = throughput (one tile = one frame of the model's tile size); latency "
              "percentiles per call (one batch); speed-up vs the baseline at the same batch; TFLOP/s = FLOPs "
              "per tile x tiles/s; of peak = that over the matrix-product peak of the same device and "
              "precision; host MiB = peak resident memory of the process during the row; dev MiB = PyTorch's "
              "peak allocation for torch rows, and for TensorRT and ONNX Runtime rows (whose memory PyTorch "
              "does not see) the GPU memory in use after the row, all processes; errors and Dice "
              "vs the baseline's output on a synthetic conjugate (masks: distance beyond +-half the voxel pitch)."]
    for mr in report["models"]:
        lines += ["", f"## {mr['model']['name']}", "", _model_line(mr), ""]
        if mr.get("settings"):  # a merged report: this model's own run
            st, la = mr["settings"], mr.get("load_average") or {}
            pipe = f"; pipeline {st.get('pipeline_frames') or st['frames']} frames" if st.get("pipeline") else ""
            lines += [f"Run: {mr.get('date_utc')}; {st['frames']} tiles timed per row after {st['warmup_calls']} "
                      f"warm-up call(s){pipe}; load average before {la.get('before')}, after {la.get('after')}.", ""]
        lines += _md_table(_COLUMNS, [_cells(r) for r in mr["rows"]])
        device = _device_rows(mr)
        if device:
            lines += ["", "GPU device time: CUDA events around each `forward_device` call on an input already on "
                      "the GPU, after warm-up, read after one synchronisation at the end (the queue stays full); "
                      "percentiles over those calls. End-to-end tiles/s (host copies from pageable memory, "
                      "synchronisation and Python included) beside it; of peak = device TFLOP/s over the measured "
                      "matrix-product peak of the same precision (FP32: TF32 off).", ""]
            lines += _md_table(_DEVICE_COLUMNS, device)
        split = _gpu_split_rows(mr)
        if split:
            lines += ["", "GPU split, median ms per batch (CUDA events): host-to-device copy, compute, device-to-host copy.", ""]
            lines += _md_table(("backend", "precision", "batch", "H2D", "compute", "D2H"), split)
        if mr["pipeline"]:
            lines += ["", "Whole pipeline: frames from OME-TIFF files on disk through `deepis_rt.stream.Stream` "
                      "(read, pre-process, infer, post-process, analyse, track, write masks and tables); "
                      "stage times are per-frame medians from its frames.csv. ratio = pipeline frames/s over the "
                      "compute-only tiles/s at the same batch (measured minutes apart, so a change of machine "
                      "load moves it); ratio vs infer stage = pipeline frames/s x the median infer ms per frame "
                      "of the same run. tta = test-time augmentation (`--tta`: four flips per frame, "
                      "each also analysed).", ""]
            lines += _md_table(_PIPE_COLUMNS, [_pipeline_cells(p) for p in mr["pipeline"]])
        if mr["targets"]:
            lines += ["", "Targets (measured figures, not pass/fail tests):", ""]
            lines += [f"- {t}" for t in _targets_lines(mr)]
    return "\n".join(lines) + "\n"


def write_json(report: dict[str, Any], path: str | Path) -> Path:
    """Write the report as JSON (non-finite numbers become null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(report), indent=2) + "\n")
    return path


def merge_reports(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One report from several runs on the same machine (e.g. one per preset): models and peaks
    concatenated; context from the first, load averages from the first and the last."""
    if not reports:
        raise ValueError("merge_reports: no reports")
    merged = json.loads(json.dumps(json_safe(reports[0])))
    # each run measured its own peak under its own load, and its models' fractions of peak use it:
    # every peak says which run and models it belongs to
    merged["peaks"] = []
    for run, report in enumerate(reports, start=1):
        names = [str(m.get("model", {}).get("name", "?")) for m in report["models"]]
        merged["peaks"] += [{**p, "run": run, "models": names} for p in json_safe(report["peaks"])]
    for extra in reports[1:]:
        merged["models"] += json.loads(json.dumps(json_safe(extra["models"])))
        merged["elapsed_s"] = round((merged.get("elapsed_s") or 0) + (extra.get("elapsed_s") or 0), 1)
        merged["load_average_after"] = extra.get("load_average_after")
    merged["merged_from"] = len(reports)
    merged["commands"] = [r.get("command") for r in reports]
    return merged
