"""RI decoding and plausibility for every format; time series read one time point at a time."""

from __future__ import annotations

import logging

import h5py
import numpy as np
import pytest
import tifffile

from deepis_rt.errors import ConfigError, ImplausibleRIError
from deepis_rt.io import iter_tomograms, read_tomogram
from deepis_rt.io.ri import RIDecoder, RIScale

VS = (0.5, 0.25, 0.25)


@pytest.fixture
def ri():
    rng = np.random.default_rng(0)
    return (1.3274 + 0.0627 * rng.random((6, 10, 12))).astype(np.float32)


def _x10000(ri):
    return np.round(ri * 10000).astype(np.uint16)


def test_uint16_ri_x10000_tiff_npy_and_mat_decode_to_ri(tmp_path, ri):
    raw = _x10000(ri)
    tifffile.imwrite(tmp_path / "export.tif", raw, ome=True, metadata={"axes": "ZYX", "PhysicalSizeZ": 0.5,
                                                                        "PhysicalSizeY": 0.25, "PhysicalSizeX": 0.25})
    np.save(tmp_path / "lab.npy", raw)
    with h5py.File(tmp_path / "v73.mat", "w") as f:
        f["input"] = np.swapaxes(raw, 1, 2)  # h5py view of MATLAB's (Y, X, Z): (Z, X, Y)
    for name in ("export.tif", "lab.npy", "v73.mat"):
        tomo = read_tomogram(tmp_path / name)
        assert tomo.ri.dtype == np.float32, name
        np.testing.assert_allclose(tomo.ri, ri, atol=0.5e-4 + 1e-6, err_msg=name)


def test_ri_x10000_is_logged_once_per_source(tmp_path, ri, caplog):
    series = np.stack([_x10000(ri)] * 3)
    tifffile.imwrite(tmp_path / "lapse.tif", series, ome=True, metadata={"axes": "TZYX"})
    with caplog.at_level(logging.INFO, logger="deepis_rt.io.ri"):
        frames = list(iter_tomograms(tmp_path / "lapse.tif", voxel_size_um=VS))
    assert len(frames) == 3
    lines = [r.getMessage() for r in caplog.records if "RI x 10 000" in r.getMessage()]
    assert len(lines) == 1 and "lapse.tif" in lines[0] and "13 274" in lines[0]


@pytest.mark.parametrize("values,hint", [
    (np.linspace(0, 255, 720, dtype=np.float32), "8-bit display values"),
    (np.linspace(13274, 13901, 720, dtype=np.float32), "--ri-scale 0.0001"),
    (np.linspace(-0.01, 0.05, 720, dtype=np.float32), "medium RI"),
])
def test_float_volume_in_wrong_units_is_refused(tmp_path, values, hint):
    np.save(tmp_path / "wrong.npy", values.reshape(6, 10, 12))
    with pytest.raises(ImplausibleRIError) as err:
        read_tomogram(tmp_path / "wrong.npy")
    msg = str(err.value)
    lo, hi = values.min(), values.max()
    assert msg.startswith("io | wrong.npy: values span ")
    assert "cannot be refractive indices" in msg and hint in msg
    assert (f"{lo:.6g}" in msg or f"{lo:,.6g}".replace(",", " ") in msg)
    assert (f"{hi:.6g}" in msg or f"{hi:,.6g}".replace(",", " ") in msg)


def test_other_integers_need_an_explicit_scale(tmp_path, ri):
    counts = np.round((ri - 1.3) * 2000).astype(np.uint8)  # a lab's own 8-bit convention
    np.save(tmp_path / "counts.npy", counts)
    with pytest.raises(ImplausibleRIError, match=r"integer values \d+ \.\. \d+ do not follow the RI x 10 000.*--ri-scale"):
        read_tomogram(tmp_path / "counts.npy")
    tomo = read_tomogram(tmp_path / "counts.npy", ri_scale=1 / 2000, ri_offset=1.3)
    np.testing.assert_allclose(tomo.ri, ri, atol=1 / 4000 + 1e-6)
    # a wrong explicit scale is refused too, and the message says which scale was used
    with pytest.raises(ImplausibleRIError, match=r"after RI = value x 1 \+ 0; check --ri-scale"):
        read_tomogram(tmp_path / "counts.npy", ri_scale=1.0)


def test_explicit_scale_for_float_and_validation(tmp_path, ri):
    np.save(tmp_path / "x1e4.npy", ri * 10000)
    np.testing.assert_allclose(read_tomogram(tmp_path / "x1e4.npy", ri_scale=1e-4).ri, ri, rtol=1e-6)
    with pytest.raises(ConfigError, match="ri_scale"):
        RIScale.from_args(0.0, None)
    assert RIScale.from_args(None, 1.33) == RIScale(1.0, 1.33)
    assert RIScale.from_args(None, None) is None


def test_decoder_leaves_ri_alone_and_refuses_non_numbers(ri):
    dec = RIDecoder("test")
    assert dec(ri, "test") is ri  # no copy for float RI
    with pytest.raises(Exception, match="holds no refractive index"):
        dec(np.zeros((2, 2, 2), bool), "test")


def test_as_ri_false_reads_other_volumes_as_stored(tmp_path):
    distance = np.linspace(-4, 3, 720, dtype=np.float32).reshape(6, 10, 12)
    np.save(tmp_path / "distance.npy", distance)
    np.testing.assert_array_equal(read_tomogram(tmp_path / "distance.npy", as_ri=False).ri, distance)


def test_tzyx_tiff_is_read_one_time_point_at_a_time(tmp_path, ri, monkeypatch):
    series = np.stack([ri + np.float32(0.001 * t) for t in range(4)])
    tifffile.imwrite(tmp_path / "lapse.ome.tif", series, ome=True, compression="zlib",
                     metadata={"axes": "TZYX", "PhysicalSizeZ": 0.5, "PhysicalSizeY": 0.25, "PhysicalSizeX": 0.25})
    keys = []
    real = tifffile.TiffFile.asarray

    def spy(self, key=None, *args, **kwargs):
        keys.append(key)
        return real(self, key, *args, **kwargs)

    monkeypatch.setattr(tifffile.TiffFile, "asarray", spy)
    frames = iter_tomograms(tmp_path / "lapse.ome.tif")
    first = next(frames)
    assert keys == [slice(0, 6)]  # the six Z pages of time point 0, nothing else
    np.testing.assert_array_equal(first.ri, series[0])
    rest = list(frames)
    assert keys[-1] == slice(18, 24) and len(keys) == 4
    np.testing.assert_array_equal(rest[-1].ri, series[3])
    assert rest[-1].voxel_size_um == pytest.approx(VS)


def test_imagej_hyperstack_time_series(tmp_path, ri):
    series = np.stack([ri, ri + np.float32(0.01)])
    tifffile.imwrite(tmp_path / "ij.tif", series, imagej=True, metadata={"axes": "TZYX"})
    got = list(iter_tomograms(tmp_path / "ij.tif", voxel_size_um=VS))
    assert [t.frame_index for t in got] == [0, 1]
    np.testing.assert_array_equal(got[1].ri, series[1])


def test_mat73_time_series_is_read_one_time_point_at_a_time(tmp_path, ri, monkeypatch):
    import deepis_rt.io.readers as readers

    series = np.stack([ri + np.float32(0.001 * t) for t in range(3)])  # (T, Z, Y, X)
    with h5py.File(tmp_path / "lapse.mat", "w") as f:
        f["input"] = np.swapaxes(series, 2, 3)  # MATLAB (Y, X, Z, T) as h5py sees it: (T, Z, X, Y)
    reads = []
    real = readers._read_h5_dataset
    monkeypatch.setattr(readers, "_read_h5_dataset",
                        lambda ds, where, index=None: reads.append(index) or real(ds, where, index))
    frames = iter_tomograms(tmp_path / "lapse.mat", voxel_size_um=VS)
    first = next(frames)
    assert reads == [0]
    np.testing.assert_array_equal(first.ri, series[0])
    assert [t.frame_index for t in frames] == [1, 2] and reads == [0, 1, 2]


def test_single_ifd_imagej_series_is_memory_mapped_per_time_point(tmp_path, ri, monkeypatch):
    """ImageJ files over 4 GiB keep one IFD for all planes: pages cannot be split by time point."""
    series = np.stack([ri + np.float32(0.001 * t) for t in range(3)])
    tifffile.imwrite(tmp_path / "big.tif", series, imagej=True, truncate=True, metadata={"axes": "TZYX"})
    with tifffile.TiffFile(tmp_path / "big.tif") as tif:
        assert len(tif.series[0].pages) == 1
    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", lambda *a, **k: pytest.fail("read whole"))
    got = list(iter_tomograms(tmp_path / "big.tif", voxel_size_um=VS))
    assert [t.frame_index for t in got] == [0, 1, 2]
    np.testing.assert_array_equal(got[2].ri, series[2])
