"""``deepis-rt convert``: a published-DeepIS checkpoint -> a deepis-rt checkpoint with stated metadata."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--ri-normalization", nargs=2, type=float, default=None, metavar="OFFSET SCALE",
              help="Network input = (RI - OFFSET) / SCALE (deepis-rt's convention).")
@click.option("--input-offset", type=float, default=None, metavar="A",
              help="With --input-scale: network input = (RI - A) * B, as the training data held it.")
@click.option("--input-scale", type=float, default=None, metavar="B", help="See --input-offset.")
@click.option("--output-unit", type=click.Choice(["um", "voxel"]), default=None,
              help="Unit of the network output times --output-scale (voxel: the smallest voxel edge).")
@click.option("--output-scale", type=float, default=None, metavar="S",
              help="Factor from the network output to --output-unit [default: 1].")
@click.option("--voxel-size", nargs=3, type=float, default=None, metavar="Z Y X",
              help="Voxel size the model was trained at, in um.")
@click.option("--tile", nargs=3, type=int, default=None, metavar="Z Y X", help="Tile the model runs on (voxels).")
@click.option("--description", default=None, help="Free text stored in the checkpoint.")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
def convert(source: Path, out: Path, ri_normalization: tuple[float, float] | None, input_offset: float | None,
            input_scale: float | None, output_unit: str | None, output_scale: float | None,
            voxel_size: tuple[float, float, float] | None, tile: tuple[int, int, int] | None,
            description: str | None, force: bool) -> None:
    """Write OUT, a deepis-rt checkpoint of the model in SOURCE with the metadata it lacks.

    SOURCE is a checkpoint of the published DeepIS training code (CNNTrainer's .pth.tar, .pth or
    .pt; read with weights_only=True). Its input scaling, output unit and voxel size are not in the
    file: state them here. The output scale is folded into the head, so every backend returns um.
    The auxiliary heads and the optimizer state are not carried.

    \b
    Example:
      deepis-rt convert 'epoch[0324]_losssum[0.053456].pth.tar' deepis2020.pt \\
          --ri-normalization 1.337 0.02 --output-unit um --output-scale 1 --voxel-size 0.2 0.1 0.1
    """
    from deepis_rt.convert import convert_checkpoint

    if out.exists() and not force:
        raise click.UsageError(f"{out} exists; pass --force to overwrite")
    path, assumed = convert_checkpoint(
        source, out, ri_normalization=ri_normalization, input_offset=input_offset, input_scale=input_scale,
        output_unit=output_unit, output_scale=output_scale, voxel_size_um=voxel_size, tile_zyx=tile,
        description=description)
    click.echo(f"wrote {path}")
    if assumed:
        click.echo(f"still assumed (not stated): {', '.join(assumed)}; deepis-rt will say so whenever it is used")
