"""``deepis-rt report``: the run at a glance, as one self-contained HTML file."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--time-points", type=click.IntRange(min=1), default=16, show_default=True,
              help="Most time points shown in the contact slices (evenly spaced; all when fewer).")
def report(out: Path, time_points: int) -> None:
    """Write OUT/report.html (and its PNGs in OUT/report/) for the results folder OUT.

    \b
    Per synapse: IS area with the weighted fit, its uncertainty band and the onset; IS mean RI and
    dry mass. The contact at each time point (side and en-face slices, labels over the RI), a
    maximum-intensity projection with the cell tracks, the status and latency of every frame, and
    for synthetic runs the truth next to the fit. `stream`, `demo` and `batch` write it at the end
    of each run; run this for a folder of a run that is still going.
    """
    from deepis_rt.report import write_report

    path = write_report(out, max_time_points=time_points)
    click.echo(f"wrote {path}")
