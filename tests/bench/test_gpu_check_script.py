"""benchmarks/gpu_check.sh runs end to end on a CPU (--dry-run) and leaves one valid JSON per stage."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STAGES = ["env", "pytest-gpu", "datapath", "bench-deepis-lite", "bench-deepis", "ort-cuda", "tensorrt", "summary"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_gpu_check_dry_run_writes_every_stage(tmp_path):
    """Also: wheels carried to an offline machine are installed (no network) where every stage imports them."""
    out = tmp_path / "out"
    wheels = tmp_path / "wheels"
    _probe_wheel(wheels)
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "DEEPIS_RT_CACHE": str(tmp_path / "cache"),
           "WHEELHOUSE": str(wheels), "GPU_CHECK_SITE": str(tmp_path / "site")}
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    reports = {}
    for stage in STAGES:
        path = out / f"{stage}.json"
        assert path.is_file(), f"{stage}: no {path.name}\n{done.stdout}"
        reports[stage] = json.loads(path.read_text())
        assert reports[stage]["stage"] == stage and reports[stage]["status"]
    assert reports["env"]["status"] == "ok" and reports["env"]["libraries"]["torch"]
    import torch

    expected = "skipped: no GPU" if not torch.cuda.is_available() else "skipped: dry run"
    for stage in STAGES[1:-1]:
        assert reports[stage]["status"] == expected and reports[stage]["dry_run"] is True
    assert reports["summary"]["stages"]["tensorrt"] == expected
    assert (out / "summary.md").is_file() and (out / "engines").is_dir()
    assert reports["env"]["carried_wheels"] == ["deepis_gpu_probe 0.1"]  # seen by a stage's Python


def _probe_wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel (what benchmarks/gpu_wheels.sh fetches, without the network)."""
    import zipfile

    name, version = "deepis_gpu_probe", "0.1"
    info = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": "VALUE = 42\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for member, text in files.items():
            z.writestr(member, text)
        z.writestr(f"{info}/RECORD", "".join(f"{m},,\n" for m in files) + f"{info}/RECORD,,\n")
    return path


def test_env_stage_without_git_or_nvidia_smi(tmp_path, monkeypatch):
    """The GPU machine gets a copy of the repository; it may have no git (nor nvidia-smi) on its PATH."""
    spec = importlib.util.spec_from_file_location("gpu_check_stages", REPO / "benchmarks" / "gpu_check_stages.py")
    stages = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stages)
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no git, no nvidia-smi
    facts = stages.stage_env(argparse.Namespace(out=tmp_path))
    assert facts["status"] == "ok" and facts["commit"] is None and facts["libraries"]["torch"]


def test_env_stage_survives_a_hung_nvidia_smi(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_check_stages", REPO / "benchmarks" / "gpu_check_stages.py")
    stages = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stages)
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nsleep 60\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(stages.subprocess, "run", _run_with_timeout(stages.subprocess.run, 0.5))
    facts = stages.stage_env(argparse.Namespace(out=tmp_path))
    assert facts["status"] == "ok" and facts["nvidia_smi"].startswith("TimeoutExpired")


def _run_with_timeout(run, seconds):
    def short(cmd, *args, **kwargs):
        if cmd and cmd[0] == "nvidia-smi":
            kwargs["timeout"] = seconds
        return run(cmd, *args, **kwargs)

    return short
