"""Property-based checks (Hypothesis) of metadata plausibility and of the readers against damaged headers."""

from __future__ import annotations

import io
import json
import logging
import math
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepis_rt.errors import ConfigError, InputError
from deepis_rt.io import time_points
from deepis_rt.io.plausibility import VOXEL_SIZE_RANGE_UM, check_times_increasing, check_voxel_size
from deepis_rt.runtime.preprocess import validate_voxel_size
from deepis_rt.stream import StreamSettings

SHAPE = (4, 8, 8)
LO, HI = VOXEL_SIZE_RANGE_UM
_SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

axis_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.floats(min_value=LO, max_value=HI),                         # plausible
    st.floats(min_value=LO * 1e3, max_value=HI * 1e3),             # nanometres written as um
    st.floats(min_value=LO * 1e-3, max_value=HI * 1e-3),           # millimetres written as um
)


def _plausible(values: tuple[float, ...]) -> bool:
    return all(math.isfinite(v) and LO <= v <= HI for v in values)


def _npy_with_sidecar(folder: Path, side: dict) -> Path:
    path = folder / "frame.npy"
    np.save(path, np.full(SHAPE, 1.35, np.float32))
    path.with_suffix(".json").write_text(json.dumps(side))
    return path


@_SETTINGS
@given(st.tuples(axis_values, axis_values, axis_values))
def test_every_entry_point_accepts_exactly_the_plausible_voxel_sizes(vs):
    """Sidecar, API argument and stream option agree; a refusal names the values and, where the values
    become plausible in nm or mm, the unit and the corrected numbers."""
    verdicts = []
    with tempfile.TemporaryDirectory() as tmp:
        path = _npy_with_sidecar(Path(tmp), {"voxel_size_um": list(vs)})
        try:
            tomo = time_points(path)[0].read()
            verdicts.append(True)
            assert tomo.voxel_size_um == pytest.approx(vs)
        except InputError as exc:
            verdicts.append(False)
            message = str(exc)
            assert message.startswith("io | frame.npy: sidecar frame.json: voxel_size_um")
            if all(math.isfinite(v) and v > 0 for v in vs):
                assert all(f"{v:.6g}" in message for v in vs), message
                bad = [not LO <= v <= HI for v in vs]
                for unit, factor in (("nanometres", 1e-3), ("millimetres", 1e3)):
                    if all(LO <= (v * factor if b else v) <= HI for v, b in zip(vs, bad, strict=True)):
                        assert unit in message, message
    try:
        validate_voxel_size(vs, "segment")
        verdicts.append(True)
    except InputError:
        verdicts.append(False)
    try:
        StreamSettings(voxel_size_um=vs)
        verdicts.append(True)
    except ConfigError:
        verdicts.append(False)
    assert verdicts == [_plausible(vs)] * 3


json_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6), st.booleans(), st.none(),
    st.text(max_size=12), st.lists(st.floats(allow_nan=False), max_size=3),
)


@_SETTINGS
@given(json_values)
def test_a_sidecar_time_is_kept_exactly_when_it_is_a_finite_non_negative_number(value):
    with tempfile.TemporaryDirectory() as tmp:
        path = _npy_with_sidecar(Path(tmp), {"voxel_size_um": [0.5, 0.25, 0.25], "time_s": value})
        is_time = (value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                                     and math.isfinite(value) and value >= 0))
        if is_time:
            assert time_points(path)[0].read().time_s == (None if value is None else pytest.approx(float(value)))
        else:
            with pytest.raises(InputError, match=r"^io \| frame\.npy: sidecar frame\.json: time_s = "):
                time_points(path)


@_SETTINGS
@given(st.lists(st.one_of(st.none(), st.floats(0, 1e6)), max_size=8))
def test_a_time_series_is_accepted_exactly_when_its_known_times_increase(times):
    known = [t for t in times if t is not None]
    increasing = all(b > a for a, b in zip(known, known[1:], strict=False))
    if increasing:
        check_times_increasing(times, "io | x")
    else:
        with pytest.raises(InputError, match="out of order"):
            check_times_increasing(times, "io | x")


@_SETTINGS
@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5)))
def test_a_single_number_is_an_isotropic_voxel_size_or_refused(value):
    try:
        vs = check_voxel_size(value, "api")
    except InputError:
        numeric = isinstance(value, float) and math.isfinite(value) and LO <= value <= HI
        assert not numeric
    else:
        assert vs == (float(value),) * 3 and LO <= vs[0] <= HI


def _good_tiff() -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.full(SHAPE, 1.35, np.float32), ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeZ": 0.5, "PhysicalSizeY": 0.25, "PhysicalSizeX": 0.25})
    return buf.getvalue()


def _good_npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.full(SHAPE, 1.35, np.float32))
    return buf.getvalue()


_GOOD = {"frame.ome.tif": _good_tiff(), "frame.npy": _good_npy()}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(_GOOD)), data=st.data())
def test_damaged_headers_are_refused_in_one_line_or_read_as_a_plausible_volume(name, data):
    """Bytes of the header (the first 512) overwritten at random: never a crash of another kind, never
    a refusal of several lines, never more memory than the header could justify."""
    raw = bytearray(_GOOD[name])
    n = data.draw(st.integers(1, 6))
    for _ in range(n):
        raw[data.draw(st.integers(0, min(511, len(raw) - 1)))] = data.draw(st.integers(0, 255))
    logging.disable(logging.CRITICAL)  # tifffile logs what it thinks of the damage
    tracemalloc.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_bytes(bytes(raw))
            if name.endswith(".npy"):
                path.with_suffix(".json").write_text('{"voxel_size_um": [0.5, 0.25, 0.25]}')
            try:
                tomos = [p.read() for p in time_points(path)]
            except InputError as exc:
                assert str(exc).startswith(f"io | {name}") and "\n" not in str(exc)
            else:
                for tomo in tomos:
                    assert tomo.ri.dtype == np.float32 and tomo.ri.ndim == 3
                    assert np.isfinite(tomo.ri).all() and 1.0 <= tomo.ri.min() <= tomo.ri.max() <= 2.0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        logging.disable(logging.NOTSET)
    assert peak < 64 * 1024**2
