"""What a person reads after a run: ``report.html`` and the reproducibility record.

:func:`write_report` renders a results folder (docs/results.md); :func:`run_record` is the
``reproducibility`` block of ``summary.json``. Matplotlib is imported only when a report is drawn.
"""

from __future__ import annotations

from typing import Any

__all__ = ["write_report", "run_record"]


def write_report(out: Any, **options: Any) -> Any:
    """Render ``OUT/report.html`` and ``OUT/report/*.png``; see :func:`deepis_rt.report.html.write_report`."""
    from deepis_rt.report.html import write_report as _write

    return _write(out, **options)


def run_record(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """See :func:`deepis_rt.report.record.run_record`."""
    from deepis_rt.report.record import run_record as _record

    return _record(*args, **kwargs)
