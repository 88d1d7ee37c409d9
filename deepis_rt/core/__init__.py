"""Shared helpers one layer below everything else.

Every layer (model, checkpoint, train, export, runtime, stream, bench, cli) may import
``deepis_rt.core``; ``deepis_rt.core`` imports nothing from deepis_rt but :mod:`deepis_rt.errors`
(itself a leaf), so no helper here can close an import circle. PyTorch and the other heavy
libraries are not imported here (``machine`` asks PyTorch about GPUs only when called).

- :mod:`~deepis_rt.core.meta`: :class:`ModelMeta` and :class:`ExportManifest`, the model's metadata
  and the export manifest as typed objects, with their defaults defined once
- :mod:`~deepis_rt.core.labels`: the paper's masks and label volume from a signed distance map
- :mod:`~deepis_rt.core.metrics`: Dice and the error between two distance maps
- :mod:`~deepis_rt.core.stats`: latency percentiles
- :mod:`~deepis_rt.core.machine`: what a run ran on (CPU, GPU, versions, load)
- :mod:`~deepis_rt.core.jsonable`: plain JSON values from NumPy scalars, tuples and NaN
"""
