"""benchmarks/gpu_check.sh on a CPU (--dry-run): few files back, every stage's figures in summary.json."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STAGES = ["env", "datapath", "torch-variants", "bench-deepis", "field", "pytest-gpu", "ort-cuda", "tensorrt",
          "openvino-bf16"]
#: what may come back from the lent machine
MAX_FILES_BACK = 8


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_gpu_check_dry_run_returns_few_files_with_every_figure(tmp_path):
    """The dry run: at most 8 files in $OUT, summary.json with every stage and the CPU's own figures
    (marked as a dry run), the tarball with every stage's outputs; carried wheels installed offline."""
    out, work = tmp_path / "out", tmp_path / "work"
    wheels = tmp_path / "wheels"
    _probe_wheel(wheels)
    env = {**os.environ, "OUT": str(out), "WORK": str(work), "PYTHON": sys.executable,
           "DEEPIS_RT_CACHE": str(tmp_path / "cache"), "WHEELHOUSE": str(wheels),
           "WHEELHOUSE_OPENVINO": str(tmp_path / "none"), "GPU_CHECK_SITE": str(tmp_path / "site"),
           "GPU_CHECK_INDUCTOR": str(tmp_path / "inductor"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    back = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert len(back) <= MAX_FILES_BACK and all(len(p.parts) == 1 for p in back), back
    assert {str(p) for p in back} == {"summary.json", "summary.md", "stages.tar.gz", "gpu_check.log"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] is True and summary["note"].startswith("DRY RUN")
    stages = summary["stages"]
    assert set(STAGES) <= set(stages), stages.keys()
    assert stages["env"]["status"] == "ok" and stages["env"]["libraries"]["torch"]
    assert stages["env"]["cpu"]["flags"].keys() >= {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}
    assert stages["env"]["carried_wheels"] == ["deepis_gpu_probe 0.1"]  # seen by a stage's Python
    for name in ("torch-variants", "bench-deepis", "field"):
        assert stages[name]["status"] == "ok" and stages[name]["dry_run"] is True, (name, stages[name])
    # the figures themselves, measured on this CPU in tiny runs
    variants = {r["variant"]: r for r in summary["rows"]["torch-variants"]}
    assert {"fp32", "fp32-channels-last", "bf16"} <= set(variants)
    assert all(r["status"] == "ok" and r["dry_run"] and r["tiles_per_s"]["1"] > 0 for r in variants.values())
    assert variants["fp32-channels-last"]["label_agreement"] > 0.999
    bench = summary["rows"]["bench-deepis"]
    assert bench and all(r["backend"] == "torch-cpu" and r["throughput_fps"] > 0 for r in bench)
    assert any(p["device"] == "cpu" and p["tflops"] for p in stages["bench-deepis"]["peaks"])
    field = stages["field"]
    assert field["median_s"] > 0 and field["runs"] == 3 and len(summary["rows"]["field"]) == 4
    assert {t["name"].split(" ")[0] for t in summary["targets"]} >= {"best", "one", "field"}
    tests = summary["rows"]["pytest-gpu"]
    assert tests and all(r["outcome"] == "skipped" for r in tests)  # gpu-marked: skipped on a CPU
    assert stages["datapath"]["status"].startswith("skipped")
    with tarfile.open(out / "stages.tar.gz") as tar:
        names = set(tar.getnames())
    for stage in STAGES:
        assert f"stages/{stage}.json" in names and f"stages/{stage}.log" in names, stage
    assert {"stages/pytest-gpu.junit.xml", "stages/bench-deepis.report.md", "stages/lscpu.txt"} <= names


def test_summary_keeps_rows_of_a_stage_killed_mid_way(tmp_path):
    """Rows are in summary.json as they are measured; a stage killed before its JSON still shows them."""
    stages = _stages_module()
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    work.mkdir()
    args = argparse.Namespace(out=out, work=work, stage="torch-variants", dry_run=False)
    stages.add_row(args, {"variant": "fp32", "status": "ok", "exact": True, "tiles_per_s": {"1": 10.0}})
    stages.add_row(args, {"variant": "fp16", "status": "ok", "exact": False, "exact_enough": True,
                          "tiles_per_s": {"1": 50.0, "4": 80.0},
                          "batches": {"1": {"end_to_end": {"latency_ms": {"p99_ms": 7.5}}}}})
    (work / "torch-variants.rows.jsonl").open("a").write('{"variant": "bf16", "sta')  # cut by the kill
    summary = stages.update_summary(work, out)
    assert [r["variant"] for r in summary["rows"]["torch-variants"]] == ["fp32", "fp16"]
    assert summary["stages"]["torch-variants"]["status"].startswith("running or killed")
    targets = {t["name"]: t for t in summary["targets"]}
    speedup = targets["best exact-enough variant vs PyTorch FP32, TF32 off"]
    assert speedup["measured"] == pytest.approx(8.0) and speedup["met"] is True
    assert targets["one tile end to end, p99 ms (batch 1, host copies included)"]["met"] is True
    assert json.loads((out / "summary.json").read_text())["rows"]["torch-variants"][1]["variant"] == "fp16"


def _stages_module():
    spec = importlib.util.spec_from_file_location("gpu_check_stages", REPO / "benchmarks" / "gpu_check_stages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    stages = _stages_module()
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no git, no nvidia-smi, no lscpu
    facts = stages.stage_env(argparse.Namespace(out=tmp_path, work=tmp_path))
    assert facts["status"] == "ok" and facts["commit"] is None and facts["libraries"]["torch"]
    assert set(facts["cpu"]["flags"]) >= {"avx512_bf16", "amx_bf16"}  # from /proc/cpuinfo without lscpu


def test_env_stage_survives_a_hung_nvidia_smi(tmp_path, monkeypatch):
    stages = _stages_module()
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nsleep 60\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(stages.subprocess, "run", _run_with_timeout(stages.subprocess.run, 0.5))
    facts = stages.stage_env(argparse.Namespace(out=tmp_path, work=tmp_path))
    assert facts["status"] == "ok" and facts["nvidia_smi"].startswith("TimeoutExpired")


def _run_with_timeout(run, seconds):
    def short(cmd, *args, **kwargs):
        if cmd and cmd[0] == "nvidia-smi":
            kwargs["timeout"] = seconds
        return run(cmd, *args, **kwargs)

    return short
