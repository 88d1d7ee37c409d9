"""Region sources: every format read by region equals the whole read's slice; bad inputs refused before reading."""

from __future__ import annotations

import json
import pickle
import tracemalloc

import numpy as np
import pytest
import tifffile
import zarr
from tcf_helpers import MEDIUM_RI, VS, random_ri, write_classic_tcf, write_tiled_tcf

import deepis_rt.io.regions as regions
from deepis_rt.errors import (
    FileFormatError,
    ImplausibleRIError,
    InputError,
    NonFiniteInputError,
    VolumeTooLargeError,
)
from deepis_rt.io import iter_tomograms, read_tomogram
from deepis_rt.io.regions import MAX_FIELD_BYTES, open_region_source
from deepis_rt.io.tomogram import check_declared

SHAPE = (10, 20, 36)  # not a multiple of the TCF helper's (8, 16, 16) tiles: padded edge tiles on every axis
#: boxes inside, across tile/chunk borders, at the far edges, and NumPy-style indices (negative, ints, Ellipsis)
KEYS = [
    (slice(0, 10), slice(0, 20), slice(0, 36)),
    (slice(3, 9), slice(7, 19), slice(10, 35)),
    (slice(7, 10), slice(15, 17), slice(31, 36)),
    (slice(-4, None), slice(None, 5), slice(-20, -3)),
    (4, slice(2, 18)),
    (Ellipsis, 17),
    (slice(5, 5), slice(0, 3)),  # empty
    (slice(None, None, 2), slice(1, 19, 3), slice(None, None, 5)),  # subsampled, across tiles and chunks
    (slice(3, 10, 4), 7, slice(30, 36, 2)),
]


def _check_regions(src, whole: np.ndarray) -> None:
    assert src.shape == whole.shape and src.dtype == np.float32
    for key in KEYS:
        got = src[key]
        assert got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_array_equal(got, whole[key], err_msg=str(key))


@pytest.mark.parametrize("uint8", [True, False], ids=["uint8+RIMin", "uint16"])
def test_tiled_tcf_regions_equal_the_whole_read(tmp_path, uint8):
    path = tmp_path / "tiled.tcf"
    vols = [random_ri(SHAPE, seed=t) for t in range(2)]
    write_tiled_tcf(path, vols, uint8=uint8, gaps=(5,))  # a gap: the medium RI there
    for t, whole in enumerate(iter_tomograms(path)):
        with open_region_source(path, time_point=t) as src:
            assert src.kind == "tcf" and src.voxel_size_um == pytest.approx(VS)
            assert src.medium_ri == pytest.approx(MEDIUM_RI)
            assert src.stored_dtype == (np.uint8 if uint8 else np.uint16)
            _check_regions(src, whole.ri)


def test_tiled_tcf_reads_only_the_tiles_a_region_needs(tmp_path, monkeypatch):
    import deepis_rt.io.tcf as tcf

    path = tmp_path / "tiled.tcf"
    info = write_tiled_tcf(path, [random_ri(SHAPE)], uint8=False)
    reads = []
    real = tcf._read
    monkeypatch.setattr(tcf, "_read", lambda ds, where, region=None: reads.append((ds.name, region))
                        or real(ds, where, region))
    src = open_region_source(path)
    assert reads == []  # opening reads declarations only
    box = (slice(2, 6), slice(10, 20), slice(12, 20))
    src[box]
    # the (8, 16, 16) grid: the box meets tiles (0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1) of z-layer 0
    want = {f"TILE_{i:02d}" for i, (offset, last) in enumerate(info["boxes"])
            if all(o < s.stop and s.start <= b for o, b, s in zip(offset, last, box, strict=True))}
    assert want == {"TILE_00", "TILE_01", "TILE_03", "TILE_04"}
    assert {name.rsplit("/", 1)[1] for name, _ in reads} == want
    # and of each tile only the intersection: TILE_00 spans z 0-7, y 0-15, x 0-15
    assert dict((n.rsplit("/", 1)[1], r) for n, r in reads)["TILE_00"] == (slice(2, 6, 1), slice(10, 16, 1), slice(12, 16, 1))


@pytest.mark.parametrize("as_uint16", [False, True], ids=["float", "uint16"])
def test_classic_tcf_regions(tmp_path, as_uint16):
    path = tmp_path / "classic.tcf"
    write_classic_tcf(path, [random_ri(SHAPE, seed=3)], as_uint16=as_uint16)
    with open_region_source(path) as src:
        _check_regions(src, read_tomogram(path).ri)


def test_npy_regions_memory_mapped_with_sidecar_and_time_points(tmp_path):
    vols = np.stack([random_ri(SHAPE, seed=t) for t in range(3)])
    path = tmp_path / "lapse.npy"
    np.save(path, vols)
    path.with_suffix(".json").write_text(json.dumps({"voxel_size_um": [0.4, 0.2, 0.2], "medium_ri": 1.336}))
    for t, whole in enumerate(iter_tomograms(path)):
        src = open_region_source(path, time_point=t)
        assert src.voxel_size_um == (0.4, 0.2, 0.2) and src.medium_ri == 1.336 and src.kind == "npy"
        _check_regions(src, whole.ri)
    # RI x 10 000 integers decoded per region, as whole files are
    ints = tmp_path / "ints.npy"
    np.save(ints, np.round(vols[0] * 10000).astype(np.uint16))
    _check_regions(open_region_source(ints, 0.3), read_tomogram(ints, 0.3).ri)
    # an explicit scaling
    scaled = tmp_path / "scaled.npy"
    np.save(scaled, ((vols[0] - 1.3) * 1000).astype(np.float32))
    src = open_region_source(scaled, 0.3, ri_scale=0.001, ri_offset=1.3)
    _check_regions(src, read_tomogram(scaled, 0.3, ri_scale=0.001, ri_offset=1.3).ri)


@pytest.mark.parametrize("how", ["ome-tiled-bigtiff", "imagej-tzcyx"])
def test_tiff_regions(tmp_path, how):
    vols = np.stack([random_ri(SHAPE, seed=t) for t in range(2)])
    path = tmp_path / "field.tif"
    if how == "ome-tiled-bigtiff":
        tifffile.imwrite(path, vols[0], bigtiff=True, tile=(16, 16), ome=True,
                         metadata={"axes": "ZYX", "PhysicalSizeZ": 0.5, "PhysicalSizeY": 0.2, "PhysicalSizeX": 0.2})
        wholes = [read_tomogram(path).ri]
        vs = (0.5, 0.2, 0.2)
    else:  # an ImageJ hyperstack with a singleton channel axis between Z and Y
        tifffile.imwrite(path, vols[:, :, None], imagej=True, resolution=(1 / 0.25, 1 / 0.25),
                         metadata={"axes": "TZCYX", "spacing": 0.5, "unit": "um"})
        wholes = [t.ri for t in iter_tomograms(path)]
        vs = (0.5, 0.25, 0.25)
    for t, whole in enumerate(wholes):
        src = open_region_source(path, time_point=t)
        assert src.kind == "tiff" and src.voxel_size_um == pytest.approx(vs)
        _check_regions(src, whole)
        np.testing.assert_array_equal(whole, vols[t])


def _ngff_store(path, data: np.ndarray, scale, units=("micrometer",) * 3, zarr_format: int = 2,
                chunks=(1, 4, 8, 8)) -> None:
    root = zarr.open_group(path, mode="w", zarr_format=zarr_format)
    root.create_array("0", shape=data.shape, chunks=chunks, dtype=data.dtype)[:] = data
    axes = [{"name": "t", "type": "time", "unit": "second"},
            *({"name": a, "type": "space", "unit": u} for a, u in zip("zyx", units, strict=True))]
    ms = [{"version": "0.4" if zarr_format == 2 else "0.5", "name": "ri", "axes": axes,
           "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [2.0, *scale]}]}]}]
    root.attrs.update({"multiscales": ms} if zarr_format == 2 else {"ome": {"version": "0.5", "multiscales": ms}})


@pytest.mark.parametrize("zarr_format", [2, 3], ids=["ngff0.4-zarr2", "ngff0.5-zarr3"])
def test_ome_zarr_regions(tmp_path, zarr_format):
    vols = np.stack([random_ri(SHAPE, seed=t) for t in range(2)])
    path = tmp_path / "field.ome.zarr"
    _ngff_store(path, vols, [500.0, 250.0, 250.0], units=("nanometer",) * 3, zarr_format=zarr_format)
    for t in range(2):
        src = open_region_source(path, time_point=t)
        assert src.kind == "ome-zarr" and src.voxel_size_um == pytest.approx((0.5, 0.25, 0.25))
        _check_regions(src, vols[t])
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(src))[1:3, 4:9], vols[t][1:3, 4:9])
    # a plain zarr array: axes z, y, x; the voxel size from the caller
    plain = tmp_path / "plain.zarr"
    zarr.open_array(plain, mode="w", shape=SHAPE, chunks=(4, 8, 8), dtype="f4", zarr_format=2)[:] = vols[0]
    _check_regions(open_region_source(plain, 0.3), vols[0])


def _traced_peak(fn) -> tuple[int, object]:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        out = fn()
        return tracemalloc.get_traced_memory()[1], out
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("fmt", ["npy", "zarr"])
def test_a_region_of_a_large_input_allocates_about_the_region(tmp_path, fmt):
    shape = (32, 512, 512)  # 32 MiB as float32
    rng = np.random.default_rng(0)
    if fmt == "npy":
        path = tmp_path / "large.npy"
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
        for z in range(shape[0]):
            mm[z] = 1.34 + 0.01 * rng.random(shape[1:], dtype=np.float32)
        mm.flush()
        del mm
    else:
        path = tmp_path / "large.zarr"
        arr = zarr.open_array(path, mode="w", shape=shape, chunks=(8, 64, 64), dtype="f4", zarr_format=2)
        for z in range(0, shape[0], 8):
            arr[z:z + 8] = 1.34 + 0.01 * rng.random((8, *shape[1:]), dtype=np.float32)
    src = open_region_source(path, 0.25)
    box = (slice(8, 16), slice(100, 164), slice(200, 264))
    region_bytes = 8 * 64 * 64 * 4  # 128 KiB
    peak, region = _traced_peak(lambda: src[box])
    assert region.shape == (8, 64, 64)
    # the region, its decoded chunks (zarr: up to 4 of 128 KiB) and the RI checks' temporaries; the whole
    # input is 256 times the region
    assert peak < 12 * region_bytes, f"peak {peak / 2**20:.2f} MiB for a {region_bytes / 2**20:.2f} MiB region"
    whole = np.load(path) if fmt == "npy" else zarr.open_array(path, mode="r")[:]
    np.testing.assert_array_equal(region, whole[box])


def test_a_field_larger_than_one_read_opens_and_reads_by_region(tmp_path):
    path = tmp_path / "mosaic.zarr"  # 64 x 8192 x 8192 float32 = 16 GiB, no chunk written: the fill value
    zarr.open_array(path, mode="w", shape=(64, 8192, 8192), chunks=(16, 256, 256), dtype="f4", fill_value=1.337,
                    zarr_format=2)
    with pytest.raises(VolumeTooLargeError, match="GiB limit per volume"):  # what the whole-volume readers say
        check_declared((64, 8192, 8192), np.float32, "io | mosaic.zarr")
    src = open_region_source(path, 0.25)
    assert src.nbytes == 16 * 1024**3
    np.testing.assert_array_equal(src[60:64, 8000:8100, :3], np.float32(1.337))
    with pytest.raises(VolumeTooLargeError, match="read smaller regions"):
        src[:, :, :]
    big = tmp_path / "too_big.zarr"
    zarr.open_array(big, mode="w", shape=(1024, 32768, 32768), chunks=(16, 256, 256), dtype="f4", zarr_format=2)
    assert 1024 * 32768 * 32768 * 4 > MAX_FIELD_BYTES
    with pytest.raises(VolumeTooLargeError, match="too_big.zarr: declared volume"):
        open_region_source(big, 0.25)


# --------------------------------------------------------------------------- refusals
def test_refusals_before_any_read(tmp_path, monkeypatch):
    ri = random_ri(SHAPE)
    good = tmp_path / "good.npy"
    np.save(good, ri)
    # implausible voxel size from the sidecar, with the unit hint
    good.with_suffix(".json").write_text(json.dumps({"voxel_size_um": [500, 250, 250]}))
    with pytest.raises(InputError, match=r"good.npy: sidecar good.json: voxel_size_um .* look like nanometres"):
        open_region_source(good)
    # a header that declares more data than the file holds
    cut = tmp_path / "cut.npy"
    cut.write_bytes(good.read_bytes()[:-1000])
    with pytest.raises(FileFormatError, match="cut.npy: the header declares shape"):
        open_region_source(cut, 0.3)
    # 2-D, and a time point the file does not hold
    np.save(tmp_path / "flat.npy", ri[0])
    with pytest.raises(InputError, match="2-D data"):
        open_region_source(tmp_path / "flat.npy", 0.3)
    with pytest.raises(InputError, match="time point 2 asked for, the file holds 1"):
        open_region_source(_tcf(tmp_path), time_point=2)
    # formats that cannot be read by region
    np.savez(tmp_path / "z.npz", ri=ri)
    with pytest.raises(FileFormatError, match=r"z.npz: .npz cannot be read by region .*numpy.save"):
        open_region_source(tmp_path / "z.npz", 0.3)
    with pytest.raises(InputError, match="no such file"):
        open_region_source(tmp_path / "missing.tif")
    # a zarr group that is no OME-Zarr image, a store with two channels, chunks larger than one read
    zarr.open_group(tmp_path / "group.zarr", mode="w", zarr_format=2)
    with pytest.raises(FileFormatError, match="without OME-NGFF multiscales"):
        open_region_source(tmp_path / "group.zarr", 0.3)
    two = np.stack([ri, ri])[None]  # t, c, z, y, x
    root = zarr.open_group(tmp_path / "two.zarr", mode="w", zarr_format=2)
    root.create_array("0", shape=two.shape, dtype="f4")[:] = two
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"},
            *({"name": a, "type": "space", "unit": "micrometer"} for a in "zyx")]
    root.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 0.5, 0.25, 0.25]}]}]}]
    with pytest.raises(InputError, match="axis 'c' of size 2: one RI channel expected"):
        open_region_source(tmp_path / "two.zarr")
    zarr.open_array(tmp_path / "one_chunk.zarr", mode="w", shape=SHAPE, chunks=SHAPE, dtype="f4", zarr_format=2)
    monkeypatch.setattr(regions, "MAX_VOLUME_BYTES", 4096)  # a chunk larger than one read may be
    with pytest.raises(VolumeTooLargeError, match=r"one zarr chunk \(10, 20, 36\) .* rechunk"):
        open_region_source(tmp_path / "one_chunk.zarr", 0.3)


def _tcf(tmp_path):
    path = tmp_path / "one.tcf"
    if not path.exists():
        write_tiled_tcf(path, [random_ri(SHAPE)], uint8=False)
    return path


def test_tcf_refusals_at_open(tmp_path):
    path = tmp_path / "nomedium.tcf"
    write_tiled_tcf(path, [random_ri(SHAPE)], uint8=False, gaps=(0,), medium_ri=None)
    with pytest.raises(FileFormatError, match="lie in no tile.*/Info/Device"):
        open_region_source(path)
    broken = tmp_path / "broken.tcf"
    write_tiled_tcf(broken, [random_ri(SHAPE)], uint8=False)
    import h5py

    with h5py.File(broken, "r+") as f:
        f["Data/3D/000000/TILE_04"].attrs["DataIndexOffsetPointX"] = np.array([10], np.int64)
    with pytest.raises(FileFormatError, match="TILE_04: holds 16 voxels along X but its index range needs 22"):
        open_region_source(broken)
    cut = tmp_path / "cut.tif"
    tifffile.imwrite(cut, random_ri(SHAPE), metadata={"axes": "ZYX"})
    cut.write_bytes(cut.read_bytes()[:-2000])
    with pytest.raises(FileFormatError, match="cut.tif"):
        open_region_source(cut, 0.3)[:, :, :]


def test_region_values_are_checked_and_indices_validated(tmp_path):
    ri = random_ri(SHAPE)
    ri[8, 2, 3] = np.nan
    path = tmp_path / "nan.npy"
    np.save(path, ri)
    src = open_region_source(path, 0.3)
    assert src[:8].shape == (8, 20, 36)  # the region without the NaN is fine
    with pytest.raises(NonFiniteInputError, match=r"nan.npy \[8:10, 0:20, 0:36\]: 1 voxel"):
        src[8:]
    counts = tmp_path / "counts.npy"
    np.save(counts, np.full(SHAPE, 500, np.uint16))
    with pytest.raises(ImplausibleRIError, match="counts.npy.*RI x 10 000"):
        open_region_source(counts, 0.3)[:2]
    with pytest.raises(IndexError, match="step -1 along Y; a region is read with positive steps"):
        src[:, ::-1]
    with pytest.raises(IndexError, match="index 10 outside axis Z"):
        src[10]
    with pytest.raises(TypeError, match="slices or integers"):
        src[[1, 2]]
