"""``deepis-rt segment-field FILE --out DIR``: one large field with bounded memory (docs/large_fields.md)."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import click

from deepis_rt.cli.run_options import device_option, gpu_device

log = logging.getLogger(__name__)

#: Files read region by region; any other format is read whole, then segmented block by block.
LAZY_SUFFIXES = (".npy", ".zarr")


def open_field(path: Path, voxel_size_um: tuple[float, float, float] | None, ri_scale: float | None,
               ri_offset: float | None) -> tuple[Any, tuple[float, float, float] | None, dict[str, Any]]:
    """The field as a region source, its voxel size (None: unknown) and the RI mapping still to apply.

    TCF, OME-Zarr (or any zarr array), ``.npy`` and TIFF/BigTIFF are read region by region
    (:func:`deepis_rt.io.regions.open_region_source`, which decodes RI itself); other formats go
    through :func:`deepis_rt.io.read_tomogram` (the whole volume, decoded to RI).
    """
    from deepis_rt.io.readers import read_tomogram
    from deepis_rt.io.regions import REGION_SUFFIXES, open_region_source

    if path.is_dir() or path.suffix.lower() in REGION_SUFFIXES:
        source = open_region_source(path, voxel_size_um, ri_scale=ri_scale, ri_offset=ri_offset)
        return source, source.voxel_size_um, {}
    log.info("segment-field | %s: this format is read whole, then segmented block by block", path)
    tomogram = read_tomogram(path, voxel_size_um, ri_scale=ri_scale, ri_offset=ri_offset)
    return tomogram.ri, tomogram.voxel_size_um, {}


def _write_tables(out: Path, result: Any) -> None:
    from deepis_rt.analysis.tables import CELL_COLUMNS, SYNAPSE_COLUMNS, cell_rows, synapse_rows

    for name, columns, rows in (("cells.csv", CELL_COLUMNS, cell_rows(0, "", result.analysis)),
                                ("synapses.csv", SYNAPSE_COLUMNS, synapse_rows(0, "", result.analysis))):
        with open(out / name, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)


@click.command("segment-field")
@click.argument("file", type=click.Path(exists=True, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Results folder: field.ome.zarr (distance, labels, cell labels), cells.csv, synapses.csv, "
                   "summary.json.")
@click.option("--max-memory", "max_memory_gb", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="GB", help="Memory budget in GB; the planner picks block and chunk sizes within it and "
                                 "says what it chose [default: 2].")
@click.option("--model", type=click.Path(path_type=Path), default=None,
              help="Checkpoint, ONNX file or export folder (default: the bundled checkpoint).")
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "openvino", "torch", "tensorrt"]),
              default="auto", show_default=True, help="Inference backend.")
@click.option("--voxel-size", nargs=3, type=float, default=None, metavar="Z Y X",
              help="Voxel size in um for files that carry none (must be the model's).")
@click.option("--ri-scale", type=float, default=None, metavar="S",
              help="The file holds RI as value x S + O (default: RI, or integers as RI x 10 000).")
@click.option("--ri-offset", type=float, default=None, metavar="O", help="See --ri-scale (default 0).")
@click.option("--no-analysis", is_flag=True, help="Distance map and the paper's labels only (no cells, synapses).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS",
              help="Run the blocks on a Ray cluster ('auto', 'HOST:PORT', 'ray://HOST:10001' or 'local'); FILE and "
                   "--out must be at the same path on every node. The merge runs here (docs/deployment.md).")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="With --ray: at most this many workers [default: one per GPU, else one per CPU].")
@click.option("--retries", type=click.IntRange(0, 100), default=1, show_default=True,
              help="With --ray: further attempts of a block whose worker failed (a lost node's blocks always move).")
@device_option
def segment_field(file: Path, out: Path, max_memory_gb: float | None, model: Path | None, backend: str,
                  voxel_size: tuple[float, float, float] | None, ri_scale: float | None, ri_offset: float | None,
                  no_analysis: bool, no_progress: bool, ray_address: str | None, workers: int | None, retries: int,
                  device: int | None) -> None:
    """Segment one large field (a stitched mosaic, an HT-2 field of view) with bounded memory.

    The field is cut into chunk-aligned blocks that fit --max-memory; each block's distance map is
    blended from the model's tiles into OUT/field.ome.zarr, cells that cross block borders are
    merged once, and cells and synapses are measured conjugate by conjugate. Results equal
    `deepis_rt.load().segment()` on the whole field.
    """
    import deepis_rt
    from deepis_rt.field.segment import segment_field as run_field

    options: dict[str, Any] = {"analyze": not no_analysis}
    if device is not None:
        options["device"] = gpu_device(device)
    if ray_address:  # the blocks on the cluster's workers, the merge here
        from deepis_rt.cluster.ray_mosaic import segment_field_ray

        result, mosaic = segment_field_ray(file, out, model, backend, ray_address=ray_address,
                                           voxel_size_um=tuple(voxel_size) if voxel_size else None, ri_scale=ri_scale,
                                           ri_offset=ri_offset, max_memory_gb=max_memory_gb,
                                           analyze=not no_analysis, retries=retries, num_workers=workers,
                                           load_options=options)
        click.echo(f"segment-field: {mosaic.workers}; blocks per node {mosaic.nodes}", err=True)
    else:
        source, vs, ri = open_field(file, tuple(voxel_size) if voxel_size else None, ri_scale, ri_offset)
        out.mkdir(parents=True, exist_ok=True)
        segmenter = deepis_rt.load(model, backend=backend, **options)
        click.echo(f"segment-field: {file.name}, {'x'.join(map(str, source.shape))} voxels, backend "
                   f"{segmenter.backend}", err=True)
        # this process, block after block (with --ray the cluster's workers run the blocks)
        try:
            with segmenter:
                result = run_field(segmenter, source, vs, out=out, max_memory_gb=max_memory_gb, source=str(file),
                                   progress=not no_progress, **ri)
        finally:
            if hasattr(source, "close"):  # a region source holds its file open
                source.close()
    store = out / "field.ome.zarr"
    if result.analysis is not None:
        _write_tables(out, result)
    from deepis_rt.field import FieldStore

    attrs = FieldStore.open(store, mode="r").attrs
    summary = {"source_path": str(file), "store": str(store), "backend": result.backend,
               "voxel_size_um": list(result.voxel_size_um), "plan": attrs["plan"], "quality": result.quality,
               "cells": len(result.cells) if result.analysis is not None else None,
               "synapses": len(result.synapses) if result.analysis is not None else None,
               "timings_ms": {k: round(v, 1) for k, v in result.timings_ms.items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    counts = f"{summary['cells']} cells, {summary['synapses']} synapses, " if result.analysis is not None else ""
    click.echo(f"segment-field: {counts}quality {result.quality}; {result.timings_ms['total'] / 1e3:.1f} s; "
               f"results in {out}", err=True)
