"""Scale-out: archives on a Ray cluster (:mod:`.ray_batch`), serving from Triton (:mod:`.triton_repo`).

Ray and tritonclient are optional (``pip install 'deepis-rt[cluster]'``); they are imported only
when a function that needs them runs.
"""

from deepis_rt.cluster.triton_repo import (
    META_PARAMETER,
    TritonRepository,
    load_model_config,
    parse_model_config,
    write_triton_repository,
)

__all__ = [
    "META_PARAMETER",
    "TritonRepository",
    "load_model_config",
    "parse_model_config",
    "write_triton_repository",
    "run_batch",
    "find_items",
    "BatchReport",
]


def __getattr__(name: str):  # the batch module pulls in the stream stack: load it on first use
    if name in ("run_batch", "find_items", "BatchReport"):
        from deepis_rt.cluster import ray_batch

        return getattr(ray_batch, name)
    raise AttributeError(f"module 'deepis_rt.cluster' has no attribute {name!r}")
