#!/usr/bin/env bash
# The device check for a lent GPU machine (one command of at most 8 minutes; at most 8 files come back).
#
#   OUT=/some/folder bash benchmarks/gpu_check.sh                    (repository root; ~7.5 min worst case)
#   OUT=/some/folder bash benchmarks/gpu_check.sh --stages env,openvino-bf16   (the second, short call)
#   OUT=/tmp/x bash benchmarks/gpu_check.sh --dry-run                (any machine: CPU figures, tiny models)
#
# $OUT receives four files, rewritten as the run goes (a kill at any moment keeps what was measured):
#   summary.json   every stage's status and figures, every measured row, the targets   (after each row)
#   summary.md     the stages and targets at a glance
#   stages.tar.gz  all stage outputs: per-stage JSON and logs, JUnit XML, bench reports, lscpu (after each stage)
#   gpu_check.log  this console log
# Stage outputs are written to $WORK (default ${TMPDIR:-/tmp}/deepis-gpu-check), never to $OUT.
#
# Stages, most informative first, each with a budget (capped by the time left of $GPU_CHECK_BUDGET_S):
#   env             versions, GPU, driver, lscpu flags (AVX512_BF16 / AMX), missing imports, carried wheels  20 s
#   datapath        the pinned ring: depth 1 vs 3, copy/compute overlap, H2D GB/s, abandon + reuse           30 s
#   torch-variants  every PyTorch variant on the paper preset's 64x128x128 tile: parity with FP32, device
#                   time (CUDA events, 50 calls), end to end, compile time and cache; compiled ones last     150 s
#   bench-deepis    deepis-rt bench rows (torch CUDA FP32/FP16, CUDA graphs), peaks FP32 (TF32 off) /
#                   FP16 / BF16 beside the card's data sheet, device-time targets                            80 s
#   field           the full HT-2 field of view (210x732x732) through the Segmenter, fastest variant         60 s
#   pytest-gpu      the gpu-marked tests; one JSON line per test as it ends; --timeout=60 per test           80 s
#   ort-cuda, tensorrt   only where onnxruntime-gpu / TensorRT exist (not on the lent image)
#   openvino-bf16   only with OpenVINO installed and a host CPU with AVX512_BF16 or AMX                       120 s
#
# Wheels the image lacks (benchmarks/gpu_wheels.sh) are installed from .whl/ (or $WHEELHOUSE) and, when
# present, .whl-openvino/ (or $WHEELHOUSE_OPENVINO) into a private folder, with no network.
set -u
DRY=""
ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY="--dry-run" ;;
    --stages) ONLY="${2:-}"; shift ;;
    --stages=*) ONLY="${1#--stages=}" ;;
    -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-check-out}"
WORK="${WORK:-${TMPDIR:-/tmp}/deepis-gpu-check}"
# a full run starts clean; a run of some stages (--stages) adds to what an earlier call on this machine left
[ -z "$ONLY" ] && rm -rf "$WORK"
mkdir -p "$OUT" "$WORK"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# exported ONNX files, records and compiled kernels stay out of $OUT (large, rebuilt in seconds)
export DEEPIS_RT_CACHE="${DEEPIS_RT_CACHE:-$WORK/cache}"
export DEEPIS_RT_TEST_ENGINES="$WORK/engines"
# python3 first: on the lent image it is the interpreter that holds torch
PY="${PYTHON:-$(command -v python3 || command -v python)}"
START=$(date +%s)
TOTAL="${GPU_CHECK_BUDGET_S:-450}"   # inside one 8-minute call, with time for the transfer back
LOG="$OUT/gpu_check.log"
log() { echo "[$(date -u +%H:%M:%S) +$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }

# stage NAME BUDGET_S: run one stage with min(BUDGET_S, time left - reserve); a stage that dies or is
# killed still leaves $WORK/NAME.json saying so, and the summary and tarball are refreshed
stage() {
  local name="$1" budget="$2" left rc
  if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$name,"* ]] && [ "$name" != summary ]; then
    return
  fi
  left=$(( TOTAL - ($(date +%s) - START) - 10 ))
  [ "$name" = summary ] && left=$(( left + 10 ))
  if [ "$left" -lt 5 ]; then
    printf '{"stage": "%s", "status": "skipped: out of time"}\n' "$name" > "$WORK/$name.json"
    log "$name: skipped (out of time)"
    return
  fi
  [ "$budget" -gt "$left" ] && budget="$left"
  log "$name: start (budget ${budget}s)"
  timeout -k 5 "$budget" "$PY" benchmarks/gpu_check_stages.py "$name" --out "$OUT" --work "$WORK" \
    --budget-s "$budget" $DRY >> "$WORK/$name.log" 2>&1
  rc=$?
  if ! "$PY" -c "import json,sys; json.load(open(sys.argv[1]))" "$WORK/$name.json" 2>/dev/null; then
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
      printf '{"stage": "%s", "status": "timeout after %ss (rows measured before are kept)"}\n' "$name" "$budget" \
        > "$WORK/$name.json"
    else
      printf '{"stage": "%s", "status": "failed (exit %s, see %s.log in stages.tar.gz)"}\n' "$name" "$rc" "$name" \
        > "$WORK/$name.json"
    fi
    "$PY" benchmarks/gpu_check_stages.py summary --out "$OUT" --work "$WORK" $DRY >> "$WORK/summary.log" 2>&1
  fi
  log "$name: exit $rc; $(tail -n 1 "$WORK/$name.log" 2>/dev/null)"
}

# offline machines: the dependencies their image lacks, from carried wheel folders, into a private
# folder on PYTHONPATH: no network, no resolution
SITE="${GPU_CHECK_SITE:-${TMPDIR:-/tmp}/deepis-gpu-site}"
for house in "${WHEELHOUSE:-$PWD/.whl}" "${WHEELHOUSE_OPENVINO:-$PWD/.whl-openvino}"; do
  if compgen -G "$house/*.whl" > /dev/null; then
    log "installing $(ls "$house"/*.whl | wc -l) carried wheel(s) from $house into $SITE (no network)"
    if timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "$house"/*.whl >> "$WORK/pip_install.log" 2>&1; then
      export DEEPIS_GPU_CHECK_SITE="$SITE"
    else
      log "installing the wheels of $house failed (pip_install.log in stages.tar.gz); stages run without them"
    fi
  fi
done
[ -n "${DEEPIS_GPU_CHECK_SITE:-}" ] && export PYTHONPATH="$PYTHONPATH:$SITE"

stage env 20
stage datapath 30
stage torch-variants 150
stage bench-deepis 80
stage field 60
stage pytest-gpu 80
stage ort-cuda 30
stage tensorrt 60
stage openvino-bf16 120
stage summary 15
log "done in $(( $(date +%s) - START )) s; $OUT holds $(ls "$OUT" | wc -l) files"
