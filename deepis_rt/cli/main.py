"""Entry point of the ``deepis-rt`` command: the group, logging set-up and error handling."""

from __future__ import annotations

import logging
import sys

import click

from deepis_rt._version import __version__
from deepis_rt.errors import DeepisError


class _Group(click.Group):
    """Turns a DeepisError (a user's mistake, missing file, ...) or a file that cannot be read or
    written (wrong path, no permission, disk full) into one clear line, exit 2."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except DeepisError as exc:
            logging.getLogger("deepis_rt").debug("traceback", exc_info=True)
            click.echo(f"deepis-rt: error: {exc}", err=True)
            ctx.exit(2)
        except OSError as exc:
            if exc.filename is None:  # not about a path the user gave
                raise
            logging.getLogger("deepis_rt").debug("traceback", exc_info=True)
            click.echo(f"deepis-rt: error: {exc.filename}: {exc.strerror or exc}; check the path and its permissions",
                       err=True)
            ctx.exit(2)


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname).1s %(name)s: %(message)s" if verbose else "%(message)s"))
    root = logging.getLogger("deepis_rt")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="deepis-rt")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def main(verbose: int, quiet: bool) -> None:
    """deepis-rt: segment CAR-T immunological synapses in refractive-index tomograms, fast.

    \b
    Typical use:
      deepis-rt demo                      synthetic video -> stream -> results + plots
      deepis-rt export ckpt.pt            ONNX FP32/FP16 (+ TensorRT engine on a GPU)
      deepis-rt stream --source DIR       segment tomograms as the microscope writes them
      deepis-rt info PATH                 describe a checkpoint, export, engine or results
    """
    _configure_logging(verbose, quiet)


def _register_commands() -> None:
    # Each command module imports its heavy dependencies inside the command body.
    from deepis_rt.cli import info as _info

    main.add_command(_info.info)
    main.add_command(_info.init)
    from deepis_rt.cli import demo as _demo
    from deepis_rt.cli import stream as _stream

    main.add_command(_demo.demo)
    main.add_command(_stream.stream)
    from deepis_rt.cli import export as _export

    main.add_command(_export.export)
    from deepis_rt.cli import batch as _batch

    main.add_command(_batch.batch)
    from deepis_rt.cli import serve_triton as _serve_triton

    main.add_command(_serve_triton.serve_triton)
    from deepis_rt.cli import synth as _synth
    from deepis_rt.cli import train as _train

    main.add_command(_synth.synth)
    main.add_command(_train.train)
    from deepis_rt.cli import bench as _bench

    main.add_command(_bench.bench)
    from deepis_rt.cli import convert as _convert

    main.add_command(_convert.convert)
    from deepis_rt.cli import report as _report

    main.add_command(_report.report)
    from deepis_rt.cli import segment_field as _segment_field

    main.add_command(_segment_field.segment_field)


_register_commands()
