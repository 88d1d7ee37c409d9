#!/usr/bin/env bash
# The device check for a lent GPU machine: useful results even if it is killed at any moment.
#
#   OUT=/some/folder bash benchmarks/gpu_check.sh            (from the repository root; ~6 min worst case)
#   OUT=/tmp/x bash benchmarks/gpu_check.sh --dry-run        (any machine: every stage runs, GPU ones skip)
#
# Expects torch (CUDA), onnx and onnxruntime installed; needs no network and no TensorRT (deepis-rt's
# other dependencies: installed, or wheels carried in .whl/ (benchmarks/gpu_wheels.sh) or $WHEELHOUSE;
# env.json lists any still missing). Stages run
# cheapest and most informative first; each has its own time budget (`timeout`) and writes
# $OUT/<stage>.json (+ .log) the moment it ends, so a kill loses one stage, not the run:
#
#   env                 versions, GPUs, driver, CPU flags, commit                          (CPU only)
#   pytest-gpu          the gpu-marked tests: torch CUDA runner, CUDA graphs, pinned ring, GPU bench rows
#   datapath            the pinned ring measured: depth 1 vs 3, copy/compute overlap, H2D GB/s, abandon+reuse
#   bench-deepis-lite   torch CUDA FP32 vs FP16 vs CUDA graphs, batch 1 and 4
#   bench-deepis        the same for the paper-size preset
#   ort-cuda            ONNX Runtime CUDA EP rows, only if onnxruntime has the CUDA EP here
#   tensorrt            tensorrt-marked tests + TensorRT rows, only if TensorRT imports
#   summary             summary.json / summary.md: every stage's status
#
# One engines/timing-cache folder ($OUT/engines, or $ENGINES) is shared by every stage and test, so
# TensorRT tests and bench rows reuse engines instead of rebuilding them.
set -u
DRY=""
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY="--dry-run" ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-check-out}"
ENGINES="${ENGINES:-$OUT/engines}"
mkdir -p "$OUT" "$ENGINES"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# exported ONNX files stay out of $OUT (large, rebuilt in seconds)
export DEEPIS_RT_CACHE="${DEEPIS_RT_CACHE:-${TMPDIR:-/tmp}/deepis-rt-cache}"
export DEEPIS_RT_TEST_ENGINES="$ENGINES"
PY="${PYTHON:-$(command -v python || command -v python3)}"
START=$(date +%s)
TOTAL="${GPU_CHECK_BUDGET_S:-345}"   # leave a margin inside the 6 minutes
LOG="$OUT/gpu_check.log"
log() { echo "[$(date -u +%H:%M:%S) +$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }

# stage NAME BUDGET_S: run one stage with min(BUDGET_S, time left - reserve); a stage that dies or is
# killed still leaves $OUT/NAME.json saying so
stage() {
  local name="$1" budget="$2" left rc
  left=$(( TOTAL - ($(date +%s) - START) - 8 ))
  [ "$name" = summary ] && left=$(( left + 8 ))
  if [ "$left" -lt 5 ]; then
    printf '{"stage": "%s", "status": "skipped: out of time"}\n' "$name" > "$OUT/$name.json"
    log "$name: skipped (out of time)"
    return
  fi
  [ "$budget" -gt "$left" ] && budget="$left"
  log "$name: start (budget ${budget}s)"
  timeout -k 5 "$budget" "$PY" benchmarks/gpu_check_stages.py "$name" --out "$OUT" --engines "$ENGINES" \
    --budget-s "$budget" $DRY >> "$OUT/$name.log" 2>&1
  rc=$?
  if ! "$PY" -c "import json,sys; json.load(open(sys.argv[1]))" "$OUT/$name.json" 2>/dev/null; then
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
      printf '{"stage": "%s", "status": "timeout after %ss"}\n' "$name" "$budget" > "$OUT/$name.json"
    else
      printf '{"stage": "%s", "status": "failed (exit %s, see %s.log)"}\n' "$name" "$rc" "$name" > "$OUT/$name.json"
    fi
  fi
  log "$name: exit $rc -> $OUT/$name.json"
}

# offline machines: the dependencies their image lacks, from a carried wheel folder (.whl/, made by
# benchmarks/gpu_wheels.sh, or $WHEELHOUSE), into a private folder on PYTHONPATH: no network, no resolution
WHEELHOUSE="${WHEELHOUSE:-$PWD/.whl}"
if compgen -G "$WHEELHOUSE/*.whl" > /dev/null; then
  SITE="${GPU_CHECK_SITE:-${TMPDIR:-/tmp}/deepis-gpu-site}"
  log "installing $(ls "$WHEELHOUSE"/*.whl | wc -l) carried wheel(s) from $WHEELHOUSE into $SITE (no network)"
  if timeout 90 "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" \
      "$WHEELHOUSE"/*.whl > "$OUT/pip_install.log" 2>&1; then
    export PYTHONPATH="$PYTHONPATH:$SITE"
    export DEEPIS_GPU_CHECK_SITE="$SITE"
  else
    log "installing the carried wheels failed (see pip_install.log); stages run without them"
  fi
fi
stage env 25
stage pytest-gpu 90
stage datapath 40
stage bench-deepis-lite 60
stage bench-deepis 80
stage ort-cuda 40
stage tensorrt 120
stage summary 15
log "done in $(( $(date +%s) - START )) s; results in $OUT"
