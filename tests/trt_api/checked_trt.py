"""Fakes of the TensorRT objects that need a GPU, checked against the REAL TensorRT Python classes.

Imported only in a process where ``tensorrt_bindings`` (the real binding module of one TensorRT
version, linked against stub libraries) imports. :func:`fake_tensorrt` returns a module that *is*
the real one — enums, ``ILogger``, ``IProgressMonitor``, ``Logger``, ``DataType``, every free
function — except ``Builder``, ``Runtime`` and ``OnnxParser``, whose real factories need libnvinfer.
Those and everything they make (network, config, profile, timing cache, engine, execution context)
are fakes built on :class:`Checked`:

* a fake class names the real class it stands for; when the class is defined, every public name it
  defines must exist on the real class (and be a property there iff it is one here);
* every call of a public method is checked against the real method's docstring signature
  (pybind11 writes ``name(self: T, arg: type = default) -> ret``, with numbered overloads): argument
  count, keyword names and the types that can be checked (int, bool, float, str, the real enums
  and classes, Dims, buffers); a call must fit at least one overload;
* reading an attribute the fake lacks fails, saying whether the real class has it;
* setting a property needs a real property with a setter.

Every violation is raised as :class:`ApiViolation` *and* recorded in :data:`VIOLATIONS`, so a
violation swallowed by the product's own ``except Exception`` still fails the test.
"""

from __future__ import annotations

import ctypes
import functools
import inspect
import json
import re
import types
import weakref
from typing import Any

import numpy as np

VIOLATIONS: list[str] = []


class ApiViolation(AssertionError):
    """The product used the TensorRT API in a way the real bindings of this version do not allow."""


def violation(message: str) -> ApiViolation:
    VIOLATIONS.append(message)
    return ApiViolation(message)


_REAL: Any = None  # the real tensorrt_bindings module, set by fake_tensorrt()


def real_module() -> Any:
    global _REAL
    if _REAL is None:
        import tensorrt_bindings

        _REAL = tensorrt_bindings
    return _REAL


# -- docstring signatures --------------------------------------------------------------------------


def _split_top(text: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        parts.append("".join(cur).strip())
    return parts


def signatures(real_cls: Any, method: str) -> list[list[tuple[str, str, bool]]]:
    """Overloads of ``real_cls.method`` as lists of ``(name, annotation, has_default)`` (no self)."""
    doc = getattr(getattr(real_cls, method), "__doc__", None) or ""
    name = "__init__" if method == "__init__" else method
    pattern = re.compile(r"^(?:\d+\. )?" + re.escape(name) + r"\((.*)\)(?: -> .*)?$")
    found = []
    for line in doc.splitlines():
        m = pattern.match(line.strip())
        if not m or m.group(1).strip() in ("*args, **kwargs",):
            continue
        params = []
        for i, p in enumerate(_split_top(m.group(1))):
            pname, _, rest = p.partition(":")
            if i == 0 and pname.strip() == "self":
                continue
            ann, eq, _default = rest.partition("=")
            params.append((pname.strip(), ann.strip(), bool(eq)))
        found.append(params)
    return found


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def type_ok(value: Any, ann: str) -> bool | None:
    """Whether ``value`` fits the docstring annotation ``ann`` (None: not checkable)."""
    trt = real_module()
    ann = ann.strip()
    if ann.startswith("Optional[") or ann.endswith("| None"):
        inner = ann[len("Optional["):-1] if ann.startswith("Optional[") else ann[: -len("| None")]
        return True if value is None else type_ok(value, inner)
    if ann in ("int", "typing.SupportsInt", "SupportsInt"):
        return _is_int(value)  # an enum member is not an int here: pass int(flag) or 1 << int(flag)
    if ann in ("tuple", "list"):
        return isinstance(value, tuple if ann == "tuple" else list) and all(_is_int(v) for v in value)
    if ann == "object":
        return True
    if ann in ("bool",):
        return isinstance(value, (bool, np.bool_))
    if ann in ("float", "typing.SupportsFloat"):
        return isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
    if ann == "str":
        return isinstance(value, str)
    if ann in ("buffer", "typing_extensions.Buffer", "collections.abc.Buffer"):
        return isinstance(value, (bytes, bytearray, memoryview)) or isinstance(value, FakeHostMemory)
    short = ann.rsplit(".", 1)[-1]
    if ann.startswith("tensorrt_bindings.tensorrt.") or short in ("Dims", "Dims32", "Dims64"):
        if short in ("Dims", "Dims32", "Dims64"):
            return isinstance(value, trt.Dims) or (
                isinstance(value, (tuple, list)) and all(_is_int(v) for v in value))
        real = getattr(trt, short, None)
        if real is None:
            return None
        if isinstance(value, real):
            return True
        if isinstance(value, Checked):
            return type(value).REAL == short or short in [c.__name__ for c in type(value).__mro__]
        return False
    return None  # List[...], capsules, C++-only types: not checked


def check_call(real_cls: Any, cls_name: str, method: str, args: tuple, kwargs: dict) -> None:
    overloads = signatures(real_cls, method)
    if not overloads:
        return  # the real method documents no signature (rare); nothing to check against
    problems = []
    for params in overloads:
        why = _fits(params, args, kwargs)
        if why is None:
            return
        problems.append(f"({', '.join(f'{n}: {a}' for n, a, _ in params)}): {why}")
    trt = real_module()
    raise violation(f"TensorRT {trt.__version__}: {cls_name}.{method}{_show(args, kwargs)} matches no "
                    "signature of the real binding:\n    " + "\n    ".join(problems))


def _show(args: tuple, kwargs: dict) -> str:
    shown = [type(a).__name__ for a in args] + [f"{k}={type(v).__name__}" for k, v in kwargs.items()]
    return "(" + ", ".join(shown) + ")"


def _fits(params: list[tuple[str, str, bool]], args: tuple, kwargs: dict) -> str | None:
    if len(args) > len(params):
        return f"{len(args)} positional arguments, at most {len(params)}"
    bound: dict[str, Any] = {}
    for (name, _ann, _d), value in zip(params, args, strict=False):
        bound[name] = value
    names = [p[0] for p in params]
    for key, value in kwargs.items():
        if key not in names:
            return f"no argument named {key!r}"
        if key in bound:
            return f"{key!r} given twice"
        bound[key] = value
    for name, ann, has_default in params:
        if name not in bound:
            if not has_default:
                return f"missing argument {name!r}"
            continue
        ok = type_ok(bound[name], ann)
        if ok is False:
            return f"{name}={bound[name]!r} is not a {ann}"
    return None


# -- the checked base class ------------------------------------------------------------------------


class Checked:
    """Base of the fakes: ``REAL`` names the real tensorrt class (see the module docstring)."""

    REAL: str = ""
    CHECK_INIT = False  # True for the classes the product constructs itself

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        real = getattr(real_module(), cls.REAL, None)
        if real is None:
            raise violation(f"TensorRT {real_module().__version__} has no class {cls.REAL}")
        for name, value in list(vars(cls).items()):
            if name.startswith("_") and not (name == "__init__" and cls.CHECK_INIT):
                continue
            if name in ("REAL", "CHECK_INIT"):
                continue
            if name != "__init__" and not hasattr(real, name):
                raise violation(f"TensorRT {real_module().__version__}: {cls.REAL} has no attribute {name!r} "
                                "(the fake defines it)")
            real_attr = inspect.getattr_static(real, name)
            if isinstance(value, property) != isinstance(real_attr, property):
                raise violation(f"{cls.REAL}.{name}: property here, method in the real class (or vice versa)")
            if callable(value) and not isinstance(value, property):
                setattr(cls, name, _checked_method(real, cls.REAL, name, value))

    def __getattr__(self, name: str) -> Any:
        real = getattr(real_module(), type(self).REAL)
        if name.startswith("_"):
            raise AttributeError(name)
        if hasattr(real, name):
            raise violation(f"{type(self).REAL}.{name} exists in the real API but the fake does not model "
                            "it; extend tests/trt_api/checked_trt.py")
        raise violation(f"TensorRT {real_module().__version__}: {type(self).REAL} has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_"):
            real = getattr(real_module(), type(self).REAL)
            prop = inspect.getattr_static(real, name, None)
            if not isinstance(prop, property):
                raise violation(f"TensorRT {real_module().__version__}: {type(self).REAL}.{name} is not a "
                                "settable property")
            if prop.fset is None:
                raise violation(f"{type(self).REAL}.{name} is read-only in the real API")
        object.__setattr__(self, name, value)


def _checked_method(real: Any, cls_name: str, name: str, fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        check_call(real, cls_name, name, args, kwargs)
        return fn(self, *args, **kwargs)

    return wrapper


# -- builder side ----------------------------------------------------------------------------------


class FakeHostMemory(Checked):
    REAL = "IHostMemory"

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)

    def __bytes__(self) -> bytes:
        return self._data

    @property
    def nbytes(self) -> int:
        return len(self._data)


class FakeNetwork(Checked):
    REAL = "INetworkDefinition"

    def __init__(self, flags: int) -> None:
        self._flags = flags
        self._parsed: str | None = None

    @property
    def num_inputs(self) -> int:
        return 1 if self._parsed else 0

    def get_input(self, index: int) -> FakeTensor:
        if not self._parsed or index != 0:
            raise IndexError(f"network input {index} does not exist")
        return FakeTensor("tomogram")


class FakeTensor(Checked):
    REAL = "ITensor"

    def __init__(self, name: str) -> None:
        self._name = name

    @property
    def name(self) -> str:
        return self._name


class FakeParserError:
    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


class FakeOnnxParser(Checked):
    REAL = "OnnxParser"
    CHECK_INIT = True
    _fail_with: str | None = None  # tests set this to make parsing fail

    def __init__(self, network: Any, logger: Any) -> None:
        self._network = network
        self._errors: list[str] = []

    def parse_from_file(self, model: str) -> bool:
        if FakeOnnxParser._fail_with:
            self._errors = [FakeOnnxParser._fail_with]
            return False
        self._network._parsed = model
        return True

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> Any:
        return FakeParserError(self._errors[index])


class FakeTimingCache(Checked):
    REAL = "ITimingCache"

    def __init__(self, device_tag: str, entries: dict[str, float]) -> None:
        self._tag, self._entries = device_tag, dict(entries)

    def serialize(self) -> FakeHostMemory:
        return FakeHostMemory(json.dumps({"tag": self._tag, "entries": self._entries}).encode())

    def combine(self, input_cache: Any, ignore_mismatch: bool) -> bool:
        if input_cache._tag != self._tag and not ignore_mismatch:
            return False
        self._entries.update(input_cache._entries)
        return True

    def reset(self) -> bool:
        self._entries = {}
        return True


class FakeProfile(Checked):
    REAL = "IOptimizationProfile"

    def __init__(self) -> None:
        self._shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

    def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:  # the real names
        self._shapes[input] = (tuple(min), tuple(opt), tuple(max))

    def _valid(self) -> bool:
        return bool(self._shapes) and all(
            len(a) == len(b) == len(c) and all(x <= y <= z for x, y, z in zip(a, b, c, strict=True))
            for a, b, c in self._shapes.values())


#: the device the fake GPU claims to be (timing caches carry it)
DEVICE_TAG = "fake-gpu|sm90"


class FakeBuilderConfig(Checked):
    REAL = "IBuilderConfig"

    def __init__(self) -> None:
        trt = real_module()
        self._flags = {trt.BuilderFlag.TF32}  # TensorRT's default
        self._pools: dict[Any, int] = {}
        self._profiles: list[FakeProfile] = []
        self._timing: FakeTimingCache | None = None
        self._monitor = None

    def set_flag(self, flag: Any) -> None:
        self._flags.add(flag)

    def clear_flag(self, flag: Any) -> None:
        self._flags.discard(flag)

    def get_flag(self, flag: Any) -> bool:
        return flag in self._flags

    def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
        self._pools[pool] = int(pool_size)

    def add_optimization_profile(self, profile: Any) -> int:
        if not profile._valid():
            return -1
        self._profiles.append(profile)
        return len(self._profiles) - 1

    def create_timing_cache(self, serialized_timing_cache: Any) -> Any:
        blob = bytes(serialized_timing_cache)
        if not blob:
            return FakeTimingCache(DEVICE_TAG, {})
        try:
            data = json.loads(blob)
            return FakeTimingCache(data["tag"], data["entries"])
        except (ValueError, KeyError, TypeError):
            return None  # what the real binding returns for a cache it cannot read

    def set_timing_cache(self, cache: Any, ignore_mismatch: bool) -> bool:
        if cache._tag != DEVICE_TAG and not ignore_mismatch:
            return False
        self._timing = cache
        return True

    def get_timing_cache(self) -> Any:
        return self._timing

    @property
    def progress_monitor(self) -> Any:
        return self._monitor

    @progress_monitor.setter
    def progress_monitor(self, monitor: Any) -> None:
        if not isinstance(monitor, real_module().IProgressMonitor):
            raise violation(f"IBuilderConfig.progress_monitor = {type(monitor).__name__}: not an IProgressMonitor")
        object.__setattr__(self, "_monitor", monitor)


class FakeBuilder(Checked):
    REAL = "Builder"
    CHECK_INIT = True
    _builds: list[dict] = []  # every build, for tests to inspect

    def __init__(self, logger: Any) -> None:
        self._logger = logger

    def create_network(self, flags: int = 0) -> FakeNetwork:
        return FakeNetwork(flags)

    def create_builder_config(self) -> FakeBuilderConfig:
        return FakeBuilderConfig()

    def create_optimization_profile(self) -> FakeProfile:
        return FakeProfile()

    def build_serialized_network(self, network: Any, config: Any) -> Any:
        trt = real_module()
        if network._parsed is None or not config._profiles:
            return None
        monitor = config._monitor
        if monitor is not None:  # drive the real IProgressMonitor subclass as TensorRT does
            monitor.phase_start("Building engine", None, 2)
            for step in range(2):
                monitor.step_complete("Building engine", step)
            monitor.phase_finish("Building engine")
        if config._timing is not None:
            config._timing._entries[f"conv-{len(config._timing._entries)}"] = 0.1
        (name, shapes), = config._profiles[0]._shapes.items()
        flags = sorted(str(f).rsplit(".", 1)[-1] for f in config._flags)
        record = {"input": name, "profile": [list(s) for s in shapes], "flags": flags,
                  "network_flags": network._flags, "onnx": network._parsed,
                  "workspace": config._pools.get(trt.MemoryPoolType.WORKSPACE)}
        FakeBuilder._builds.append(record)
        return FakeHostMemory(b"FAKEPLAN" + json.dumps(record).encode())


# -- runtime side ----------------------------------------------------------------------------------


class FakeRuntime(Checked):
    REAL = "Runtime"
    CHECK_INIT = True

    def __init__(self, logger: Any) -> None:
        self._logger = logger

    def deserialize_cuda_engine(self, serialized_engine: Any) -> Any:
        blob = bytes(serialized_engine)
        if not blob.startswith(b"FAKEPLAN"):
            return None
        record = json.loads(blob[len(b"FAKEPLAN"):])
        return FakeEngine(record["input"], "distance", *[tuple(s) for s in record["profile"]])


class FakeEngine(Checked):
    """An engine whose "network" is ``y = 2 x + 1`` on host memory (CPU tests pass host addresses)."""

    REAL = "ICudaEngine"

    def __init__(self, input_name: str, output_name: str, lo: tuple, opt: tuple, hi: tuple,
                 half: bool = False) -> None:
        self._names = (input_name, output_name)
        self._profile = (lo, opt, hi)
        self._half = half
        self._contexts: weakref.WeakSet = weakref.WeakSet()
        self._created = 0

    @property
    def num_io_tensors(self) -> int:
        return 2

    @property
    def num_optimization_profiles(self) -> int:
        return 1

    def get_tensor_name(self, index: int) -> str:
        return self._names[index]

    def get_tensor_mode(self, name: str) -> Any:
        mode = real_module().TensorIOMode
        return mode.INPUT if name == self._names[0] else mode.OUTPUT

    def get_tensor_dtype(self, name: str) -> Any:
        dt = real_module().DataType
        return dt.HALF if self._half else dt.FLOAT

    def get_tensor_shape(self, name: str) -> Any:
        lo, _opt, hi = self._profile
        return tuple(a if a == b else -1 for a, b in zip(lo, hi, strict=True))

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list:
        if name != self._names[0] or profile_index != 0:
            raise violation(f"ICudaEngine.get_tensor_profile_shape({name!r}, {profile_index}): no such "
                            "input / profile")
        return [tuple(s) for s in self._profile]

    def create_execution_context(self, strategy: Any = None) -> Any:
        ctx = FakeContext(self)
        self._contexts.add(ctx)
        self._created += 1
        return ctx


def live_contexts(engine: FakeEngine) -> int:
    """Execution contexts of ``engine`` still alive (test helper, not TensorRT API)."""
    return len(engine._contexts)


def created_contexts(engine: FakeEngine) -> int:
    return engine._created


class FakeContext(Checked):
    REAL = "IExecutionContext"
    _streams: list[int] = []  # every stream handle execute_async_v3 saw
    _shapes_seen: list[tuple[int, ...]] = []  # every accepted input shape

    def __init__(self, engine: FakeEngine) -> None:
        self._engine = engine
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._addr: dict[str, int] = {}

    def set_input_shape(self, name: str, shape: Any) -> bool:
        lo, _opt, hi = self._engine._profile
        shape = tuple(shape)
        if name != self._engine._names[0] or len(shape) != len(lo):
            return False
        if any(s < a or s > b for s, a, b in zip(shape, lo, hi, strict=True)):
            return False
        self._shapes[name] = shape
        FakeContext._shapes_seen.append(shape)
        return True

    def get_tensor_shape(self, name: str) -> Any:
        shape = self._shapes.get(self._engine._names[0])
        if shape is None:
            return tuple(self._engine.get_tensor_shape(name))
        return shape

    def set_tensor_address(self, name: str, memory: int) -> bool:
        if name not in self._engine._names:
            return False
        self._addr[name] = memory
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        FakeContext._streams.append(stream_handle)
        i_name, o_name = self._engine._names
        shape = self._shapes.get(i_name)
        if shape is None or i_name not in self._addr or o_name not in self._addr:
            return False
        n = int(np.prod(shape))
        x = np.ctypeslib.as_array((ctypes.c_float * n).from_address(self._addr[i_name]))
        y = np.ctypeslib.as_array((ctypes.c_float * n).from_address(self._addr[o_name]))
        y[:] = 2 * x + 1
        return True


def fake_tensorrt() -> types.ModuleType:
    """The module the product imports as ``tensorrt``: the real bindings with GPU factories faked."""
    trt = real_module()
    mod = types.ModuleType("tensorrt")

    def __getattr__(name: str) -> Any:
        return getattr(trt, name)  # AttributeError for anything this version lacks

    mod.__getattr__ = __getattr__  # type: ignore[method-assign]
    mod.__version__ = trt.__version__
    mod.Builder = FakeBuilder
    mod.Runtime = FakeRuntime
    mod.OnnxParser = FakeOnnxParser
    return mod
