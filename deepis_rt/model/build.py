"""``build_model``: the network a config describes."""

from __future__ import annotations

from typing import Any

from deepis_rt.model.base import DeepISNetwork
from deepis_rt.model.config import ModelConfig, preset_config
from deepis_rt.model.deepis2020 import DeepIS2020
from deepis_rt.model.network import DeepIS

__all__ = ["build_model", "NETWORKS"]

#: ``ModelConfig.architecture`` -> the network class that builds it.
NETWORKS: dict[str, type[DeepISNetwork]] = {cls.architecture: cls for cls in (DeepIS, DeepIS2020)}


def build_model(preset: str | ModelConfig = "deepis", **overrides: Any) -> DeepISNetwork:
    """Build a DeepIS network.

    Parameters
    ----------
    preset : str or ModelConfig
        ``"deepis"`` (the paper's text), ``"deepis-lite"`` (CPU/demo variant), ``"deepis-2020"``
        (the published training code's network, :mod:`deepis_rt.model.deepis2020`), or a config.
    **overrides
        Config fields to change, e.g. ``widths=(4, 8, 8, 8, 8)`` for tiny test models.

    Returns
    -------
    DeepISNetwork
        The network in training mode, randomly initialised: :class:`~deepis_rt.model.network.DeepIS`,
        or :class:`~deepis_rt.model.deepis2020.DeepIS2020` for ``architecture="deepis-2020"``.
    """
    if isinstance(preset, ModelConfig):
        config = preset.replace(**overrides) if overrides else preset
    else:
        config = preset_config(preset, **overrides)
    return NETWORKS[config.architecture](config)
