"""Fixtures of the cluster tests (helpers live in cluster_helpers.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cluster_helpers import TILE, pointwise_onnx
from ray_nodes import WORKER_IP, RayCluster, loopback_addresses_usable


@pytest.fixture
def export_dir(tmp_path: Path) -> Path:
    """A folder shaped like `deepis-rt export` output (ONNX files + manifest.json)."""
    from deepis_rt.checkpoint import file_sha256

    folder = tmp_path / "export" / "tiny"
    fp32 = pointwise_onnx(folder / "tiny.fp32.onnx")
    fp16 = pointwise_onnx(folder / "tiny.fp16.onnx")
    manifest = {
        "format": "deepis-rt-export",
        "format_version": 1,
        "name": "tiny",
        "files": [
            {"path": fp32.name, "precision": "fp32", "sha256": file_sha256(fp32)},
            {"path": fp16.name, "precision": "fp16", "sha256": file_sha256(fp16)},
        ],
        "batch_profile": {"min": [1, 1, *TILE], "opt": [1, 1, *TILE], "max": [4, 1, *TILE]},
        "engine": None,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


# --------------------------------------------------------------------------------------------
# a real Triton Inference Server: the tritonserver of the nvidia-pytriton wheel
# --------------------------------------------------------------------------------------------

PYTRITON_VERSION = "0.7.0"  # tritonserver 2.51 with its Python backend


def _pytriton_from_pypi() -> Path:
    """nvidia-pytriton's wheel, unpacked once into the user's cache (pip download, no dependencies).

    Not a [dev] dependency: pytriton's own requirements pin NumPy < 2, and only its server is used.
    """
    import os
    import subprocess
    import sys
    import zipfile

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "deepis-rt"
    root = cache / f"nvidia-pytriton-{PYTRITON_VERSION}"
    if (root / ".complete").is_file():
        return root
    wheels = cache / "wheels"
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           f"nvidia-pytriton=={PYTRITON_VERSION}", "-d", str(wheels)]
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=900)
    except (subprocess.SubprocessError, OSError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        pytest.skip(f"needs a real tritonserver: `pip install --no-deps nvidia-pytriton` failed here "
                    f"(no access to PyPI?): {detail.decode(errors='replace')[-300:] or exc}")
    wheel = next(wheels.glob(f"nvidia_pytriton-{PYTRITON_VERSION}-*.whl"))
    tmp = cache / f".unpack-{os.getpid()}"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(tmp)
    server = tmp / "pytriton" / "tritonserver"
    for exe in [server / "bin" / "tritonserver", *server.glob("python_backend_stubs/*/triton_python_backend_stub")]:
        exe.chmod(0o755)  # zip archives do not keep the executable bit
    (tmp / ".complete").write_text(wheel.name)
    if root.exists():
        import shutil

        shutil.rmtree(root)
    tmp.rename(root)
    return root


@pytest.fixture(scope="session")
def tritonserver_dist():
    """The tritonserver distribution: an installed nvidia-pytriton, else its wheel fetched from PyPI."""
    from deepis_rt.cluster.triton_server import find_tritonserver
    from deepis_rt.errors import MissingDependencyError

    try:
        return find_tritonserver()
    except MissingDependencyError:
        return find_tritonserver(_pytriton_from_pypi())


@pytest.fixture(scope="session")
def triton_python_repo(tmp_path_factory):
    """A tiny DeepIS network exported by `deepis-rt export --triton REPO --triton-backend python`.

    Returns (model repository, export folder).
    """
    import torch
    from click.testing import CliRunner

    from deepis_rt.checkpoint import save_checkpoint
    from deepis_rt.cli import main
    from deepis_rt.model import build_model

    root = tmp_path_factory.mktemp("triton-python")
    torch.manual_seed(3)
    model = build_model("deepis-lite", widths=(4, 8, 8, 8, 8), skip_width=4)
    ckpt = root / "tiny.pt"
    save_checkpoint(ckpt, model, meta={"tile_zyx": list(TILE), "description": "tiny deepis-lite for Triton tests"})
    result = CliRunner().invoke(main, [
        "export", str(ckpt), "--out", str(root / "export"), "--no-fp16", "--no-trt",
        "--triton", str(root / "repo"), "--triton-backend", "python", "--triton-kind", "cpu",
    ])
    assert result.exit_code == 0, result.output
    assert "python" in result.output and "serve-triton" in result.output
    return root / "repo", root / "export" / "tiny"


@pytest.fixture(scope="session")
def triton_server(tritonserver_dist, triton_python_repo):
    """A real tritonserver serving the tiny model on free loopback ports; always stopped at the end."""
    from deepis_rt.cluster.triton_server import TritonServer

    server = TritonServer(triton_python_repo[0], distribution=tritonserver_dist)
    try:
        server.start(wait_s=120)
        yield server
    finally:
        server.close()


# --------------------------------------------------------------------------------------------
# a real two-node Ray cluster on loopback addresses, one per test session (see ray_nodes.py)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ray_cluster():
    """Head (2 CPUs, 127.0.0.2) and worker node (1 CPU, 127.0.0.3); stopped at the end, nothing left running.

    Modules take it through their own ``cluster`` fixture, which revives the worker node when an
    earlier module's test killed it (:meth:`RayCluster.ensure_worker`).
    """
    pytest.importorskip("ray", reason="needs Ray (pip install 'deepis-rt[cluster]')")
    if not loopback_addresses_usable():
        pytest.skip(f"needs the loopback addresses 127.0.0.2 and {WORKER_IP} (all of 127.0.0.0/8 on Linux)")
    c = RayCluster.create()
    try:
        # a lost node is declared dead after ~3 s instead of Ray's default ~15 s (test speed only)
        c.start_head(num_cpus=2, env={"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"})
        c.start_worker(ip=WORKER_IP)
        c.wait_ready()
        yield c
    finally:
        c.stop()
        left = c.leftover_pids()
        c.cleanup()
        assert not left, f"processes of the test cluster still running: {left}"
