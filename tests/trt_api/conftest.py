"""Session fixture: the real TensorRT Python bindings 10.13 and 11.4 with stub libraries.

See ``trt_bindings_setup.py`` for how they are fetched, stubbed and cached.
"""

from __future__ import annotations

import pytest
from trt_bindings_setup import BINDING_VERSIONS, Bindings, cache_root, prepare


@pytest.fixture(scope="session")
def trt_bindings() -> dict[str, Bindings]:
    """Both binding versions, ready to be imported in subprocesses."""
    root = cache_root()
    return {v: prepare(v, root) for v in BINDING_VERSIONS}
