"""Triton Inference Server as a registered backend (``backend="triton"``; never chosen by ``auto``).

The model lives on the server; the request's options name it (``url``, ``model_name``,
``model_version``, and :class:`TritonRunner`'s connection settings). Its metadata (voxel size, RI
normalisation, tile) comes from the server once the runner is active (``TritonRunner.model_meta``);
``deepis_rt.load`` reconciles it with a local copy of the model when one is given.
"""

from __future__ import annotations

import inspect
from typing import Any

from deepis_rt.backends.spec import BackendSpec, RunnerRequest
from deepis_rt.errors import ConfigError

__all__ = ["SPEC"]

_OWN = frozenset({"self"})


def probe(request: RunnerRequest) -> str | None:
    return None  # a missing client package or server is reported by activate(), with what to do


def make_runner(request: RunnerRequest) -> Any:
    # the client's module pulls in http.client, email and ssl: imported only for a Triton run
    from deepis_rt.backends.triton.runner import TritonRunner

    if request.device is not None and str(request.device).startswith("cuda"):
        raise ConfigError(
            f"triton | device={request.device!r}: the Triton server chooses its GPUs (instance_group in "
            "config.pbtxt); leave device unset")
    accepted = set(inspect.signature(TritonRunner.__init__).parameters) - _OWN
    return TritonRunner(**{k: v for k, v in request.options.items() if k in accepted})


SPEC = BackendSpec(
    name="triton", device="remote", precisions=("fp32",), probe=probe, factory=make_runner, family="triton",
    summary="a Triton Inference Server (url=, model_name=); the server runs the network")
