"""Tomocube TCF: tiled and classic layouts, reconstruction, broken files, compression, info."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
from tcf_helpers import MEDIUM_RI, VS, random_ri, write_classic_tcf, write_tiled_tcf

from deepis_rt.errors import FileFormatError, ImplausibleRIError, MissingDependencyError
from deepis_rt.io import iter_tomograms, read_labels, read_tomogram, time_points

SHAPE = (10, 20, 36)  # not a multiple of the (8, 16, 16) tiles: every axis has a padded edge tile


def _volumes(n: int = 3) -> list[np.ndarray]:
    return [random_ri(SHAPE, seed=t) for t in range(n)]


@pytest.mark.parametrize("uint8", [True, False], ids=["uint8+RIMin", "uint16"])
@pytest.mark.parametrize("compression", [None, "gzip", "zstd", "lz4"])
def test_tiled_reconstruction_equals_the_source(tmp_path, uint8, compression):
    hdf5plugin = pytest.importorskip("hdf5plugin")
    comp = {None: {}, "gzip": {"compression": "gzip", "compression_opts": 4},
            "zstd": dict(hdf5plugin.Zstd()), "lz4": dict(hdf5plugin.LZ4())}[compression]
    vols = _volumes()
    path = tmp_path / "tiled.TCF"
    # tile 5 of the grid is not written: a gap, filled with the medium RI
    info = write_tiled_tcf(path, vols, uint8=uint8, gaps=(5,), compression=comp, times_s=[0.0, 2.5, 5.5])
    frames = list(iter_tomograms(path))
    assert [t.frame_index for t in frames] == [0, 1, 2]
    assert [t.time_s for t in frames] == pytest.approx([0.0, 2.5, 5.5])  # per-time-point Time
    quantum = 1e-3 if uint8 else 1e-4
    for t, tomo in enumerate(frames):
        assert tomo.ri.shape == SHAPE and tomo.ri.dtype == np.float32
        assert tomo.voxel_size_um == pytest.approx(VS)
        assert tomo.medium_ri == pytest.approx(MEDIUM_RI)
        np.testing.assert_allclose(tomo.ri, info["expected"][t], atol=1e-6)
        # and the source itself within the format's quantisation, outside the gap
        covered = info["expected"][t] != np.float32(MEDIUM_RI)
        assert np.abs(tomo.ri - vols[t])[covered].max() <= quantum / 2 + 1e-6
    gap = np.ones(SHAPE, bool)
    for offset, last in info["boxes"]:
        gap[tuple(slice(a, b + 1) for a, b in zip(offset, last, strict=True))] = False
    assert gap.sum() > 0 and np.all(frames[0].ri[gap] == np.float32(MEDIUM_RI))


def test_time_interval_when_no_per_time_point_time_and_size_from_data_3d(tmp_path):
    path = tmp_path / "t.tcf"
    write_tiled_tcf(path, _volumes(2), uint8=False, data_size_attrs=False, time_interval_s=4.0)
    assert [t.time_s for t in iter_tomograms(path)] == pytest.approx([0.0, 4.0])


def test_tiled_reads_one_time_point_and_one_tile_at_a_time(tmp_path, monkeypatch):
    import deepis_rt.io.tcf as tcf

    path = tmp_path / "lapse.tcf"
    write_tiled_tcf(path, _volumes(3), uint8=False)
    reads = []
    real = tcf._read
    monkeypatch.setattr(tcf, "_read", lambda ds, where, region=None: reads.append((ds.name, region))
                        or real(ds, where, region))
    frames = iter_tomograms(path)
    next(frames)
    names = [n for n, _ in reads]
    assert names and all(n.startswith("/Data/3D/000000/TILE_") for n in names)
    assert "/Data/3D/000000/TILE_12" not in names  # the SamplingStep 2 preview is never read
    # edge tiles are read only over their valid part, never their padding
    ragged = [r for n, r in reads if n.endswith("TILE_02")]
    assert ragged == [(slice(0, 8), slice(0, 16), slice(0, 4))]
    assert len(list(frames)) == 2


def test_classic_layouts_float_and_uint16(tmp_path):
    vols = _volumes(2)
    write_classic_tcf(tmp_path / "old.tcf", vols, as_uint16=False)
    write_classic_tcf(tmp_path / "new.tcf", vols, as_uint16=True)
    old, new = list(iter_tomograms(tmp_path / "old.tcf")), list(iter_tomograms(tmp_path / "new.tcf"))
    np.testing.assert_array_equal(old[1].ri, vols[1])
    np.testing.assert_allclose(new[1].ri, vols[1], atol=0.5e-4 + 1e-6)
    assert old[0].medium_ri == new[0].medium_ri == pytest.approx(MEDIUM_RI)
    assert [t.time_s for t in new] == pytest.approx([0.0, 3.0])


def test_labels_in_a_tcf_are_not_scaled(tmp_path):
    labels = np.random.default_rng(1).integers(0, 4, size=SHAPE).astype(np.uint16)
    with h5py.File(tmp_path / "lab.tcf", "w") as f:
        f.create_dataset("Data/3D/000000", data=labels)
    np.testing.assert_array_equal(read_labels(tmp_path / "lab.tcf"), labels)


def _break(path, how):
    with h5py.File(path, "r+") as f:
        g = f["Data/3D/000001"]
        if how == "outside":
            g["TILE_02"].attrs["DataIndexLastPointX"] = np.array([SHAPE[2]], np.int64)
        elif how == "missing":
            del g["TILE_01"]
        elif how == "dtype":
            attrs = dict(g["TILE_03"].attrs)
            data = g["TILE_03"][()].astype(np.uint32)
            del g["TILE_03"]
            ds = g.create_dataset("TILE_03", data=data)
            ds.attrs.update(attrs)
        elif how == "overlap":
            g["TILE_04"].attrs["DataIndexOffsetPointX"] = np.array([10], np.int64)
            g["TILE_04"].attrs["DataIndexLastPointX"] = np.array([25], np.int64)
        elif how == "short":
            attrs = dict(g["TILE_00"].attrs)
            data = g["TILE_00"][:, :, :5]
            del g["TILE_00"]
            ds = g.create_dataset("TILE_00", data=data)
            ds.attrs.update(attrs)
        elif how == "no-step":
            del g["TILE_05"].attrs["SamplingStep"]


@pytest.mark.parametrize("how,words", [
    ("outside", ["TILE_02", "outside the volume"]),
    ("missing", ["TILE_01 is missing", "NumberOfTiles"]),
    ("dtype", ["TILE_03", "uint32", "uint16"]),
    ("overlap", ["TILE_04", "overlaps TILE_03"]),
    ("short", ["TILE_00", "holds 5 voxels along X"]),
    ("no-step", ["TILE_05", "SamplingStep"]),
])
def test_broken_time_point_is_a_named_error_and_no_partial_frame(tmp_path, how, words):
    path = tmp_path / "broken.tcf"
    write_tiled_tcf(path, _volumes(3), uint8=False)
    _break(path, how)
    frames = iter_tomograms(path)
    assert next(frames).frame_index == 0  # the intact time point before it is fine
    with pytest.raises(FileFormatError) as err:
        next(frames)
    msg = str(err.value)
    assert msg.startswith("io | broken.tcf, time point 1 (/Data/3D/000001)"), msg
    for w in words:
        assert w in msg, msg


def test_truncated_file_is_a_clear_error(tmp_path):
    path = tmp_path / "cut.tcf"
    write_tiled_tcf(path, _volumes(3), uint8=True)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(FileFormatError, match="cut.tcf.*(complete|truncated|corrupt)"):
        list(iter_tomograms(path))


def test_gap_without_medium_ri_is_refused(tmp_path):
    path = tmp_path / "nomedium.tcf"
    write_tiled_tcf(path, _volumes(1), uint8=False, gaps=(0,), medium_ri=None)
    with pytest.raises(FileFormatError, match="lie in no tile.*/Info/Device"):
        read_tomogram(path)


def test_no_full_resolution_tile(tmp_path):
    path = tmp_path / "preview_only.tcf"
    write_tiled_tcf(path, _volumes(1), uint8=False, gaps=tuple(range(12)))
    with pytest.raises(FileFormatError, match="no full-resolution tile"):
        read_tomogram(path)


def test_classic_tcf_in_wrong_units_is_refused(tmp_path):
    with h5py.File(tmp_path / "units.tcf", "w") as f:
        f.create_dataset("Data/3D/000000", data=np.full(SHAPE, 133.7, np.float32))
    with pytest.raises(ImplausibleRIError, match=r"units.tcf: values span 133.7 .. 133.7"):
        read_tomogram(tmp_path / "units.tcf")


def test_missing_compression_plugin_names_the_extra(tmp_path):
    """Without hdf5plugin (blocked in a fresh interpreter) a Zstd-compressed TCF is refused clearly."""
    hdf5plugin = pytest.importorskip("hdf5plugin")
    path = tmp_path / "zstd.tcf"
    write_tiled_tcf(path, _volumes(1), uint8=False, compression=dict(hdf5plugin.Zstd()))
    script = textwrap.dedent(f"""
        import sys
        sys.modules["hdf5plugin"] = None  # as if not installed
        from deepis_rt.io import read_tomogram
        from deepis_rt.errors import MissingDependencyError
        try:
            read_tomogram({str(path)!r})
        except MissingDependencyError as exc:
            print("REFUSED", exc)
    """)
    empty = tmp_path / "no_plugins"
    empty.mkdir()
    env = {**__import__("os").environ, "HDF5_PLUGIN_PATH": str(empty)}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert "REFUSED" in res.stdout, res.stdout + res.stderr
    assert "zstd" in res.stdout and "deepis-rt[formats]" in res.stdout
    assert issubclass(MissingDependencyError, ImportError)


def test_info_describes_a_tiled_tcf_without_reading_voxels(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import deepis_rt.io.tcf as tcf
    from deepis_rt.cli import main
    from deepis_rt.info import describe

    hdf5plugin = pytest.importorskip("hdf5plugin")
    path = tmp_path / "cells.TCF"
    write_tiled_tcf(path, _volumes(3), uint8=True, compression=dict(hdf5plugin.LZ4()))
    monkeypatch.setattr(tcf, "_read", lambda *a, **k: pytest.fail("info read voxels"))
    desc = describe(path)
    assert desc["kind"] == "tcf" and desc["layout"] == "tiled"
    assert desc["format_version"] == "1.4.6.1"
    assert desc["time_points"] == 3 and desc["size_zyx"] == list(SHAPE)
    assert desc["voxel_size_um"] == pytest.approx(list(VS))
    assert desc["medium_ri"] == pytest.approx(MEDIUM_RI)
    assert desc["compression"] == ["lz4"]
    assert desc["device"]["DeviceSerial"] == "HT-X1-TEST" and desc["device"]["NA"] == pytest.approx(0.95)
    assert desc["tiles"] == {"per_time_point": 13, "full_resolution": 12, "previews": 1}
    assert "uint8" in desc["encoding"]
    res = CliRunner().invoke(main, ["info", str(path), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["layout"] == "tiled"
    res = CliRunner().invoke(main, ["info", str(path)])
    assert "layout: tiled" in res.output and "medium_ri: 1.337" in res.output


def test_info_describes_a_classic_tcf(tmp_path):
    from deepis_rt.info import describe

    write_classic_tcf(tmp_path / "c.tcf", _volumes(2), as_uint16=True)
    desc = describe(tmp_path / "c.tcf")
    assert desc["layout"] == "classic" and desc["compression"] == "none" and "10 000" in desc["encoding"]
    assert desc["time_interval_s"] == pytest.approx(3.0) and "tiles" not in desc


def _damage_attribute(path, name: str, occurrence: int) -> None:
    """Corrupt the datatype of the ``occurrence``-th attribute called ``name`` (bit rot in the file's metadata)."""
    raw = bytearray(path.read_bytes())
    at, start = -1, 0
    for _ in range(occurrence + 1):
        at = raw.index(name.encode(), start)
        start = at + 1
    raw[at + (len(name) + 8) // 8 * 8] ^= 0xFF  # the datatype's version, after the NUL-ended name padded to 8 bytes
    path.write_bytes(bytes(raw))


def test_damaged_metadata_of_one_time_point_fails_that_time_point_alone(tmp_path):
    path = tmp_path / "rot.tcf"
    write_tiled_tcf(path, _volumes(3), uint8=False)
    _damage_attribute(path, "ScalarType", 1)  # time point 1: h5py raises RuntimeError on any attribute look-up
    got = []
    for point in time_points(path):
        try:
            got.append(point.read().frame_index)
        except FileFormatError as exc:
            got.append(str(exc))
    assert got[0] == 0 and got[2] == 2
    assert got[1].startswith("io | rot.tcf, time point 1 (/Data/3D/000001): damaged HDF5 structure"), got[1]
    assert "truncated or corrupt" in got[1]


def test_damaged_file_metadata_is_a_file_format_error(tmp_path):
    path = tmp_path / "rot.tcf"
    write_tiled_tcf(path, _volumes(2), uint8=False)
    _damage_attribute(path, "TimeInterval", 0)  # /Data/3D itself
    with pytest.raises(FileFormatError, match="io | rot.tcf: damaged HDF5 structure.*truncated or corrupt"):
        time_points(path)
