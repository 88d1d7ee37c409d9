"""Input validation, RI normalisation and resampling."""

from __future__ import annotations

import numpy as np
import pytest

from deepis_rt.errors import (
    DeepisError,
    InputDtypeError,
    InputError,
    NonFiniteInputError,
    ShapeError,
    VolumeTooLargeError,
)
from deepis_rt.runtime.preprocess import (
    Normalization,
    model_grid_shape,
    needs_resampling,
    resample,
    validate_volume,
    validate_voxel_size,
)


@pytest.mark.parametrize(
    "volume, error, words",
    [
        (np.zeros((8, 8), np.float32), ShapeError, "2-D"),
        (np.zeros((1, 8, 8, 8), np.float32), ShapeError, "4-D"),
        (np.zeros((0, 8, 8), np.float32), ShapeError, "empty"),
        (np.zeros((4, 8, 8), bool), InputDtypeError, "bool"),
        (np.zeros((4, 8, 8), np.complex64), InputDtypeError, "complex"),
        (np.array([[["a"]]]), InputDtypeError, "numeric"),
        (np.full((4, 8, 8), np.nan, np.float32), NonFiniteInputError, "NaN"),
        ("not a volume", InputDtypeError, "numeric"),
    ],
)
def test_bad_volumes_refused_clearly(volume, error, words):
    with pytest.raises(error, match=words) as info:
        validate_volume(volume, "segment")
    assert isinstance(info.value, InputError) and isinstance(info.value, DeepisError)
    assert str(info.value).startswith("segment:")


def test_nonfinite_reports_count_and_position():
    v = np.ones((40, 30, 30), np.float32)
    v[33, 2, 5] = np.inf
    v[35, 0, 0] = np.nan
    with pytest.raises(NonFiniteInputError, match=r"2 NaN/Inf .*\(33, 2, 5\)"):
        validate_volume(v)


def test_absurd_size_refused_before_reading():
    huge = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), shape=(4096, 4096, 4096), strides=(0, 0, 0))
    with pytest.raises(VolumeTooLargeError, match="voxels"):
        validate_volume(huge)


def test_good_volumes_pass_without_copy():
    v = np.ones((4, 8, 8), np.float32)
    assert validate_volume(v) is v
    assert validate_volume(np.ones((4, 8, 8), np.uint16)).dtype == np.uint16


@pytest.mark.parametrize("bad", [None, (0.5, 0.25), (0.5, -1, 0.25), (0.5, float("nan"), 1), "abc", (1e6, 1, 1)])
def test_bad_voxel_sizes(bad):
    with pytest.raises(InputError):
        validate_voxel_size(bad)


def test_voxel_size_scalar_means_isotropic():
    assert validate_voxel_size(0.3) == (0.3, 0.3, 0.3)


def test_normalization_from_meta():
    norm = Normalization.from_meta({"ri_normalization": {"offset": 1.33, "scale": 0.01}})
    out = norm.apply(np.array([1.33, 1.34], np.float32))
    np.testing.assert_allclose(out, [0.0, 1.0], atol=1e-5)
    assert out.dtype == np.float32
    with pytest.raises(InputError):
        Normalization.from_meta({"ri_normalization": {"offset": 1.33, "scale": 0}})


def test_model_grid_shape_and_tolerance():
    assert model_grid_shape((40, 100, 100), (0.25, 0.125, 0.5), (0.5, 0.25, 0.25)) == (20, 50, 200)
    assert not needs_resampling((0.5, 0.25, 0.2500001), (0.5, 0.25, 0.25))
    assert needs_resampling((0.5, 0.25, 0.3), (0.5, 0.25, 0.25))


def test_resampling_round_trip(make_ri):
    """Input grid -> model grid -> input grid loses little on a smooth volume."""
    ri = make_ri((30, 80, 70))
    vs_in, vs_model = (0.4, 0.2, 0.3), (0.5, 0.25, 0.25)
    shape = model_grid_shape(ri.shape, vs_in, vs_model)
    assert shape == (24, 64, 84)
    back = resample(resample(ri, shape), ri.shape)
    assert back.shape == ri.shape and back.dtype == np.float32
    inner = (slice(2, -2),) * 3
    err = np.abs(back - ri)[inner]
    assert err.max() < 0.1 * (ri.max() - ri.min())
    assert err.mean() < 0.01 * (ri.max() - ri.min())
    # linear interpolation never leaves the input's range
    assert back.min() >= ri.min() - 1e-6 and back.max() <= ri.max() + 1e-6


def test_resample_keeps_physical_position():
    """A bright voxel stays at the same place in um after up-sampling (voxel edges aligned)."""
    v = np.zeros((8, 8, 8), np.float32)
    v[4, 4, 4] = 1
    up = resample(v, (16, 16, 16))
    z, y, x = np.unravel_index(np.argmax(up), up.shape)
    # the voxel's centre, 4.5 input voxels from the edge, is 9 output voxels from it
    assert abs((z + 0.5) - 9) <= 1 and abs((y + 0.5) - 9) <= 1 and abs((x + 0.5) - 9) <= 1
