"""TritonRunner and load(backend="triton") against an in-process fake of Triton's HTTP API."""

from __future__ import annotations

import os
import socket
import threading

import numpy as np
import pytest
from cluster_helpers import META, TILE, reference_distance

pytest.importorskip("tritonclient.http", reason="needs tritonclient[http] (pip install 'deepis-rt[cluster]')")

from fake_triton import FakeTritonServer  # noqa: E402

from deepis_rt import load  # noqa: E402
from deepis_rt.backends.triton.runner import TritonRunner, parse_triton_url  # noqa: E402
from deepis_rt.cluster import write_triton_repository  # noqa: E402
from deepis_rt.errors import BackendError, ConfigError  # noqa: E402


@pytest.fixture
def server(export_dir, tmp_path):
    repo = tmp_path / "repo"
    write_triton_repository(export_dir, repo, model_name="deepis", instance_kind="cpu", max_batch_size=4)
    with FakeTritonServer(repo, "deepis") as srv:
        yield srv


def _batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 1, *TILE)).astype(np.float32)


@pytest.mark.parametrize("binary_data, compression", [(True, None), (False, None), (True, "gzip")])
def test_runner_matches_model(server, binary_data, compression):
    x = _batch(6)
    with TritonRunner(server.url, "deepis", binary_data=binary_data, compression=compression) as runner:
        assert runner.fixed_spatial_zyx == TILE and runner.max_batch_size == 4
        assert runner.model_meta["voxel_size_um"] == META["voxel_size_um"]
        y = runner.infer(x)
    assert y.shape == x.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, reference_distance(x), rtol=1e-5, atol=1e-6)
    assert server.batch_shapes == [(4, 1, *TILE), (2, 1, *TILE)]  # split at the server's max batch


def test_runner_from_other_threads(server):
    """The stream infers on its own thread; gevent connections are per thread."""
    runner = TritonRunner(f"http://{server.url}", "deepis").activate()
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        results[i] = runner.infer(_batch(1, seed=i))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    runner.deactivate()
    assert sorted(results) == [0, 1, 2]
    for i, y in results.items():
        np.testing.assert_allclose(y, reference_distance(_batch(1, seed=i)), rtol=1e-5, atol=1e-6)


def test_errors_say_what_to_do(server):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(BackendError, match="cannot reach the server"):
        TritonRunner(closed, "deepis", connection_timeout_s=2).activate()
    with pytest.raises(BackendError, match=r"model not ready.*deepis \(READY\)"):
        TritonRunner(server.url, "other").activate()
    server.ready = False
    with pytest.raises(BackendError, match="not ready"):
        TritonRunner(server.url, "deepis").activate()
    server.ready = True
    with TritonRunner(server.url, "deepis") as runner:
        server.fail_infer = 1
        with pytest.raises(BackendError, match="CUDA out of memory"):
            runner.infer(_batch(1))
        assert runner.infer(_batch(1)).shape == (1, 1, *TILE)  # the next request works again


def test_url_forms(monkeypatch):
    monkeypatch.delenv("DEEPIS_TRITON_URL", raising=False)
    with pytest.raises(ConfigError, match="DEEPIS_TRITON_URL"):
        parse_triton_url(None)
    monkeypatch.setenv("DEEPIS_TRITON_URL", "gpu-server:8000")
    assert parse_triton_url(None) == ("gpu-server:8000", False)
    assert parse_triton_url("https://gpu-server:8000/") == ("gpu-server:8000", True)


def test_triton_segments_like_a_local_backend(server, export_dir):
    """Segmenter over Triton == Segmenter over the FakeRunner (the same point-wise function)."""
    from deepis_rt.runtime import FakeRunner, Segmenter

    rng = np.random.default_rng(1)
    volume = (1.337 + 0.03 * rng.random((20, 40, 36))).astype(np.float32)
    voxel = (0.5, 0.25, 0.25)
    seg = load(backend="triton", url=server.url, model_name="deepis", analyze=False)
    assert seg.backend == "triton" and seg.tile_zyx == TILE
    local = Segmenter(FakeRunner(fixed_spatial_zyx=TILE), META, analyze=False)
    got, want = seg.segment(volume, voxel), local.segment(volume, voxel)
    np.testing.assert_allclose(got.distance, want.distance, rtol=1e-5, atol=1e-5)
    assert np.array_equal(got.labels, want.labels)
    # a local copy that disagrees with the server's model is refused
    from cluster_helpers import pointwise_onnx

    other = pointwise_onnx(export_dir.parent / "other.onnx", meta={**META, "voxel_size_um": [1.0, 0.5, 0.5]})
    with pytest.raises(BackendError, match="voxel_size_um"):
        load(other, backend="triton", url=server.url, model_name="deepis")


def test_load_dispatches_to_triton(server):
    import deepis_rt.runtime as rt

    seg = rt.load(backend="triton", url=server.url, model_name="deepis", analyze=False)
    assert seg.backend == "triton"
    assert seg.describe()["url"] == server.url


@pytest.mark.skipif(not os.environ.get("DEEPIS_TRITON_URL"),
                    reason="no real Triton server: set DEEPIS_TRITON_URL=host:8000 (and DEEPIS_TRITON_MODEL, "
                           "default 'deepis') to run against one")
def test_real_server():
    seg = load(backend="triton", url=os.environ["DEEPIS_TRITON_URL"],
               model_name=os.environ.get("DEEPIS_TRITON_MODEL", "deepis"))
    tile = seg.tile_zyx
    volume = np.full(tile, seg.medium_ri, dtype=np.float32)
    result = seg.segment(volume, seg.model_voxel_size_um)
    assert result.distance.shape == tuple(tile) and np.isfinite(result.distance).all()
