"""Block plan and block execution: blocks merged from the global tiles equal the in-memory map."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from deepis_rt.backends import FakeRunner
from deepis_rt.errors import ConfigError, ImplausibleRIError, InputError
from deepis_rt.field import FieldStore, plan_field, run_block
from deepis_rt.field.plan import BYTES_PER_BLOCK_VOXEL, runner_budget_bytes
from deepis_rt.runtime.segmenter import Segmenter
from deepis_rt.runtime.tiling import BlendMerger, plan_tiles

META = {"voxel_size_um": [0.5, 0.25, 0.25], "ri_normalization": {"offset": 1.337, "scale": 0.02},
        "medium_ri": 1.337, "tile_zyx": [16, 32, 32]}
SHAPE = (40, 100, 90)


@pytest.fixture(scope="module")
def segmenter():
    seg = Segmenter(FakeRunner(), META, analyze=False)
    yield seg
    seg.close()


@pytest.fixture(scope="module")
def volume():
    rng = np.random.default_rng(0)
    return (1.337 + 0.03 * rng.standard_normal(SHAPE)).astype(np.float32)


def _run_all(seg, source, plan, path):
    store = FieldStore.create(path, plan.shape, plan.chunks, (0.5, 0.25, 0.25))
    for block in plan:
        run_block(seg, source, plan, block, store)
    return store


@pytest.mark.parametrize("block_zyx", [(32, 64, 32), (16, 32, 64), (48, 128, 96)])
def test_blocks_equal_the_in_memory_map_bit_for_bit(segmenter, volume, tmp_path, block_zyx):
    """Same tiles, same order of summation, same weight sums: identical float32 values."""
    reference = segmenter._tile(volume)
    plan = plan_field(SHAPE, segmenter.tile_zyx, 0.25, chunks=(16, 32, 32), block_zyx=block_zyx)
    store = _run_all(segmenter, volume, plan, tmp_path / "f.zarr")
    np.testing.assert_array_equal(store.distance[:], reference)


def test_region_sources_and_integer_ri(segmenter, volume, tmp_path):
    """A zarr array of RI x 10 000 integers is read tile by tile and decoded as the in-memory path does."""
    ints = np.round(volume * 10000).astype(np.uint16)
    reference = segmenter._tile(np.divide(ints, np.float32(10000), dtype=np.float32))
    source = zarr.create_array(tmp_path / "in.zarr", shape=SHAPE, chunks=(8, 50, 45), dtype="uint16")
    source[:] = ints
    plan = plan_field(SHAPE, segmenter.tile_zyx, 0.25, chunks=(16, 32, 32), block_zyx=(32, 64, 64))
    store = _run_all(segmenter, source, plan, tmp_path / "f.zarr")
    np.testing.assert_array_equal(store.distance[:], reference)


def test_implausible_values_are_refused_with_the_fix(segmenter, tmp_path):
    plan = plan_field((16, 32, 32), segmenter.tile_zyx, chunks=(16, 32, 32))
    store = FieldStore.create(tmp_path / "f.zarr", plan.shape, plan.chunks, (0.5, 0.25, 0.25))
    with pytest.raises(ImplausibleRIError, match="run_block"):
        run_block(segmenter, np.full((16, 32, 32), 7.0, np.float32), plan, 0, store)


def test_region_merger_matches_whole_volume_merger():
    plan = plan_tiles((20, 50, 40), (16, 32, 32), 0.25, fixed_tile=True)
    rng = np.random.default_rng(1)
    whole = BlendMerger(plan)
    part = BlendMerger(plan, region=(slice(3, 17), slice(10, 45), slice(0, 40)))
    for loc in plan.locations():
        values = rng.standard_normal((16, 32, 32)).astype(np.float32)
        whole.aggregate(values, loc)
        part.aggregate(values, loc)
    np.testing.assert_array_equal(part.finalize(), whole.finalize()[3:17, 10:45, 0:40])


def test_plan_blocks_partition_the_field_in_whole_chunks():
    plan = plan_field((100, 700, 650), (64, 128, 128), 0.25, max_memory_gb=1.0)
    covered = np.zeros(plan.shape, np.uint8)
    for block in plan:
        covered[block.region] += 1
        for r, c in zip(block.region, plan.chunks, strict=True):
            assert r.start % c == 0
        # every global tile that reaches the block is listed, in the global order
        reaching = [loc for loc in plan.tiling.locations()
                    if all(s < r.stop and s + t > r.start for s, t, r in zip(loc, plan.tiling.tile_zyx, block.region,
                                                                            strict=True))]
        assert list(block.tiles) == reaching
    assert (covered == 1).all()
    assert plan.expected_peak_bytes <= 1e9
    assert "1.00 GB budget" in str(plan) and plan.describe()["blocks"] == len(plan.blocks)


def test_plan_follows_the_budget():
    shape, tile = (64, 1024, 1024), (64, 128, 128)
    small, large = (plan_field(shape, tile, max_memory_gb=gb) for gb in (0.6, 4.0))
    assert len(small.blocks) > len(large.blocks)
    assert small.tile_runs > large.tile_runs >= large.n_tiles
    for plan, gb in ((small, 0.6), (large, 4.0)):
        biggest = max(b.voxels for b in plan.blocks)
        assert plan.fixed_bytes + BYTES_PER_BLOCK_VOXEL * biggest <= gb * 1e9
    assert plan_field((64, 200, 200), tile, max_memory_gb=4.0).blocks[0].shape == (64, 200, 200)


def test_small_budgets_get_smaller_chunks():
    default = plan_field((64, 1024, 1024), (64, 128, 128), max_memory_gb=4.0)
    small = plan_field((64, 1024, 1024), (64, 128, 128), max_memory_gb=0.3)
    assert default.chunks == (64, 256, 256) and np.prod(small.chunks) < np.prod(default.chunks)
    assert small.expected_peak_bytes <= 0.3e9


def test_plan_refuses_a_budget_below_the_runner_and_one_chunk():
    least = runner_budget_bytes((64, 128, 128))
    with pytest.raises(ConfigError, match=r"give at least \d+\.\d GB"):
        plan_field((64, 1024, 1024), (64, 128, 128), max_memory_gb=least / 1e9 * 0.9)
    with pytest.raises(ConfigError, match="max_memory_gb"):
        plan_field((64, 1024, 1024), (64, 128, 128), max_memory_gb=-1)
    with pytest.raises(ConfigError, match="whole number of chunks"):
        plan_field((64, 1024, 1024), (64, 128, 128), block_zyx=(64, 300, 256))


def test_opening_something_else_than_a_store_says_so(tmp_path):
    zarr.open_group(tmp_path / "other.zarr", mode="w", zarr_format=2)
    with pytest.raises(ConfigError, match="not a deepis-rt field store"):
        FieldStore.open(tmp_path / "other.zarr")


def test_run_block_refuses_a_store_of_another_plan(segmenter, volume, tmp_path):
    plan = plan_field(SHAPE, segmenter.tile_zyx, 0.25, chunks=(16, 32, 32))
    store = FieldStore.create(tmp_path / "f.zarr", SHAPE, (8, 32, 32), (0.5, 0.25, 0.25))
    with pytest.raises(InputError, match="create the store for this plan"):
        run_block(segmenter, volume, plan, 0, store)
