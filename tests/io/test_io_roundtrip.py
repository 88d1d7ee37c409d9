"""Readers and writers: round trips, voxel sizes, time series and rejections."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import tifffile

from deepis_rt.errors import FileFormatError, InputError, NonFiniteInputError, VolumeTooLargeError
from deepis_rt.io import iter_tomograms, read_labels, read_tomogram, write_labels, write_tomogram

VS = (0.5, 0.25, 0.25)


@pytest.fixture
def ri():
    rng = np.random.default_rng(0)
    return (1.337 + 0.03 * rng.random((6, 10, 12))).astype(np.float32)


@pytest.mark.parametrize("fmt,suffix", [("tiff", ".tif"), ("npy", ".npy"), ("tcf", ".tcf")])
def test_round_trip(tmp_path, ri, fmt, suffix):
    path = write_tomogram(tmp_path / f"frame_000001{suffix}", ri, VS, fmt, time_s=4.5, medium_ri=1.337)
    tomo = read_tomogram(path)
    np.testing.assert_array_equal(tomo.ri, ri)
    assert tomo.ri.dtype == np.float32
    assert tomo.voxel_size_um == pytest.approx(VS)
    assert tomo.shape == ri.shape
    if fmt != "tiff":
        assert tomo.time_s == pytest.approx(4.5)
        assert tomo.medium_ri == pytest.approx(1.337)  # TCF: /Info/Device attribute RI
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no partial files left


def test_ome_tiff_has_physical_size(tmp_path, ri):
    path = write_tomogram(tmp_path / "a.tif", ri, VS)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        assert 'PhysicalSizeZ="0.5"' in tif.ome_metadata
        assert 'PhysicalSizeX="0.25"' in tif.ome_metadata


def test_imagej_spacing(tmp_path, ri):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, ri, imagej=True, resolution=(1 / 0.2, 1 / 0.2), metadata={"spacing": 0.6, "unit": "um"})
    assert read_tomogram(path).voxel_size_um == pytest.approx((0.6, 0.2, 0.2))


def test_several_positions_in_one_tiff_are_said_not_silently_dropped(tmp_path, ri, caplog):
    import logging

    path = tmp_path / "positions.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:
        for _ in range(3):
            tw.write(np.round(ri * 10000).astype(np.uint16), metadata={"axes": "ZYX"})
    with caplog.at_level(logging.WARNING, logger="deepis_rt.io.readers"):
        assert read_tomogram(path).ri.shape == ri.shape
    assert "3 series of the same shape" in caplog.text and "only the first is read" in caplog.text


def test_imagej_without_unit_is_read_as_imagej_reads_it(tmp_path, ri):
    """No ``unit`` in the description: ImageJ takes the unit from the ResolutionUnit tag (cm, inch) and
    otherwise leaves the image uncalibrated; reading such a file as um would make up a voxel size."""
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, ri, imagej=True, resolution=(1 / 0.2, 1 / 0.2), metadata={"spacing": 0.6})
    assert read_tomogram(path).voxel_size_um is None  # uncalibrated: the caller must say (--voxel-size)
    tifffile.imwrite(path, ri, imagej=True, resolution=(1e4 / 0.2, 1e4 / 0.2), resolutionunit="CENTIMETER",
                     metadata={"spacing": 0.6e-4})
    assert read_tomogram(path).voxel_size_um == pytest.approx((0.6, 0.2, 0.2))


def test_ome_voxel_size_with_greek_mu_entities_or_a_namespace_prefix(tmp_path, ri):
    import re

    path = tmp_path / "ome.tif"
    write_tomogram(path, ri, VS, fmt="tiff")
    with tifffile.TiffFile(path) as tif:
        xml = tif.ome_metadata
    variants = {
        "greek mu": xml.replace("µm", "\u03bcm"),
        "entity": xml.replace("µm", "&#181;m"),
        "prefix": re.sub(r"<(/?)(\w+)", r"<\1ome:\2", xml).replace('xmlns="', 'xmlns:ome="'),
    }
    for name, text in variants.items():
        assert text != xml, name
        tifffile.tiffcomment(path, text.encode())
        assert read_tomogram(path).voxel_size_um == pytest.approx(VS), name


def test_voxel_size_argument_overrides_and_npy_without_sidecar(tmp_path, ri):
    np.save(tmp_path / "bare.npy", ri)
    assert read_tomogram(tmp_path / "bare.npy").voxel_size_um is None
    assert read_tomogram(tmp_path / "bare.npy", voxel_size_um=(1, 0.5, 0.5)).voxel_size_um == (1.0, 0.5, 0.5)


def test_npz_picks_named_array(tmp_path, ri):
    np.savez(tmp_path / "v.npz", other=np.zeros(3), ri=ri)
    (tmp_path / "v.json").write_text(json.dumps({"voxel_size_um": list(VS)}))
    tomo = read_tomogram(tmp_path / "v.npz")
    np.testing.assert_array_equal(tomo.ri, ri)
    assert tomo.voxel_size_um == pytest.approx(VS)


def test_tcf_time_series_and_integer_scaling(tmp_path, ri):
    path = tmp_path / "series.tcf"
    with h5py.File(path, "w") as f:
        f.attrs["FormatVersion"] = "1.4.1"
        grp = f.create_group("Data/3D")
        for ax, v in zip("ZYX", VS, strict=False):
            grp.attrs[f"Resolution{ax}"] = v
        grp.attrs["TimeInterval"] = 3.0
        for i in range(3):
            grp.create_dataset(f"{i:06d}", data=np.round(ri * 10000).astype(np.uint16) + i)
    frames = list(iter_tomograms(path))
    assert [t.frame_index for t in frames] == [0, 1, 2]
    assert [t.time_s for t in frames] == pytest.approx([0.0, 3.0, 6.0])
    assert frames[0].voxel_size_um == pytest.approx(VS)
    np.testing.assert_allclose(frames[0].ri, ri, atol=1e-4)
    assert read_tomogram(path).frame_index == 0


def test_time_series_are_read_one_time_point_at_a_time(tmp_path, ri, monkeypatch):
    """A long TCF / .npy time-lapse must not be loaded whole before the first frame is yielded."""
    import deepis_rt.io.tcf as tcf

    path = tmp_path / "long.tcf"
    with h5py.File(path, "w") as f:
        grp = f.create_group("Data/3D")
        for i in range(4):
            grp.create_dataset(f"{i:06d}", data=ri + np.float32(0.001 * i))
    reads = []
    real = tcf._read
    monkeypatch.setattr(tcf, "_read", lambda ds, where, region=None: reads.append(ds.name) or real(ds, where, region))
    frames = iter_tomograms(path)
    first = next(frames)
    assert reads == ["/Data/3D/000000"]
    np.testing.assert_array_equal(first.ri, ri)
    rest = list(frames)
    assert len(reads) == 4 and rest[-1].frame_index == 3
    np.testing.assert_allclose(rest[-1].ri, ri + np.float32(0.003))
    # a 4-D .npy is memory-mapped; every time point comes back as its own writable float32 copy
    series = np.stack([ri, ri + np.float32(0.01)])
    np.save(tmp_path / "series.npy", series)
    got = list(iter_tomograms(tmp_path / "series.npy", voxel_size_um=VS))
    assert [t.frame_index for t in got] == [0, 1]
    assert all(type(t.ri) is np.ndarray and t.ri.flags.writeable for t in got)
    np.testing.assert_array_equal(got[1].ri, series[1])


def test_tcf_time_point_corrupted_after_listing_is_a_clear_error(tmp_path, ri):
    path = tmp_path / "gone.tcf"
    with h5py.File(path, "w") as f:
        grp = f.create_group("Data/3D")
        for i in range(2):
            grp.create_dataset(f"{i:06d}", data=ri)
    frames = iter_tomograms(path)
    next(frames)
    path.write_bytes(b"not hdf5 any more")
    with pytest.raises(FileFormatError, match="became unreadable"):
        next(frames)


def test_mat_files_become_zyx(tmp_path):
    import scipy.io

    matlab = np.full((16, 20, 8), 1.337)  # MATLAB order (Y, X, Z)
    matlab[3, 5, 7] = 1.4
    scipy.io.savemat(tmp_path / "old.mat", {"input": matlab})
    old = read_tomogram(tmp_path / "old.mat")
    assert old.shape == (8, 16, 20) and old.ri[7, 3, 5] == pytest.approx(1.4)
    with h5py.File(tmp_path / "v73.mat", "w") as f:  # HDF5 holds the column-major array reversed
        f["input"] = matlab.T
    new = read_tomogram(tmp_path / "v73.mat")
    assert new.shape == (8, 16, 20) and new.ri[7, 3, 5] == pytest.approx(1.4)


def test_mat_file_of_more_than_four_dimensions_is_refused(tmp_path):
    import scipy.io

    scipy.io.savemat(tmp_path / "5d.mat", {"input": np.full((16, 20, 8, 2, 3), 1.337)})  # (Y, X, Z, T, C)
    with pytest.raises(InputError, match="5d.mat: 5-D data"):
        list(iter_tomograms(tmp_path / "5d.mat", VS))


def test_labels_round_trip(tmp_path):
    labels = np.random.default_rng(1).integers(0, 4, size=(6, 10, 12)).astype(np.uint8)
    path = write_labels(tmp_path / "l.tif", labels, VS)
    np.testing.assert_array_equal(read_labels(path), labels)
    np.save(tmp_path / "frac.npy", labels.astype(np.float32) + 0.5)
    with pytest.raises(InputError, match="whole numbers"):
        read_labels(tmp_path / "frac.npy")


@pytest.mark.parametrize("shape", [(10, 12), (2, 3, 4, 5, 6)])
def test_rejects_wrong_dimensions(tmp_path, shape):
    np.save(tmp_path / "bad.npy", np.zeros(shape, np.float32))
    with pytest.raises(InputError, match="expected a 3-D volume"):
        read_tomogram(tmp_path / "bad.npy")


def test_rejects_nan(tmp_path, ri):
    ri[1, 2, 3] = np.nan
    np.save(tmp_path / "nan.npy", ri)
    with pytest.raises(NonFiniteInputError, match="NaN or Inf"):
        read_tomogram(tmp_path / "nan.npy")


def test_rejects_declared_size_before_reading(tmp_path):
    # a header that declares 4096^3 float32 with no data behind it: refused from the header alone
    path = tmp_path / "huge.npy"
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_2_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (4096, 4096, 4096)})
    with pytest.raises(VolumeTooLargeError, match="GiB"):
        read_tomogram(path)


def test_rejects_non_numeric_and_unknown_and_corrupt(tmp_path, ri):
    np.save(tmp_path / "c.npy", ri.astype(np.complex64))
    with pytest.raises(InputError, match="not numeric"):
        read_tomogram(tmp_path / "c.npy")
    (tmp_path / "x.png").write_bytes(b"png")
    with pytest.raises(FileFormatError, match="unsupported"):
        read_tomogram(tmp_path / "x.png")
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(FileFormatError):
        read_tomogram(tmp_path / "broken.tif")
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f.create_group("Other")
    with pytest.raises(FileFormatError, match="/Data/3D"):
        read_tomogram(tmp_path / "empty.h5")
    with pytest.raises(InputError, match="no such file"):
        read_tomogram(tmp_path / "missing.tif")


@pytest.mark.parametrize("axes,shape,kwargs", [
    ("TYX", (6, 10, 12), {"ome": True}),  # a time-lapse of 2-D images (e.g. projections)
    ("TYX", (6, 10, 12), {"imagej": True}),  # the same from ImageJ (frames, no slices)
    ("YXS", (10, 12, 3), {"photometric": "rgb"}),  # an RGB picture
])
def test_tiff_without_z_planes_is_refused_not_read_as_a_volume(tmp_path, axes, shape, kwargs):
    data = np.full(shape, 1.35, np.float32) if axes != "YXS" else np.full(shape, 135, np.uint8)
    meta = {} if axes == "YXS" else {"metadata": {"axes": axes}}
    tifffile.imwrite(tmp_path / "planes.tif", data, **kwargs, **meta)
    with tifffile.TiffFile(tmp_path / "planes.tif") as tif:
        assert tif.series[0].axes == axes
    with pytest.raises(InputError, match=f"planes.tif: TIFF axes '{axes}'.*Z stack"):
        read_tomogram(tmp_path / "planes.tif", VS, ri_scale=0.01 if axes == "YXS" else None)


@pytest.mark.parametrize("series,where", [(False, "pages"), (True, "pages"), (True, "description")],
                         ids=["ZYX", "TZYX", "TZYX-description"])
def test_tiff_cut_short_is_refused_not_read_with_fewer_planes(tmp_path, ri, series, where):
    """A TIFF still being written (or copied) ends in the middle of its chain of pages, or of the OME-XML
    that tifffile writes last; tifffile only logs that and reads what is left: a volume with fewer planes,
    or, without the OME-XML, all time points as one volume."""
    data = np.stack([ri, ri + np.float32(0.01)]) if series else ri
    path = tmp_path / "cut.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "TZYX" if series else "ZYX", "PhysicalSizeZ": 0.5,
                                                     "PhysicalSizeY": 0.25, "PhysicalSizeX": 0.25})
    with tifffile.TiffFile(path) as tif:
        if where == "pages":
            cut = tif.pages[len(tif.pages) - 2].offset  # the second-to-last page and all after it are lost
        else:
            cut = tif.pages.first.tags["ImageDescription"].valueoffset + 100  # every page, part of the OME-XML
            assert cut > tif.pages[len(tif.pages) - 1].offset
    path.write_bytes(path.read_bytes()[:cut])
    what = "breaks off after page" if where == "pages" else "description of the first page"
    with pytest.raises(FileFormatError, match=f"cut.ome.tif: .*{what}.*incomplete"):
        list(iter_tomograms(path, VS))
