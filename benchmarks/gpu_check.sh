#!/usr/bin/env bash
# GPU check for a lent GPU machine (torch + CUDA, onnx, onnxruntime already installed; no internet).
#
#   OUT=/some/folder bash benchmarks/gpu_check.sh      (run from the repository root)
#
# 1. installs deepis-rt without dependencies (pip install --no-deps -e .)
# 2. runs the GPU- and TensorRT-marked tests (pytest -m "gpu or tensorrt")
# 3. runs `deepis-rt bench` on the GPU for both presets (FP32 and FP16; batch 1, 4 and 8, the best of
#    which the report shows; whole pipeline on), then merges both into gpu-<gpu>.json / .md / .png
# Everything is written under $OUT. Each step has its own `timeout`; the worst case is about 6.5
# minutes in all, so the script ends well inside 8 minutes even when a step hangs.
set -u
OUT="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT"
# exported ONNX files stay out of $OUT (they are large and rebuilt in seconds)
export DEEPIS_RT_CACHE="${DEEPIS_RT_CACHE:-${TMPDIR:-/tmp}/deepis-rt-cache}"
LOG="$OUT/gpu_check.log"
START=$(date +%s)
log() { echo "[$(date -u +%H:%M:%S) +$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }

log "environment -> env.txt"
{
  nvidia-smi 2>&1 || echo "nvidia-smi not found"
  python -V
  python - <<'PY'
import importlib
for name in ("torch", "onnx", "onnxruntime", "onnxscript", "onnxslim", "tensorrt", "cupy", "numpy", "scipy",
             "skimage", "tifffile", "h5py", "click", "laptrack", "watchdog", "tqdm", "matplotlib"):
    try:
        mod = importlib.import_module(name)
        print(f"{name:12s} {getattr(mod, '__version__', '?')}")
    except Exception as exc:
        print(f"{name:12s} MISSING ({type(exc).__name__}: {exc})")
import torch
print("cuda available:", torch.cuda.is_available(), "| torch CUDA", torch.version.cuda,
      "| device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
PY
} > "$OUT/env.txt" 2>&1

log "pip install --no-deps -e . -> pip_install.txt"
timeout 45 python -m pip install --no-deps --no-build-isolation -e . > "$OUT/pip_install.txt" 2>&1 \
  || timeout 45 python -m pip install --no-deps -e . >> "$OUT/pip_install.txt" 2>&1 \
  || log "pip install failed (see pip_install.txt); using the source tree on PYTHONPATH"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

log "pytest -m 'gpu or tensorrt' -> pytest_gpu.txt"
timeout 100 python -m pytest -m "gpu or tensorrt" -q -rs -p no:cacheprovider tests > "$OUT/pytest_gpu.txt" 2>&1
log "pytest exit code $? ($(tail -n 1 "$OUT/pytest_gpu.txt"))"

for preset in deepis-lite deepis; do
  case "$preset" in deepis-lite) limit=90 ;; *) limit=140 ;; esac
  log "bench $preset (timeout ${limit}s) -> bench-$preset.{txt,json,md,png}"
  timeout "$limit" python -m deepis_rt -v bench --preset "$preset" --backends gpu --precision fp32,fp16 \
    --batch 1,4,8 --frames 16 --pipeline --pipeline-frames 8 --engines "$OUT/engines" \
    --json "$OUT/bench-$preset.json" --markdown "$OUT/bench-$preset.md" --plot "$OUT/bench-$preset.png" \
    > "$OUT/bench-$preset.txt" 2>&1
  log "bench $preset exit code $?"
done

log "merging the presets -> gpu-<gpu>.{json,md,png}"
timeout 60 python - "$OUT" >> "$LOG" 2>&1 <<'PY'
import json, re, sys
from pathlib import Path

from deepis_rt.bench.plot import plot_report
from deepis_rt.bench.report import merge_reports, to_markdown, write_json

out = Path(sys.argv[1])
reports = [json.loads(p.read_text()) for p in (out / "bench-deepis-lite.json", out / "bench-deepis.json") if p.is_file()]
if not reports:
    sys.exit("no bench report to merge")
merged = merge_reports(reports)
gpu = merged["machine"].get("gpu") or "no-gpu"
stem = "gpu-" + re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
write_json(merged, out / f"{stem}.json")
(out / f"{stem}.md").write_text(to_markdown(merged, title=f"deepis-rt bench: GPU ({gpu})"))
plot_report(merged, out / f"{stem}.png")
print("wrote", stem)
PY
rm -rf "$OUT/engines"
log "done in $(( $(date +%s) - START )) s"
