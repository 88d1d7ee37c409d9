"""The product's TensorRT code against the real TensorRT Python bindings 10.13 and 11.4, on a CPU.

Each version runs ``conformance_suite.py`` in a subprocess whose LD_LIBRARY_PATH holds the stub
libraries (the dynamic loader reads it only at process start); its JUnit report must show every
test passed and none skipped.
"""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from trt_bindings_setup import BINDING_VERSIONS

pytestmark = pytest.mark.trt_api

SUITE = Path(__file__).with_name("conformance_suite.py")
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("version", BINDING_VERSIONS)
def test_product_conforms_to_real_tensorrt_bindings(trt_bindings, version, tmp_path):
    report = tmp_path / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-ra",
           "--strict-markers", str(SUITE), f"--junitxml={report}", f"--basetemp={tmp_path / 'tmp'}"]
    done = subprocess.run(cmd, cwd=REPO, env=trt_bindings[version].env(), capture_output=True, text=True,
                          timeout=300)
    output = (done.stdout + done.stderr)[-6000:]
    assert report.is_file(), f"the conformance suite did not run for TensorRT {version}:\n{output}"
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    assert done.returncode == 0 and counts["failures"] == counts["errors"] == 0, (
        f"TensorRT {version}: {counts}\n{output}")
    assert counts["skipped"] == 0, f"TensorRT {version}: tests skipped in the conformance suite\n{output}"
    assert counts["tests"] >= 10, f"TensorRT {version}: only {counts['tests']} tests ran\n{output}"
