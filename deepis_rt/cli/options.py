"""Options that several commands share, each defined once and grouped as cellpose groups its arguments.

- hardware: ``--precision`` (with ``--device`` of :mod:`deepis_rt.cli.run_options`)
- input: how tomogram files are read (``--voxel-size``, ``--frame-interval``, ``--medium-ri``,
  ``--ri-scale``, ``--ri-offset``, ``--follow-symlinks``)
- model: ``--model``, the Triton server (``--url``, ``--model-name``), ``--tta``
- output: what a results folder holds (``--no-masks``, ``--zarr``, ``--no-report``) and how long
  frames wait for an unavailable backend (``--retry-for``)

Each group is a decorator; a command lists the groups it takes, so an option's name, type, default
and help are the same in every command. ``--backend`` is not here: its choices come from the backend
registry.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from deepis_rt.core.meta import MEDIUM_RI
from deepis_rt.stream.retry import DEFAULT_RETRY_FOR_S

__all__ = [
    "precision_option",
    "input_options",
    "model_option",
    "triton_options",
    "tta_option",
    "output_options",
    "retry_option",
]

Decorator = Callable[[Any], Any]


def _apply(command: Any, options: list[Decorator]) -> Any:
    for option in reversed(options):  # the first listed shows first in --help
        command = option(command)
    return command


# ---- hardware -----------------------------------------------------------------------------------

precision_option: Decorator = click.option(
    "--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default=None,
    help="Ask for a precision: fp16 on GPUs, bf16 on CPUs with AVX512_BF16 or AMX (OpenVINO; changes the "
         "numbers slightly, see docs/export.md) [default: the backend's exact default].")


# ---- input --------------------------------------------------------------------------------------

def input_options(command: Any) -> Any:
    """How tomogram files are read: --voxel-size, --frame-interval, --medium-ri, --ri-scale, --ri-offset,
    --follow-symlinks."""
    return _apply(command, [
        click.option("--voxel-size", nargs=3, type=float, default=None, metavar="Z Y X",
                     help="Voxel size in um for files that carry none."),
        click.option("--frame-interval", type=float, default=None, metavar="S",
                     help="Seconds between frames for files without time stamps (default: file times)."),
        click.option("--medium-ri", type=float, default=None,
                     help=f"Medium RI (default: from the file or {MEDIUM_RI})."),
        click.option("--ri-scale", type=float, default=None, metavar="S",
                     help="Files hold RI as value x S + O (not for TCF, which declares its encoding). Default: "
                          "RI as stored, integers 10000-20000 as RI x 10 000; other values are refused."),
        click.option("--ri-offset", type=float, default=None, metavar="O", help="See --ri-scale (default 0)."),
        click.option("--follow-symlinks", is_flag=True,
                     help="Read symbolic links to files outside the source folder (default: skipped)."),
    ])


# ---- model --------------------------------------------------------------------------------------

def model_option(must_exist: bool = False, note: str = "") -> Decorator:
    """``--model``: a checkpoint, ONNX file or export folder; ``note`` is added to the help."""
    return click.option(
        "--model", type=click.Path(exists=must_exist, path_type=Path), default=None,
        help="Checkpoint, ONNX file or export folder (default: the bundled demo checkpoint)" + (
            f"; {note}." if note else "."))


def triton_options(command: Any) -> Any:
    """The Triton server a ``--backend triton`` run uses: --url, --model-name."""
    return _apply(command, [
        click.option("--url", default=None, metavar="HOST:PORT",
                     help="Triton server for --backend triton [default: $DEEPIS_TRITON_URL]."),
        click.option("--model-name", default="deepis", show_default=True, help="Model name on the Triton server."),
    ])


tta_option: Decorator = click.option(
    "--tta", is_flag=True,
    help="Test-time augmentation: also segment each frame mirrored in Y, in X and in both (4x the inference), "
         "average, and widen is_area_err_um2 where the flips disagree.")


# ---- output -------------------------------------------------------------------------------------

def output_options(command: Any) -> Any:
    """What a results folder holds: --no-masks, --zarr, --no-report."""
    return _apply(command, [
        click.option("--no-masks", is_flag=True, help="Do not write masks/ label volumes."),
        click.option("--zarr", type=click.Choice(["ri+labels", "labels", "off"]), default="ri+labels",
                     show_default=True, help="What the OME-Zarr time-lapse OUT/timelapse.ome.zarr holds "
                     "(docs/results.md): the RI and the labels, the labels only, or no store."),
        click.option("--no-report", is_flag=True,
                     help="Do not write report.html at the end of the run (`deepis-rt report OUT` writes it "
                          "any time)."),
    ])


retry_option: Decorator = click.option(
    "--retry-for", "retry_for", type=click.FloatRange(min=0), default=DEFAULT_RETRY_FOR_S, show_default=True,
    metavar="SECONDS", help="How long frames wait for a backend that is unavailable (server restarting, timeout, "
    "out of memory) before they are recorded 'retry' (the next run processes them).")
