"""The table of backends: the one place that lists what exists.

Every backend is one :class:`~deepis_rt.backends.spec.BackendSpec` (name, device kind, precisions,
probe, runner factory) registered here. ``deepis_rt.load`` (its ``auto`` order and its names),
``deepis-rt bench``, ``deepis-rt batch`` and every CLI ``--backend`` read this table, so a backend
added with :func:`register` — from inside the package or from outside it — is seen by all of them.

>>> from deepis_rt.backends import registry
>>> registry.auto_order()                            # doctest: +SKIP
('tensorrt', 'onnxruntime-cuda', 'torch-cuda', 'openvino-cpu', 'onnxruntime-cpu', 'torch-cpu')
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from deepis_rt.backends import facts
from deepis_rt.backends.base import Runner
from deepis_rt.backends.onnxrt import loader as onnxrt_loader
from deepis_rt.backends.openvino import loader as openvino_loader
from deepis_rt.backends.pytorch import loader as torch_loader
from deepis_rt.backends.spec import BackendSpec, RunnerRequest
from deepis_rt.backends.triton import loader as triton_loader
from deepis_rt.backends.trt import loader as trt_loader
from deepis_rt.errors import ConfigError

__all__ = ["register", "unregister", "get", "names", "families", "auto_order", "candidates", "choices",
           "precision_refusal", "unavailable_reason", "make_runner", "BackendSpec", "RunnerRequest"]

_lock = threading.Lock()
_specs: dict[str, BackendSpec] = {}
_aliases: dict[str, str] = {}


def register(spec: BackendSpec, *, replace: bool = False) -> BackendSpec:
    """Add ``spec`` to the table (``replace=True`` to swap an existing one of the same name).

    Raises
    ------
    ConfigError
        The name or one of its aliases is taken (or is ``"auto"`` or a family name of other backends).
    """
    with _lock:
        taken = set(_specs) | set(_aliases) | {"auto"}
        if replace and spec.name in _specs:
            taken -= {spec.name, *_specs[spec.name].aliases}
        clash = [n for n in (spec.name, *spec.aliases) if n in taken]
        clash += [n for n in (spec.name, *spec.aliases) if n in {s.family for s in _specs.values()} and n != spec.family]
        if clash:
            raise ConfigError(f"backends | cannot register {spec.name!r}: the name {clash[0]!r} is taken; "
                              "choose another name (or pass replace=True)")
        old = _specs.pop(spec.name, None)
        for alias in old.aliases if old else ():
            _aliases.pop(alias, None)
        _specs[spec.name] = spec
        _aliases.update({alias: spec.name for alias in spec.aliases})
    return spec


def unregister(name: str) -> BackendSpec:
    """Remove a backend from the table (returns its spec)."""
    with _lock:
        spec = _specs.pop(canonical(name))
        for alias in spec.aliases:
            _aliases.pop(alias, None)
    return spec


def canonical(name: str) -> str:
    """The registered name of ``name`` (an alias is mapped to its backend); unknown names unchanged."""
    return _aliases.get(name, name)


def get(name: str) -> BackendSpec:
    """The spec of backend ``name`` (or of an alias).

    Raises
    ------
    ConfigError
        No such backend; the message lists the registered ones.
    """
    spec = _specs.get(canonical(name))
    if spec is None:
        raise ConfigError(f"backends | unknown backend {name!r}; registered: {', '.join(_specs)}")
    return spec


def names() -> tuple[str, ...]:
    """Every registered backend name, in registration order."""
    return tuple(_specs)


def families() -> dict[str, tuple[str, ...]]:
    """Family name -> its backends, in ``auto`` order (``"torch"`` -> torch-cuda, torch-cpu)."""
    out: dict[str, list[str]] = {}
    for spec in _by_rank(_specs.values()):
        if spec.family:
            out.setdefault(spec.family, []).append(spec.name)
    return {k: tuple(v) for k, v in out.items()}


def _by_rank(specs: Iterable[BackendSpec]) -> list[BackendSpec]:
    specs = list(specs)
    order = {s.name: i for i, s in enumerate(specs)}
    return sorted(specs, key=lambda s: (s.auto_rank is None, s.auto_rank or 0.0, order[s.name]))


def auto_order() -> tuple[str, ...]:
    """The backends ``backend="auto"`` tries, fastest first."""
    return tuple(s.name for s in _by_rank(_specs.values()) if s.auto_rank is not None)


def candidates(backend: str) -> tuple[str, ...]:
    """The backends a user's ``backend`` names, in the order they are tried.

    ``"auto"``: :func:`auto_order`; a family (``"torch"``): its members; a backend or an alias: itself.
    """
    if backend == "auto":
        return auto_order()
    fams = families()
    if backend in fams and backend not in _specs:
        return fams[backend]
    return (get(backend).name,)


def choices(remote: bool = True) -> tuple[str, ...]:
    """Every name ``--backend`` accepts: ``auto``, the families, the backends and their aliases.

    ``remote=False`` leaves out backends that run elsewhere (and families made only of them).
    """
    keep = [s for s in _specs.values() if remote or s.device != "remote"]
    fams = [f for f, members in families().items() if any(m in {s.name for s in keep} for m in members)]
    out = ["auto", *fams, *(s.name for s in keep), *(a for s in keep for a in s.aliases)]
    return tuple(dict.fromkeys(out))


def precision_refusal(name: str, precision: str | None) -> str | None:
    """Why backend ``name`` refuses ``precision`` (None when it runs it, or when none was asked for)."""
    if precision is None:
        return None
    spec = get(name)
    if precision in spec.precisions:
        return None
    if precision == "bf16":
        where = [s.name for s in _specs.values() if "bf16" in s.precisions]
        return f"precision 'bf16' runs on {', '.join(where) or 'no registered backend'} only"
    if spec.fallback_precision is not None:
        return None
    return f"{spec.name} runs {' or '.join(repr(p) for p in spec.precisions)}, not {precision!r}"


def unavailable_reason(name: str, request: RunnerRequest | None = None) -> str | None:
    """None when backend ``name`` can run ``request`` here, else why not (and what to install).

    Without a request (or without its ``model``) only the machine is asked about; the device the
    request names, its precision, and what the model offers (an ONNX graph, a network) count too.
    """
    spec = get(name)
    request = request or RunnerRequest()
    why = precision_refusal(spec.name, request.precision)
    if why:
        return why
    device = request.device
    if spec.device == "cuda" and device is not None and not str(device).startswith("cuda"):
        return f"device={device!r} asks for the CPU"
    if spec.device == "cpu" and device is not None and str(device).startswith("cuda"):
        return f"device={device!r} asks for a GPU"
    if spec.device == "cuda" and not facts.cuda_available():
        return "no CUDA GPU (torch.cuda.is_available() is False)"
    return spec.probe(request)


def make_runner(name: str, request: RunnerRequest) -> Runner:
    """An inactive runner of backend ``name`` for ``request`` (the spec's factory)."""
    spec = get(name)
    if request.precision is not None and request.precision not in spec.precisions and precision_refusal(
            spec.name, request.precision) is None:
        request.precision = spec.fallback_precision
    return spec.factory(request)


# -- the backends that ship with deepis-rt, in listing order (CPU before GPU, baseline first); -----
# -- ``auto`` tries them by their auto_rank ---------------------------------------------------
for _spec in (
    torch_loader.CPU_SPEC,
    onnxrt_loader.CPU_SPEC,
    openvino_loader.SPEC,
    torch_loader.CUDA_SPEC,
    torch_loader.CUDA_GRAPHS_SPEC,
    onnxrt_loader.CUDA_SPEC,
    onnxrt_loader.TENSORRT_EP_SPEC,
    trt_loader.SPEC,
    triton_loader.SPEC,
):
    register(_spec)
del _spec
