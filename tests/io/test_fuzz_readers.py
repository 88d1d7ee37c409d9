"""Every reader against malformed, lying and hostile files (the catalogue in ``fuzz_cases``).

Each file is either refused with one line that names the file and what is wrong, or read correctly;
no refusal quotes the file's content; refusing a file that declares a huge volume costs little memory.
"""

from __future__ import annotations

import re
import tracemalloc

import numpy as np
import pytest
from fuzz_cases import CASES, SECRET

from deepis_rt.errors import InputError
from deepis_rt.io import time_points

_PEAK_LIMIT_BYTES = 32 * 1024**2  # the good volumes are 3.5 kB; a refusal must not read a declared terabyte


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_malformed_input_is_refused_clearly_or_read_correctly(tmp_path, case):
    path = case.build(tmp_path)
    error, tomograms = None, []
    tracemalloc.start()
    try:
        try:
            points = time_points(path, case.override)
            tomograms = [p.read() for p in points]
        except InputError as exc:  # FileFormatError, ImplausibleRIError, VolumeTooLargeError, ... included
            error = exc
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < _PEAK_LIMIT_BYTES, f"{peak / 1024**2:.0f} MiB to read or refuse {case.name}"
    if case.refuse is not None:
        assert error is not None, f"{case.name} was read: {[t.shape for t in tomograms]}"
        message = str(error)
        # the file, or its sidecar
        assert message.startswith((f"io | {path.name}", f"io | {path.with_suffix('.json').name}")), message
        assert re.search(case.refuse, message), message
        assert "\n" not in message and len(message) < 400, message
        assert SECRET[:10].decode() not in message and "SECRET" not in message, message
        return
    assert error is None, str(error)
    expected = case.expect()
    assert len(tomograms) == len(expected)
    for tomo, want in zip(tomograms, expected, strict=True):
        np.testing.assert_allclose(tomo.ri, want, atol=1e-6)
        assert tomo.voxel_size_um == pytest.approx(case.override or case.voxel)
    if case.times is not None:
        assert [t.time_s for t in tomograms] == pytest.approx(case.times)
