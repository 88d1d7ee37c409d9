#!/usr/bin/env bash
# Wheels of what deepis-rt imports at run time and the lent GPU machine's image lacks, fetched here (where
# the package index is reachable), pinned, for that machine's Python (3.12, x86-64, manylinux):
#
#   bash benchmarks/gpu_wheels.sh               -> .whl/ (~13 MB) and .whl-openvino/ (~31 MB); both git-ignored
#   GPU_PYTHON_VERSION=3.12 bash benchmarks/gpu_wheels.sh /some/folder /other/folder
#
# The image (Python 3.12, torch, triton, numpy, scipy, scikit-image, scikit-learn, pandas, networkx, tifffile,
# h5py, click, tqdm, matplotlib, filelock, onnx, onnxscript, onnxruntime, pyyaml, requests, packaging,
# pytest, pytest-timeout) lacks: laptrack (tracking) with pydantic, pydantic-core, annotated-types,
# typing-inspection, pooch and platformdirs; watchdog (folder watching); zarr (the OME-Zarr time-lapse store)
# with numcodecs, donfig and google-crc32c; and a typing-extensions new enough for pydantic (>= 4.15). The
# versions are the ones the test suite ran with. env.json (in stages.tar.gz) lists the wheels installed
# there ("carried_wheels") and any import still missing ("missing_dependencies").
#
# OpenVINO has its own folder: with the other wheels and the repository the tree would pass the 64 MiB a
# call may carry. Carry it in a second, short call (docs/runtime.md):
#   carry [".whl-openvino"], command: OUT=$OUT bash benchmarks/gpu_check.sh --stages env,openvino-bf16
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${1:-.whl}"
DEST_OPENVINO="${2:-.whl-openvino}"
PYVER="${GPU_PYTHON_VERSION:-3.12}"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
mkdir -p "$DEST" "$DEST_OPENVINO"
download() {
  local dest="$1"; shift
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dest" "$@"
}
# tracking (laptrack and what it needs beyond the image)
download "$DEST" laptrack==0.17.1 pydantic==2.12.5 pydantic-core==2.41.5 annotated-types==0.8.0 \
  typing-inspection==0.4.5 typing-extensions==4.16.0 pooch==1.9.0 platformdirs==4.14.9
# folder watching; the OME-Zarr time-lapse store
download "$DEST" watchdog==7.1.1 zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0
# the OpenVINO BF16 stage (a separate call), slimmed to what the CPU path uses: without the GPU and NPU
# plugins, the GPU kernel cache and the TensorFlow / PyTorch / Paddle / JAX / GGUF frontends, the wheel
# drops from ~59 MB to ~31 MB, so that it and the repository (~15 MB) stay under the 64 MiB a call carries.
# OpenVINO finds its plugins by their libraries: a removed one is simply not a device there.
download "$DEST_OPENVINO" openvino==2026.4.1 openvino-telemetry==2025.2.0
"$PY" - "$DEST_OPENVINO" <<'PYEOF'
import base64, hashlib, re, sys, zipfile
from pathlib import Path

DROP = re.compile(r"openvino/(libs/(libopenvino_intel_(gpu|npu)_plugin\.so|cache\.json|libopenvino_(tensorflow|"
                  r"tensorflow_lite|pytorch|paddle|jax|gguf)_frontend\.so[.0-9]*)|frontend/(tensorflow|pytorch|paddle|jax)/)")
for wheel in Path(sys.argv[1]).glob("openvino-[0-9]*.whl"):
    slim = wheel.with_name(wheel.name + ".slim")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
        record_name = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
        kept = []
        for info in src.infolist():
            if info.filename == record_name or DROP.match(info.filename):
                continue
            data = src.read(info)
            dst.writestr(info, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            kept.append(f"{info.filename},sha256={digest},{len(data)}")
        dst.writestr(record_name, "\n".join(kept + [f"{record_name},,"]) + "\n")
    before, after = wheel.stat().st_size, slim.stat().st_size
    slim.replace(wheel)
    print(f"{wheel.name}: {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB (CPU plugin and ONNX / IR frontends kept)")
PYEOF
ls -1 "$DEST"/*.whl "$DEST_OPENVINO"/*.whl
du -sh "$DEST" "$DEST_OPENVINO"
