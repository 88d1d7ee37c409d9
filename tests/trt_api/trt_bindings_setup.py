"""The real TensorRT Python bindings on a CPU: fetched from PyPI, linked against stub libraries.

``tensorrt-cu12-bindings`` wheels hold only ``tensorrt_bindings/tensorrt.so``, which needs ten C
symbols from libnvinfer / libnvonnxparser / libnvinfer_plugin. A stub library that defines them
(every factory returns NULL), built with the system C compiler under each soname the module links
against, makes ``import tensorrt_bindings`` work: every class, method, enum and docstring of that
TensorRT version is then real, while creating a Builder or Runtime raises. The loader reads
LD_LIBRARY_PATH when a process starts, so each version is used in a subprocess of its own.

The wheels and stubs are cached in ``$DEEPIS_RT_TRT_BINDINGS`` (default
``~/.cache/deepis-rt/trt-bindings``) and reused; a file lock guards concurrent test runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

#: the binding versions the product is checked against (the last 10.x and an 11.x)
BINDING_VERSIONS = ("10.13.3.9", "11.4.0.106")

STUB_SYMBOLS = (
    "createInferBuilder_INTERNAL", "createInferRuntime_INTERNAL", "createInferRefitter_INTERNAL",
    "createNvOnnxParser_INTERNAL", "createNvOnnxParserRefitter_INTERNAL", "getBuilderPluginRegistry",
    "getNvOnnxParserVersion", "getPluginRegistry", "initLibNvInferPlugins", "getInferLibVersion",
)

_STUB_C = """\
/* Stand-ins for the TensorRT libraries: enough for the Python bindings to load, no GPU work. */
#include <stddef.h>
void *createInferBuilder_INTERNAL(void *logger, int version) { return NULL; }
void *createInferRuntime_INTERNAL(void *logger, int version) { return NULL; }
void *createInferRefitter_INTERNAL(void *engine, void *logger, int version) { return NULL; }
void *createNvOnnxParser_INTERNAL(void *network, void *logger, int version) { return NULL; }
void *createNvOnnxParserRefitter_INTERNAL(void *refitter, void *logger, int version) { return NULL; }
void *getBuilderPluginRegistry(int capability) { return NULL; }
int getNvOnnxParserVersion(void) { return 0; }
void *getPluginRegistry(void) { return NULL; }
int initLibNvInferPlugins(void *logger, const char *ns) { return 1; }
int getInferLibVersion(void) { return 0; }
"""


@dataclass(frozen=True)
class Bindings:
    """One TensorRT binding version, ready to import in a subprocess with :meth:`env`."""

    version: str
    site: Path  # holds tensorrt_bindings/
    lib: Path  # the stub libraries

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        repo = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join([str(self.site), repo, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env["LD_LIBRARY_PATH"] = os.pathsep.join([str(self.lib), env.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)
        env["DEEPIS_TRT_API_VERSION"] = self.version
        env.update(extra)
        return env


def cache_root() -> Path:
    """``$DEEPIS_RT_TRT_BINDINGS``, else ``~/.cache/deepis-rt/trt-bindings`` (a temp folder if unwritable)."""
    if os.environ.get("DEEPIS_RT_TRT_BINDINGS"):
        return Path(os.environ["DEEPIS_RT_TRT_BINDINGS"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    root = Path(base) / "deepis-rt" / "trt-bindings"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError:
        import tempfile

        root = Path(tempfile.gettempdir()) / "deepis-rt-trt-bindings"
    return root


def _sonames(module: Path) -> list[str]:
    """The TensorRT sonames ``tensorrt.so`` links against (its DT_NEEDED strings)."""
    names = sorted({m.decode() for m in re.findall(rb"lib(?:nvinfer|nvonnxparser|nvinfer_plugin)\.so\.\d+",
                                                  module.read_bytes())})
    readelf = shutil.which("readelf")
    if readelf:  # cross-check with the dynamic section when binutils is there
        out = subprocess.run([readelf, "-d", str(module)], capture_output=True, text=True).stdout
        needed = sorted(n for n in re.findall(r"\[(lib[^\]]+)\]", out) if n.startswith("libnv"))
        if needed:
            names = needed
    return names


def prepare(version: str, root: Path) -> Bindings:
    """Download, unpack and stub one binding version (idempotent; skips when PyPI or cc is missing)."""
    from filelock import FileLock

    folder = root / version
    ready = folder / "ready.json"
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{version}.lock"), timeout=600):
        if ready.is_file():
            return Bindings(version, folder / "site", folder / "lib")
        shutil.rmtree(folder, ignore_errors=True)
        (folder / "wheel").mkdir(parents=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--only-binary=:all:", f"tensorrt-cu12-bindings=={version}", "-d", str(folder / "wheel")]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            pytest.skip(f"trt_api: downloading tensorrt-cu12-bindings=={version} from PyPI timed out")
        if done.returncode != 0:
            pytest.skip(f"trt_api: PyPI unreachable or tensorrt-cu12-bindings=={version} unavailable for this "
                        f"Python: {done.stderr.strip()[-400:]}")
        (wheel,) = (folder / "wheel").glob("*.whl")
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(folder / "site")
        module = next((folder / "site" / "tensorrt_bindings").glob("tensorrt*.so"))
        cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")
        if cc is None:
            pytest.skip("trt_api: no C compiler (cc) to build the stub TensorRT libraries")
        (folder / "lib").mkdir()
        src = folder / "lib" / "trt_stub.c"
        src.write_text(_STUB_C)
        sonames = _sonames(module)
        assert sonames, f"{module} links against no TensorRT library?"
        for soname in sonames:
            subprocess.run([cc, "-shared", "-fPIC", "-o", str(folder / "lib" / soname), f"-Wl,-soname,{soname}",
                            str(src)], check=True, capture_output=True, timeout=120)
        b = Bindings(version, folder / "site", folder / "lib")
        probe = subprocess.run([sys.executable, "-c", "import tensorrt_bindings as t; print(t.__version__)"],
                               env=b.env(), capture_output=True, text=True, timeout=120)
        assert probe.returncode == 0 and probe.stdout.strip() == version, (
            f"the real bindings {version} did not import with the stubs: {probe.stderr[-2000:]}")
        ready.write_text(json.dumps({"version": version, "sonames": sonames, "wheel": wheel.name}))
        return b
