"""Options shared by the commands that run a model: ``--device N`` and ``--config FILE``.

``--config`` takes the ``summary.json`` of an earlier run (or a ``batch_report.json``) and uses the
options recorded there as defaults: options given on the command line override them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

__all__ = ["device_option", "config_option", "command_record", "gpu_device"]


def gpu_device(index: int | None, gpus: list[dict[str, Any]] | None = None) -> str | None:
    """``"cuda:N"`` for GPU ``index`` (None for None); a GPU that does not exist is refused with the list."""
    if index is None:
        return None
    if gpus is None:
        from deepis_rt.bench.machine import gpu_list

        gpus = gpu_list()
    if not any(g["index"] == index for g in gpus):
        here = ("; ".join(f"{g['index']}: {g['name']} ({g['memory_gib']:g} GiB)" for g in gpus)
                if gpus else "none (no CUDA GPU visible to PyTorch: torch.cuda.device_count() is 0)")
        raise click.BadParameter(f"GPU {index} does not exist; GPUs here: {here}", param_hint="'--device'")
    return f"cuda:{index}"


def _check_device(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    gpu_device(value)
    return value


def device_option(command: Any) -> Any:
    """``--device N``: run on CUDA GPU N (checked before the model loads)."""
    return click.option("--device", type=click.IntRange(min=0), default=None, metavar="N", callback=_check_device,
                        help="Run on CUDA GPU N (default: GPU 0 for GPU backends). A GPU that does not exist "
                             "is refused with the list of GPUs.")(command)


def _recorded_command(path: Path) -> Mapping[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise click.BadParameter(f"{path}: not readable as JSON ({exc})", param_hint="'--config'") from None
    command = None
    if isinstance(data, Mapping):
        command = (data.get("reproducibility") or {}).get("command") or (data.get("settings") or {}).get("command")
    if not isinstance(command, Mapping) or not isinstance(command.get("options"), Mapping):
        raise click.BadParameter(f"{path}: holds no recorded command (expected the summary.json of a "
                                 "`deepis-rt stream` run, or a batch_report.json)", param_hint="'--config'")
    return command


def _load_config(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    if value is None or ctx.resilient_parsing:
        return value
    command = _recorded_command(value)
    if command.get("name") != ctx.info_name:
        raise click.BadParameter(f"{value}: records a `deepis-rt {command.get('name')}` run, not "
                                 f"`deepis-rt {ctx.info_name}`", param_hint="'--config'")
    known = {p.name for p in ctx.command.params}
    options = {k: v for k, v in command["options"].items() if k in known and k != "config"}
    unknown = sorted(set(command["options"]) - known - {"config"})
    if unknown:
        click.echo(f"--config {value}: options this version does not have are ignored: {', '.join(unknown)}",
                   err=True)
    # options not given on the command line take these values (click's default_map)
    ctx.default_map = {**(ctx.default_map or {}), **options}
    return value


def config_option(command: Any) -> Any:
    """``--config FILE``: re-run with the options recorded in an earlier run's ``summary.json``."""
    return click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                        is_eager=True, expose_value=False, callback=_load_config,
                        help="Re-run with the options recorded in an earlier run's summary.json (a batch: its "
                             "batch_report.json); options given here override them.")(command)


def _json_safe(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value.resolve())
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def command_record(ctx: click.Context) -> dict[str, Any]:
    """The running command for the reproducibility record: its name, argv and every option's value.

    Paths are made absolute, so that ``--config`` works from another working folder.
    """
    return {"name": ctx.info_name, "argv": list(sys.argv[1:]),
            "options": {k: _json_safe(v) for k, v in ctx.params.items()}}
