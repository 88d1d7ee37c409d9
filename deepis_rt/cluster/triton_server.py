"""Running a real Triton Inference Server without a container: the ``tritonserver`` of ``nvidia-pytriton``.

The ``nvidia-pytriton`` wheel (PyPI, about 55 MB) ships a complete ``tritonserver`` (2.51 in
pytriton 0.7) with its Python backend, built for manylinux and runnable on a CPU machine:

* the binary: ``pytriton/tritonserver/bin/tritonserver``, its shared libraries in the wheel's
  ``nvidia_pytriton.libs/`` (they go on ``LD_LIBRARY_PATH``);
* the Python backend: ``pytriton/tritonserver/backends/python/`` plus one stub executable per
  Python version in ``pytriton/tritonserver/python_backend_stubs/<X.Y>/triton_python_backend_stub``,
  which has to sit next to ``libtriton_python.so``. :func:`python_backend_dir` assembles such a
  backend folder elsewhere (``tritonserver --backend-directory``), so site-packages stay untouched;
* the stub embeds this interpreter's ``libpython`` (its ``LIBDIR`` goes on ``LD_LIBRARY_PATH``
  too) and imports numpy and onnxruntime through ``PYTHONPATH`` = this interpreter's ``sys.path``.

It serves repositories written by ``deepis-rt export --triton REPO --triton-backend python``
(:mod:`deepis_rt.cluster.triton_python_model`). :class:`TritonServer` starts it on loopback
ports, waits until it is ready and stops it; ``deepis-rt serve-triton REPO`` runs it in the
foreground. Install the wheel without its dependencies (``pip install --no-deps nvidia-pytriton``):
only the server is used, and pytriton's own requirements pin NumPy below 2.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepis_rt.errors import BackendError, ConfigError, MissingDependencyError

__all__ = ["TRITONSERVER_HOME_ENV", "TritonDistribution", "TritonServer", "find_tritonserver", "free_port",
           "python_backend_dir", "server_environment"]

log = logging.getLogger(__name__)

#: Folder holding ``pytriton/`` and ``nvidia_pytriton.libs/`` (an unpacked wheel), when not installed.
TRITONSERVER_HOME_ENV = "DEEPIS_TRITONSERVER_HOME"
_INSTALL = "pip install --no-deps nvidia-pytriton"


@dataclass(frozen=True)
class TritonDistribution:
    """Where the pieces of a pytriton-shipped tritonserver are."""

    root: Path  #: folder holding ``pytriton/`` and ``nvidia_pytriton.libs/``
    binary: Path
    libs: Path
    python_backend: Path  #: ``.../backends/python`` (libtriton_python.so, triton_python_backend_utils.py)
    stubs: Path  #: ``.../python_backend_stubs`` (one folder per Python version)

    @classmethod
    def at(cls, root: str | os.PathLike) -> TritonDistribution:
        root = Path(root)
        server = root / "pytriton" / "tritonserver"
        dist = cls(root=root, binary=server / "bin" / "tritonserver", libs=root / "nvidia_pytriton.libs",
                   python_backend=server / "backends" / "python", stubs=server / "python_backend_stubs")
        missing = [p for p in (dist.binary, dist.libs, dist.python_backend, dist.stubs) if not p.exists()]
        if missing:
            raise MissingDependencyError(
                f"triton | {root}: not an nvidia-pytriton installation (missing {missing[0]}); install it with: {_INSTALL}"
            )
        return dist


def find_tritonserver(path: str | os.PathLike | None = None) -> TritonDistribution:
    """The tritonserver of an nvidia-pytriton installation.

    Parameters
    ----------
    path : path-like, optional
        Folder holding ``pytriton/`` and ``nvidia_pytriton.libs/`` (site-packages or an unpacked
        wheel). Default: ``$DEEPIS_TRITONSERVER_HOME``, else the installed ``pytriton`` package
        (found without importing it).

    Raises
    ------
    MissingDependencyError
        Not installed; the message says how to install it.
    """
    path = path or os.environ.get(TRITONSERVER_HOME_ENV)
    if path:
        return TritonDistribution.at(path)
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            f"triton | no tritonserver here: install one with `{_INSTALL}` (or set {TRITONSERVER_HOME_ENV} to an "
            "unpacked nvidia-pytriton wheel), or run NVIDIA's Triton container"
        )
    return TritonDistribution.at(Path(next(iter(spec.submodule_search_locations))).parent)


def python_backend_dir(dist: TritonDistribution, dest: str | os.PathLike) -> Path:
    """Write a ``--backend-directory`` at ``dest`` whose ``python/`` holds the stub of this Python.

    Returns ``dest``.
    """
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist.stubs / version / "triton_python_backend_stub"
    if not stub.is_file():
        have = sorted(p.name for p in dist.stubs.iterdir() if p.is_dir())
        raise MissingDependencyError(
            f"triton | {dist.stubs}: no Python-backend stub for Python {version} (this nvidia-pytriton has {have}); "
            "run deepis-rt with one of those Python versions"
        )
    dest = Path(dest)
    target = dest / "python"
    target.mkdir(parents=True, exist_ok=True)
    for src in [*dist.python_backend.iterdir(), stub]:
        if src.is_file():
            shutil.copy2(src, target / src.name)
    return dest


def server_environment(dist: TritonDistribution, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment tritonserver and its Python-backend stub need (libraries, this interpreter's modules)."""
    env = dict(os.environ if base is None else base)
    libdirs = [str(dist.libs)]
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and Path(libdir).is_dir():
        libdirs.append(libdir)  # the stub embeds libpython: the one of this interpreter, not the system's
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*libdirs, *filter(None, [env.get("LD_LIBRARY_PATH")])])
    paths = [p for p in sys.path if p and Path(p).is_dir()]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([*paths, *filter(None, [env.get("PYTHONPATH")])]))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port free on ``address`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


class TritonServer:
    """A tritonserver process (nvidia-pytriton's) serving a model repository.

    Parameters
    ----------
    repo : path-like
        Model repository (``deepis-rt export --triton REPO --triton-backend python``).
    http_port, grpc_port : int, optional
        Ports (default: free ones).
    address : str
        Address to listen on (loopback by default).
    distribution : TritonDistribution, optional
        Default: :func:`find_tritonserver`.
    log_path : path-like, optional
        Server log (default: ``tritonserver.log`` in a temporary folder).
    extra_args : sequence of str
        Further tritonserver options.
    backend_dir : path-like, optional
        Where to assemble the ``--backend-directory`` (default: a temporary folder).
    """

    def __init__(self, repo: str | os.PathLike, http_port: int | None = None, grpc_port: int | None = None,
                 address: str = "127.0.0.1", distribution: TritonDistribution | None = None,
                 log_path: str | os.PathLike | None = None, extra_args: tuple[str, ...] = (),
                 backend_dir: str | os.PathLike | None = None) -> None:
        self.repo = Path(repo)
        if not self.repo.is_dir():
            raise ConfigError(f"triton | {self.repo}: no such model repository")
        self.address = address
        self.http_port = http_port or free_port(address)
        self.grpc_port = grpc_port or free_port(address)
        self.dist = distribution or find_tritonserver()
        self._workdir = Path(tempfile.mkdtemp(prefix="deepis-tritonserver-"))
        self.backend_dir = Path(backend_dir) if backend_dir else self._workdir / "backends"  # filled by start()
        self.log_path = Path(log_path) if log_path else self._workdir / "tritonserver.log"
        self.extra_args = tuple(extra_args)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """``host:port`` of the HTTP endpoint (what ``--url`` takes)."""
        return f"{self.address}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.address}:{self.grpc_port}"

    def command(self) -> list[str]:
        """The tritonserver command line."""
        return [
            str(self.dist.binary), "--model-repository", str(self.repo.resolve()),
            "--backend-directory", str(self.backend_dir),
            "--http-address", self.address, "--http-port", str(self.http_port),
            "--grpc-address", self.address, "--grpc-port", str(self.grpc_port),
            "--allow-metrics", "false", "--exit-timeout-secs", "5", *self.extra_args,
        ]

    def shell(self) -> str:
        """The same server as shell commands (the backend folder as assembled; for docs, systemd units)."""
        import shlex

        env = server_environment(self.dist, base={})
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = self.dist.stubs / version / "triton_python_backend_stub"
        lines = [
            f"mkdir -p {shlex.quote(str(self.backend_dir / 'python'))}",
            f"cp {shlex.quote(str(self.dist.python_backend))}/* {shlex.quote(str(stub))} "
            f"{shlex.quote(str(self.backend_dir / 'python'))}/",
            # PATH too: the Python backend's stub finds its interpreter (and so this environment's
            # site-packages) through the first python3 on PATH
            " ".join(f"{k}={shlex.quote(env[k])}" for k in ("LD_LIBRARY_PATH", "PYTHONPATH"))
            + f' PATH={shlex.quote(str(Path(sys.executable).parent))}:"$PATH" \\',
            "  " + " ".join(shlex.quote(a) for a in self.command()),
        ]
        return "\n".join(lines)

    def start(self, wait_s: float | None = 60.0) -> TritonServer:
        """Start the server (same ports as before when restarted); wait until it is ready unless ``wait_s`` is None."""
        if self.running:
            return self
        if not (self.backend_dir / "python").is_dir():
            python_backend_dir(self.dist, self.backend_dir)
        log_file = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        try:
            self.process = subprocess.Popen(self.command(), env=server_environment(self.dist), stdout=log_file,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log_file.close()
        log.info("triton | tritonserver (pid %d) serving %s at %s", self.process.pid, self.repo, self.url)
        if wait_s is not None:
            self.wait_ready(wait_s)
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.url}/v2/health/ready", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Block until ``/v2/health/ready`` answers 200.

        Raises
        ------
        BackendError
            The process exited, or was not ready in time (with the end of its log).
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise BackendError(f"triton | tritonserver exited with status {self.process.returncode}:\n"
                                   f"{self.log_tail()}")
            if self.is_ready():
                return
            time.sleep(0.2)
        raise BackendError(f"triton | tritonserver not ready after {timeout_s:g} s:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop the server (SIGTERM, SIGKILL after ``timeout_s``)."""
        self._signal(signal.SIGTERM, timeout_s)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        self._signal(signal.SIGKILL, 15.0)

    def _signal(self, sig: int, timeout_s: float) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)  # the server and its Python-backend stubs
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout_s)

    def close(self) -> None:
        """Stop the server and remove its temporary folder."""
        self.stop()
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()
