"""What every DeepIS network shares: its config, and the check of an input's shape.

The networks themselves are :class:`~deepis_rt.model.network.DeepIS` (deepis-rt's reading of the
paper) and :class:`~deepis_rt.model.deepis2020.DeepIS2020` (the published code's module structure);
:func:`~deepis_rt.model.build.build_model` picks one by ``config.architecture``.
"""

from __future__ import annotations

import torch
from torch import nn

from deepis_rt.errors import ConfigError, ShapeError
from deepis_rt.model.config import ModelConfig

__all__ = ["DeepISNetwork", "check_spatial_size", "nearest_valid_size"]


def nearest_valid_size(size: int, multiple: int) -> int:
    """The multiple of ``multiple`` closest to ``size`` (at least ``multiple``)."""
    return max(multiple, int(round(size / multiple)) * multiple)


def check_spatial_size(shape: tuple[int, ...], multiple: int) -> None:
    """Raise :class:`ShapeError` unless every spatial size is a multiple of ``multiple``.

    ``shape`` is the (Z, Y, X) part of an input's shape.
    """
    bad = [s for s in shape if s <= 0 or s % multiple]
    if bad:
        nearest = tuple(nearest_valid_size(s, multiple) for s in shape)
        padded = tuple(-(-s // multiple) * multiple for s in shape)
        raise ShapeError(
            f"model | spatial size {tuple(shape)} (Z, Y, X) is not a multiple of {multiple} "
            f"along every axis; nearest valid size is {nearest} (pad to {padded} to keep "
            "every voxel; deepis_rt.load() pads automatically)"
        )


class DeepISNetwork(nn.Module):
    """Base of the DeepIS networks: input (N, C, Z, Y, X), output (N, 1, Z, Y, X) signed distance in um.

    Parameters
    ----------
    config : ModelConfig
        The architecture; subclasses build their layers from it.
    """

    #: The ``ModelConfig.architecture`` a subclass builds.
    architecture: str = ""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.architecture != self.architecture:
            raise ConfigError(f"{type(self).__name__} needs architecture {self.architecture!r}, got "
                             f"{config.architecture!r}; build_model(config) picks the network for a config")
        self.config = config

    def _check_input(self, x: torch.Tensor) -> None:
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling() or _is_exporting()):
            if x.dim() != 5:
                raise ShapeError(
                    f"model | expected a 5-D tensor (N, C, Z, Y, X), got shape {tuple(x.shape)}"
                )
            check_spatial_size(tuple(x.shape[2:]), self.config.size_multiple)


def _is_exporting() -> bool:
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return bool(is_exporting()) if is_exporting is not None else False
