#!/usr/bin/env bash
# Wheels of deepis-rt's dependencies that a lent GPU machine's image lacks, fetched here (where the
# package index is reachable) for that machine's Python, so that gpu_check.sh runs the first time there:
#
#   bash benchmarks/gpu_wheels.sh                 -> .whl/ (a few MB; ignored by git)
#   GPU_PYTHON_VERSION=3.12 bash benchmarks/gpu_wheels.sh /some/folder
#
# Carry the folder to the GPU machine with the repository; benchmarks/gpu_check.sh installs every wheel in
# it (or in $WHEELHOUSE) into a private folder on PYTHONPATH, with no network and no dependency
# resolution. The list: the packages the GPU image (PyTorch, CuPy, ONNX, ONNX Runtime, SciPy, pandas,
# scikit-image, scikit-learn, h5py, tifffile, click, ... already there) does not hold: laptrack and its
# pydantic / pooch, watchdog, and zarr with its codecs. A package missing there anyway shows in env.json's missing_dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${1:-.whl}"
PYVER="${GPU_PYTHON_VERSION:-3.12}"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
mkdir -p "$DEST"
download() {
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DEST" "$@"
}
download laptrack watchdog pooch platformdirs pydantic annotated-types typing-inspection
# the OME-Zarr time-lapse store that stream writes
download zarr numcodecs donfig google-crc32c pyyaml
# pydantic pins its compiled core exactly: fetch that version
core=$("$PY" - "$DEST" <<'PYEOF'
import re, sys, zipfile
from pathlib import Path

wheel = sorted(Path(sys.argv[1]).glob("pydantic-[0-9]*.whl"))[-1]
with zipfile.ZipFile(wheel) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    print(re.search(r"^Requires-Dist: pydantic-core\s*==\s*([0-9.]+)", z.read(meta).decode(), re.M).group(1))
PYEOF
)
download "pydantic-core==$core"
ls -1 "$DEST"/*.whl
du -sh "$DEST"
