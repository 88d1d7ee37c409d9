"""The options that several commands share are defined once (deepis_rt.cli.options) and read alike."""

import click
import pytest

from deepis_rt.cli.main import main

SHARED = {
    # option -> the commands that take it
    "--model": ("stream", "batch", "demo"),
    "--precision": ("stream", "batch"),
    "--url": ("stream", "batch"),
    "--model-name": ("stream", "batch"),
    "--tta": ("stream", "batch", "demo"),
    "--no-masks": ("stream", "batch"),
    "--retry-for": ("stream", "batch"),
    "--voxel-size": ("stream", "batch"),
    "--medium-ri": ("stream", "batch"),
    "--zarr": ("stream", "batch"),
}


def _option(command: str, flag: str) -> click.Option:
    cmd = main.commands[command]
    return next(p for p in cmd.params if isinstance(p, click.Option) and flag in p.opts)


@pytest.mark.parametrize("flag", sorted(SHARED))
def test_shared_option_reads_alike_in_every_command(flag):
    first, *others = (_option(c, flag) for c in SHARED[flag])
    for other in others:
        assert (other.name, type(other.type), other.default, other.is_flag) == \
               (first.name, type(first.type), first.default, first.is_flag)
        if flag != "--model":  # --model adds where the file must be (every Ray worker; must exist)
            assert other.help == first.help


def test_model_option_notes_where_it_differs():
    assert "every worker must see it" in _option("batch", "--model").help
    assert _option("demo", "--model").type.exists and not _option("stream", "--model").type.exists
