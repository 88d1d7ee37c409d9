"""What a backend is to the rest of deepis-rt: a :class:`BackendSpec`, and what its factory is given.

A spec names the backend, the kind of device it runs on, the precisions it computes in, a probe
that says why it cannot run here (or None), and a factory that makes an inactive runner. The
factory gets a :class:`RunnerRequest`: the model as lazy loaders (:class:`ModelFiles`: the network,
the FP32 / FP16 ONNX graphs, a ready engine; nothing expensive happens until the runner's
``activate()`` calls one) and the settings of this run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from deepis_rt.backends.base import Runner

__all__ = ["BackendSpec", "RunnerRequest", "ModelFiles", "DEVICE_KINDS", "PRECISIONS"]

DEVICE_KINDS = ("cpu", "cuda", "remote")
PRECISIONS = ("fp32", "fp16", "bf16")


class ModelFiles(Protocol):
    """The model as lazy loaders (a runtime ``ModelSource`` or a benchmark's model provide them).

    Required: ``tile_zyx`` and the three loaders. Optional attributes, read with ``getattr``:
    ``engine`` (a ready TensorRT plan), ``path`` and ``sha256`` (messages, stored reports),
    ``has_network`` / ``has_onnx`` (whether :meth:`module` can build the network and whether a graph
    exists without exporting; both assumed True when absent).
    """

    tile_zyx: tuple[int, int, int]

    def module(self) -> Any:
        """The PyTorch network (built on call; a runner may move and convert it)."""

    def onnx_fp32(self) -> Path:
        """The FP32 ONNX graph (exported on first call where needed)."""

    def onnx_fp16(self) -> Path | None:
        """The FP16 ONNX graph, or None when there is none (the FP32 graph is used then)."""


@dataclass
class RunnerRequest:
    """Everything a factory needs to make a runner.

    Attributes
    ----------
    model : ModelFiles or None
        The model (None for a remote backend that serves its own).
    device : str or None
        ``"cpu"``, ``"cuda"``, ``"cuda:N"``, or None (any).
    precision : str or None
        Asked for; None: the backend's exact default.
    batch_size : int
        Tiles per call (the optimisation profile's typical batch).
    max_batch_size : int or None
        The largest batch an engine must accept; None: ``max(4, batch_size)``.
    engines_dir, cache_dir : path
        TensorRT engines; exported graphs, compiled models and stored reports (None: the default cache).
    options : dict
        Backend options (``num_threads``, ``cuda_graphs``, ``url``, ...), passed on to the runner.
    """

    model: ModelFiles | None = None
    device: str | None = None
    precision: str | None = None
    batch_size: int = 1
    max_batch_size: int | None = None
    engines_dir: Path = Path("engines")
    cache_dir: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def cuda_device(self) -> str:
        """``device`` when it names a GPU, else ``"cuda:0"``."""
        return str(self.device) if self.device and str(self.device).startswith("cuda") else "cuda:0"

    @property
    def batch_profile(self) -> tuple[int, int, int]:
        """(min, opt, max) batch sizes of an optimisation profile."""
        top = self.max_batch_size or max(4, self.batch_size)
        return 1, self.batch_size, max(top, self.batch_size)


@dataclass(frozen=True)
class BackendSpec:
    """One backend, described once.

    Parameters
    ----------
    name : str
        What users type (``load(backend=...)``, ``--backend``, ``bench --backends``).
    device : {"cpu", "cuda", "remote"}
        Where the network runs.
    precisions : tuple of str
        What it computes in; the first is its default when nothing is asked for. A run asks for one
        of these or is refused with a reason (see ``fallback_precision``).
    probe : callable
        ``probe(request) -> str | None``: why it cannot run here (what to install), or None. Called
        with ``request.model`` None to ask about the machine alone.
    factory : callable
        ``factory(request) -> Runner``: an inactive runner; expensive work waits for ``activate()``.
    family : str
        The group name that picks it together with its siblings (``"torch"`` -> torch-cuda, torch-cpu).
    auto_rank : float or None
        Position in ``backend="auto"`` (smaller is tried first: faster); None: never chosen by auto.
    aliases : tuple of str
        Other names accepted for it (old command lines).
    fallback_precision : str, optional
        Run this precision when asked for one outside ``precisions`` that is not BF16 (ONNX Runtime's
        CPU provider computes FP32 whatever is asked); None: refuse.
    summary : str
        One line for listings and docs.
    """

    name: str
    device: str
    precisions: tuple[str, ...]
    probe: Callable[[RunnerRequest], str | None]
    factory: Callable[[RunnerRequest], Runner]
    family: str = ""
    auto_rank: float | None = None
    aliases: tuple[str, ...] = ()
    fallback_precision: str | None = None
    summary: str = ""

    def __post_init__(self) -> None:
        if self.device not in DEVICE_KINDS:
            raise ValueError(f"backend {self.name!r}: device must be one of {DEVICE_KINDS}, got {self.device!r}")
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if not self.precisions or bad:
            raise ValueError(f"backend {self.name!r}: precisions must be a non-empty subset of {PRECISIONS}, "
                             f"got {self.precisions!r}")

    @property
    def is_gpu(self) -> bool:
        return self.device == "cuda"
