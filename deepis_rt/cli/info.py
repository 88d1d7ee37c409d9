"""``deepis-rt info`` and ``deepis-rt init``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click


def _print_human(desc: dict[str, Any], indent: int = 0) -> None:
    pad = "  " * indent
    for key, value in desc.items():
        if isinstance(value, dict):
            if not value:
                click.echo(f"{pad}{key}: -")
                continue
            click.echo(f"{pad}{key}:")
            _print_human(value, indent + 1)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            click.echo(f"{pad}{key}:")
            for item in value:
                _print_human(item, indent + 1)
                click.echo(f"{pad}  --")
        else:
            if key == "parameters" and isinstance(value, int):
                value = f"{value:,} ({value / 1e6:.2f} M)"
            click.echo(f"{pad}{key}: {value}")


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def info(path: Path, as_json: bool) -> None:
    """Describe a checkpoint, ONNX file, export folder, engine, results folder or Tomocube TCF file."""
    from deepis_rt.info import describe

    desc = describe(path)
    if as_json:
        click.echo(json.dumps(desc, indent=2))
    else:
        _print_human(desc)


@click.command()
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--preset", type=click.Choice(["deepis", "deepis-lite", "deepis-2020"]), default="deepis-lite", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random initialisation.")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
def init(out: Path, preset: str, seed: int, force: bool) -> None:
    """Write a freshly initialised (untrained) checkpoint of PRESET to OUT."""
    import torch

    from deepis_rt.checkpoint import save_checkpoint
    from deepis_rt.model import build_model

    if out.exists() and not force:
        raise click.UsageError(f"{out} exists; pass --force to overwrite")
    torch.manual_seed(seed)
    model = build_model(preset)
    save_checkpoint(out, model, meta={"description": f"untrained {preset} (seed {seed})",
                                      "training": {"status": "untrained", "seed": seed}})
    click.echo(f"wrote {out} ({preset}, untrained)")
